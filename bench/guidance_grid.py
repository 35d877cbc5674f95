"""A grid of prompts x guidance values from one model: what the Generate tab's prompt-strength slider does.

    python bench/guidance_grid.py [--model PATH] [--out guidance_grid.png] [--guidance 0 1 1.5 2 3 4]

Rows are prompts, columns guidance values; each cell shows images of seeds 0..N-1 at truncation 1.0, upscaled so
a person can judge them. Used to pick the slider's range (docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image, ImageDraw  # noqa: E402

from t2i_core import T2IPipeline  # noqa: E402

PROMPTS = ["grinning face, google style", "red apple, twitter style", "cat face, fluent style", "rocket, twitter style",
           "green heart", "a red car", "pizza, google style", "sun, fluent style"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="guidance_grid.png")
    p.add_argument("--guidance", type=float, nargs="+", default=[0, 1, 1.5, 2, 3, 4])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--tile", type=int, default=96)
    args = p.parse_args()
    pipe = T2IPipeline.from_pretrained(args.model)
    t, n, label_w, head = args.tile, args.seeds, 200, 20
    grid = Image.new("RGB", (label_w + len(args.guidance) * n * t, head + len(PROMPTS) * t), "white")
    draw = ImageDraw.Draw(grid)
    for j, g in enumerate(args.guidance):
        draw.text((label_w + j * n * t + 4, 4), f"guidance {g:g}", fill="black")
    for i, prompt in enumerate(PROMPTS):
        draw.text((4, head + i * t + t // 2 - 6), prompt, fill="black")
        for j, g in enumerate(args.guidance):
            out = pipe(prompt, num_images=n, seed=0, truncation=1.0, guidance=g, size=t)
            for k, image in enumerate(out.images):
                grid.paste(image, (label_w + (j * n + k) * t, head + i * t))
    grid.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
