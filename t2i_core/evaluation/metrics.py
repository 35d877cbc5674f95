"""Evaluate a model offline: R-precision, alignment, Frechet distance and diversity, measured by a ContrastiveScorer.

    python -m t2i_core eval --model PATH --data CORPUS [--prompts FILE] [--scorer DIR] [--samples 4] [--json OUT.json]

One run prints the same figures for the model (`generated`) and for reference rows: `real` test images (the upper
bound), `retrieval` (for each caption, the training images whose captions are nearest in the text encoder's space)
and `random` (random training images, or uniform noise when there is no training split). The scorer must be a network
that no training loss used, or the figures would reward fooling it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .scorer import pooled_text_vectors

ROWS = ("generated", "real", "retrieval", "random")
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


# Data: the evaluation split, the training split for the reference rows, prompts files.


@dataclass
class EvalSet:
    """Captions to evaluate and, for test splits, their real images.

    captions: the unique captions (T); groups: one key per caption (its emoji, else the caption);
    images: (M, 3, R, R) uint8 real images or None; image_caption: (M,) caption index of each real image.
    """

    captions: list[str]
    groups: list[str]
    images: torch.Tensor | None = None
    image_caption: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)


def split_folders(data: str | os.PathLike) -> tuple[Path, Path | None]:
    """(test folder, train folder or None) of --data: a corpus root with test/ (and train/), or one split's folder."""
    root = Path(data)
    if not root.exists():
        raise ValueError(f"--data {str(root)!r} does not exist; pass the corpus root that holds train/ and test/.")
    if (root / "test").is_dir():
        train = root / "train" if (root / "train").is_dir() else None
        return root / "test", train
    if (root / "metadata.jsonl").is_file() or (root / "metadata.csv").is_file():
        return root, None
    raise ValueError(f"--data {str(root)!r} has neither test/ nor a metadata file; pass the corpus root that holds "
                     "train/ and test/ (as `python -m t2i_core data emoji --out DIR` writes).")


def load_eval_set(folder: Path, resolution: int, limit: int | None = None, seed: int = 0) -> EvalSet:
    """Load a split's pairs; with `limit`, keep a seeded random subset of `limit` captions (and their images)."""
    from ..data.loading import images_to_tensor, load_pairs
    from .scorer import read_group_keys

    pairs, _ = load_pairs(folder, resolution)
    keys = read_group_keys(folder)
    captions = list(dict.fromkeys(p.text for p in pairs))
    group_of = {}
    for p in pairs:
        group_of.setdefault(p.text, keys.get(p.source, p.text))
    if limit is not None and limit < len(captions):
        keep = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        captions = [captions[i] for i in keep]
    index = {c: i for i, c in enumerate(captions)}
    pairs = [p for p in pairs if p.text in index]
    images = ((images_to_tensor(pairs) + 1) * 127.5).round().to(torch.uint8)
    return EvalSet(captions, [group_of[c] for c in captions], images, torch.tensor([index[p.text] for p in pairs]))


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Free-form prompts: a .jsonl of {"id": ..., "prompt": ...} lines, or a .txt with one prompt a line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {str(path)!r} does not exist; pass a .jsonl ({{\"id\", \"prompt\"}} a line) or .txt file.")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}); each line must be "
                                 '{"id": ..., "prompt": ...}') from None
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f'{path}:{number}: each line needs a non-empty "prompt" string')
            prompts.append(prompt.strip())
        else:
            prompts.append(line.strip())
    if len(prompts) < 2:
        raise ValueError(f"--prompts {str(path)!r} has {len(prompts)} prompt(s); R-precision needs at least 2.")
    return prompts


@dataclass
class TrainingImages:
    """The training split as retrieval's database: images (N, 3, R, R) uint8, caption index (N,), pooled text (C, E)
    of the captions (C,)."""

    images: torch.Tensor
    image_caption: torch.Tensor
    pooled: torch.Tensor
    captions: list[str]


