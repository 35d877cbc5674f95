"""Compositional prompts: a known object in a colour that no emoji of it has ("a blue banana").

Nearest-caption retrieval fails these by construction (the corpus has no blue banana), so they separate a model
that composes a colour with an object from one that looks up its training images. Each image is checked twice:

  colour   deterministic: the dominant hue of its saturated pixels is the asked colour (`HUES`, `dominant_colour`);
  object   the evaluation scorer ranks the object's bare name ("banana") first among it and N names of other emoji
           from the corpus (default 99): the object is still that object.
  both     both at once.

Beside the generated and retrieval rows, the `recoloured` row is the retrieval row's pictures turned to the asked
colour by `recolor`, the way training makes its recoloured targets: what copying the nearest picture and recolouring
it would score. It is a reference for what the scorer recognises once an emoji is recoloured, not a goal.

`python -m t2i_core eval --prompts bench/prompts_compositional.jsonl` prints these beside its table whenever every line
of the prompts file has "colour" and "object" (`read_compositional`); bench/compositional.py is a thin wrapper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..images import COLOURS, recolor

# Hue bins in degrees, [start, end); red wraps around 0. Cyan (170..190) belongs to no asked colour. Emoji yellows
# are warm (a banana is ~40 degrees), hence the low yellow bound.
HUES = {"red": (345, 15), "orange": (15, 38), "yellow": (38, 65), "green": (65, 170), "blue": (190, 260),
        "purple": (260, 300), "pink": (300, 345)}
MIN_SATURATION, MIN_VALUE = 0.35, 0.25
MIN_COLOURED_SHARE = 0.03  # an image with fewer saturated pixels has no dominant colour


def hue_saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (..., 3) -> hue in degrees [0, 360), saturation and value in [0, 1], each (...)."""
    x = rgb.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    delta = mx - mn
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    hue = np.where(delta > 0, hue, 0.0)
    return hue % 360, np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0), mx


def colour_name(hue: np.ndarray) -> np.ndarray:
    """Hue in degrees (...) -> index into HUES (...), -1 for hues in no bin."""
    out = np.full(hue.shape, -1)
    for i, (start, end) in enumerate(HUES.values()):
        inside = (hue >= start) | (hue < end) if start > end else (hue >= start) & (hue < end)
        out[inside] = i
    return out


def dominant_colour(image: np.ndarray) -> str | None:
    """The named colour most of an image's saturated pixels have (uint8 (H, W, 3)); None when too few are."""
    hue, sat, val = hue_saturation_value(image)
    coloured = (sat >= MIN_SATURATION) & (val >= MIN_VALUE)
    if coloured.mean() < MIN_COLOURED_SHARE:
        return None
    names = colour_name(hue[coloured])
    counts = np.bincount(names[names >= 0], minlength=len(HUES))
    return list(HUES)[int(counts.argmax())] if counts.sum() else None


def read_compositional(path: str | Path) -> list[dict] | None:
    """The rows of a compositional set ({"prompt", "object", "colour"} a line), or None when `path` is not one (not a
    .jsonl, or a line without "colour" and "object"). A line with them but an unknown colour raises ValueError."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or not all(isinstance(r, dict) and "colour" in r and "object" in r for r in rows):
        return None
    for row in rows:
        if row.get("colour") not in HUES or not row.get("object") or not row.get("prompt"):
            raise ValueError(f"{path}: each line needs prompt, object and colour (one of {', '.join(HUES)}): {row}")
    return rows


def corpus_names(folders: list[Path]) -> list[str]:
    """The bare emoji names ("label" in metadata.jsonl) of these split folders, sorted; empty when none has them."""
    names = []
    for folder in folders:
        meta = Path(folder) / "metadata.jsonl"
        if meta.is_file():
            names += [json.loads(line).get("label") for line in meta.read_text(encoding="utf-8").splitlines() if line]
    return sorted({n for n in names if n})


def object_hits(scorer, feats: torch.Tensor, objects: list[str], names: list[str], num: int, seed: int) -> torch.Tensor:
    """Per image (M,) bool: the scorer ranks objects[i] above `num` other names (`names`: the corpus's; without
    them, the set's other objects). feats: the images' unit-norm scorer features (M, D). Names that contain the
    object's name or that it contains ("banana" / "banana split") are never its distractors."""
    gen = torch.Generator().manual_seed(seed)
    vocab = list(dict.fromkeys([*objects, *names]))
    index = {n: i for i, n in enumerate(vocab)}
    text = scorer.encode_texts(vocab).cpu()  # every name once: (V, D)
    hits = []
    for i, obj in enumerate(objects):
        pool = [n for n in names if obj not in n and n not in obj] or [o for o in dict.fromkeys(objects) if o != obj]
        pick = torch.randperm(len(pool), generator=gen)[: min(num, len(pool))].tolist()
        sims = feats[i] @ text[[index[obj]] + [index[pool[j]] for j in pick]].T
        hits.append(bool(sims[0] > sims[1:].max()))
    return torch.tensor(hits)


def score(scorer, images: torch.Tensor, feats: torch.Tensor, rows: list[dict], samples: int, names: list[str], num: int,
          seed: int) -> dict:
    """images (P * samples, 3, R, R) uint8, prompt-major, and their scorer features (P * samples, D) -> colour,
    object and both rates, and per prompt."""
    objects = [r["object"] for r in rows for _ in range(samples)]
    colours = [r["colour"] for r in rows for _ in range(samples)]
    found = [dominant_colour(im.permute(1, 2, 0).numpy()) for im in images]
    colour = torch.tensor([f == c for f, c in zip(found, colours)])
    obj = object_hits(scorer, feats, objects, names, num, seed)
    both = colour & obj
    return {"images": len(images), "colour": float(colour.float().mean()), "object": float(obj.float().mean()),
            "both": float(both.float().mean()),
            "per_prompt": [{"prompt": r["prompt"], "colours_found": found[i * samples : (i + 1) * samples],
                            "object": float(obj[i * samples : (i + 1) * samples].float().mean()),
                            "both": float(both[i * samples : (i + 1) * samples].float().mean())}
                           for i, r in enumerate(rows)]}


def recoloured(images: torch.Tensor, rows: list[dict], samples: int, features, scorer) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (P * samples, 3, R, R), prompt-major -> the same with their saturated pixels turned to each
    row's colour (grey and black-and-white pictures keep their pixels, as in training), and their scorer features
    (`features(scorer, images)`)."""
    hues = torch.tensor([COLOURS[r["colour"]] for r in rows for _ in range(samples)])
    out = ((recolor(images.float() / 127.5 - 1, hues) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return out, features(scorer, out)


def candidates(names: list[str], num: int) -> str:
    """How many names each object is ranked among, in words."""
    return str(min(num, max(len(names) - 1, 0)) + 1) if names else "the set's other objects and itself"


def format_compositional(figures: dict, candidates: str) -> list[str]:
    """The compositional figures ({row: score(...)}) as lines of text under the main table."""
    lines = ["compositional: colour = the dominant hue of the saturated pixels is the asked colour;",
             f"  object = the scorer ranks the object's name first among {candidates} names; both = both at once",
             "  the recoloured row (a reference): the retrieval row's pictures turned to the asked colour as training does",
             f"  {'row':<10} {'colour':>7} {'object':>7} {'both':>7}"]
    lines += [f"  {name:<10} {f['colour']:>7.3f} {f['object']:>7.3f} {f['both']:>7.3f}" for name, f in figures.items()]
    return lines
