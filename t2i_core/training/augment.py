"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) of the discriminator's inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentParams:
    """Random draws for one batch; drawn for the whole global batch so every process slices the same values."""

    brightness: torch.Tensor  # (B, 1, 1, 1)
    saturation: torch.Tensor  # (B, 1, 1, 1)
    contrast: torch.Tensor  # (B, 1, 1, 1)
    shift: torch.Tensor  # (B, 2) integer pixels
    cutout: torch.Tensor  # (B, 2) integer top-left corner

    @staticmethod
    def draw(batch: int, resolution: int, generator: torch.Generator) -> "AugmentParams":
        r = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
        max_shift = resolution // 8
        return AugmentParams(
            brightness=r(batch, 1, 1, 1) - 0.5,
            saturation=r(batch, 1, 1, 1) * 2,
            contrast=r(batch, 1, 1, 1) + 0.5,
            shift=torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator),
            cutout=torch.randint(0, resolution - resolution // 2 + 1, (batch, 2), generator=generator),
        )

    def __getitem__(self, index) -> "AugmentParams":
        return AugmentParams(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def diff_augment(x: torch.Tensor, p: AugmentParams | None) -> torch.Tensor:
    """Colour, translation and cutout on (B, 3, R, R) images; gradients flow to x. p=None: no augmentation."""
    if p is None:
        return x
    dev, dt = x.device, x.dtype
    x = x + p.brightness.to(dev, dt)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * p.saturation.to(dev, dt) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * p.contrast.to(dev, dt) + mean
    b, _, h, w = x.shape
    # Translation: gather shifted pixels, padding with the background value (+1 is white in [-1, 1]).
    rows = (torch.arange(h, device=dev)[None, :] - p.shift[:, :1].to(dev)).clamp(-1, h)  # (B, H)
    cols = (torch.arange(w, device=dev)[None, :] - p.shift[:, 1:].to(dev)).clamp(-1, w)  # (B, W)
    padded = F.pad(x, (1, 1, 1, 1), value=1.0)
    idx_r = (rows + 1)[:, None, :, None].expand(b, 3, h, w + 2)
    x = padded.gather(2, idx_r)
    idx_c = (cols + 1)[:, None, None, :].expand(b, 3, h, w)
    x = x.gather(3, idx_c)
    # Cutout: a half-size square of each image set to zero (grey).
    size = h // 2
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    top, left = p.cutout[:, 0, None, None].to(dev), p.cutout[:, 1, None, None].to(dev)
    keep = ~((yy >= top) & (yy < top + size) & (xx >= left) & (xx < left + size))
    return x * keep[:, None].to(dt)
