"""What the app's model process costs once it is up: generate latency and memory, against the app in one process.

    python bench/model_process.py [--requests 20] [--rounds 2]

Starts `python app.py` (the shipped model, runs in a temporary folder) with T2I_MODEL_PROCESS=1 and with =0, in
turn, `--rounds` times each. In each: two warm-up calls, then `--requests` /generate calls through gradio_client of
1 image and of 4 images at 256 px, then the resident memory of the server with its model process (psutil, after the
calls). Prints p50 per setting and the ratio of the two. The cold start is bench/cold_start.py's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import ROOT, free_port, start_app, time_generate  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    rss = proc.memory_info().rss
    for child in proc.children():
        if "t2i_app.model_process" in " ".join(child.cmdline()):
            rss += child.memory_info().rss
    return rss / 2**20


def one(model_process: bool, requests: int) -> dict:
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="bench_mp_") as tmp:
        proc, _ = start_app(ROOT / "assets" / "model", Path(tmp) / "runs", port := free_port(),
                            T2I_MODEL_PROCESS="1" if model_process else "0")
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            time_generate(client, 2, 4, 256)
            out = {"one_image": time_generate(client, requests, 1, 256), "four_images": time_generate(client, requests, 4, 256)}
            out["rss_mb"] = tree_rss_mb(proc.pid)
            client.close()
        finally:
            proc.terminate()
            proc.wait(60)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = {True: [], False: []}
    for _ in range(args.rounds):
        for setting in (True, False):
            runs[setting].append(one(setting, args.requests))
    print(f"{args.rounds} rounds x {args.requests} /generate calls per size, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print("| figure | model process | one process | ratio |\n|---|---|---|---|")
    for key, name in (("one_image", "1 image at 256 px, p50"), ("four_images", "4 images at 256 px, p50")):
        a, b = (statistics.median(t for r in runs[s] for t in r[key]) * 1000 for s in (True, False))
        print(f"| {name} | {a:.0f} ms | {b:.0f} ms | {a / b:.2f}x |")
    a, b = (statistics.median(r["rss_mb"] for r in runs[s]) for s in (True, False))
    print(f"| resident memory after the calls (server + model process) | {a:.0f} MB | {b:.0f} MB | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
