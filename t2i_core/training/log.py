"""What a run reports: log.txt lines, metrics.jsonl rows, TensorBoard (when installed), the progress callback, and
the hardware record that model folders carry."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Progress:
    """What the progress callback receives after each logged step."""

    step: int
    total: int
    losses: dict[str, float]
    elapsed: float
    sample_path: str | None = None
    message: str = ""


class RunLog:
    """Rank 0 writes; other processes stay silent. `callback` gets a Progress after each logged step."""

    def __init__(self, run_dir: Path, rank: int, callback: Callable[[Progress], None] | None = None):
        self.run_dir, self.rank, self.callback = run_dir, rank, callback
        self.tensorboard = None
        if rank == 0:
            try:  # optional: needs the tensorboard package
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def line(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)
            if self.run_dir.exists():
                with open(self.run_dir / "log.txt", "a") as f:
                    f.write(text + "\n")

    def metrics(self, step: int, total: int, images_seen: int, losses: dict, start: float, sample: str | None,
                message: str = "") -> None:
        if self.rank != 0:
            return
        # "wall" (Unix time) lets a reader tell the time since training began now, not as of this row; "end" says
        # why the run ended, on its last row.
        now = time.time()
        rec = {"step": step, "time": round(now - start, 2), "wall": round(now, 2), "images": images_seen,
               **{k: round(v, 5) for k, v in losses.items()}, **({"end": message} if message else {})}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tensorboard is not None:
            for k, v in losses.items():
                self.tensorboard.add_scalar(f"loss/{k}", v, step)
            if sample:
                import numpy as np
                from PIL import Image

                self.tensorboard.add_image("samples", np.asarray(Image.open(sample)), step, dataformats="HWC")
            self.tensorboard.flush()
        if self.callback:
            self.callback(Progress(step, total, losses, time.time() - start, sample, message))


def hardware_name(device: str | torch.device = "cpu") -> str:
    """The accelerator's name, or the CPU model and torch's thread count: what a model card says trained it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type}: {cpu_model()}, {threads} torch thread{'' if threads == 1 else 's'}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
