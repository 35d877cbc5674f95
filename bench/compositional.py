"""Compositional prompts: a known object in a colour that no emoji of it has ("a blue banana").

Nearest-caption retrieval fails these by construction (the corpus has no blue banana), so they separate a model
that composes a colour with an object from one that looks up its training images. Each image is checked twice:

  colour   deterministic: the dominant hue of its saturated pixels is the asked colour (hue bins below);
  object   the evaluation scorer ranks the object's bare name ("banana") first among it and N names of other emoji
           from the corpus (default 99): the object is still that object.

Rows: the model's samples (`generated`) and, with --data, retrieval's nearest training images (`retrieval`).

    python bench/compositional.py [--model PATH] [--scorer DIR] [--data CORPUS] [--prompts FILE] [--samples 4]
        [--seed 0] [--threads 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

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


def read_set(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        if row.get("colour") not in HUES or not row.get("object") or not row.get("prompt"):
            raise ValueError(f"{path}: each line needs prompt, object and colour (one of {', '.join(HUES)}): {row}")
    return rows


def corpus_names(data: Path | None) -> list[str]:
    """The bare emoji names ("label") of a corpus's splits; empty without --data."""
    names = []
    for split in ("train", "test"):
        meta = data / split / "metadata.jsonl" if data else None
        if meta and meta.is_file():
            names += [json.loads(line).get("label") for line in meta.read_text(encoding="utf-8").splitlines() if line]
    return sorted({n for n in names if n})


def object_hits(scorer, images: torch.Tensor, objects: list[str], names: list[str], num: int, seed: int) -> torch.Tensor:
    """Per image (M,) bool: the scorer ranks objects[i] above `num` other names. Names that contain the object's
    name or that it contains ("banana" / "banana split") are never its distractors."""
    from t2i_core.evaluation.report import image_features

    feats = image_features(scorer, images)
    gen = torch.Generator().manual_seed(seed)
    hits = []
    for i, obj in enumerate(objects):
        pool = [n for n in names if obj not in n and n not in obj] or [o for o in dict.fromkeys(objects) if o != obj]
        pick = torch.randperm(len(pool), generator=gen)[: min(num, len(pool))].tolist()
        text = scorer.encode_texts([obj] + [pool[j] for j in pick]).cpu()
        sims = feats[i] @ text.T
        hits.append(bool(sims[0] > sims[1:].max()))
    return torch.tensor(hits)


def score(scorer, images: torch.Tensor, rows: list[dict], samples: int, names: list[str], num: int, seed: int) -> dict:
    """images (P * samples, 3, R, R) uint8, prompt-major -> colour, object and both rates, and per prompt."""
    objects = [r["object"] for r in rows for _ in range(samples)]
    colours = [r["colour"] for r in rows for _ in range(samples)]
    found = [dominant_colour(im.permute(1, 2, 0).numpy()) for im in images]
    colour = torch.tensor([f == c for f, c in zip(found, colours)])
    obj = object_hits(scorer, images, objects, names, num, seed)
    both = colour & obj
    return {"images": len(images), "colour": float(colour.float().mean()), "object": float(obj.float().mean()),
            "both": float(both.float().mean()),
            "per_prompt": [{"prompt": r["prompt"], "colours_found": found[i * samples : (i + 1) * samples],
                            "object": float(obj[i * samples : (i + 1) * samples].float().mean()),
                            "both": float(both[i * samples : (i + 1) * samples].float().mean())}
                           for i, r in enumerate(rows)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped assets/model/)")
    parser.add_argument("--scorer", default=None, help="scorer folder (default: the shipped assets/scorer/)")
    parser.add_argument("--data", default=None, help="corpus root: distractor names, and the retrieval row")
    parser.add_argument("--prompts", default=str(Path(__file__).with_name("prompts_compositional.jsonl")))
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--num-distractors", type=int, default=99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from t2i_core import T2IPipeline
    from t2i_core.evaluation.report import _resize_uint8, generated_images, load_training_images, retrieved_images
    from t2i_core.evaluation.scorer import ContrastiveScorer, pooled_text_vectors, torch_threads

    rows = read_set(Path(args.prompts))
    prompts = [r["prompt"] for r in rows]
    data = Path(args.data) if args.data else None
    names = corpus_names(data)
    report = {"prompts": len(rows), "samples": args.samples, "seed": args.seed, "rows": {}}
    with torch_threads(args.threads):
        pipe = T2IPipeline.from_pretrained(args.model)
        scorer = ContrastiveScorer.from_pretrained(args.scorer, text_encoder=pipe.text_encoder)
        images = _resize_uint8(generated_images(pipe, prompts, args.samples, args.seed), scorer.resolution)
        report["rows"]["generated"] = score(scorer, images, rows, args.samples, names, args.num_distractors, args.seed)
        if data is not None and (data / "train").is_dir():
            train = load_training_images(data / "train", scorer.resolution, pipe.text_encoder)
            idx = retrieved_images(train, pooled_text_vectors(pipe.text_encoder, prompts), args.samples)
            report["rows"]["retrieval"] = score(scorer, _resize_uint8(train.images[idx], scorer.resolution), rows,
                                                args.samples, names, args.num_distractors, args.seed)
    candidates = min(args.num_distractors, max(len(names) - 1, 0)) + 1 if names else "the set's objects"
    print(f"compositional set {args.prompts}: {len(rows)} prompts x {args.samples} samples; object R@1 among "
          f"{candidates} names")
    print(f"{'row':<10} {'colour':>7} {'object':>7} {'both':>7}")
    for name, fig in report["rows"].items():
        print(f"{name:<10} {fig['colour']:>7.3f} {fig['object']:>7.3f} {fig['both']:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