def load_training_images(folder: Path, resolution: int, text_encoder) -> TrainingImages:
    from ..data.loading import images_to_tensor, load_pairs
    pairs, _ = load_pairs(folder, resolution)
    captions = list(dict.fromkeys(p.text for p in pairs))
    index = {c: i for i, c in enumerate(captions)}
    images = ((images_to_tensor(pairs) + 1) * 127.5).round().to(torch.uint8)
    pooled = F.normalize(pooled_text_vectors(text_encoder, captions, cache=True), dim=-1)
    return TrainingImages(images, torch.tensor([index[p.text] for p in pairs]), pooled, captions)


# Rows: the images each row is made of.


@dataclass
class RowImages:
    """One row's images (M, 3, R, R) uint8 and the caption index of each (M,); `fd_idx` picks the images that face
    the real ones in the Frechet distance (one per real image, same captions), or None."""

    images: torch.Tensor
    caption: torch.Tensor
    fd_idx: torch.Tensor | None = None


def generated_images(pipe, captions: list[str], samples: int, seed: int, log=print, truncation: float = 1.0,
                     guidance: float = 1.0) -> torch.Tensor:
    """`samples` images per caption (image k uses seed + k), caption-major: (T * samples, 3, R, R) uint8."""
    chunk, out = 16, []
    for start in range(0, len(captions), chunk):
        result = pipe(captions[start : start + chunk], num_images=samples, seed=seed, batch_size=64,
                      truncation=truncation, guidance=guidance)
        out.append(pil_to_uint8(result.images))
        if start and start % (chunk * 16) == 0:
            log(f"  generated {start * samples} / {len(captions) * samples}")
    return torch.cat(out)


def pil_to_uint8(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).contiguous()


def retrieved_images(train: TrainingImages, query_pooled: torch.Tensor, samples: int) -> torch.Tensor:
    """For each query (T, E), the `samples` training images whose captions are nearest (cosine): (T * samples,) idx."""
    sim = F.normalize(query_pooled, dim=-1) @ train.pooled.T  # (T, C)
    per_image = sim[:, train.image_caption]  # (T, N): an image scores as its caption does
    # Ties (several images of one caption) break by image order, so the result is deterministic.
    order = torch.sort(per_image, dim=1, descending=True, stable=True).indices
    return order[:, :samples].reshape(-1)


def fd_pairing(image_caption: torch.Tensor, samples: int) -> torch.Tensor:
    """For each real image, the index of a caption-major sample of its caption: the j-th real image of a caption
    uses sample j mod `samples`, so both sides of the Frechet distance have the same count and captions."""
    seen: dict[int, int] = {}
    idx = []
    for c in image_caption.tolist():
        j = seen.get(c, 0)
        seen[c] = j + 1
        idx.append(c * samples + j % samples)
    return torch.tensor(idx)


# Scoring rows.


