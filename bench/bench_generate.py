"""Generate speed of our pipeline against a small diffusers UNet sampled with DDIM, plus peak RSS of `generate`.

    python bench/bench_generate.py [--model PATH] [--repeats 30] [--warmup 3] [--baseline-repeats 5 3]
                                   [--baseline-warmup 1] [--threads N] [--json OUT]

In one run on one machine it times, per call and p50 over repeats:
  ours      T2IPipeline(prompts, seed) for 1 prompt and for a batch of 16 distinct prompts;
  baseline  a UNet2DConditionModel in pixel space at the same resolution (block_out_channels (32, 64, 128, 128),
            layers_per_block 1, attention_head_dim 8, cross-attention in the two middle blocks, cross_attention_dim =
            the text states' width; about 6.2M parameters, random weights: speed does not depend on them), sampled
            with DDIMScheduler at 25 steps, classifier-free guidance off (one UNet call per step).
Both calls include encoding the prompts with the same TextEncoder (every prompt is new, so its cache hides
nothing), drawing the noise, and converting to PIL images. fp32 throughout.

Peak RSS is measured apart: a small wrapper process runs `python -m t2i_core generate` and reads its peak RSS
(getrusage(RUSAGE_CHILDREN).ru_maxrss); the wrapper keeps the figure from picking up this process's own memory.

Without --model it uses the shipped assets/model, else a random model of the default architecture (same compute
as a trained one); the output says which. The load average is printed before and after: measure on an otherwise
idle machine, or the figures mean little.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Goals of the issue, on 2 CPU cores.
GOAL_MS_ONE_IMAGE = 30.0
GOAL_SPEEDUP = 100.0
GOAL_PEAK_RSS_MB = 1536.0

BATCH_SIZES = (1, 16)
BASELINE_CHANNELS = (32, 64, 128, 128)
BASELINE_STEPS = 25
WORDS = ("red apple", "blue circle on the left", "a green square above a yellow triangle", "grinning face",
         "purple cat, google style", "small orange house", "two birds in the sky", "a teapot")


# Machine and load: printed beside every figure.

def machine_info() -> dict:
    import diffusers
    import torch

    from t2i_core.training.log import cpu_model

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_machine(info: dict, load_before: list[float], load_after: list[float]) -> None:
    print(f"cpu: {info['cpu']}  cores: {info['cores']}  torch {info['torch']} ({info['torch_threads']} threads)  "
          f"diffusers {info['diffusers']}  python {info['python']}")
    print(f"load average (1, 5, 15 min): before {load_before}  after {load_after}")
    if load_before[0] > 0.25 * info["cores"]:
        print(f"WARNING: the machine was not idle (1-min load {load_before[0]} on {info['cores']} cores); "
              "these are not figures to report.")


# Baseline model: shared with bench_train.py.

def baseline_unet(block_out_channels=BASELINE_CHANNELS, cross_attention_dim: int = 384, resolution: int = 64,
                  norm_num_groups: int = 32):
    """A pixel-space UNet2DConditionModel (3 -> 3 channels) with cross-attention in the two middle blocks."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=tuple(block_out_channels),
        layers_per_block=1, attention_head_dim=8, norm_num_groups=norm_num_groups,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
    )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# The two ways to make images.

class Prompts:
    """Never-repeating prompts, so the text encoder's cache never answers for the encoder."""

    def __init__(self):
        self.counter = itertools.count()

    def take(self, n: int) -> list[str]:
        return [f"prompt {i} {WORDS[i % len(WORDS)]}" for i in itertools.islice(self.counter, n)]


