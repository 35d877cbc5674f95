"""Generate latency of the web app with and without a training run beside it, plus its cold start.

    python bench/bench_app.py [--model PATH] [--requests 20] [--num-images 4] [--batch-size 32]

Starts `python app.py` on a free port (T2I_RUNS_DIR in a temporary folder), times the first page, then times
/generate through gradio_client: first with the server idle, then while a fine-tune (one thread, as the app runs
it) trains beside it. Without --model it uses the shipped model, else a random model of the default architecture
(same compute as the real one). Prints a table. Other load on the machine shows up in the figures: run it on a
quiet machine, and more than once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_architecture_model(folder: Path) -> Path:
    """A random-weights model folder with the default Generator/Discriminator configs (64 px)."""
    import torch

    from t2i_core import Discriminator, Generator, save_model_folder
    from t2i_core.text import load_text_encoder

    encoder = load_text_encoder()
    torch.manual_seed(0)
    g = Generator(text_dim=encoder.dim, pooled_dim=encoder.pooled_dim)
    d = Discriminator(pooled_dim=encoder.pooled_dim)
    return save_model_folder(folder / "model", g, encoder.name, d)


def training_zip(path: Path, n: int = 64, size: int = 64) -> Path:
    from PIL import Image

    rows = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, "PNG")
            zf.writestr(f"{i}.png", buf.getvalue())
            rows.append(json.dumps({"file_name": f"{i}.png", "text": f"colour number {i}"}))
        zf.writestr("metadata.jsonl", "\n".join(rows) + "\n")
    return path


def start_app(model: Path, runs: Path, port: int, **extra_env: str) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, T2I_MODEL=str(model), T2I_RUNS_DIR=str(runs), GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", HF_HUB_OFFLINE="1", **extra_env)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=runs.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.perf_counter() - started < 120:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - started
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the app did not start within 120 s")


def time_generate(client, n: int, num_images: int, size: int) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        client.predict("grinning face, google style", "default", i, False, num_images, 1.0, 1.0, size, True, "bench",
                       api_name="/generate")
        times.append(time.perf_counter() - t)
    return times


def row(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return f"| {name:<28} | {len(ms):>3} | {statistics.median(ms):>8.0f} | {p90:>8.0f} | {ms[-1]:>8.0f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: shipped, else random)")
    parser.add_argument("--requests", type=int, default=20, help="generate calls per condition")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--size", type=int, default=0, choices=(0, 128, 256, 512), help="display size (0 = model)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the training run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from gradio_client import Client, handle_file

    from t2i_core.pipeline import DEFAULT_MODEL_DIR

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "model_index.json").is_file() else \
                default_architecture_model(tmp)
        port = free_port()
        proc, cold = start_app(model, tmp / "runs", port)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            time_generate(client, 2, args.num_images, args.size)  # load the model, warm the kernels
            idle = time_generate(client, args.requests, args.num_images, args.size)

            client.predict([handle_file(str(training_zip(tmp / "data.zip")))], "bench", api_name="/check_data")
            status, _ = client.predict("default", "bench", False, 30, 20000, 2e-4, args.batch_size, "bench",
                                       api_name="/start_training")
            if "Started" not in status:
                raise SystemExit(f"training did not start: {status}")
            deadline = time.monotonic() + 300
            while client.predict("bench", api_name="/run_status").get("step", 0) < 1:
                if time.monotonic() > deadline:
                    raise SystemExit("training made no step within 300 s")
                time.sleep(1)
            busy = time_generate(client, args.requests, args.num_images, args.size)
            steps = client.predict("bench", api_name="/run_status")["step"]
            client.predict("bench", api_name="/stop_training")
        finally:
            proc.terminate()
            proc.wait(120)

    print(f"model: {model}  images per call: {args.num_images}  display size: {args.size or 'model'}  "
          f"cores: {os.cpu_count()}  load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"cold start of `python app.py` to the first page served: {cold:.1f} s")
    print(f"| {'condition':<28} | {'n':>3} | {'p50 ms':>8} | {'p90 ms':>8} | {'max ms':>8} |")
    print(f"|{'-' * 30}|{'-' * 5}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    print(row("idle server", idle))
    print(row(f"training beside (bs {args.batch_size})", busy))
    print(f"(the training run reached step {steps} during the measurement)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