@torch.no_grad()
def image_features(scorer, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 (M, 3, R, R) -> unit-norm scorer features (M, D), on the CPU."""
    device = next(scorer.image_encoder.parameters()).device
    feats = [scorer.encode_images(images[i : i + batch_size].to(device).float().div(127.5).sub(1.0)).cpu()
             for i in range(0, len(images), batch_size)]
    return torch.cat(feats)


def score_row(row: RowImages, feats: torch.Tensor, text_feats: torch.Tensor, distractors: torch.Tensor,
              real_feats: torch.Tensor | None, samples: int) -> dict:
    """The figures of one row. NaN where a figure is not defined (FD without real images, diversity of 1 sample).
    Also "per_caption_r_precision": the R@1 of each caption's images (a list, in caption order)."""
    hits = r_precision_hits(feats, text_feats, row.caption, distractors[row.caption])
    figures = {
        "images": len(row.images),
        "r_precision": float(hits.float().mean()),
        "alignment": alignment(feats, text_feats[row.caption]),
        "frechet_distance": math.nan,
        "diversity": math.nan,
        "pixel_diversity": math.nan,
    }
    if real_feats is not None and row.fd_idx is not None:
        figures["frechet_distance"] = frechet_distance(feats[row.fd_idx], real_feats)
    if samples > 1 and len(row.images) == len(text_feats) * samples:
        figures["diversity"] = diversity(feats.view(len(text_feats), samples, -1))
        images = row.images.view(len(text_feats), samples, *row.images.shape[1:]).float().div(127.5).sub(1.0)
        figures["pixel_diversity"] = pixel_diversity(images)
    figures["per_caption_r_precision"] = per_caption_rate(hits, row.caption, len(text_feats))
    return figures


def evaluate(pipe, scorer, eval_set: EvalSet, train: TrainingImages | None, samples: int = 4,
             num_distractors: int = 99, seed: int = 0, log=print, truncation: float = 1.0, guidance: float = 1.0) -> dict:
    """Score the generated, real, retrieval and random rows on `eval_set`; returns the report dict (see `format_report`).
    truncation and guidance are the sampling settings of the generated row."""
    notes = list(eval_set.notes)
    captions = eval_set.captions
    available = max_distractors(eval_set.groups)
    if available < 1:
        raise ValueError("R-precision needs captions of at least two different emoji (or prompts); got "
                         f"{len(captions)} caption(s) of one.")
    num = min(num_distractors, available)
    if num < num_distractors:
        notes.append(f"only {num} distractors per caption: there are not more captions of other emoji/prompts")
    distractors = choose_distractors(eval_set.groups, num, seed)
    text_feats = scorer.encode_texts(captions).cpu()
    real = eval_set.images is not None
    k = len(captions)

    rows: dict[str, RowImages] = {}
    log(f"generating {samples} image(s) for each of {k} captions")
    fd_idx = fd_pairing(eval_set.image_caption, samples) if real else None
    rows["generated"] = RowImages(generated_images(pipe, captions, samples, seed, log, truncation, guidance),
                                  torch.arange(k).repeat_interleave(samples), fd_idx)
    if real:
        rows["real"] = RowImages(eval_set.images, eval_set.image_caption)
    res = scorer.resolution
    if train is not None:
        query = pooled_text_vectors(pipe.text_encoder, captions, cache=True)
        idx = retrieved_images(train, query, samples)
        rows["retrieval"] = RowImages(_resize_uint8(train.images[idx], res), torch.arange(k).repeat_interleave(samples), fd_idx)
        pick = torch.randint(len(train.images), (k * samples,), generator=torch.Generator().manual_seed(seed))
        rows["random"] = RowImages(_resize_uint8(train.images[pick], res), torch.arange(k).repeat_interleave(samples), fd_idx)
        random_kind = "random training images"
    else:
        notes.append("no training split: the retrieval row is skipped and the random row is uniform noise")
        noise = torch.randint(0, 256, (k * samples, 3, res, res), generator=torch.Generator().manual_seed(seed),
                              dtype=torch.uint8)
        rows["random"] = RowImages(noise, torch.arange(k).repeat_interleave(samples), fd_idx)
        random_kind = "uniform noise"

    real_feats = image_features(scorer, eval_set.images) if real else None
    figures, per_caption = {}, {}
    for name, row in rows.items():
        feats = real_feats if name == "real" else image_features(scorer, row.images)
        figures[name] = score_row(row, feats, text_feats, distractors, real_feats if name != "real" else None, samples)
        per_caption[name] = figures[name].pop("per_caption_r_precision")
    if real:
        figures["real"]["frechet_distance"] = 0.0  # the reference set itself
        notes.append("real: FD is 0 by construction (the reference set); diversity is n/a (one image per caption)")
    if real:
        notes.append(f"FD: each row's {len(eval_set.images)} images (one per real test image, same captions) against "
                     "the real test images, in the scorer's unit-norm feature space")
    return {
        "mode": "test" if real else "prompts",
        "captions": k,
        "samples": samples,
        "seed": seed,
        "candidates": num + 1,
        "chance_r_precision": 1 / (num + 1),
        "random_row": random_kind,
        "rows": figures,
        "notes": notes,
        "caption_list": captions,
        # Each row's R@1 per caption, in the order of caption_list: which prompts fail.
        "per_caption_r_precision": per_caption,
        "generated_images": rows["generated"].images,
    }


def _resize_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-1] == resolution:
        return images
    x = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def scorer_test_r_precision(scorer, folder: str | os.PathLike, num_distractors: int = 99, seed: int = 0) -> dict:
    """R@1 and alignment of a split's real images against their captions: how good the scorer is (its upper bound).

    Returns {"r_precision", "alignment", "candidates", "images"}.
    """
    eval_set = load_eval_set(Path(folder), scorer.resolution)
    num = min(num_distractors, max_distractors(eval_set.groups))
    distractors = choose_distractors(eval_set.groups, num, seed)
    text_feats = scorer.encode_texts(eval_set.captions).cpu()
    feats = image_features(scorer, eval_set.images)
    row = RowImages(eval_set.images, eval_set.image_caption)
    figures = score_row(row, feats, text_feats, distractors, None, 1)
    return {"r_precision": figures["r_precision"], "alignment": figures["alignment"], "candidates": num + 1,
            "images": len(feats)}


