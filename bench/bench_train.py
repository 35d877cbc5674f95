"""Training speed of our GAN step against a diffusers UNet DDPM step of about the same parameter count.

    python bench/bench_train.py [--steps 8] [--batch-size 32] [--precision bf16 fp32] [--threads N] [--json OUT]

In one run on one machine, for each precision:
  ours      Trainer(TrainConfig(init="none", ...)) at the default config on the built-in shapes set (256 pairs,
            64x64); one step = one D update + one G update, with the lazy R1 penalty every r1_every steps, so the
            timed steps are a multiple of r1_every and include their share of R1 steps. Only `train_step` is timed
            (no EMA update, logging, samples or checkpoints).
  baseline  a pixel-space UNet2DConditionModel (the bench_generate.py layout, widths scaled so that its parameter
            count is nearest to our G + D) trained the DDPM way: DDPMScheduler(1000), a random timestep and noise
            per image, add_noise, predict the noise given the captions' precomputed text states, MSE, backward,
            gradient clipping (as diffusers' train_text_to_image.py does) and an AdamW step, on the same images and
            text states.
Both warm up for 2 steps, then time --steps steps. bf16 means bf16 autocast of the forward passes with fp32
weights (as `--precision bf16` of training); both models use channels_last, as the trainer does. The load average
is printed before and after: measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_generate import (  # noqa: E402
    baseline_unet, count_parameters, load_average, machine_info, print_machine, write_json,
)

WARMUP_STEPS = 2
DATA_PAIRS = 256


def matched_unet(target: int, cross_attention_dim: int, resolution: int):
    """The baseline layout with widths (c, 2c, 4c, 4c), c a multiple of 4, whose parameter count is nearest `target`.

    GroupNorm needs the widths divisible by its group count, so that count is the largest of 32, 16, 8, 4 that
    divides c (it has no parameters).
    """
    best = None
    for c in range(8, 257, 4):
        groups = next(g for g in (32, 16, 8, 4) if c % g == 0)
        unet = baseline_unet((c, 2 * c, 4 * c, 4 * c), cross_attention_dim, resolution, groups)
        n = count_parameters(unet)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = unet, n
        if n > target:
            break
    return best[0]


class BaselineTrainer:
    """One DDPM training step of a UNet on the trainer's images and precomputed caption states."""

    def __init__(self, unet, data, batch_size: int, precision: str, seed: int = 0):
        import torch
        from diffusers import DDPMScheduler

        from t2i_core.models.folder import PRECISIONS

        self.unet = unet.train().to(memory_format=torch.channels_last)
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.autocast = PRECISIONS[precision] if precision != "fp32" else None
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=1e-4)

    def train_step(self, step: int) -> float:
        import torch
        import torch.nn.functional as F

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = self.data.batch_indices(step, self.batch_size, self.seed)
        x0 = (self.data.images[idx].float() / 127.5 - 1).contiguous(memory_format=torch.channels_last)
        text = self.data.text[self.data.caption_ids[idx]]  # (B, L, D) states and (B, L) mask
        noise = torch.randn(x0.shape, generator=gen).contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=self.autocast, enabled=self.autocast is not None):
            pred = self.unet(noisy, t, encoder_hidden_states=text.states, encoder_attention_mask=text.mask).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        return loss.item()


def time_steps(step_fn, steps: int) -> float:
    """Seconds for `steps` calls of step_fn(step) after WARMUP_STEPS untimed ones."""
    for step in range(WARMUP_STEPS):
        step_fn(step)
    start = time.perf_counter()
    for step in range(WARMUP_STEPS, WARMUP_STEPS + steps):
        step_fn(step)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps (rounded up to a multiple of r1_every)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=("bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")

    import torch

    from t2i_core.data.shapes import make_shapes_dataset
    from t2i_core.training.config import TrainConfig
    from t2i_core.training.loop import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    r1_every = TrainConfig().r1_every
    steps = math.ceil(args.steps / r1_every) * r1_every
    if steps != args.steps:
        print(f"--steps {args.steps} rounded up to {steps}, a multiple of r1_every={r1_every}, so that the timed "
              "steps hold their share of R1 steps")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        data = make_shapes_dataset(tmp / "shapes", n=DATA_PAIRS, resolution=64)
        load_before = load_average()
        for precision in args.precision:
            cfg = TrainConfig(data=str(data), out=str(tmp / f"run-{precision}"), init="none",
                              batch_size=args.batch_size, precision=precision, threads=args.threads)
            trainer = Trainer(cfg)
            g_params, d_params = count_parameters(trainer.g), count_parameters(trainer.d)
            seconds = time_steps(trainer.train_step, steps)
            rows.append({"name": "ours", "precision": precision, "parameters": g_params + d_params,
                         "g_parameters": g_params, "d_parameters": d_params, "seconds": seconds})

            torch.manual_seed(0)
            unet = matched_unet(g_params + d_params, trainer.text_encoder.dim, trainer.resolution)
            baseline = BaselineTrainer(unet, trainer.data, args.batch_size, precision)
            seconds = time_steps(baseline.train_step, steps)
            rows.append({"name": "baseline", "precision": precision, "parameters": count_parameters(unet),
                         "block_out_channels": list(unet.config.block_out_channels), "seconds": seconds})
            del trainer, baseline, unet
        load_after = load_average()

    for r in rows:
        r["steps"], r["batch_size"] = steps, args.batch_size
        r["s_per_step"] = r["seconds"] / steps
        r["images_per_s"] = args.batch_size * steps / r["seconds"]
    for ours, base in zip(rows[::2], rows[1::2]):
        ours["ratio_vs_baseline"] = ours["images_per_s"] / base["images_per_s"]

    info = machine_info()
    print_machine(info, load_before, load_after)
    ours = rows[0]
    print(f"ours: G {ours['g_parameters'] / 1e6:.2f}M + D {ours['d_parameters'] / 1e6:.2f}M parameters; "
          f"baseline: UNet2DConditionModel {tuple(rows[1]['block_out_channels'])}, {rows[1]['parameters'] / 1e6:.2f}M "
          f"parameters, DDPM step")
    print(f"batch {args.batch_size}, 64x64; {steps} timed steps after {WARMUP_STEPS} warm-up; "
          "ours/baseline = ratio of images/s at the same precision")
    print(f"| {'row':<16} | {'params':>7} | {'s/step':>7} | {'images/s':>9} | {'ours/baseline':>13} |")
    print(f"|{'-' * 18}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 15}|")
    for r in rows:
        ratio = f"{r['ratio_vs_baseline']:.2f}x" if "ratio_vs_baseline" in r else "-"
        print(f"| {r['name'] + ' ' + r['precision']:<16} | {r['parameters'] / 1e6:>6.2f}M | {r['s_per_step']:>7.3f} | "
              f"{r['images_per_s']:>9.1f} | {ratio:>13} |")
    if args.json:
        result = {"machine": info, "load_average_before": load_before, "load_average_after": load_after,
                  "resolution": 64, "data_pairs": DATA_PAIRS, "warmup_steps": WARMUP_STEPS, "rows": rows}
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
