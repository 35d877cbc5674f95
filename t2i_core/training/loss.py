"""The two loss families of the design, and the differentiable augmentation they run through.

Text loss: the discriminator must reject real images paired with a mismatched caption, and caption dropout
(done by the trainer) trains the unconditional path. Image loss: hinge adversarial loss, a lazy R1 gradient
penalty on real pairs, and an optional reconstruction term of the prompt's mean image against its real image.
All randomness comes from a torch.Generator the caller passes, so a step is reproducible (resume, multi-process).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


# Differentiable augmentation (DiffAugment, Zhao et al. 2020): the same random transform family is applied to
# real and fake images before the discriminator, so it cannot memorise a small data set.

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


def d_hinge_loss(
    d_real: torch.Tensor, d_fake: torch.Tensor, d_mismatch: torch.Tensor | None = None, mismatch_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Real-and-matching up, fakes and real-with-wrong-caption down (DF-GAN weights the two negatives 1/2 each).

    All (B,) logits. mismatch_mask (B,) marks the pairs whose caption really differs; masked terms count as zero
    but the mean stays over B, so that processes holding equal slices of a batch average to the global loss.
    """
    loss = F.relu(1 - d_real).mean()
    if d_mismatch is None:
        return loss + F.relu(1 + d_fake).mean()
    mis = F.relu(1 + d_mismatch)
    if mismatch_mask is not None:
        mis = mis * mismatch_mask.to(mis.dtype)
    return loss + 0.5 * F.relu(1 + d_fake).mean() + 0.5 * mis.mean()


def g_hinge_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient norm of D at real pairs, (B,) logits w.r.t. (B, 3, R, R) images."""
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def reconstruction_loss(mean_image: torch.Tensor, real: torch.Tensor, scales: tuple[int, ...] = (1, 4)) -> torch.Tensor:
    """Per-sample L1 (B,) between the prompt's mean image (truncation 0) and its real image, at full and 1/4 scale.

    The coarse term carries layout and colour; only the mean path is pulled, so z stays free to vary the rest.
    """
    loss = 0.0
    for s in scales:
        a = F.avg_pool2d(mean_image, s) if s > 1 else mean_image
        b = F.avg_pool2d(real, s) if s > 1 else real
        loss = loss + (a.float() - b.float()).abs().flatten(1).mean(1)
    return loss / len(scales)


def color_distribution_loss(fake: torch.Tensor, real: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Per-sample sliced Wasserstein distance (B,) between the pixel colours of a fake and of its caption's real image.

    Colours are projected on K directions (K, 3) and sorted, so the loss asks for the right amount of each colour
    *anywhere* in the image: it teaches "red" and "large" without pulling random layouts to a blurred mean
    (plain L1 to images with objects at random places is minimised by a white image).
    """
    b = fake.shape[0]
    proj_f = torch.einsum("kc,bcn->bkn", directions.to(fake.dtype), fake.float().reshape(b, 3, -1))
    proj_r = torch.einsum("kc,bcn->bkn", directions.to(real.dtype), real.float().reshape(b, 3, -1))
    return (proj_f.sort(dim=-1).values - proj_r.sort(dim=-1).values).abs().flatten(1).mean(1)


def spectrum_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 distance (B,) between the Fourier amplitude spectra of a fake and of its caption's real image.

    Moving an object on a blank canvas only changes the phase of its spectrum, so the amplitudes say what the
    shapes and edges are without saying where: a shape-and-structure counterpart of `color_distribution_loss`
    for data whose objects sit anywhere. Images in [-1, 1] on white; the FFT runs on "ink" (0 on white).
    """
    def amplitude(x: torch.Tensor) -> torch.Tensor:
        ink = (1.0 - x.float()) / 2
        return torch.fft.rfft2(ink, norm="ortho").abs()

    return (amplitude(fake) - amplitude(real)).abs().flatten(1).mean(1)


def mode_seeking_ratio(a: torch.Tensor, b: torch.Tensor, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """Per-pair (B,) ratio of image distance to noise distance (MSGAN, Mao et al. 2019) for two samples of one caption.

    Rewarding it keeps the generator from ignoring z (mode collapse), which pixel losses alone would encourage.
    """
    image = (a.float() - b.float()).abs().flatten(1).mean(1)
    noise = (za.float() - zb.float()).abs().mean(1)
    return image / (noise + 1e-5)