# Report.


def format_report(report: dict) -> str:
    """The report as a plain table: one line per row, one column per figure ("n/a" where not defined)."""
    header = ("row", "images", f"R@1 ({report['candidates']})", "alignment", "FD", "diversity", "pixel div")
    lines = [header]
    for name in ROWS:
        if name not in report["rows"]:
            continue
        f = report["rows"][name]
        lines.append((name, str(f["images"]), _fmt(f["r_precision"], 3), _fmt(f["alignment"], 2),
                      _fmt(f["frechet_distance"], 4), _fmt(f["diversity"], 4), _fmt(f["pixel_diversity"], 4)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.append(f"chance R@1 = {report['chance_r_precision']:.3f}; alignment = 100 x mean cosine; "
                f"random row: {report['random_row']}")
    text.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(text)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _json_ready(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k != "generated_images"}
    out["rows"] = {name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in f.items()}
                   for name, f in report["rows"].items()}
    return out


# Command line: `python -m t2i_core eval`.


def add_eval_arguments(parser) -> None:
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model folder (default: $T2I_MODEL, else the shipped assets/model/)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="corpus root holding train/ and test/ (a folder with only metadata.jsonl is used as the "
                             "test split, without the retrieval row); with --prompts, only its train/ is used")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="free-form prompts (.jsonl of {\"id\", \"prompt\"} lines, or .txt one a line): no real "
                             "images, so no FD; distractors are the other prompts")
    parser.add_argument("--scorer", default=None, metavar="DIR",
                        help="scorer folder (default: the shipped assets/scorer/)")
    parser.add_argument("--num-distractors", type=int, default=99, metavar="N",
                        help="captions of other emoji each true caption is ranked against (default 99)")
    parser.add_argument("--samples", type=int, default=4, metavar="K", help="images per caption, 1..64 (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples, distractors and random row (default 0)")
    parser.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the generated samples (default 1)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance of the generated samples (default 1)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate at most N captions/prompts (a seeded random subset; default all)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write the figures here")
    parser.add_argument("--grid", default=None, metavar="OUT.png",
                        help="save the first generated sample of up to 64 captions/prompts as a grid")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default; 1 is often fastest on a busy machine)")


