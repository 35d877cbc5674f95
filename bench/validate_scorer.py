"""Can the evaluation scorer tell an emoji from a blob? Its validation (issue 14).

R@1 among 100 captions (the true caption + 99 captions of other emoji, as `scorer_test_r_precision` ranks them) of:

  unseen style   real emoji of styles the scorer never trained on (emoji-datasource-apple / -facebook 16.0.0,
                 fetched with `npm pack` into --cache, outside the repository; used here only, never redistributed),
                 captioned by the bare name ("grinning face"): the honest held-out figure. Must be >= 0.6.
  real           the corpus's test split with its captions ("grinning face, google style"). The shipped scorer is
                 trained on both splits, so this is NOT held out: it is the reference the blob rows are halved from.
  real (names)   the same images against their bare names (the form people type).
  blur           each real test image blurred at 64 px (Gaussian, sigma 2). Must be <= real / 2.
  silhouette     each real test image's non-white pixels filled with their mean colour. Must be <= real / 2.
  pixelated      each real test image at 12 px, scaled back up (reported, no threshold).
  box blur       each real test image averaged over 7x7 px boxes (the spread of the Gaussian check, sigma 2): a blur
                 of another kind than the Gaussian and
                 pixelated copies the scorer trains against, so an independent blob check. Must be <= real / 2.
  recoloured     the unseen-style emoji whose names name no colour, recoloured, against their bare names: the
                 compositional set's object check ("is a blue banana still a banana?") must hold for real pictures
                 before it judges a model's. Two recolourings: `images.recolor` (every saturated pixel to one hue,
                 as the compositional prompts ask; the colours cycle over COLOURS) and a hue rotation by 120 or 240
                 degrees (every hue moves; a transform no training step uses). Each must reach >= 0.8 x the same
                 images' R@1 in their own colours.

    python bench/validate_scorer.py --data /path/to/emoji [--scorer assets/scorer] [--cache ~/.cache/t2i_core/npm]
        [--styles apple,facebook] [--json OUT.json] [--threads 1]

Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from t2i_core.evaluation.blobs import gaussian_blur, pixelate, silhouette  # noqa: E402
from t2i_core.images import COLOURS, hsv_to_rgb, recolor, recolourable, rgb_to_hsv  # noqa: E402
from t2i_core.evaluation.metrics import choose_distractors, max_distractors, r_precision_hits  # noqa: E402
from t2i_core.evaluation.report import image_features, load_eval_set  # noqa: E402
from t2i_core.evaluation.scorer import ContrastiveScorer, torch_threads  # noqa: E402

UNSEEN_PACKAGES = {"apple": ("emoji-datasource-apple", "16.0.0"), "facebook": ("emoji-datasource-facebook", "16.0.0")}


def r_at_1(scorer, images: torch.Tensor, captions: list[str], groups: list[str], image_caption: torch.Tensor,
           num_distractors: int, seed: int) -> float:
    """R@1 of uint8 images (M, 3, R, R) whose captions are captions[image_caption] (M,), among num + 1 captions."""
    num = min(num_distractors, max_distractors(groups))
    distractors = choose_distractors(groups, num, seed)
    text = scorer.encode_texts(captions).cpu()
    hits = r_precision_hits(image_features(scorer, images), text, image_caption, distractors[image_caption])
    return float(hits.float().mean())


def degrade(images: torch.Tensor, how) -> torch.Tensor:
    """uint8 (M, 3, R, R) -> the same images degraded by `how` (a function on [-1, 1] floats), uint8."""
    out = []
    for start in range(0, len(images), 512):
        x = images[start : start + 512].float().div(127.5).sub(1.0)
        out.append(((how(x).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)


def box_blur(images: torch.Tensor, size: int = 7) -> torch.Tensor:
    """[-1, 1] (M, 3, R, R) -> each pixel the mean of its size x size box (edges replicated)."""
    pad = size // 2
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    return torch.nn.functional.avg_pool2d(padded, size, stride=1)


def set_hue(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (M, 3, R, R) -> every saturated pixel to one of COLOURS, cycling over the images."""
    hues = torch.tensor(list(COLOURS.values()))
    return recolor(images, hues[torch.arange(len(images)) % len(hues)])


