"""Degraded copies of images: what a generator draws when it has learnt only colour and layout.

A scorer that is to judge generated images must rank these far below the real image. The validation
(`bench/validate_scorer.py`) uses fixed degradations (blur at sigma 2, the silhouette in its mean colour); scorer
training can show random ones as negatives (`scorer_training.train_scorer(blob_weight=...)`).

All functions take and return float images (B, 3, H, W) in [-1, 1] on a white background.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("blur", "silhouette", "pixelate")
# A pixel is background when every channel is at least this (250 / 255 on the 0..255 scale).
WHITE_THRESHOLD = 250 / 127.5 - 1


def gaussian_blur(images: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, edges replicated. sigma: one value, or one per image (B,). (B, 3, H, W) -> same."""
    b, c, h, w = images.shape
    sigma = torch.as_tensor(sigma, dtype=images.dtype, device=images.device).reshape(-1).expand(b)
    radius = int(math.ceil(3 * float(sigma.max())))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, K)
    # Grouped convolution: one kernel per image, shared by its channels.
    weight = kernel.repeat_interleave(c, 0)[:, None]  # (B * C, 1, K)
    flat = images.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), weight[:, :, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), weight[:, :, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def silhouette(images: torch.Tensor) -> torch.Tensor:
    """Each image's non-white pixels filled with their mean colour, on white. (B, 3, H, W) -> same."""
    mask = (images < WHITE_THRESHOLD).any(dim=1, keepdim=True).to(images.dtype)  # (B, 1, H, W)
    mean = (images * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp(min=1)
    return mask * mean + (1 - mask) * torch.ones_like(images)


def pixelate(images: torch.Tensor, size: int) -> torch.Tensor:
    """Down to size x size (area average), back up bilinearly: shapes and colours stay, details go."""
    h, w = images.shape[-2:]
    small = F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def random_blobs(images: torch.Tensor, generator: torch.Generator, kinds: tuple[str, ...] = KINDS) -> torch.Tensor:
    """One random degradation of each image, drawn from `kinds`: blur (sigma 1.5..4 at 64 px, scaled with the
    size), silhouette, or pixelate (8..16 px at 64 px). (B, 3, H, W) -> same."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown blob kind(s) {unknown or kinds}; choose from {', '.join(KINDS)}")
    b, res = images.shape[0], images.shape[-1]
    choice = torch.randint(len(kinds), (b,), generator=generator)
    out = images.clone()
    for k, kind in enumerate(kinds):
        sel = (choice == k).nonzero().squeeze(1)
        if len(sel) == 0:
            continue
        if kind == "blur":
            sigma = (1.5 + 2.5 * torch.rand(len(sel), generator=generator)) * res / 64
            out[sel] = gaussian_blur(images[sel], sigma)
        elif kind == "silhouette":
            out[sel] = silhouette(images[sel])
        else:
            size = max(2, int((8 + torch.randint(9, (1,), generator=generator).item()) * res / 64))
            out[sel] = pixelate(images[sel], size)
    return out
