"""A user's own pairs: fine-tune the default model on 250 named logos, then check each caption draws its own logo.

Issue 17's goal: >= 0.8 of captions give an image whose nearest of the user's pictures (pixel L2, 64x64 RGB) is its
own, after a 10-minute fine-tune from the default model. The pairs are a kind the emoji corpus lacks: brand logos
from the npm package simple-icons (pinned; CC0, icons with their own non-permissive licence left out), each
rendered in its brand colour on white and captioned "<brand> logo". They are built offline from `npm pack`
into a cache folder outside the repository and never committed.

    python bench/user_pairs.py --minutes 10 --threads 2 --json user-pairs.json
    python bench/user_pairs.py --count 20 --minutes 0.5 --threads 1             # smoke run, figures meaningless

Prints the share for the fine-tuned model, for the model before fine-tuning (baseline), and for retrieval by
caption (the caption's own picture: 1.0 unless two logos render alike, a check of the metric), then a JSON
summary, and saves RUN/user_pairs_grid.png (per caption: own picture | before | after, green frame = hit).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/...` from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PACKAGE, VERSION, LICENCE = "simple-icons", "16.37.0", "CC0-1.0"
# Icons that carry their own licence in data/simple-icons.json keep it; only these permissive ones are used.
PERMISSIVE = {"CC0-1.0", "MIT", "Apache-2.0", "BSD-3-Clause", "Unlicense"}
CACHE = Path.home() / ".cache" / "t2i_core"
SIZE, GOAL = 64, 0.8


def fetch(cache_dir: Path) -> Path:
    """The extracted npm package folder, via the emoji corpus's cached `npm pack` fetcher."""
    try:
        from t2i_core.data.emoji import fetch_package
    except ImportError:  # the package layout moved: do the same by hand
        import tarfile

        dest, tgz = cache_dir / f"{PACKAGE}-{VERSION}", cache_dir / f"{PACKAGE}-{VERSION}.tgz"
        if not (dest / "package").is_dir():
            cache_dir.mkdir(parents=True, exist_ok=True)
            if not tgz.is_file():
                npm = ["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache_dir)]
                subprocess.run(npm, check=True)
            with tarfile.open(tgz) as tar:
                tar.extractall(dest, filter="data")
        return dest / "package"
    return fetch_package(PACKAGE, VERSION, cache_dir)


def luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def render(svg: str, hex_colour: str) -> Image.Image:
    """A simple-icons SVG (one path, 24x24, no fill) -> SIZE px RGB in the brand colour on white, 1/12 margin."""
    import resvg_py

    svg = svg.replace("<svg ", f'<svg fill="#{hex_colour}" ', 1).replace('viewBox="0 0 24 24"', 'viewBox="-2 -2 28 28"')
    png = resvg_py.svg_to_bytes(svg_string=svg, width=SIZE, height=SIZE, background="#ffffff", skip_system_fonts=True)
    image = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")


def build_pairs(out: Path, count: int, seed: int, cache_dir: Path) -> list[dict]:
    """Write `count` logos (a seeded choice) as an imagefolder with metadata.jsonl; return its rows."""
    package = fetch(cache_dir)
    icons = json.loads((package / "data" / "simple-icons.json").read_text())
    eligible = sorted(
        (i for i in icons if i.get("license", {}).get("type", LICENCE) in PERMISSIVE
         and luminance(i["hex"]) < 0.85 and (package / "icons" / f"{i['slug']}.svg").is_file()),
        key=lambda i: i["slug"],
    )  # too light a brand colour would be near-invisible on white
    if count > len(eligible):
        raise SystemExit(f"--count {count} is more than the {len(eligible)} eligible icons")
    chosen = random.Random(seed).sample(eligible, count)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink(missing_ok=True)  # another run may be rebuilding the same cache
    rows = []
    for icon in chosen:
        name = f"{icon['slug']}.png"
        render((package / "icons" / f"{icon['slug']}.svg").read_text(), icon["hex"]).save(out / name)
        rows.append({"file_name": name, "text": f"{icon['title']} logo"})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def pixels(images: list[Image.Image]) -> np.ndarray:
    """Images as rows of SIZE x SIZE RGB floats in [0, 1]."""
    return np.stack([np.asarray(im.convert("RGB").resize((SIZE, SIZE)), np.float32).ravel() / 255 for im in images])


def nearest(images: list[Image.Image], gallery: np.ndarray) -> np.ndarray:
    """Index of each image's nearest gallery picture by pixel L2."""
    x = pixels(images)
    d = (x**2).sum(1)[:, None] - 2 * x @ gallery.T + (gallery**2).sum(1)[None, :]
    return d.argmin(1)


def evaluate(model: str | None, captions: list[str], gallery: np.ndarray, n: int, seed: int) -> tuple[float, list]:
    """Share of generated images whose nearest user picture is their caption's own (caption i owns picture i)."""
    from t2i_core import T2IPipeline

    out = T2IPipeline.from_pretrained(model)(captions, num_images=n, seed=seed)
    own = np.repeat(np.arange(len(captions)), n)
    hits = nearest(out.images, gallery) == own
    return float(hits.mean()), list(zip(out.images[::n], hits[::n]))


def grid(own: list[Image.Image], columns: list[list], path: Path, per_row: int = 4) -> None:
    """Per caption: its own picture, then each model's first image framed green (hit) or red (miss)."""
    tiles = [[ImageOps.expand(im, 2, "white")] + [ImageOps.expand(c[i][0], 2, "#2a2" if c[i][1] else "#d22")
                                                  for c in columns] for i, im in enumerate(own)]
    w, rows = (SIZE + 4) * len(tiles[0]) + 8, (len(tiles) + per_row - 1) // per_row
    sheet = Image.new("RGB", (w * per_row, (SIZE + 4) * rows), "white")
    for i, group in enumerate(tiles):
        for j, tile in enumerate(group):
            sheet.paste(tile, ((i % per_row) * w + j * (SIZE + 4), (i // per_row) * (SIZE + 4)))
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None, help="imagefolder to build (default: a cache folder)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "user_pairs", help="training run folder")
    p.add_argument("--model", default="default", help="model to fine-tune and baseline ('default' or a folder)")
    p.add_argument("--minutes", type=float, default=10.0, help="fine-tune wall-clock minutes")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and generation")
    p.add_argument("--count", type=int, default=250, help="number of user pictures")
    p.add_argument("--seed", type=int, default=0, help="seed of the icon choice, training and generation")
    p.add_argument("--num-images", type=int, default=1, help="images per caption")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N captions (quick look)")
    p.add_argument("--skip-train", action="store_true", help="evaluate an existing OUT/model")
    p.add_argument("--cache", type=Path, default=CACHE / "npm", help="npm package cache folder")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    a = p.parse_args(argv)
    data = a.data_dir or CACHE / "user_pairs" / f"{PACKAGE}-{VERSION}-n{a.count}-s{a.seed}"

    rows = build_pairs(data, a.count, a.seed, a.cache)
    own = [Image.open(data / r["file_name"]).convert("RGB") for r in rows]
    gallery, captions = pixels(own), [r["text"] for r in rows]
    print(f"{len(rows)} pairs from {PACKAGE}@{VERSION} in {data}, e.g. {captions[:3]}")

    train_s = None
    if not a.skip_train:
        cmd = [sys.executable, "-m", "t2i_core", "train", "--data", str(data), "--out", str(a.out), "--init", a.model,
               "--minutes", str(a.minutes), "--threads", str(a.threads), "--seed", str(a.seed)]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        if subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode != 0:
            print("training failed", file=sys.stderr)
            return 1
        train_s = time.perf_counter() - t0

    if not (a.out / "model" / "model_index.json").is_file():
        print(f"no model folder at {a.out / 'model'}: run without --skip-train, or pass --out RUN", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(a.threads)
    k = len(rows) if a.limit is None else min(a.limit, len(rows))
    base = None if a.model == "default" else a.model
    t0 = time.perf_counter()
    before, before_imgs = evaluate(base, captions[:k], gallery, a.num_images, a.seed)
    after, after_imgs = evaluate(str(a.out / "model"), captions[:k], gallery, a.num_images, a.seed)
    retrieval = float((nearest(own[:k], gallery) == np.arange(k)).mean())
    eval_s = time.perf_counter() - t0
    grid_path = a.out / "user_pairs_grid.png"
    grid(own[: min(k, 24)], [before_imgs[:24], after_imgs[:24]], grid_path)

    print(f"captions evaluated: {k} x {a.num_images} image(s); gallery: {len(rows)} user pictures")
    print(f"  fine-tuned        {after:.3f}   goal >= {GOAL}: {'met' if after >= GOAL else 'NOT met'}")
    print(f"  before fine-tune  {before:.3f}")
    print(f"  retrieval         {retrieval:.3f}   (caption's own picture: sanity check of the metric)")
    print(f"grid (own | before | after): {grid_path}")
    summary = dict(package=f"{PACKAGE}@{VERSION}", licence=LICENCE, data=str(data), pairs=len(rows), captions=k,
                   num_images=a.num_images, seed=a.seed, model=a.model, run=str(a.out), minutes=a.minutes,
                   threads=a.threads, train_seconds=train_s, eval_seconds=round(eval_s, 1), share_finetuned=after,
                   share_before=before, share_retrieval=retrieval, goal=GOAL, met=after >= GOAL, grid=str(grid_path))
    print(json.dumps(summary, indent=2))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
