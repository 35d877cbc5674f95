"""The figures of an evaluation, as pure functions on scorer features: R-precision (against distractor captions),
alignment, Frechet distance, and diversity in feature and pixel space. `report.evaluate` puts them together."""


from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ROWS = ("generated", "exemplars", "real", "retrieval", "random")
COLUMNS = ("images", "r_precision", "alignment", "frechet_distance", "diversity", "pixel_diversity")


# Metrics: pure functions on features.


def choose_distractors(groups: Sequence[Hashable], num: int, seed: int = 0) -> torch.Tensor:
    """For each caption i, `num` distinct indices of captions from other groups: (T, num) long.

    groups: one key per caption (the emoji it shows, else the caption itself); captions of the same group are never
    each other's distractors. The choice depends only on (groups, num, seed). Raises ValueError when a caption has
    fewer than `num` captions of other groups (see `max_distractors`).
    """
    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    gid = torch.tensor([ids[g] for g in groups])
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(len(gid), num, dtype=torch.long)
    for i in range(len(gid)):
        candidates = (gid != gid[i]).nonzero().squeeze(1)
        if len(candidates) < num:
            raise ValueError(f"caption {i} has only {len(candidates)} captions of other groups; {num} distractors asked")
        out[i] = candidates[torch.randperm(len(candidates), generator=gen)[:num]]
    return out


def max_distractors(groups: Sequence[Hashable]) -> int:
    """The most distractors every caption can have: captions minus the largest group."""
    counts: dict = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    return len(groups) - max(counts.values()) if counts else 0


def r_precision(image_feats: torch.Tensor, text_feats: torch.Tensor, true_idx: torch.Tensor,
                distractor_idx: torch.Tensor) -> float:
    """R-precision@1: the share of images whose true caption scores above all of its distractors.

    image_feats (Q, D) and text_feats (T, D), unit-norm; true_idx (Q,) long, the caption of each image;
    distractor_idx (Q, N) long, N captions of other emoji for each image. A tie counts as a miss. Chance: 1 / (N + 1).
    """
    return float(r_precision_hits(image_feats, text_feats, true_idx, distractor_idx).float().mean())


def r_precision_hits(image_feats: torch.Tensor, text_feats: torch.Tensor, true_idx: torch.Tensor,
                     distractor_idx: torch.Tensor) -> torch.Tensor:
    """Per image (Q,) bool: its true caption scores above all of its distractors (arguments as `r_precision`)."""
    true = (image_feats * text_feats[true_idx]).sum(-1)  # (Q,)
    others = torch.einsum("qd,qnd->qn", image_feats, text_feats[distractor_idx])  # (Q, N)
    return true > others.max(dim=1).values


def per_caption_rate(hits: torch.Tensor, caption: torch.Tensor, num_captions: int) -> list[float | None]:
    """The share of hits (Q,) among each caption's images (caption index (Q,)); None for a caption with no image."""
    count = torch.zeros(num_captions).index_add_(0, caption, torch.ones(len(caption)))
    total = torch.zeros(num_captions).index_add_(0, caption, hits.float())
    return [None if n == 0 else round(float(t / n), 4) for t, n in zip(total, count)]


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], rounds: int = 2000,
                      seed: int = 0) -> dict:
    """Mean of a - b over captions scored in both (per-caption rates, e.g. R@1 of generated vs retrieval) with a 95%
    interval from a paired bootstrap over captions (a caption's samples share its exemplars and move together, so
    captions, not images, are the units). Also how many captions came out better, worse and equal.
    A difference whose interval holds 0 is within the evaluation's noise."""
    pairs = np.array([(x, y) for x, y in zip(a, b) if x is not None and y is not None], dtype=np.float64)
    if len(pairs) == 0:
        return {"difference": math.nan, "ci95": [math.nan, math.nan], "better": 0, "worse": 0, "equal": 0,
                "captions": 0}
    diff = pairs[:, 0] - pairs[:, 1]
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(rounds, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(diff.mean()), "ci95": [float(low), float(high)], "better": int((diff > 0).sum()),
            "worse": int((diff < 0).sum()), "equal": int((diff == 0).sum()), "captions": len(diff)}


def format_paired(what: str, d: dict) -> str:
    """One line for a `paired_difference` result."""
    low, high = d["ci95"]
    verdict = "within noise" if low <= 0 <= high else ("above" if low > 0 else "below")
    return (f"{what}: {d['difference']:+.3f}, 95% interval {low:+.3f} to {high:+.3f} ({verdict}; paired bootstrap "
            f"over {d['captions']} captions: {d['better']} better, {d['worse']} worse, {d['equal']} equal)")


def alignment(image_feats: torch.Tensor, text_feats: torch.Tensor) -> float:
    """100 x the mean cosine similarity of matched rows (a CLIP-score analogue, not clipped at 0).

    image_feats (N, D), text_feats (N, D): row i of one is paired with row i of the other.
    """
    cos = F.cosine_similarity(image_feats.double(), text_feats.double(), dim=-1)
    return float(100 * cos.mean())


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D): |mu_a - mu_b|^2 + Tr(Ca + Cb - 2 (Ca Cb)^1/2).

    The trace of (Ca Cb)^1/2 is the sum of square roots of the eigenvalues of Ca^1/2 Cb Ca^1/2, which is symmetric
    positive semi-definite, so this is exact and stable where scipy's sqrtm returns complex noise. The estimate is
    biased upward for small N, so compare figures only at the same N (the evaluation uses equal counts on both sides).
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two (N >= 2, D) arrays of one width, got {a.shape} and {b.shape}")
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    sqrt_ca = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(sqrt_ca @ cb @ sqrt_ca)
    value = mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    return float(max(value, 0.0))


def diversity(feats_per_prompt: Sequence[torch.Tensor]) -> float:
    """Mean pairwise (1 - cosine) among the samples of one prompt, averaged over prompts.

    feats_per_prompt: a (P, K, D) tensor or a list of (K_i, D) tensors. Prompts with fewer than 2 samples are left
    out; NaN when none has 2. 0 when every prompt's samples are identical.
    """
    values = []
    for feats in feats_per_prompt:
        k = len(feats)
        if k < 2:
            continue
        unit = F.normalize(feats.double(), dim=-1)
        sim = unit @ unit.T
        values.append(float((1 - sim).sum() / (k * (k - 1))))  # the diagonal adds 1 - 1 = 0
    return float(np.mean(values)) if values else math.nan


def pixel_diversity(images_per_prompt: Sequence[torch.Tensor]) -> float:
    """Mean pairwise RMS pixel distance among the samples of one prompt (images in [-1, 1]; 0..1 scale), averaged.

    images_per_prompt: a list of (K_i, 3, H, W) tensors; prompts with fewer than 2 samples are left out (NaN if all).
    """
    values = []
    for images in images_per_prompt:
        k = len(images)
        if k < 2:
            continue
        flat = images.double().flatten(1) / 2  # [-1, 1] -> distances on a 0..1 scale
        dist = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
        values.append(float(dist.sum() / (k * (k - 1))))
    return float(np.mean(values)) if values else math.nan
