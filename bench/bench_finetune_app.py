"""Fine-tune throughput inside the web app against the CLI on the same machine, and generate latency while it trains.

    python bench/bench_finetune_app.py [--seconds 60] [--batch-size 32] [--requests 20] [--num-images 4]

1. CLI: `python -m t2i_core train --init default` on a zip of 64 px pictures for --seconds, all cores (--threads).
2. App: `python app.py` (the trainer gets all cores and pauses while a visitor's request runs), the same run started
   through /start_training. Its throughput is measured first with nobody generating, then while /generate is
   called back to back (--requests calls of --num-images images): the latency of those calls (p50/p95), and the
   training throughput that is left meanwhile.
Throughput is images/s from the trainer's metrics.jsonl rows (step 0's row, before any update, excluded). Goals
(issue 16): app >= 80% of the CLI's with nobody generating; generate p95 <= 1 s during training. Other load on the
machine shows in every figure: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import ROOT, free_port, start_app, training_zip  # noqa: E402


def rate(rows: list[dict], since: float = 0.0, until: float = float("inf")) -> float:
    """Images a second between the first and last rows whose training time lies in [since, until]."""
    rows = [r for r in rows if r["step"] > 0 and "end" not in r and since <= r["time"] <= until]
    if len(rows) < 2 or rows[-1]["time"] <= rows[0]["time"]:
        return float("nan")
    return (rows[-1]["images"] - rows[0]["images"]) / (rows[-1]["time"] - rows[0]["time"])


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def cli_rate(data: Path, out: Path, seconds: float, batch_size: int, threads: int) -> float:
    cmd = [sys.executable, "-m", "t2i_core", "train", "--data", str(data), "--out", str(out), "--init", "default",
           "--minutes", str(seconds / 60), "--max-steps", "1000000", "--batch-size", str(batch_size),
           "--threads", str(threads), "--log-every", "2"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads)))
    return rate(metrics(out))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def app_figures(data: Path, tmp: Path, seconds: float, batch_size: int, requests: int, num_images: int) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    proc, _ = start_app(ROOT / "assets" / "model", tmp / "runs", port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        generate = lambda i: client.predict("grinning face, google style", "default", i, False, num_images, 1.0,  # noqa: E731
                                            1.0, 0, True, "bench", api_name="/generate")
        generate(0)  # load the model before training starts
        client.predict([handle_file(str(data))], "bench", api_name="/check_data")
        client.predict("default", "bench", False, 30, 20000, 2e-4, batch_size, "bench", api_name="/start_training")
        run_dir = next((tmp / "runs" / "runs").iterdir())
        while not any(r["step"] > 0 for r in metrics(run_dir)):
            time.sleep(0.5)
        quiet_from = metrics(run_dir)[-1]["time"]
        time.sleep(seconds)
        quiet_to = metrics(run_dir)[-1]["time"]
        latencies = []
        for i in range(requests):
            t = time.perf_counter()
            generate(i)
            latencies.append(time.perf_counter() - t)
        busy_to = metrics(run_dir)[-1]["time"]
        client.predict("bench", api_name="/stop_training")
        rows = metrics(run_dir)
    finally:
        proc.terminate()
        proc.wait(120)
    return {"quiet": rate(rows, quiet_from, quiet_to), "busy": rate(rows, quiet_to, busy_to),
            "p50": statistics.median(latencies), "p95": percentile(latencies, 0.95), "requests": len(latencies)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--seconds", type=float, default=60, help="training time measured, per condition")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CLI threads (the app: all)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        tmp = Path(tmp)
        data = training_zip(tmp / "data.zip", n=64, size=64)
        cli = cli_rate(data, tmp / "cli-run", args.seconds, args.batch_size, args.threads)
        app = app_figures(data, tmp, args.seconds, args.batch_size, args.requests, args.num_images)
    print(f"cores {len(os.sched_getaffinity(0))}, batch {args.batch_size}, {args.seconds:g} s a condition; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"CLI ({args.threads} threads):                 {cli:7.1f} images/s")
    print(f"app, nobody generating:          {app['quiet']:7.1f} images/s  ({app['quiet'] / cli:.0%} of the CLI; "
          "goal >= 80%)")
    print(f"app, while /generate runs:       {app['busy']:7.1f} images/s")
    print(f"generate during training ({app['requests']} calls of {args.num_images} images): "
          f"p50 {app['p50'] * 1000:.0f} ms, p95 {app['p95'] * 1000:.0f} ms (goal <= 1000 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