def run_eval_command(args) -> int:
    """Run `eval` as parsed by `add_eval_arguments`; prints the table. Bad input raises ValueError."""
    from ..pipeline import T2IPipeline
    from .scorer import DEFAULT_SCORER_DIR, ContrastiveScorer, torch_threads, training_folder

    if args.data is None and args.prompts is None:
        raise ValueError("eval needs --data CORPUS (the root holding train/ and test/) or --prompts FILE.")
    if not 1 <= args.samples <= 64:
        raise ValueError(f"--samples must be from 1 to 64, got {args.samples}")
    if args.num_distractors < 1:
        raise ValueError(f"--num-distractors must be at least 1, got {args.num_distractors}")
    if args.limit is not None and args.limit < 2:
        raise ValueError(f"--limit must be at least 2 (R-precision ranks captions against each other), got {args.limit}")
    for flag, suffix in (("json", ".json"), ("grid", ".png")):
        value = getattr(args, flag)
        if value is not None and not str(value).lower().endswith(suffix):
            raise ValueError(f"--{flag} {value!r} must end in {suffix}")
    scorer_dir = Path(args.scorer) if args.scorer else DEFAULT_SCORER_DIR
    if not (scorer_dir / "config.json").is_file():
        raise ValueError(f"no scorer at {str(scorer_dir)!r}; pass --scorer DIR, or train one with "
                         "`python -m t2i_core.evaluation.scorer --data CORPUS/train --out assets/scorer` (about 10 CPU minutes).")

    if args.prompts is not None:
        # Free-form prompts have no real images; the corpus only serves retrieval and the random row.
        test_dir = None
        train_dir = None if args.data is None else training_folder(args.data)
        if train_dir is not None and not train_dir.exists():
            raise ValueError(f"--data {args.data!r} does not exist; pass the corpus root (its train/ is used) or omit it.")
        prompts = read_prompts(args.prompts)
    else:
        test_dir, train_dir = split_folders(args.data)
        prompts = None

    with torch_threads(args.threads):
        return _run_eval(args, scorer_dir, test_dir, train_dir, prompts)


def _run_eval(args, scorer_dir: Path, test_dir: Path | None, train_dir: Path | None, prompts: list[str] | None) -> int:
    from ..pipeline import T2IPipeline
    from .scorer import ContrastiveScorer

    pipe = T2IPipeline.from_pretrained(args.model, device=args.device)
    scorer = ContrastiveScorer.from_pretrained(scorer_dir)
    scorer.to(args.device)
    print(f"model: {args.model or 'default'}; scorer: {scorer_dir} (trained seed {scorer.info.get('seed')})", flush=True)

    if prompts is not None:
        if args.limit is not None and args.limit < len(prompts):
            keep = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(args.seed))[: args.limit]
            prompts = [prompts[i] for i in keep.sort().values]
        unique = list(dict.fromkeys(prompts))
        eval_set = EvalSet(unique, unique)
        if len(unique) < len(prompts):
            eval_set.notes.append(f"{len(prompts) - len(unique)} repeated prompt(s) counted once")
    else:
        eval_set = load_eval_set(test_dir, scorer.resolution, args.limit, args.seed)
        print(f"test split {test_dir}: {len(eval_set.images)} images, {len(eval_set.captions)} captions", flush=True)
    train = None
    if train_dir is not None:
        print(f"encoding the training split {train_dir} for the retrieval row", flush=True)
        train = load_training_images(train_dir, scorer.resolution, pipe.text_encoder)

    report = evaluate(pipe, scorer, eval_set, train, args.samples, args.num_distractors, args.seed,
                      truncation=args.truncation, guidance=args.guidance)
    report.update({"model": str(args.model or "default"), "scorer": str(scorer_dir),
                   "truncation": args.truncation, "guidance": args.guidance,
                   "data": None if args.data is None else str(args.data),
                   "prompts": None if args.prompts is None else str(args.prompts)})
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_json_ready(report), indent=2) + "\n")
        print(f"figures written to {args.json}")
    if args.grid:
        from ..images import image_grid, to_pil

        first = report["generated_images"][:: args.samples][:64]
        grid = image_grid(to_pil(first.float().div(127.5).sub(1.0)), cols=8)
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.grid)
        print(f"sample grid ({len(first)} captions, row-major, in the order of caption_list in --json) written to {args.grid}")
    return 0