def rotate_hue(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (M, 3, R, R) -> every hue rotated by 120 degrees (even images) or 240 (odd)."""
    hsv = rgb_to_hsv((images.float() + 1) / 2)
    shift = torch.where(torch.arange(len(images)) % 2 == 0, 1 / 3, 2 / 3)[:, None, None]
    hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return hsv_to_rgb(hsv) * 2 - 1


def unseen_style_set(style: str, cache: Path, resolution: int) -> tuple[torch.Tensor, list[str], list[str], torch.Tensor]:
    """The style's emoji that emojibase names: (images uint8 (M, 3, R, R), captions, groups, caption index (M,)).
    Captions are bare names, one per emoji (skin-tone variants are emoji of their own, as in the corpus)."""
    from t2i_core.data.emoji import PACKAGES, _datasource_images, _render, caption_from_label, fetch_package, load_emojis

    name, version = UNSEEN_PACKAGES[style]
    # Rendering ~3.7k PNGs takes a minute; keep the result beside the package, outside the repository.
    rendered = cache / f"{name}-{version}-{resolution}px.pt"
    if rendered.is_file():
        saved = torch.load(rendered, weights_only=True)
        return saved["images"], saved["captions"], saved["groups"], saved["index"]
    package = fetch_package(name, version, cache)
    emojis = load_emojis(fetch_package(*PACKAGES["captions"], cache))
    by_key = {"-".join(p for p in e.hexcode.upper().split("-") if p != "FE0F"): e for e in emojis}
    images, captions, groups, seen = [], [], [], set()
    for key, path in _datasource_images(package, style):
        emoji = by_key.get(key)
        if emoji is None or key in seen:
            continue
        seen.add(key)
        images.append(np.asarray(_render(path, resolution)))
        captions.append(caption_from_label(emoji.label))
        groups.append(emoji.hexcode)
    # Two emoji can share a label; give each label one caption index and its first emoji's group.
    unique = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(unique)}
    group_of = {}
    for c, g in zip(captions, groups):
        group_of.setdefault(c, g)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    out = tensor, unique, [group_of[c] for c in unique], torch.tensor([index[c] for c in captions])
    torch.save(dict(zip(("images", "captions", "groups", "index"), out)), rendered)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="corpus root holding test/ (python -m t2i_core data emoji)")
    parser.add_argument("--scorer", default=None, help="scorer folder (default: the shipped assets/scorer/)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "t2i_core" / "npm"),
                        help="npm package cache for the unseen styles (outside the repository)")
    parser.add_argument("--styles", default="apple,facebook", help="unseen styles: apple, facebook or both")
    parser.add_argument("--num-distractors", type=int, default=99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    if not styles or any(s not in UNSEEN_PACKAGES for s in styles):
        parser.exit(2, f"error: --styles must name some of {', '.join(UNSEEN_PACKAGES)}, got {args.styles!r}\n")

    start = time.time()
    with torch_threads(args.threads):
        scorer = ContrastiveScorer.from_pretrained(args.scorer)
        res = scorer.resolution
        test = load_eval_set(Path(args.data) / "test", res)
        num, seed = args.num_distractors, args.seed
        figures: dict[str, float] = {}
        for style in styles:
            images, captions, groups, idx = unseen_style_set(style, Path(args.cache), res)
            figures[f"unseen {style}"] = r_at_1(scorer, images, captions, groups, idx, num, seed)
            keep = torch.tensor([recolourable(captions[c]) for c in idx.tolist()])
            sub, sub_idx = images[keep], idx[keep]
            figures[f"{style}, own colours"] = r_at_1(scorer, sub, captions, groups, sub_idx, num, seed)
            for name, how in (("recolour", set_hue), ("hue rotation", rotate_hue)):
                figures[f"{style}, {name}"] = r_at_1(scorer, degrade(sub, how), captions, groups, sub_idx, num, seed)
        figures["real"] = r_at_1(scorer, test.images, test.captions, test.groups, test.image_caption, num, seed)
        names = [c.rsplit(", ", 1)[0] if c.endswith(" style") else c for c in test.captions]
        unique = list(dict.fromkeys(names))
        group_of = {}
        for n, g in zip(names, test.groups):
            group_of.setdefault(n, g)
        name_idx = torch.tensor([unique.index(names[c]) for c in test.image_caption.tolist()])
        figures["real (names)"] = r_at_1(scorer, test.images, unique, [group_of[n] for n in unique], name_idx, num, seed)
        # Degradations are defined at 64 px (the corpus's resolution); scale sigma and size with other resolutions.
        degradations = {"blur": lambda x: gaussian_blur(x, 2.0 * x.shape[-1] / 64), "silhouette": silhouette,
                        "pixelated": lambda x: pixelate(x, max(2, round(12 * x.shape[-1] / 64))),
                        "box blur": lambda x: box_blur(x, max(3, round(7 * x.shape[-1] / 64) | 1))}
        for name, how in degradations.items():
            figures[name] = r_at_1(scorer, degrade(test.images, how), test.captions, test.groups, test.image_caption,
                                   num, seed)

    checks = {f"unseen {s} >= 0.6": figures[f"unseen {s}"] >= 0.6 for s in styles}
    checks.update({f"{b} <= real / 2": figures[b] <= figures["real"] / 2 for b in ("blur", "silhouette", "box blur")})
    checks.update({f"{s}, {name} >= 0.8 x own colours": figures[f"{s}, {name}"] >= 0.8 * figures[f"{s}, own colours"]
                   for s in styles for name in ("recolour", "hue rotation")})
    print(f"scorer: {args.scorer or 'assets/scorer'} ({scorer.info.get('data')}, seed {scorer.info.get('seed')}); "
          f"R@1 among {num + 1} captions, distractor seed {seed}")
    for name, value in figures.items():
        print(f"  {name:<24} {value:.3f}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"  ({time.time() - start:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"scorer": args.scorer or "assets/scorer", "info": scorer.info,
                                               "figures": figures, "checks": checks}, indent=2, default=str) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
