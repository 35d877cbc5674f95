"""Cold start of the web app to its first image, against the import floor of the libraries it stands on.

    python bench/cold_start.py [--runs 3] [--json OUT]

Each run starts `python app.py` (the shipped model, runs in a temporary folder, offline) and times the first page
served, then one /generate through gradio_client (the model, its bank and the text encoder load in the model process,
started before the page's imports, so the first image waits for whichever is later), then a second /generate. Two
baselines, timed in the same runs, alternating: a fresh interpreter that only imports what any gradio app over a
transformers text encoder and a diffusers model must import in one process (gradio, torch, BERT's and diffusers'
modeling code) and does nothing else; and the app with its models in its own process (T2I_MODEL_PROCESS=0, as it was
before session 22). Prints medians, every run, and the app's time to the first image over each baseline.
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
from bench_app import ROOT, free_port, start_app  # noqa: E402

FLOOR = ("import gradio, torch, transformers.modeling_utils, transformers.models.bert.modeling_bert, "
         "diffusers.models.modeling_utils")


def import_floor() -> float:
    """Seconds a fresh interpreter takes to import the libraries (the baseline)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return time.perf_counter() - started


def app_run(model: Path, model_process: bool = True) -> dict:
    """One cold start: seconds to the page, the first image after it, and a second image."""
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="cold_start_") as tmp:
        port = free_port()
        proc, page = start_app(model, Path(tmp) / "runs", port, T2I_MODEL_PROCESS="1" if model_process else "0")
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            times = []
            for prompt in ("a red heart", "a blue car"):
                started = time.perf_counter()
                client.predict(prompt, "default", 0, False, 1, 1.0, 1.0, 0, True, None, api_name="/generate")
                times.append(time.perf_counter() - started)
            client.close()
        finally:
            proc.terminate()
            proc.wait(60)
    return {"page_s": page, "first_generate_s": times[0], "first_image_s": page + times[0], "next_generate_s": times[1]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold starts (and floor imports), alternating")
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "model", help="the model the app serves")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs, floors, single = [], [], []
    for _ in range(args.runs):
        floors.append(import_floor())
        single.append(app_run(args.model, model_process=False))
        runs.append(app_run(args.model))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    floor = statistics.median(floors)
    single_first = statistics.median(r["first_image_s"] for r in single)
    result = {"runs": runs, "import_floor_s": floors, "median": med, "median_import_floor_s": floor,
              "ratio_first_image_to_floor": med["first_image_s"] / floor, "one_process_runs": single,
              "median_one_process_first_image_s": single_first,
              "ratio_first_image_to_one_process": med["first_image_s"] / single_first, "cores": os.cpu_count(),
              "load_after": os.getloadavg()[0]}
    print(f"{args.runs} cold starts of `python app.py` ({args.model}), {os.cpu_count()} cores, load average "
          f"{result['load_after']:.1f} at the end")
    print("| figure | median | runs |\n|---|---|---|")
    print(f"| library import floor (baseline: {FLOOR.split(',')[0]}, ...) | {floor:.1f} s | "
          f"{' / '.join(f'{f:.1f}' for f in floors)} |")
    for key, name in (("page_s", "page served"), ("first_generate_s", "first /generate (waits for the model)"),
                      ("first_image_s", "to the first image"), ("next_generate_s", "next /generate")):
        print(f"| {name} | {med[key]:.2f} s | {' / '.join(f'{r[key]:.2f}' for r in runs)} |")
    single_runs = " / ".join(f"{r['first_image_s']:.2f}" for r in single)
    print(f"| one process (T2I_MODEL_PROCESS=0), to the first image | {single_first:.2f} s | {single_runs} |")
    print(f"| to the first image / import floor | {result['ratio_first_image_to_floor']:.2f}x | |")
    print(f"| to the first image / one process's | {result['ratio_first_image_to_one_process']:.2f}x | |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
