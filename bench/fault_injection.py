"""Fault injection: SIGKILL a tiny training run at random points and in the middle of checkpoint writes, resume each
time.

    python bench/fault_injection.py [--rounds 10] [--write-rounds 5] [--seed 0] [--work DIR]

Each round starts `python -m t2i_core train --resume` (a 16 px model, a checkpoint every step, one thread) and kills
it with SIGKILL. In a random round the kill comes after a random delay once the run trains, and the round notes
whether a checkpoint was being written then (a `.tmp-*` folder existed). In a write round (--write-rounds of them,
never the first) the trainer runs under a wrapper that holds its first checkpoint write half done: after the
generator's weights are written into `.tmp-checkpoint-<step>/`, or after the model folder is written into
`.tmp-model/` but before it is swapped in (the two alternate). The wrapper says so in a marker file, and the kill
lands there, deterministically. A last round runs to the end unkilled. It passes when every round after the first
resumed from a checkpoint, every write round was killed mid-write, the last one exits 0, no `.tmp-*` folder is left,
and the final model's weights are finite and load as a pipeline. tests/test_fault_injection.py runs it with a few
rounds.
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


# Runs `python -m t2i_core ARGS...` with a checkpoint writer that stops half way: argv[1] says where ("checkpoint":
# inside .tmp-checkpoint-<step>/, "model": the model folder written but not swapped in), argv[2] is the marker file.
HOLD_WRITE = """
import runpy, sys, time
from pathlib import Path
import t2i_core.training.checkpoints as ck
phase, marker = sys.argv[1], Path(sys.argv[2])
real_save_file, real_save_model = ck.save_file, ck.save_model_folder
def hold(where):
    marker.write_text(str(where))
    time.sleep(600)
def save_file(tensors, path, *args, **kwargs):
    real_save_file(tensors, path, *args, **kwargs)
    hold(path)
def save_model_folder(folder, *args, **kwargs):
    real_save_model(folder, *args, **kwargs)
    hold(folder)
if phase == "checkpoint":
    ck.save_file = save_file
else:
    ck.save_model_folder = save_model_folder
sys.argv = ["t2i_core", *sys.argv[3:]]
runpy.run_module("t2i_core", run_name="__main__", alter_sys=True)
"""


def one_round(data: Path, run: Path, rng: random.Random, env: dict, hold: str | None = None) -> dict:
    """Start, then kill: at a random moment once it trains (a checkpoint newer than before), or, with `hold`
    ("checkpoint" or "model"), while the first checkpoint write is held half done. Returns what was going on."""
    before, marker = steps_done(run), run.parent / "held-write.txt"
    marker.unlink(missing_ok=True)
    cmd = train_cmd(data, run, 10_000)
    if hold:
        cmd = [sys.executable, "-c", HOLD_WRITE, hold, str(marker), *cmd[3:]]  # cmd[:3]: python -m t2i_core
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    if hold:
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        while steps_done(run) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
    in_flight = sorted(p.name for p in run.glob(".tmp-*"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"kind": f"mid-write ({hold})" if hold else "random", "before": before, "after": steps_done(run),
            "during_write": bool(in_flight), "held": marker.exists(), "tmp_at_kill": in_flight}


def plan(rounds: int, write_rounds: int, rng: random.Random) -> list[str | None]:
    """Which rounds hold a write, and where: never the first (the next round must find a checkpoint to resume)."""
    held = sorted(rng.sample(range(1, rounds), min(write_rounds, max(0, rounds - 1))))
    kinds: list[str | None] = [None] * rounds
    for i, r in enumerate(held):
        kinds[r] = ("checkpoint", "model")[i % 2]
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--write-rounds", type=int, default=None,
                        help="rounds killed while a checkpoint write is held half done (default: half the rounds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and run (default: a temp one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from t2i_core.data import shapes

    work = args.work or Path(tempfile.mkdtemp(prefix="t2i_faults_"))
    data = shapes.make_shapes_dataset(work / "data", n=16, resolution=32)
    run, rng = work / "run", random.Random(args.seed)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    write_rounds = args.rounds // 2 if args.write_rounds is None else args.write_rounds
    rounds = [one_round(data, run, rng, env, hold) for hold in plan(args.rounds, write_rounds, rng)]
    final_steps = steps_done(run) + 2
    last = subprocess.run(train_cmd(data, run, final_steps), env=env, capture_output=True, text=True, cwd=ROOT)
    log = (run / "log.txt").read_text()
    resumed = log.count("Resumed from")

    import torch

    from t2i_core.pipeline import T2IPipeline

    pipe = T2IPipeline.from_pretrained(run / "model")
    finite = all(torch.isfinite(p).all().item() for p in pipe.generator.parameters())
    forced = [r for r in rounds if r["kind"] != "random"]
    result = {"rounds": rounds, "killed_during_write": sum(r["during_write"] for r in rounds),
              "write_rounds": len(forced), "write_rounds_killed_mid_write": sum(r["held"] for r in forced),
              "resumes": resumed, "final_returncode": last.returncode, "final_step": steps_done(run),
              "weights_finite": finite, "skipped_damaged": log.count("Skipped checkpoint"),
              "tmp_left": sorted(p.name for p in run.glob(".tmp-*"))}
    ok = (last.returncode == 0 and finite and resumed >= args.rounds and result["final_step"] == final_steps
          and all(r["held"] and r["during_write"] for r in forced) and not result["tmp_left"])
    result["ok"] = ok
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
