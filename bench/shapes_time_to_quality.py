"""Time-to-quality on the built-in shapes set: train for a wall-clock budget, check generated images.

Trains with the shapes recipe (`--init none`, or `--init default` to fine-tune the shipped model), pausing at
each mark of the curve (e.g. 2, 5, 10, 30 minutes of training) to score the EMA generator on held-out captions
with the deterministic checker in `t2i_core.data.shapes`:
- single objects, every colour-shape combination at both sizes, split into combinations seen in training and the
  never-seen ones (shapes.HELD_OUT);
- two-object relation captions ("a red circle above a green square"), from a separately seeded set.
The run resumes from its own checkpoint between marks, so the minutes add up exactly as one run.

    python bench/shapes_time_to_quality.py --marks 2 5 10 --threads 2 --json shapes.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/...` from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from t2i_core.data import shapes  # noqa: E402
from t2i_core.pipeline import T2IPipeline  # noqa: E402
from t2i_core.images import image_grid  # noqa: E402
from t2i_core.training.config import TrainConfig  # noqa: E402
from t2i_core.training.loop import train  # noqa: E402

# From scratch: a narrow 32 px model and the two position-free losses, colour (sliced Wasserstein on pixel colours)
# and shape (Fourier amplitude spectrum): objects sit anywhere, so reconstruction toward the real image would teach
# a white canvas. Fine-tuning keeps the shipped model's 64 px architecture.
SCRATCH = dict(init="none", resolution=32, g_channels=(64, 32, 16, 16), d_channels=(16, 16, 32, 64),
               rec_weight=0.0, color_weight=10.0, shape_weight=30.0, lr_g=1e-3, lr_d=5e-4, ema_halflife_images=500)
FINETUNE = dict(init="default", rec_weight=0.0, color_weight=10.0, shape_weight=30.0, lr_g=5e-4, lr_d=5e-4, ema_halflife_images=500)


def evaluation_sets(root: Path, resolution: int) -> dict[str, list[str]]:
    single = shapes.make_shapes_dataset(root / "single", n=180, resolution=resolution, split="test")
    rows = [json.loads(line) for line in (single / "metadata.jsonl").read_text().splitlines()]
    pairs = shapes.make_shapes_dataset(root / "pairs", n=400, resolution=resolution, seed=99)
    relation = [json.loads(line)["text"] for line in (pairs / "metadata.jsonl").read_text().splitlines()]
    relation = [t for t in relation if len(shapes.parse_caption(t)) == 2][:100]
    return {"seen": [r["text"] for r in rows if not r["held_out"]],
            "never seen": [r["text"] for r in rows if r["held_out"]],
            "relation": relation}


def score(model_dir: Path, sets: dict[str, list[str]], samples: int) -> dict[str, dict[str, float]]:
    pipe = T2IPipeline.from_pretrained(model_dir)
    out = {}
    for name, captions in sets.items():
        images = pipe(captions, num_images=samples, seed=0).images
        out[name] = shapes.score_images(images, [c for c in captions for _ in range(samples)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--marks", type=float, nargs="+", default=[2, 5, 10, 30], help="minutes of training at which to score")
    parser.add_argument("--init", default="none", help="'none' (from scratch, 32 px) or 'default' (fine-tune the shipped model)")
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs")
    parser.add_argument("--samples", type=int, default=2, help="images per evaluation caption")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a recipe option, e.g. shape_weight=3 (values parsed as JSON)")
    args = parser.parse_args()

    recipe = dict(SCRATCH if args.init == "none" else FINETUNE)
    for item in args.set:
        key, _, value = item.partition("=")
        recipe[key] = tuple(json.loads(value)) if value.startswith("[") else json.loads(value)
    if args.init not in ("none", "default"):
        recipe["init"] = args.init
    resolution = recipe.get("resolution", 64)
    work = Path(args.out or tempfile.mkdtemp(prefix="shapes-ttq-"))
    data = shapes.make_shapes_dataset(work / "data", n=args.pairs, resolution=resolution)
    sets = evaluation_sets(work / "eval", resolution)
    run = work / "run"
    curve, done = [], 0.0
    for mark in sorted(args.marks):
        start = time.time()
        cfg = TrainConfig(data=str(data), out=str(run), max_steps=10**9, minutes=mark - done, resume=done > 0,
                          batch_size=32, precision="fp32", threads=args.threads, sample_every=10**9,
                          checkpoint_every=10**9, log_every=50, seed=0, **recipe)
        model = train(cfg)
        done = mark
        from t2i_core.training.checkpoints import list_checkpoints

        steps = json.loads((list_checkpoints(run)[-1] / "trainer_state.json").read_text())["step"]
        result = score(model, sets, args.samples)
        row = {"minutes": mark, "steps": steps, "wall_s": round(time.time() - start, 1), **result}
        curve.append(row)
        grid = image_grid(T2IPipeline.from_pretrained(model)(sets["seen"][:24] + sets["never seen"][:12], seed=0).images)
        grid.resize((grid.width * 2, grid.height * 2)).save(work / f"grid-{mark:g}min.png")
        print(f"{mark:>5g} min, {steps} steps | " + " | ".join(
            f"{name}: colour {r['color']:.2f} shape {r['shape']:.2f} all {r['all']:.2f}"
            + (f" relation {r['relation']:.2f}" if "relation" in r else "") for name, r in result.items()), flush=True)
    print(f"run folder and grids: {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"init": args.init, "recipe": recipe, "curve": curve}, indent=2))


if __name__ == "__main__":
    main()
