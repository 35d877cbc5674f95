"""Fine-tuning runs for the web app: uploads, one training process at a time, progress, models per owner, retention.

Nothing here imports gradio, so every rule is unit-testable. Layout under the runs folder (T2I_RUNS_DIR, default
./runs):

    uploads/<upload-id>/data/        an upload, extracted with `safe_extract_zip` or copied file by file
    uploads/<upload-id>/upload.json  {owner, created, pairs, report}
    runs/<run-id>/                   the trainer's RUN_DIR (metrics.jsonl, samples/, checkpoint-N/, model/, log.txt)
    runs/<run-id>/run.json           {owner, name, shared, status, pid, ...}: what the app knows about the run
    runs/<run-id>/console.txt        the training process's stdout and stderr
    outputs/                         short-lived files for downloads (animations); pruned after an hour

Training runs in a child process (`python -m t2i_core train ... --threads 1`, OMP_NUM_THREADS=1, lowered priority),
so generation in the server stays responsive and closing a browser loses nothing. Stop sends SIGTERM: the trainer
finishes its step, writes a checkpoint and exits 0, so the run keeps a usable model. An owner is an opaque id (the
app uses a random per-browser id); a run's model is visible to its owner, and to everyone once shared.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data.loading import DataError, UploadLimits, load_pairs, safe_extract_zip

RUNNING = "running"
FINISHED = "finished"  # reached its step count or time budget
STOPPED = "stopped"  # stopped by its owner; the last checkpoint is kept
FAILED = "failed"
INTERRUPTED = "interrupted"  # the server went away while it trained
STATUSES = (RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED)

DEFAULT_MODEL_KEY = "default"
SCRATCH_KEY = "none"
PLOTTED_LOSSES = ("d", "g_adv", "rec")
OUTPUT_TTL_S = 3600.0
_OWNER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
_REPO_ROOT = Path(__file__).resolve().parent.parent


class BusyError(RuntimeError):
    """A training run is already going on this server."""


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
class Upload:
    """A checked upload: `id` is None when nothing usable was found, and `report` says why."""

    id: str | None
    report: str
    pairs: int = 0
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.id is not None


@dataclass
class Progress:
    """A run's progress as read from its files: metrics rows, the newest sample grid, the share done (0..1)."""

    run: RunInfo
    step: int
    fraction: float
    elapsed: float
    metrics: list[dict]
    sample: Path | None


@dataclass
class _Job:
    run_id: str
    pid: int
    proc: subprocess.Popen | None  # None for a process adopted after a server restart

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _pid_alive(self.pid)


