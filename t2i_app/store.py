"""The run store: one folder per run under RUNS/runs/<run-id>/, with run.json (what the app knows about the run)
beside the trainer's files (metrics.jsonl, samples/, checkpoint-N/, model/, log.txt, console.txt)."""

from __future__ import annotations

import json
import os
import re
import shutil
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
    """A run's progress as read from its files: metrics rows, the newest sample grid, the share done (0..1)."""

    run: RunInfo
    step: int
    fraction: float
    elapsed: float
    metrics: list[dict]
    sample: Path | None


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


def latest_sample(run_dir: Path) -> Path | None:
    samples = sorted((Path(run_dir) / "samples").glob("step-*.png"))
    return samples[-1] if samples else None


class RunStore:
    """The runs under `runs_dir`: read and write run.json, list runs and the models an owner may use."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir

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
        """The run's model folder as a .zip (entries under model/), for the owner or anyone once shared.

        The zip is made once per model version and kept in the run folder; what is returned is a link to it in
        `out_dir` (a fresh outputs/ folder, the only place the app lets the web server read from)."""
        path = self.model_dir(run_id, owner)
        info = self.get(run_id)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", info.name).strip("-")[:40] or "model"
        cached = info.path / "model.zip"
        if not cached.is_file() or cached.stat().st_mtime < (path / "model_index.json").stat().st_mtime:
            tmp = info.path / ".model.zip.tmp"
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for file in sorted(path.rglob("*")):
                    if file.is_file():
                        zf.write(file, Path("model") / file.relative_to(path))
            os.replace(tmp, cached)
        out = out_dir / f"{stem}-model.zip"
        try:
            os.link(cached, out)
        except OSError:
            shutil.copyfile(cached, out)
        return out

    def progress(self, run_id: str) -> Progress | None:
        info = self.get(run_id)
        if info is None:
            return None
        metrics = read_metrics(info.path)
        step = int(metrics[-1]["step"]) if metrics else 0
        elapsed = float(metrics[-1]["time"]) if metrics else 0.0
        fraction = step / info.max_steps if info.max_steps else 0.0
        if info.minutes and info.status == RUNNING:
            # The time budget may end the run before its step count does; the trainer's clock starts after loading.
            fraction = max(fraction, elapsed / (info.minutes * 60))
        if info.status == FINISHED:
            fraction = 1.0
        return Progress(info, step, min(1.0, fraction), elapsed, metrics, latest_sample(info.path))
