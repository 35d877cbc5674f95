"""Evaluate a model offline (`evaluate`, `format_report`): R-precision, alignment, Frechet distance and diversity, measured by a ContrastiveScorer.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.loading import images_to_tensor, load_pairs
from . import compositional as comp
from .copies import copy_check, format_copies
from .metrics import (ROWS, alignment, choose_distractors, diversity, frechet_distance, max_distractors,
                      format_paired, paired_difference, per_caption_rate, pixel_diversity, r_precision_hits)
from .scorer import pooled_text_vectors, read_group_keys


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
                     guidance: float = 1.0, exemplars: int | None = None, drawn_on: list | None = None) -> torch.Tensor:
    """`samples` images per caption (image k uses seed + k), caption-major: (T * samples, 3, R, R) uint8.
    exemplars: bank entries each image draws on (None: the pipeline's default; 0: the text alone). With a list as
    `drawn_on`, each image's first bank index is appended to it (None for an image that drew on none)."""
    chunk, out = 16, []
    for start in range(0, len(captions), chunk):
        result = pipe(captions[start : start + chunk], num_images=samples, seed=seed, batch_size=64,
                      truncation=truncation, guidance=guidance, exemplars=exemplars)
        out.append(pil_to_uint8(result.images))
        if drawn_on is not None:
            drawn_on.extend(picked[0][1] if picked else None for picked in result.exemplars)
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
             num_distractors: int = 99, seed: int = 0, log=print, truncation: float = 1.0, guidance: float = 1.0,
             compositional: list[dict] | None = None, names: list[str] | None = None,
             exemplars: int | None = None) -> dict:
    """Score the generated, real, retrieval and random rows on `eval_set`, and with a bank the exemplars each generated
    image drew on; returns the report dict (see `format_report`).
    truncation, guidance and exemplars are the sampling settings of the generated row. With a training split, also the copy
    check (`copies`); with `compositional` rows ({"prompt", "object", "colour"}, see `compositional`), their colour
    and object checks, the objects ranked among `names` (the corpus's emoji names)."""
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

    log(f"generating {samples} image(s) for each of {k} captions")
    fd_idx = fd_pairing(eval_set.image_caption, samples) if real else None
    rows = _generated_rows(pipe, captions, samples, seed, log, (truncation, guidance, exemplars), fd_idx,
                           scorer.resolution)
    if real:
        rows["real"] = RowImages(eval_set.images, eval_set.image_caption)
    random_kind = _reference_rows(rows, pipe, train, captions, samples, seed, scorer.resolution, fd_idx, notes)

    real_feats = image_features(scorer, eval_set.images) if real else None
    figures, per_caption, feats = {}, {}, {}
    for name, row in rows.items():
        feats[name] = real_feats if name == "real" else image_features(scorer, row.images)
        figures[name] = score_row(row, feats[name], text_feats, distractors, real_feats if name != "real" else None,
                                  samples)
        per_caption[name] = figures[name].pop("per_caption_r_precision")
    if real:
        figures["real"]["frechet_distance"] = 0.0  # the reference set itself
        notes.append("real: FD is 0 by construction (the reference set); diversity is n/a (one image per caption)")
        notes.append(f"FD: each row's {len(eval_set.images)} images (one per real test image, same captions) against "
                     "the real test images, in the scorer's unit-norm feature space")
    report = {
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
    _extra_checks(report, scorer, rows, feats, train, compositional, names, num_distractors, seed, log)
    return report


def _extra_checks(report: dict, scorer, rows: dict, feats: dict, train: TrainingImages | None,
                  compositional: list[dict] | None, names: list[str] | None, num: int, seed: int, log) -> None:
    """Add the copy check ("copies", with a training split), the compositional figures ("compositional", when its rows
    are given; see `compositional`) and the generated row's R@1 against retrieval's and its exemplars' (paired)."""
    per_caption = report["per_caption_r_precision"]
    for name in ("retrieval", "exemplars"):
        if name in per_caption:
            report[f"r_precision_vs_{name}"] = paired_difference(per_caption["generated"], per_caption[name], seed=seed)
    if train is not None:
        log(f"finding each image's nearest of {len(train.images)} training images (the copy check)")
        train_feats = image_features(scorer, _resize_uint8(train.images, scorer.resolution))
        # The random row is training images too (0 by construction, like retrieval), and the exemplar row bank pictures.
        checked = {n: r.images for n, r in rows.items() if n not in ("random", "exemplars")}
        report["copies"] = copy_check(checked, feats, train.images, train_feats)
    else:
        report["notes"].append("no training split: no copy check")
    if compositional:
        by_prompt = {r["prompt"].strip(): r for r in compositional}
        wanted = [by_prompt.get(c) for c in report["caption_list"]]
        if any(w is None for w in wanted):
            raise ValueError("compositional rows must name every prompt evaluated")
        samples, names = report["samples"], names or []
        scored = {n: (rows[n].images, feats[n]) for n in ("generated", "retrieval") if n in rows}
        if "retrieval" in rows:  # a reference: the retrieval row's pictures turned to the asked colours
            scored["recoloured"] = comp.recoloured(rows["retrieval"].images, wanted, samples, image_features, scorer)
        report["compositional"] = {n: comp.score(scorer, im, f, wanted, samples, names, num, seed)
                                   for n, (im, f) in scored.items()}
        report["compositional_candidates"] = comp.candidates(names, num)


def _generated_rows(pipe, captions: list[str], samples: int, seed: int, log, settings: tuple, fd_idx, res: int) -> dict:
    """The generated row (settings: truncation, guidance, exemplars) and, when every image drew on the bank, the
    exemplars row: the bank picture each drew on, scored as a row of its own, so that the model's redrawing is judged
    against its own exemplars (the retrieval row is plain nearest captions, not how the pipeline retrieves)."""
    drawn_on: list = []
    caption = torch.arange(len(captions)).repeat_interleave(samples)
    rows = {"generated": RowImages(generated_images(pipe, captions, samples, seed, log, *settings, drawn_on=drawn_on),
                                   caption, fd_idx)}
    if drawn_on and all(j is not None for j in drawn_on):
        rows["exemplars"] = RowImages(_resize_uint8(pipe.bank.images[torch.tensor(drawn_on)], res), caption, fd_idx)
    return rows


def _reference_rows(rows: dict, pipe, train: TrainingImages | None, captions: list[str], samples: int, seed: int,
                    res: int, fd_idx: torch.Tensor | None, notes: list[str]) -> str:
    """Add the retrieval and random rows to `rows`; returns what the random row is made of."""
    k = len(captions)
    if train is not None:
        query = pooled_text_vectors(pipe.text_encoder, captions, cache=True)
        idx = retrieved_images(train, query, samples)
        rows["retrieval"] = RowImages(_resize_uint8(train.images[idx], res), torch.arange(k).repeat_interleave(samples), fd_idx)
        pick = torch.randint(len(train.images), (k * samples,), generator=torch.Generator().manual_seed(seed))
        rows["random"] = RowImages(_resize_uint8(train.images[pick], res), torch.arange(k).repeat_interleave(samples), fd_idx)
        return "random training images"
    notes.append("no training split: the retrieval row is skipped and the random row is uniform noise")
    noise = torch.randint(0, 256, (k * samples, 3, res, res), generator=torch.Generator().manual_seed(seed),
                          dtype=torch.uint8)
    rows["random"] = RowImages(noise, torch.arange(k).repeat_interleave(samples), fd_idx)
    return "uniform noise"


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
    for name in (n for n in ROWS if n in report["rows"]):
        f = report["rows"][name]
        lines.append((name, str(f["images"]), _fmt(f["r_precision"], 3), _fmt(f["alignment"], 2),
                      _fmt(f["frechet_distance"], 4), _fmt(f["diversity"], 4), _fmt(f["pixel_diversity"], 4)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.append(f"chance R@1 = {report['chance_r_precision']:.3f}; alignment = 100 x mean cosine; "
                f"random row: {report['random_row']}")
    text.extend(format_paired(f"R@1 generated - {name}", report[f"r_precision_vs_{name}"])
                for name in ("retrieval", "exemplars") if f"r_precision_vs_{name}" in report)
    if "exemplars" in report["rows"]:
        text.append("exemplars row: the bank picture each image drew on; retrieval row: the nearest captions' pictures")
    if "copies" in report:
        text.extend(format_copies(report["copies"]))
    if "compositional" in report:
        text.extend(comp.format_compositional(report["compositional"], report["compositional_candidates"]))
    text.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(text)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def json_ready(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k != "generated_images"}
    out["rows"] = {name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in f.items()}
                   for name, f in report["rows"].items()}
    return out