def check_owner(owner: str) -> str:
    """Owner ids are opaque tokens; refuse anything that is not one (they appear in run.json, never in paths)."""
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise ValueError(f"owner id must be 1-64 letters, digits, '-' or '_', got {owner!r}")
    return owner


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _write_json(path: Path, data: dict) -> None:
    """Atomic: a reader (the page polling) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tree_bytes(path: Path) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


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


class RunManager:
    """Uploads, the one training process of this server, and the runs and models under `root`.

    Retention: finished runs beyond `max_runs`, or beyond `max_bytes` of disk for the whole folder, are deleted oldest
    first; uploads older than `upload_ttl_s` go too; the running run and its upload are never deleted. `start`
    refuses while the folder is over `max_bytes` even after that.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        max_runs: int = 30,
        max_bytes: int = 5 * 1024**3,
        upload_ttl_s: float = 24 * 3600.0,
        limits: UploadLimits | None = None,
        threads: int = 1,
        python: str = sys.executable,
    ):
        self.root = Path(root).resolve()
        self.max_runs, self.max_bytes, self.upload_ttl_s = max_runs, max_bytes, upload_ttl_s
        self.limits = limits or UploadLimits(max_entries=20000, max_total_bytes=1024**3)
        self.threads, self.python = threads, python
        self.runs_dir, self.uploads_dir = self.root / "runs", self.root / "uploads"
        self.outputs_dir = self.root / "outputs"
        for d in (self.runs_dir, self.uploads_dir, self.outputs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._job: _Job | None = None
        self._adopt_or_close_running()

    @classmethod
    def from_env(cls) -> "RunManager":
        """T2I_RUNS_DIR (default ./runs), T2I_MAX_RUNS (30), T2I_MAX_DISK_GB (5)."""
        return cls(
            os.environ.get("T2I_RUNS_DIR") or "runs",
            max_runs=int(os.environ.get("T2I_MAX_RUNS") or 30),
            max_bytes=int(float(os.environ.get("T2I_MAX_DISK_GB") or 5) * 1024**3),
        )

    # Small helpers the app needs.

    def browser_secret(self) -> str:
        """A per-server secret (T2I_BROWSER_SECRET, else made once and kept in the runs folder) so that ids kept
        in a browser survive server restarts."""
        if os.environ.get("T2I_BROWSER_SECRET"):
            return os.environ["T2I_BROWSER_SECRET"]
        path = self.root / ".browser_secret"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def new_output_dir(self) -> Path:
        """A fresh folder under outputs/ for files a visitor downloads (pruned by `enforce_retention`)."""
        path = self.outputs_dir / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    @staticmethod
    def default_model_path() -> Path | None:
        """The shipped model folder ($T2I_MODEL or assets/model/), or None while no trained one exists."""
        from .pipeline import default_model_path

        path = default_model_path()
        return path if (path / "model_index.json").is_file() else None

    # Runs and models.

    def _load(self, run_dir: Path) -> RunInfo | None:
        try:
            data = json.loads((run_dir / "run.json").read_text())
            return RunInfo(**data, path=run_dir)
        except (OSError, json.JSONDecodeError, TypeError):
            return None

    def _save(self, info: RunInfo) -> None:
        _write_json(info.path / "run.json", info.to_json())

    def get(self, run_id: str) -> RunInfo | None:
        if not isinstance(run_id, str) or not _ID.match(run_id):
            return None
        return self._load(self.runs_dir / run_id)

    def runs(self, owner: str | None = None) -> list[RunInfo]:
        """All runs (or one owner's), newest first."""
        found = [info for d in self.runs_dir.iterdir() if d.is_dir() and (info := self._load(d)) is not None]
        if owner is not None:
            found = [r for r in found if r.owner == owner]
        return sorted(found, key=lambda r: r.created, reverse=True)

    def latest_run(self, owner: str) -> RunInfo | None:
        mine = self.runs(owner)
        return mine[0] if mine else None

    def models(self, owner: str) -> list[RunInfo]:
        """Usable fine-tunes this owner may generate with: their own, then the ones others shared; newest first."""
        usable = [r for r in self.runs() if r.usable and (r.owner == owner or r.shared)]
        return sorted(usable, key=lambda r: (r.owner != owner, -r.created))

    def resolve_model(self, key: str, owner: str) -> Path:
        """A model key ("default" or a run id) -> its model folder, if this owner may use it; else ValueError."""
        if key == DEFAULT_MODEL_KEY:
            path = self.default_model_path()
            if path is None:
                raise ValueError("No trained default model is shipped yet; pick one of your fine-tuned models "
                                 "or fine-tune one in the Fine-tune tab.")
            return path
        info = self.get(key)
        if info is None or not (info.owner == owner or info.shared) or not info.usable:
            raise ValueError(f"Model {key!r} is not available to you; pick another one from the list.")
        return info.model_dir

    def set_shared(self, run_id: str, owner: str, shared: bool) -> RunInfo:
        with self._lock:
            info = self.get(run_id)
            if info is None or info.owner != owner:
                raise ValueError("Only the owner of a run can share or unshare it.")
            info.shared = bool(shared)
            self._save(info)
            return info

    def zip_model(self, run_id: str, owner: str) -> Path:
        """The run's model folder as a .zip (entries under model/), for the owner or anyone once shared.

        The zip is made once per model version and kept in the run folder; what is returned is a link to it in a
        fresh outputs/ folder, the only place the app lets the web server read from."""
        path = self.resolve_model(run_id, owner)
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
        out = self.new_output_dir() / f"{stem}-model.zip"
        try:
            os.link(cached, out)
        except OSError:
            shutil.copyfile(cached, out)
        return out

    # Uploads.

    def prepare_upload(self, files: list[str | os.PathLike], owner: str, resolution: int = 16) -> Upload:
        """Extract or copy uploaded files into a new folder under uploads/ and check them with `load_pairs`.

        One or more .zip files are extracted with `safe_extract_zip` (zip slip, symlinks, bombs and too many entries
        are refused before anything is written); other files are copied flat by their base name, so sidecar .txt
        captions and a metadata.jsonl/csv pair up. The report lists pairs found and files skipped with reasons.
        """
        check_owner(owner)
        files = [Path(f) for f in files or [] if f]
        if not files:
            return Upload(None, "No files uploaded: add a .zip, or images with captions (.txt beside each image, "
                                "or a metadata.jsonl/metadata.csv).")
        self.enforce_retention()
        upload_id = _new_id()
        base = self.uploads_dir / upload_id
        data = base / "data"
        try:
            data.mkdir(parents=True)
            zips = [f for f in files if f.suffix.lower() == ".zip"]
            others = [f for f in files if f.suffix.lower() != ".zip"]
            if len(others) > self.limits.max_entries:
                raise DataError(f"{len(others)} files uploaded, over the limit of {self.limits.max_entries}.")
            for i, archive in enumerate(zips):
                target = data if len(zips) == 1 and not others else data / f"archive-{i + 1}"
                safe_extract_zip(archive, target, self.limits)
            total = 0
            for f in others:
                name = f.name
                if name.startswith(".") or not name:
                    continue
                size = f.stat().st_size
                total += size
                if size > self.limits.max_file_bytes or total > self.limits.max_total_bytes:
                    raise DataError(f"{name} makes the upload larger than the limit of "
                                    f"{self.limits.max_total_bytes // 1024**2} MB; upload less data.")
                dest = data / name
                if dest.exists():
                    continue  # the same name twice: the first copy wins, as a file system would have it
                shutil.copyfile(f, dest)
            pairs, report = load_pairs(data, resolution, limits=self.limits)
        except DataError as error:
            shutil.rmtree(base, ignore_errors=True)
            # Visitors need not see the server's folders: name the upload, not its path.
            message = str(error).replace(f"{data}/", "").replace(str(data), "the upload")
            return Upload(None, f"Cannot use this upload: {message}")
        except OSError as error:
            shutil.rmtree(base, ignore_errors=True)
            return Upload(None, f"Cannot read the upload ({error}); try again.")
        summary = report.summary()
        _write_json(base / "upload.json", {"owner": owner, "created": time.time(), "pairs": len(pairs),
                                            "report": summary})
        return Upload(upload_id, summary, len(pairs), data)

    def _upload_dir(self, upload_id: str, owner: str) -> Path:
        if not isinstance(upload_id, str) or not _ID.match(upload_id):
            raise ValueError("Upload your training data first (the upload was not found).")
        base = self.uploads_dir / upload_id
        try:
            meta = json.loads((base / "upload.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise ValueError("That upload is gone (uploads are kept for a day); upload the data again.") from None
        if meta.get("owner") != owner:
            raise ValueError("That upload belongs to another visitor; upload your own data.")
        return base / "data"

    # The training process.

    def active(self) -> RunInfo | None:
        """The run training now, if any."""
        with self._lock:
            if self._job is None or not self._job.alive():
                return None
            return self.get(self._job.run_id)

    def start(
        self,
        owner: str,
        upload_id: str,
        init: str = DEFAULT_MODEL_KEY,
        max_steps: int = 1000,
        minutes: float = 10.0,
        lr: float = 2e-4,
        batch_size: int = 32,
        name: str = "",
        shared: bool = False,
    ) -> RunInfo:
        """Start a training process; BusyError if one is running, ValueError on bad input or a full disk."""
        check_owner(owner)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= 1_000_000:
            raise ValueError(f"Steps must be a whole number from 1 to 1,000,000, got {max_steps!r}.")
        if not 0 <= minutes <= 24 * 60:
            raise ValueError(f"The time budget must be 0 (none) to 1440 minutes, got {minutes!r}.")
        if not 0 < lr <= 0.1:
            raise ValueError(f"The learning rate must be above 0 and at most 0.1, got {lr!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 512:
            raise ValueError(f"The batch size must be a whole number from 1 to 512, got {batch_size!r}.")
        with self._lock:
            running = self.active()
            if running is not None:
                raise BusyError(self.busy_message(running, owner))
            data = self._upload_dir(upload_id, owner)
            if init == DEFAULT_MODEL_KEY:
                init_arg = str(self.resolve_model(DEFAULT_MODEL_KEY, owner))
            elif init == SCRATCH_KEY:
                init_arg = SCRATCH_KEY
            else:
                init_arg = str(self.resolve_model(init, owner))
            self.enforce_retention()
            used = self.disk_usage()
            if used > self.max_bytes:
                raise ValueError(f"The runs folder is full ({used / 1024**3:.1f} of {self.max_bytes / 1024**3:.1f} "
                                 "GB, even after removing old runs); try again later.")
            run_id = _new_id()
            run_dir = self.runs_dir / run_id
            run_dir.mkdir(parents=True)
            label = " ".join(str(name or "").split())[:60] or time.strftime("fine-tune %b %d %H:%M")
            info = RunInfo(run_id, owner, label, time.time(), RUNNING, bool(shared), init, upload_id, max_steps,
                           float(minutes), float(lr), batch_size, path=run_dir)
            cmd = self.train_command(data, run_dir, init_arg, max_steps, minutes, lr, batch_size)
            env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                       HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                       PYTHONPATH=os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
            try:
                with open(run_dir / "console.txt", "wb") as console:
                    # A new session: a Ctrl-C meant for the server must not kill the trainer between checkpoints.
                    proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=console, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid, 10)  # generation in the server comes first
            except (OSError, AttributeError):
                pass
            info.pid = proc.pid
            self._save(info)
            self._job = _Job(run_id, proc.pid, proc)
            threading.Thread(target=self._watch, args=(self._job,), daemon=True, name=f"watch-{run_id}").start()
            return info

    def train_command(self, data: Path, run_dir: Path, init: str, max_steps: int, minutes: float, lr: float,
                      batch_size: int) -> list[str]:
        every = max(1, min(200, max_steps // 20))
        return [
            self.python, "-m", "t2i_core", "train", "--data", str(data), "--out", str(run_dir), "--init", init,
            "--max-steps", str(max_steps), "--minutes", f"{minutes:g}", "--lr-g", f"{lr:g}", "--lr-d", f"{lr:g}",
            "--batch-size", str(batch_size), "--threads", str(self.threads),
            "--log-every", str(max(1, every // 4)), "--sample-every", str(every),
            "--checkpoint-every", str(max(every, min(500, max_steps // 4))),
        ]

    def busy_message(self, running: RunInfo, owner: str) -> str:
        if running.owner == owner:
            return "Busy: your run is still training. Stop it, or wait for it to finish, before starting another."
        left = ""
        if running.minutes:
            remaining = running.created + running.minutes * 60 - time.time()
            left = f" It ends within about {max(1, round(remaining / 60))} min."
        return (f"Busy: this server trains one model at a time and another visitor's run is training.{left} "
                "Try again then.")

    def stop(self, owner: str) -> RunInfo | None:
        """Ask the owner's running job to stop (SIGTERM: it finishes the step and keeps a checkpoint).

        Returns the run, or None when nothing of theirs is running; PermissionError for another owner's run."""
        with self._lock:
            running = self.active()
            if running is None:
                return None
            if running.owner != owner:
                raise PermissionError("The run training now belongs to another visitor; only they can stop it.")
            running.stop_requested = True
            self._save(running)
            try:
                os.kill(self._job.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            return running

    def wait(self, timeout: float | None = None) -> RunInfo | None:
        """Block until the current job ends (tests and shutdown); returns its final RunInfo."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                job = self._job
            if job is None:
                return None
            info = self.get(job.run_id)
            if info is not None and info.status != RUNNING:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {job.run_id} still running after {timeout} s")
            time.sleep(0.1)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the running job, if any, keeping its checkpoint (called when the server exits)."""
        with self._lock:
            job = self._job
        if job is None or not job.alive():
            return
        with self._lock:
            info = self.get(job.run_id)
            if info is not None:
                info.stop_requested, info.message = True, "stopped when the server shut down"
                self._save(info)
        try:
            os.kill(job.pid, signal.SIGTERM)
            if job.proc is not None:
                # The watcher thread may not get to record the end before the interpreter exits.
                self._close(job.run_id, job.proc.wait(timeout))
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass

    def _watch(self, job: _Job) -> None:
        if job.proc is not None:
            rc = job.proc.wait()
        else:
            while job.alive():
                time.sleep(1.0)
            rc = None
        self._close(job.run_id, rc)
        self.enforce_retention()

    def _close(self, run_id: str, rc: int | None) -> None:
        with self._lock:
            info = self.get(run_id)
            if info is None:
                return
            info.returncode, info.ended = rc, time.time()
            if rc == 0:
                info.status = STOPPED if info.stop_requested else FINISHED
            elif rc is None:
                # Not our child (adopted after a restart), so no exit status: the trainer's last log line tells.
                clean = "Stopped (" in self._tail(info.path / "log.txt")
                info.status = (STOPPED if info.stop_requested else FINISHED) if clean else INTERRUPTED
            elif info.stop_requested and rc in (-signal.SIGTERM, 128 + signal.SIGTERM):
                info.status = STOPPED  # stopped before training began: there was nothing to checkpoint
            else:
                info.status = FAILED
                info.message = self._error_line(info.path) or f"the trainer exited with status {rc}"
            self._save(info)

    @staticmethod
    def _tail(path: Path, lines: int = 6) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _error_line(self, run_dir: Path) -> str:
        lines = [line.strip() for line in self._tail(run_dir / "console.txt", 40).splitlines() if line.strip()]
        for line in reversed(lines):
            if line.startswith("error:") or "Error" in line:
                return line[:500]
        return lines[-1][:500] if lines else ""

    def _adopt_or_close_running(self) -> None:
        """After a restart: keep watching a trainer that still runs; mark runs whose process is gone."""
        for info in self.runs():
            if info.status != RUNNING:
                continue
            alive = info.pid is not None and _pid_alive(info.pid) and str(info.path) in _cmdline(info.pid)
            if alive and self._job is None:
                self._job = _Job(info.id, info.pid, None)
                threading.Thread(target=self._watch, args=(self._job,), daemon=True).start()
            else:
                self._close(info.id, None)

    # Progress.

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

    # Disk cap and retention.

    def disk_usage(self) -> int:
        return _tree_bytes(self.root)

    def enforce_retention(self) -> list[str]:
        """Delete what the rules say may go; returns the deleted run and upload ids. Never the running run."""
        deleted = []
        with self._lock:
            running = self.active()
            keep_run = running.id if running else None
            keep_upload = running.upload if running else None
            now = time.time()
            for d in list(self.uploads_dir.iterdir()):
                if d.name == keep_upload:
                    continue
                try:
                    created = json.loads((d / "upload.json").read_text()).get("created", 0)
                except (OSError, json.JSONDecodeError):
                    created = d.stat().st_mtime  # an upload being prepared, or a broken one
                if now - created > self.upload_ttl_s:
                    shutil.rmtree(d, ignore_errors=True)
                    deleted.append(d.name)
            for d in list(self.outputs_dir.iterdir()):
                if now - d.stat().st_mtime > OUTPUT_TTL_S:
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
            candidates = sorted((r for r in self.runs() if r.id != keep_run and r.status != RUNNING),
                                key=lambda r: r.created)
            count = len(self.runs())
            usage = self.disk_usage()
            for info in candidates:
                if count <= self.max_runs and usage <= self.max_bytes:
                    break
                size = _tree_bytes(info.path)
                shutil.rmtree(info.path, ignore_errors=True)
                deleted.append(info.id)
                count -= 1
                usage -= size
        return deleted


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class PipelineCache:
    """The last few loaded pipelines (LRU), so switching models is fast; reloads a model folder rewritten since."""

    def __init__(self, maxsize: int = 3):
        self.maxsize = maxsize
        self._pipes: OrderedDict[tuple[str, int], object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike):
        """A T2IPipeline for the model folder `path` (ValueError, from the loader, when it is not one)."""
        from .pipeline import T2IPipeline

        path = Path(path).resolve()
        try:
            stamp = (path / "model_index.json").stat().st_mtime_ns
        except OSError:
            stamp = 0
        key = (str(path), stamp)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            pipe = T2IPipeline.from_pretrained(path)
            for old in [k for k in self._pipes if k[0] == key[0]]:
                del self._pipes[old]
            self._pipes[key] = pipe
            while len(self._pipes) > self.maxsize:
                self._pipes.popitem(last=False)
            return pipe
