"""The losses: `GANLoss` owns every term and its weighting; the functions below are the terms' maths.

Text loss: the discriminator must reject real images paired with a mismatched caption, and caption dropout
(drawn with the batch) trains the unconditional path. Image loss: hinge adversarial loss, a lazy R1 gradient
penalty on real pairs, reconstruction of the prompt's mean image against its real image, position-free colour
and shape terms, and a mode-seeking term. Every random draw comes with the batch (`pairs.Batch`), so a step is
reproducible (resume, multi-process).

To add a term: write its method on GANLoss (it returns the loss to add and the value to log), give it a weight
in TrainConfig, and list it in `g_terms` (or add it to `_d_phase`). A new generator input travels in
`Batch.g_inputs` and reaches G through `GANLoss.generate`, the one place the loss calls the generator.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from .augment import diff_augment
from .config import TrainConfig
from .pairs import Batch

# A generator term: (fake images (b, 3, R, R), their noise (b, z_dim), the batch) -> (loss to add, value to log), or
# None when it does not apply to this batch.
Term = Callable[[torch.Tensor, torch.Tensor, Batch], "tuple[torch.Tensor, float] | None"]


class GANLoss:
    """`accumulate_gradients(phase, batch, step)`: phase "D" or "G"; computes that phase's loss from the batch,
    calls backward, and returns the values to log (floats). The loop owns the order and the optimisers."""

    def __init__(self, g: torch.nn.Module, d: torch.nn.Module, cfg: TrainConfig,
                 autocast: Callable[[], AbstractContextManager]):
        self.g, self.d, self.cfg, self.autocast = g, d, cfg, autocast

    def accumulate_gradients(self, phase: str, batch: Batch, step: int) -> dict[str, float]:
        if phase == "D":
            return self._d_phase(batch, step)
        if phase == "G":
            return self._g_phase(batch)
        raise ValueError(f"phase must be 'D' or 'G', got {phase!r}")

    def generate(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """G on the batch's captions (and any extra inputs it carries): (b, z_dim) -> (b, 3, R, R)."""
        t = batch.text
        return self.g(z, t.states, t.mask, t.pooled, **batch.g_inputs)

    def mean_image(self, batch: Batch) -> torch.Tensor:
        """Each caption's mean image (truncation 0): (b, 3, R, R). Exemplars must come as exemplar_features."""
        t = batch.text
        return self.g.synthesis(self.g.mean_style(t.pooled), t.states, t.mask, **batch.g_inputs)

    # D: real-and-matching vs fake vs real-with-a-wrong-caption, plus the lazy R1 penalty.

    def _d_phase(self, b: Batch, step: int) -> dict[str, float]:
        cfg, t, logs = self.cfg, b.text, {}
        with self.autocast():
            with torch.no_grad():
                fake = self.generate(b.z_d, b)
            h_real = self.d.features(diff_augment(b.real, b.aug[0]))
            d_real = self.d.head(h_real, t.pooled).float()
            d_fake = self.d(diff_augment(fake.float(), b.aug[1]), t.pooled).float()
            d_mis = self.d.head(h_real, b.text_mis.pooled).float() if cfg.mismatch else None
            loss = d_hinge_loss(d_real, d_fake, d_mis, b.mis_ok)
        logs["d"], logs["d_real"], logs["d_fake"] = loss.item(), d_real.mean().item(), d_fake.mean().item()
        if cfg.r1_gamma > 0 and cfg.r1_every > 0 and step % cfg.r1_every == 0:
            # R1 in fp32: the double backward is where low precision overflows first.
            real_r1 = diff_augment(b.real, b.aug[0]).detach().requires_grad_(True)
            r1 = r1_penalty(self.d(real_r1, t.pooled), real_r1)
            loss = loss + r1 * (cfg.r1_gamma / 2) * cfg.r1_every
            logs["r1"] = r1.item()
        loss.backward()
        return logs

    # G: fool D on the caption, plus the weighted terms of `g_terms`.

    def g_terms(self) -> list[tuple[str, float, Term]]:
        """(name, weight, term) of every generator term after the adversarial one, in the order they add up."""
        cfg = self.cfg
        return [("diversity", cfg.diversity_weight, self.diversity_term),
                ("color", cfg.color_weight, self.color_term),
                ("shape", cfg.shape_weight, self.shape_term),
                ("rec", cfg.rec_weight, self.reconstruction_term)]

    def _g_phase(self, b: Batch) -> dict[str, float]:
        z = b.z_g
        if self.cfg.diversity_weight > 0:
            # Samples 2j and 2j+1 share caption 2j (and its image) with different z, for the mode-seeking term.
            b = b.select(torch.arange(len(b.real), device=b.real.device) // 2 * 2)
        logs = {}
        with self.autocast():
            if "exemplars" in b.g_inputs:
                # Encode the exemplars once: the samples and the mean images below draw on the same features.
                feats = self.g.encode_exemplars(b.g_inputs["exemplars"], b.g_inputs["exemplar_mask"], b.text.pooled,
                                                b.g_inputs.get("exemplar_text"))
                b = replace(b, g_inputs={"exemplar_features": feats})
            fake = self.generate(z, b)
            loss = g_hinge_loss(self.d(diff_augment(fake.float(), b.aug[2]), b.text.pooled).float())
            logs["g_adv"] = loss.item()
            for name, weight, term in self.g_terms():
                out = term(fake, z, b) if weight > 0 else None
                if out is not None:
                    loss = loss + weight * out[0]
                    logs[name] = out[1]
        loss.backward()
        return logs

    def diversity_term(self, fake: torch.Tensor, z: torch.Tensor, b: Batch) -> tuple[torch.Tensor, float] | None:
        """Mode seeking: samples 2j and 2j+1 share a caption; their image/noise distance ratio is rewarded up
        to the cap."""
        div = mode_seeking_ratio(fake[0::2], fake[1::2], z[0::2], z[1::2])
        return -div.clamp(max=self.cfg.diversity_cap).mean(), div.mean().item()

    def color_term(self, fake: torch.Tensor, z: torch.Tensor, b: Batch) -> tuple[torch.Tensor, float] | None:
        """Colour distribution of each paired sample against its real image, wherever the colours are."""
        color = (color_distribution_loss(fake, b.real, b.directions) * b.paired).mean()
        return color, color.item()

    def shape_term(self, fake: torch.Tensor, z: torch.Tensor, b: Batch) -> tuple[torch.Tensor, float] | None:
        """Fourier amplitude spectrum of each paired sample against its real image, wherever the shapes are."""
        shape = (spectrum_loss(fake, b.real) * b.paired).mean()
        return shape, shape.item()

    def reconstruction_term(self, fake: torch.Tensor, z: torch.Tensor, b: Batch) -> tuple[torch.Tensor, float] | None:
        """Each paired caption's mean image against its real image; None when no sample is paired."""
        if not b.paired.any():
            return None
        kept = b.select(b.paired.nonzero().squeeze(1))
        # Sum over kept samples / local batch: equal slices over processes average to the global loss.
        rec = reconstruction_loss(self.mean_image(kept), kept.real).sum() / len(b.paired)
        return rec, rec.item()


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
