"""The run store: one folder per run under RUNS/runs/<run-id>/, with run.json (what the app knows about the run)
beside the trainer's files (metrics.jsonl, samples/, checkpoint-N/, model/, log.txt, console.txt)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

RUNNING = "running"
FINISHED = "finished"  # reached its step count or time budget
STOPPED = "stopped"  # stopped by its owner; the last checkpoint is kept
FAILED = "failed"
INTERRUPTED = "interrupted"  # the server went away while it trained
STATUSES = (RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED)

DEFAULT_MODEL_KEY = "default"
SCRATCH_KEY = "none"
PLOTTED_LOSSES = ("d", "g_adv", "rec")
_OWNER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ID_PATTERN = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


@dataclass
class RunInfo:
    """What the app knows about one run (stored as run.json beside the trainer's files)."""

    id: str
    owner: str
    name: str
    created: float
    status: str = RUNNING
    shared: bool = False
    init: str = SCRATCH_KEY
    upload: str = ""
    max_steps: int = 0
    minutes: float = 0.0
    lr: float = 0.0
    batch_size: int = 0
    pid: int | None = None
    stop_requested: bool = False
    ended: float | None = None
    returncode: int | None = None
    message: str = ""
    path: Path = field(default=Path("."), compare=False)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def has_model(self) -> bool:
        return (self.model_dir / "model_index.json").is_file()

    @property
    def usable(self) -> bool:
        """A finished, stopped or interrupted run with a model folder can be used for generation."""
        return self.status != RUNNING and self.has_model

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


@dataclass
class Progress:
    """A run's progress as read from its files: metrics rows, the newest sample grid, the share done (0..1).

    `elapsed` is wall-clock seconds since the run was started (loading included); `left` the seconds of its time
    budget still to go (None without one); `rate` images a second over the last minute of training; `end` why the
    trainer ended ("max steps", "time budget", "stop requested"), from its last row."""

    run: RunInfo
    step: int
    fraction: float
    elapsed: float
    metrics: list[dict]
    sample: Path | None
    images: int = 0
    rate: float | None = None
    left: float | None = None
    end: str = ""


def check_owner(owner: str) -> str:
    """Owner ids are opaque tokens; refuse anything that is not one (they appear in run.json, never in paths)."""
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise ValueError(f"owner id must be 1-64 letters, digits, '-' or '_', got {owner!r}")
    return owner


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader (the page polling) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows; a line still being written (no newline yet or bad JSON) is left for the next read."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def export_model(src: Path, dst: Path) -> Path:
    """A download copy of the model folder `src` in `dst`: the EMA generator stored in fp16, `bank/` copied as it
    is, model_index.json's text encoder and training record kept; no discriminator."""
    import torch

    from t2i_core import Generator, save_model_folder
    from t2i_core.models.folder import load_bank, read_model_index

    index = read_model_index(src)
    g = Generator.from_pretrained(src / "generator", use_safetensors=True, torch_dtype=torch.float32)
    return save_model_folder(dst, g, index["text_encoder"], storage_dtype=torch.float16, training=index.get("training"),
                             bank=load_bank(src))


def latest_sample(run_dir: Path) -> Path | None:
    samples = sorted((Path(run_dir) / "samples").glob("step-*.png"))
    return samples[-1] if samples else None


class RunStore:
    """The runs under `runs_dir`: read and write run.json, list runs and the models an owner may use."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir
        self._zip_lock = threading.Lock()  # one export at a time: the page's timer can ask twice before it is done

    def load(self, run_dir: Path) -> RunInfo | None:
        try:
            data = json.loads((run_dir / "run.json").read_text())
            return RunInfo(**data, path=run_dir)
        except (OSError, json.JSONDecodeError, TypeError):
            return None

    def save(self, info: RunInfo) -> None:
        write_json(info.path / "run.json", info.to_json())

    def get(self, run_id: str) -> RunInfo | None:
        if not isinstance(run_id, str) or not ID_PATTERN.match(run_id):
            return None
        return self.load(self.runs_dir / run_id)

    def runs(self, owner: str | None = None) -> list[RunInfo]:
        """All runs (or one owner's), newest first."""
        if not self.runs_dir.is_dir():
            return []
        found = [info for d in self.runs_dir.iterdir() if d.is_dir() and (info := self.load(d)) is not None]
        if owner is not None:
            found = [r for r in found if r.owner == owner]
        return sorted(found, key=lambda r: r.created, reverse=True)

    def models(self, owner: str) -> list[RunInfo]:
        """Usable fine-tunes this owner may generate with: their own, then the ones others shared; newest first."""
        usable = [r for r in self.runs() if r.usable and (r.owner == owner or r.shared)]
        return sorted(usable, key=lambda r: (r.owner != owner, -r.created))

    def model_dir(self, run_id: str, owner: str) -> Path:
        """The model folder of a run this owner may use; else ValueError."""
        info = self.get(run_id)
        if info is None or not (info.owner == owner or info.shared) or not info.usable:
            raise ValueError(f"Model {run_id!r} is not available to you; pick another one from the list.")
        return info.model_dir

    def set_shared(self, run_id: str, owner: str, shared: bool) -> RunInfo:
        info = self.get(run_id)
        if info is None or info.owner != owner:
            raise ValueError("Only the owner of a run can share or unshare it.")
        info.shared = bool(shared)
        self.save(info)
        return info

    def zip_model(self, run_id: str, owner: str, out_dir: Path) -> Path:
        """The run's model as a .zip for the owner (or anyone once shared): a flat model folder (model_index.json at
        the root) that `--model` takes unzipped or zipped; the generator in fp16, the exemplar bank if any, no
        discriminator (generating does not need it; the run folder keeps it for fine-tuning on), files mode 0644.

        The zip is made once per model version and kept in the run folder; what is returned is a link to it in
        `out_dir` (a fresh outputs/ folder, the only place the app lets the web server read from)."""
        path = self.model_dir(run_id, owner)
        info = self.get(run_id)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", info.name).strip("-")[:40] or "model"
        cached = info.path / "model.zip"
        with self._zip_lock:
            if not cached.is_file() or cached.stat().st_mtime < (path / "model_index.json").stat().st_mtime:
                export = info.path / ".export"
                shutil.rmtree(export, ignore_errors=True)
                export_model(path, export)
                tmp = info.path / ".model.zip.tmp"
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                    for file in sorted(export.rglob("*")):
                        if file.is_file():
                            entry = zipfile.ZipInfo(file.relative_to(export).as_posix(), time.localtime()[:6])
                            entry.external_attr, entry.compress_type = 0o100644 << 16, zipfile.ZIP_DEFLATED
                            zf.writestr(entry, file.read_bytes())
                shutil.rmtree(export, ignore_errors=True)
                os.replace(tmp, cached)
        out = out_dir / f"{stem}-model.zip"
        try:
            os.link(cached, out)
        except OSError:
            shutil.copyfile(cached, out)
        return out

    def progress(self, run_id: str, now: float | None = None) -> Progress | None:
        info = self.get(run_id)
        if info is None:
            return None
        now = time.time() if now is None else now
        metrics = read_metrics(info.path)
        last = metrics[-1] if metrics else {}
        step, images = int(last.get("step", 0)), int(last.get("images", 0))
        # The trainer's clock starts after loading; "wall" - "time" is when that was, so now - it is up to date.
        trained = now - (last["wall"] - last["time"]) if "wall" in last else float(last.get("time", 0.0))
        end_time = info.ended if info.status != RUNNING and info.ended else now
        elapsed = max(0.0, end_time - info.created)
        left = None
        if info.minutes and info.status == RUNNING and metrics:
            left = max(0.0, info.minutes * 60 - trained)
        fraction = step / info.max_steps if info.max_steps else 0.0
        if info.minutes and info.status == RUNNING:
            fraction = max(fraction, trained / (info.minutes * 60))
        if info.status == FINISHED:
            fraction = 1.0
        return Progress(info, step, min(1.0, fraction), elapsed, metrics, latest_sample(info.path), images,
                        recent_rate(metrics), left, str(last.get("end", "")))


def recent_rate(metrics: list[dict], window_s: float = 60.0) -> float | None:
    """Images a second over the last `window_s` seconds of training rows (None before two rows)."""
    if len(metrics) < 2:
        return None
    last = metrics[-1]
    first = next((row for row in metrics if last["time"] - row["time"] <= window_s and row is not last), None)
    if first is None or last["time"] <= first["time"]:
        first = metrics[-2]
    seconds = last["time"] - first["time"]
    return (last.get("images", 0) - first.get("images", 0)) / seconds if seconds > 0 else None
