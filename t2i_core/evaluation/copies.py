"""The copy check: how near each image is to its nearest training image, so that a model that only copies shows it.

Two distances, both to the single nearest of all training images:
  pixel   root-mean-square difference of the RGB values (0..1) at 64 x 64: 0 is the same picture, 0.05 a
          difference of 5% of the full range per value on average (`COPY_THRESHOLD`: below it, an image is counted as
          a copy: visually the same picture, e.g. a re-encoded or slightly noisy copy);
  scorer  1 - cosine similarity of the scorer's unit-norm features (0: the scorer sees the same image).
Each row is summarised by quantiles (p5, p50, p95) and the share of images below `COPY_THRESHOLD`. Reference rows:
`real` test images (other emoji than the training split's: how near an honest new image gets), `retrieval` and
`random` (training images themselves: distance 0 by construction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PIXEL_RESOLUTION = 64
COPY_THRESHOLD = 0.05
QUANTILES = (0.05, 0.5, 0.95)


def _flat(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (M, 3, R, R) -> float (M, 3 * res * res) in [0, 1], resized to `resolution` when needed."""
    x = images.float()
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.div(255.0).reshape(len(x), -1)


@torch.no_grad()
def nearest_pixel_distance(images: torch.Tensor, train_images: torch.Tensor, resolution: int = PIXEL_RESOLUTION,
                           chunk: int = 1024) -> torch.Tensor:
    """For each image (M, 3, R, R) uint8, the RMS pixel distance (0..1) to its nearest training image (N, 3, R', R')
    uint8, both compared at `resolution`. -> (M,) float. Chunked, so that memory stays near chunk x N."""
    best = torch.full((len(images),), float("inf"))
    for q in range(0, len(images), chunk):
        a = _flat(images[q : q + chunk], resolution)
        a_sq = (a * a).sum(1, keepdim=True)
        for t in range(0, len(train_images), chunk * 2):
            b = _flat(train_images[t : t + chunk * 2], resolution)
            d2 = a_sq + (b * b).sum(1)[None] - 2 * a @ b.T
            best[q : q + chunk] = torch.minimum(best[q : q + chunk], d2.min(1).values)
    return (best.clamp(min=0) / (3 * resolution * resolution)).sqrt()


@torch.no_grad()
def nearest_feature_distance(feats: torch.Tensor, train_feats: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Unit-norm features (M, D) and training features (N, D) -> (M,) 1 - cosine to the nearest training image."""
    out = torch.empty(len(feats))
    for q in range(0, len(feats), chunk):
        out[q : q + chunk] = 1 - (feats[q : q + chunk] @ train_feats.T).max(1).values
    return out.clamp(min=0)


def summarise(distances: torch.Tensor, threshold: float | None = None) -> dict:
    """(M,) distances -> {"p5", "p50", "p95"} and, with a threshold, "share_below" (the share of images nearer)."""
    q = torch.quantile(distances.double(), torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    out = {f"p{round(p * 100)}": float(v) for p, v in zip(QUANTILES, q)}
    if threshold is not None:
        out["share_below"] = float((distances < threshold).double().mean())
    return out


def copy_check(row_images: dict[str, torch.Tensor], row_feats: dict[str, torch.Tensor], train_images: torch.Tensor,
               train_feats: torch.Tensor) -> dict:
    """Each row's copy figures: {row: {"pixel": {p5, p50, p95, share_below}, "scorer": {p5, p50, p95}}}.
    row_images: uint8 (M, 3, R, R) per row; row_feats: its unit-norm scorer features (M, D)."""
    return {name: {"pixel": summarise(nearest_pixel_distance(images, train_images), COPY_THRESHOLD),
                   "scorer": summarise(nearest_feature_distance(row_feats[name], train_feats))}
            for name, images in row_images.items()}


def format_copies(copies: dict) -> list[str]:
    """The copy check as lines of text under the main table."""
    lines = [f"copy check: each image's distance to its nearest training image. pixel: RMS of RGB (0..1) at "
             f"{PIXEL_RESOLUTION} px; copies: the share with pixel < {COPY_THRESHOLD}",
             "  (the same picture to the eye); scorer: 1 - cosine of its features. retrieval (and random, not shown) "
             "are training images: 0 by construction",
             f"  {'row':<10} {'pixel p5':>9} {'p50':>7} {'p95':>7} {'copies':>7}   {'scorer p5':>9} {'p50':>7} {'p95':>7}"]
    for name, f in copies.items():
        p, s = f["pixel"], f["scorer"]
        lines.append(f"  {name:<10} {p['p5']:>9.4f} {p['p50']:>7.4f} {p['p95']:>7.4f} {p['share_below']:>7.3f}   "
                     f"{s['p5']:>9.4f} {s['p50']:>7.4f} {s['p95']:>7.4f}")
    return lines
