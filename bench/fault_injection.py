"""Fault injection: SIGKILL a tiny training run at random points (some during checkpoint writes), resume each time.

    python bench/fault_injection.py [--rounds 10] [--seed 0] [--work DIR]

Each round starts `python -m t2i_core train --resume` (a 16 px model, a checkpoint every step, one thread), waits
until it trains, kills it with SIGKILL after a random delay and notes whether a checkpoint was being written (a
`.tmp-*` folder existed). A last round runs to the end unkilled. It passes when every round after the first
resumed from a checkpoint, the last one exits 0, and the final model's weights are finite and load as a pipeline.
tests/test_fault_injection.py runs it with a few rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--init", "none", "--resolution", "16", "--g-channels", "32", "32", "16", "--d-channels", "16", "32", "32",
        "--batch-size", "8", "--precision", "fp32", "--checkpoint-every", "1", "--sample-every", "1000",
        "--log-every", "1", "--threads", "1", "--seed", "3"]


def train_cmd(data: Path, run: Path, max_steps: int) -> list[str]:
    return [sys.executable, "-m", "t2i_core", "train", "--data", str(data), "--out", str(run), "--resume",
            "--max-steps", str(max_steps), *TINY]


def steps_done(run: Path) -> int:
    ckpts = [int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(ckpts, default=0)


def one_round(data: Path, run: Path, rng: random.Random, env: dict) -> dict:
    """Start, wait for training (a checkpoint newer than before), kill at a random moment; what was going on."""
    before = steps_done(run)
    proc = subprocess.Popen(train_cmd(data, run, 10_000), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while steps_done(run) <= before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    writing = any(run.glob(".tmp-*"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"before": before, "after": steps_done(run), "during_write": writing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and run (default: a temp one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from t2i_core.data import shapes

    work = args.work or Path(tempfile.mkdtemp(prefix="t2i_faults_"))
    data = shapes.make_shapes_dataset(work / "data", n=16, resolution=32)
    run, rng = work / "run", random.Random(args.seed)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    rounds = [one_round(data, run, rng, env) for _ in range(args.rounds)]
    final_steps = steps_done(run) + 2
    last = subprocess.run(train_cmd(data, run, final_steps), env=env, capture_output=True, text=True, cwd=ROOT)
    log = (run / "log.txt").read_text()
    resumed = log.count("Resumed from")

    import torch

    from t2i_core.pipeline import T2IPipeline

    pipe = T2IPipeline.from_pretrained(run / "model")
    finite = all(torch.isfinite(p).all().item() for p in pipe.generator.parameters())
    result = {"rounds": rounds, "killed_during_write": sum(r["during_write"] for r in rounds),
              "resumes": resumed, "final_returncode": last.returncode, "final_step": steps_done(run),
              "weights_finite": finite, "skipped_damaged": log.count("Skipped checkpoint")}
    ok = (last.returncode == 0 and finite and resumed >= args.rounds and result["final_step"] == final_steps)
    result["ok"] = ok
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