def load_ours(model: Path | None, tmp: Path):
    """-> (pipeline, model folder, description). Default: the shipped model, else a random default-config one."""
    from bench_app import default_architecture_model

    from t2i_core import T2IPipeline
    from t2i_core.pipeline import DEFAULT_MODEL_DIR

    if model is not None:
        what = f"{model} (--model)"
    elif (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        model, what = DEFAULT_MODEL_DIR, f"shipped model {DEFAULT_MODEL_DIR}"
    else:
        model = default_architecture_model(tmp)
        what = "random default-config Generator (no shipped model; same compute as a trained one)"
    return T2IPipeline.from_pretrained(model), model, what


def ours_call(pipe, prompts: list[str], seed: int) -> list:
    return pipe(prompts, num_images=1, seed=seed).images


class Baseline:
    """Text encoder -> UNet + DDIM (25 steps, no classifier-free guidance) -> PIL images."""

    def __init__(self, text_encoder, resolution: int):
        import torch
        from diffusers import DDIMScheduler

        torch.manual_seed(0)
        self.unet = baseline_unet(BASELINE_CHANNELS, text_encoder.dim, resolution).eval().requires_grad_(False)
        self.scheduler = DDIMScheduler(num_train_timesteps=1000)
        self.text_encoder, self.resolution = text_encoder, resolution

    def __call__(self, prompts: list[str], seed: int) -> list:
        import torch

        from t2i_core.images import to_pil

        with torch.no_grad():
            text = self.text_encoder(prompts)
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(len(prompts), 3, self.resolution, self.resolution, generator=gen)
            x = x * self.scheduler.init_noise_sigma
            self.scheduler.set_timesteps(BASELINE_STEPS)
            for t in self.scheduler.timesteps:
                eps = self.unet(x, t, encoder_hidden_states=text.states, encoder_attention_mask=text.mask).sample
                x = self.scheduler.step(eps, t, x).prev_sample
            return to_pil(x)


def time_calls(call, prompts: Prompts, batch: int, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `call(prompts, seed)` after `warmup` untimed calls; new prompts every call."""
    for i in range(warmup):
        call(prompts.take(batch), i)
    times = []
    for i in range(repeats):
        batch_prompts = prompts.take(batch)
        start = time.perf_counter()
        call(batch_prompts, warmup + i)
        times.append(time.perf_counter() - start)
    return times


# Peak RSS of a separate generate process.

_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def generate_peak_rss_mb(model: Path, out: Path) -> float:
    """Peak RSS (MB) of `python -m t2i_core generate` run to completion, as the kernel counted it."""
    cmd = [sys.executable, "-m", "t2i_core", "generate", "--prompt", "a red apple on a table", "--seed", "0",
           "--model", str(model), "--out", str(out)]
    # A fresh small wrapper: a child forked from this big process could report this process's RSS as its own.
    res = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *cmd], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), check=True)
    rc, kb = res.stdout.split()
    if rc != "0":
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit status {rc}")
    return int(kb) / 1024  # ru_maxrss is in KB on Linux


# Report.

def write_json(path: Path, result: dict) -> None:
    """Write a benchmark's figures as indented JSON (both scripts' --json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def summarise(name: str, batch: int, times: list[float]) -> dict:
    p50 = statistics.median(times) * 1000
    return {"name": name, "batch": batch, "calls": len(times), "p50_ms_per_call": p50, "ms_per_image": p50 / batch,
            "images_per_s": 1000 * batch / p50}


def print_table(rows: list[dict]) -> None:
    print(f"| {'row':<14} | {'calls':>5} | {'p50 ms/call':>11} | {'ms/image':>9} | {'images/s':>9} | {'speed-up':>9} |")
    print(f"|{'-' * 16}|{'-' * 7}|{'-' * 13}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
    for r in rows:
        speedup = f"{r['speedup']:.0f}x" if r.get("speedup") else "-"
        print(f"| {r['name'] + ' b=' + str(r['batch']):<14} | {r['calls']:>5} | {r['p50_ms_per_call']:>11.1f} | "
              f"{r['ms_per_image']:>9.2f} | {r['images_per_s']:>9.1f} | {speedup:>9} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: shipped, else random)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of ours per batch size (p50 of these)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of ours per batch size first")
    parser.add_argument("--baseline-repeats", type=int, nargs="+", default=[5, 3], metavar="N",
                        help="timed baseline calls at batch 1 and at batch 16 (one value: both)")
    parser.add_argument("--baseline-warmup", type=int, default=1, help="untimed baseline calls per batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    args = parser.parse_args()
    if len(args.baseline_repeats) > 2 or min(args.repeats, *args.baseline_repeats) < 1:
        parser.error("--repeats and --baseline-repeats (one or two values) must be >= 1")
    base_repeats = dict(zip(BATCH_SIZES, args.baseline_repeats * 2 if len(args.baseline_repeats) == 1
                            else args.baseline_repeats))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        tmp = Path(tmp)
        pipe, model, what = load_ours(args.model, tmp)
        resolution = pipe.generator.config.resolution
        baseline = Baseline(pipe.text_encoder, resolution)
        base_params = count_parameters(baseline.unet)
        print(f"ours: {what}; {resolution}x{resolution}; generator {count_parameters(pipe.generator) / 1e6:.2f}M "
              f"parameters")
        print(f"baseline: UNet2DConditionModel {BASELINE_CHANNELS}, {base_params / 1e6:.2f}M parameters, DDIM "
              f"{BASELINE_STEPS} steps, classifier-free guidance off; calls per batch size {base_repeats}, "
              f"{args.baseline_warmup} warm-up")

        prompts = Prompts()
        load_before = load_average()
        rows = []
        for batch in BATCH_SIZES:
            times = time_calls(lambda p, s: ours_call(pipe, p, s), prompts, batch, args.warmup, args.repeats)
            rows.append(summarise("ours", batch, times))
        for batch in BATCH_SIZES:
            times = time_calls(baseline, prompts, batch, args.baseline_warmup, base_repeats[batch])
            rows.append(summarise("baseline", batch, times))
        load_after = load_average()
        base_ms = {r["batch"]: r["ms_per_image"] for r in rows if r["name"] == "baseline"}
        for r in rows:
            if r["name"] == "ours":
                r["speedup"] = base_ms[r["batch"]] / r["ms_per_image"]

        peak_mb = generate_peak_rss_mb(model, tmp / "rss.png")

    info = machine_info()
    print_machine(info, load_before, load_after)
    print(f"(ours: p50 of {args.repeats} calls after {args.warmup} warm-up; speed-up = baseline ms/image / ours "
          "ms/image at the same batch size)")
    print_table(rows)
    print(f"peak RSS of `python -m t2i_core generate` (1 image): {peak_mb:.0f} MB")
    one, speedup = rows[0]["p50_ms_per_call"], rows[0]["speedup"]
    goals = {
        f"one image p50 <= {GOAL_MS_ONE_IMAGE:.0f} ms": one <= GOAL_MS_ONE_IMAGE,
        f">= {GOAL_SPEEDUP:.0f}x faster per image than the baseline (b=1)": speedup >= GOAL_SPEEDUP,
        f"peak RSS <= {GOAL_PEAK_RSS_MB / 1024:.1f} GB": peak_mb <= GOAL_PEAK_RSS_MB,
    }
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    if args.json:
        result = {"machine": info, "load_average_before": load_before, "load_average_after": load_after,
                  "model": what, "resolution": resolution, "precision": "fp32", "repeats": args.repeats,
                  "warmup": args.warmup,
                  "baseline": {"block_out_channels": list(BASELINE_CHANNELS), "parameters": base_params,
                               "scheduler": "DDIMScheduler", "steps": BASELINE_STEPS, "guidance": "off",
                               "repeats": {str(b): n for b, n in base_repeats.items()},
                               "warmup": args.baseline_warmup},
                  "rows": rows, "generate_peak_rss_mb": peak_mb, "goals": goals}
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
