"""RunManager: the app's one object for fine-tuning runs; it joins the run store, uploads, the job supervisor
and retention. Layout under the runs folder (T2I_RUNS_DIR, default ./runs):

    uploads/<upload-id>/data/        an upload, extracted with `safe_extract_zip` or copied file by file
    uploads/<upload-id>/upload.json  {owner, created, pairs, report}
    runs/<run-id>/                   the trainer's RUN_DIR (metrics.jsonl, samples/, checkpoint-N/, model/, log.txt)
    runs/<run-id>/run.json           {owner, name, shared, status, pid, ...}: what the app knows about the run
    runs/<run-id>/train_config.json  the TrainConfig the run was started with
    runs/<run-id>/console.txt        the training process's stdout and stderr
    outputs/                         short-lived files for downloads (animations); pruned after an hour

An owner is an opaque id (the app uses a random per-browser id); a run's model is visible to its owner, and to
everyone once shared. Nothing is written before `open()`: `RunManager(root)` opens at once, `from_env()` leaves it
to the app's launch; methods that write open it first, those that read see what is there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

from t2i_core.data import UploadLimits
from t2i_core.models.folder import default_model_path
from t2i_core.training.config import TrainConfig

from . import retention
from .jobs import BusyError, JobSupervisor
from .limits import OwnerIds, ServerLimits, TrainingQuota
from .retention import RetentionRules
from .store import DEFAULT_MODEL_KEY, RUNNING, SCRATCH_KEY, Progress, RunInfo, RunStore, check_owner, new_id
from .uploads import Upload, Uploads


def fine_tune_config(data: Path, run_dir: Path, init: str, max_steps: int, minutes: float, lr: float,
                     batch_size: int, threads: int, fit: str = "crop") -> TrainConfig:
    """The TrainConfig of a run started from the Fine-tune tab: the defaults, with reports scaled to the length, a
    sample grid at least every half minute, and one checkpoint kept (the app never goes back further)."""
    every = max(1, min(200, max_steps // 20))
    return TrainConfig(data=str(data), out=str(run_dir), init=init, max_steps=max_steps, minutes=float(minutes),
                       lr_g=float(lr), lr_d=float(lr), batch_size=batch_size, threads=threads, fit=fit,
                       log_every=max(1, min(10, every // 4)), sample_every=every, sample_minutes=0.5,
                       keep_checkpoints=1, checkpoint_every=max(every, min(500, max_steps // 4)))


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_run_options(max_steps: int, minutes: float, lr: float, batch_size: int, fit: str = "crop") -> None:
    if fit not in ("crop", "pad"):
        raise ValueError(f"Fit must be 'pad' (white borders) or 'crop' (centre square), got {fit!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 0 <= max_steps <= 1_000_000:
        raise ValueError(f"Steps must be a whole number from 0 (add the pictures only) to 1,000,000, "
                         f"got {max_steps!r}.")
    if not 0 <= minutes <= 24 * 60:
        raise ValueError(f"The time budget must be 0 (none) to 1440 minutes, got {minutes!r}.")
    if not 0 < lr <= 0.1:
        raise ValueError(f"The learning rate must be above 0 and at most 0.1, got {lr!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 512:
        raise ValueError(f"The batch size must be a whole number from 1 to 512, got {batch_size!r}.")


class RunManager:
    """Uploads, the one training process of this server, and the runs and models under `root`.

    Retention (see retention.py): per-owner quotas (`max_runs_per_owner`; a visitor's own oldest runs make room for
    their new one), runs expire after `run_ttl_s`, uploads after `upload_ttl_s`; another visitor's runs are never
    deleted for room: `start` refuses while the server holds `max_runs` runs or is over `max_bytes`. Uploads together
    stay within half of `max_bytes`. `server_limits`: run length and training minutes per client (see limits.py).
    """

    def __init__(self, root: str | os.PathLike, *, max_runs: int = 30, max_bytes: int = 5 * 1024**3,
                 upload_ttl_s: float = 24 * 3600.0, limits: UploadLimits | None = None, threads: int | None = None,
                 python: str = sys.executable, open: bool = True, max_runs_per_owner: int = 5,
                 server_limits: ServerLimits | None = None):
        self.root = Path(os.path.abspath(root))
        self.max_runs, self.max_bytes, self.upload_ttl_s = max_runs, max_bytes, upload_ttl_s
        self.max_runs_per_owner = max_runs_per_owner
        self.server_limits = server_limits or ServerLimits()
        self.train_quota = TrainingQuota(self.server_limits.client_train_minutes)
        self.threads = threads or all_cores()  # the trainer pauses while visitors' requests run
        self.runs_dir, self.uploads_dir = self.root / "runs", self.root / "uploads"
        self.outputs_dir = self.root / "outputs"
        self.store = RunStore(self.runs_dir)
        self.uploads = Uploads(self.uploads_dir, limits or UploadLimits(max_entries=20000, max_total_bytes=1024**3,
                                                                         max_total_pixels=300_000_000, max_rows=20000),
                               max_bytes // 2)
        self._lock = threading.RLock()
        self.jobs = JobSupervisor(self.store, python, self.threads, self._lock, on_end=self.enforce_retention)
        self._opened = False
        self.outputs_prune_every_s = 10.0
        self._outputs_pruned = float("-inf")  # time.monotonic() of the last pruning of outputs/
        self._secret: str | None = None
        self._owner_ids: OwnerIds | None = None
        if open:
            self.open()

    @classmethod
    def from_env(cls) -> "RunManager":
        """T2I_RUNS_DIR (default ./runs), T2I_MAX_RUNS (30), T2I_MAX_DISK_GB (5), T2I_TRAIN_THREADS (all cores);
        not opened (the app opens it at launch, so that importing the app writes nothing)."""
        return cls(
            os.environ.get("T2I_RUNS_DIR") or "runs",
            max_runs=int(os.environ.get("T2I_MAX_RUNS") or 30),
            max_bytes=int(float(os.environ.get("T2I_MAX_DISK_GB") or 5) * 1024**3),
            threads=int(os.environ.get("T2I_TRAIN_THREADS") or 0) or None,
            max_runs_per_owner=int(os.environ.get("T2I_MAX_RUNS_PER_OWNER") or 5),
            server_limits=ServerLimits.from_env(),
            open=False,
        )

    def open(self) -> "RunManager":
        """Create the folders, keep the browser secret, and adopt (or close) runs a previous server left running."""
        with self._lock:
            if not self._opened:
                self._opened = True
                for d in (self.runs_dir, self.uploads_dir, self.outputs_dir):
                    d.mkdir(parents=True, exist_ok=True)
                if self._secret is not None:
                    self._keep_secret(self._secret)
                self.jobs.adopt_or_close_running()
        return self

    # Small helpers the app needs.

    def browser_secret(self) -> str:
        """A per-server secret (T2I_BROWSER_SECRET, else made once and kept in the runs folder) so that ids kept
        in a browser survive server restarts. Before `open()` it only reads: a new one is written by `open()`."""
        if os.environ.get("T2I_BROWSER_SECRET"):
            return os.environ["T2I_BROWSER_SECRET"]
        path = self.root / ".browser_secret"
        if path.is_file():
            return path.read_text().strip()
        if self._secret is None:
            self._secret = secrets.token_urlsafe(24)
        if self._opened:
            return self._keep_secret(self._secret)
        return self._secret

    @property
    def owner_ids(self) -> OwnerIds:
        """Issues and checks the owner ids (signed with the browser secret, which stays on the server)."""
        if self._owner_ids is None:
            self._owner_ids = OwnerIds(self.browser_secret())
        return self._owner_ids

    def _keep_secret(self, secret: str) -> str:
        """Write the secret unless a file is there already (another server wrote it first: that one wins)."""
        path = self.root / ".browser_secret"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        return secret

    def new_output_dir(self) -> Path:
        """A fresh folder under outputs/ for files a visitor downloads (pruned by `enforce_retention`)."""
        self.open()
        # Within OUTPUT_TTL_S and the outputs cap, at most every `outputs_prune_every_s`: a busy server makes a folder
        # per request, and pruning walks them all.
        if time.monotonic() - self._outputs_pruned >= self.outputs_prune_every_s:
            self._outputs_pruned = time.monotonic()
            retention.prune_outputs(self.outputs_dir, time.time())
        path = self.outputs_dir / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    @staticmethod
    def default_model_path() -> Path | None:
        """The shipped model folder ($T2I_MODEL or assets/model/), or None while no trained one exists."""
        path = default_model_path()
        return path if (path / "model_index.json").is_file() else None

    # Runs and models.

    def get(self, run_id: str) -> RunInfo | None:
        return self.store.get(run_id)

    def runs(self, owner: str | None = None) -> list[RunInfo]:
        """All runs (or one owner's), newest first."""
        return self.store.runs(owner)

    def latest_run(self, owner: str) -> RunInfo | None:
        mine = self.runs(owner)
        return mine[0] if mine else None

    def models(self, owner: str) -> list[RunInfo]:
        """Usable fine-tunes this owner may generate with: their own, then the ones others shared; newest first."""
        return self.store.models(owner)

    def resolve_model(self, key: str, owner: str) -> Path:
        """A model key ("default" or a run id) -> its model folder, if this owner may use it; else ValueError."""
        if key == DEFAULT_MODEL_KEY:
            path = self.default_model_path()
            if path is None:
                raise ValueError("No trained default model is shipped yet; pick one of your fine-tuned models "
                                 "or fine-tune one in the Fine-tune tab.")
            return path
        return self.store.model_dir(key, owner)

    def set_shared(self, run_id: str, owner: str, shared: bool) -> RunInfo:
        self.open()
        with self._lock:
            return self.store.set_shared(run_id, owner, shared)

    def zip_model(self, run_id: str, owner: str) -> Path:
        """The run's model folder as a .zip (entries under model/), for the owner or anyone once shared."""
        self.open()
        self.store.model_dir(run_id, owner)  # refuse before making an outputs/ folder
        return self.store.zip_model(run_id, owner, self.new_output_dir())

    def progress(self, run_id: str) -> Progress | None:
        return self.store.progress(run_id)

    # Uploads.

    def prepare_upload(self, files: list[str | os.PathLike], owner: str, resolution: int = 16) -> Upload:
        """Extract or copy uploaded files into a new folder under uploads/ and check them (see `Uploads.prepare`)."""
        check_owner(owner)
        self.open()
        if files and any(files):
            self.enforce_retention()
        running = self.jobs.active()
        return self.uploads.prepare(files, owner, resolution, keep=running.upload if running else None)

    # The training process.

    def active(self) -> RunInfo | None:
        """The run training now, if any."""
        return self.jobs.active()

    def visitors_first(self):
        """A context manager: the trainer pauses while a visitor's request (generate, animate) runs."""
        return self.jobs.visitors_first()

    def start(self, owner: str, upload_id: str, init: str = DEFAULT_MODEL_KEY, max_steps: int = 1000,
              minutes: float = 10.0, lr: float = 2e-4, batch_size: int = 32, name: str = "",
              shared: bool = False, client: str | None = None, fit: str = "crop") -> RunInfo:
        """Start a training process; BusyError if one is running, ValueError on bad input, a full server, or when
        `client` (the visitor's address) has used its training minutes.
        `fit`: how non-square pictures become square, "pad" (white borders) or "crop" (the centre square)."""
        check_owner(owner)
        check_run_options(max_steps, minutes, lr, batch_size, fit)
        if max_steps == 0 and init == SCRATCH_KEY:
            raise ValueError("0 steps only adds your pictures to a model's exemplar bank: start from the shipped model "
                             "or one of yours, or give it steps to train.")
        cap = self.server_limits.max_run_minutes
        minutes = float(minutes) or cap
        if minutes > cap:
            raise ValueError(f"The time budget is at most {cap:g} minutes on this server, got {minutes:g}.")
        refusal = self.train_quota.refusal(client, minutes) if client else None
        if refusal:
            raise ValueError(refusal)
        self.open()
        with self._lock:
            running = self.jobs.active()
            if running is not None:
                raise BusyError(self.busy_message(running, owner))
            data = self.uploads.data_dir(upload_id, owner)
            init_arg = SCRATCH_KEY if init == SCRATCH_KEY else str(self.resolve_model(init, owner))
            self.enforce_retention(owner)
            if len(self.store.runs()) >= self.max_runs:
                raise ValueError(f"This server holds its limit of {self.max_runs} runs; try again later (old runs "
                                 "expire).")
            used = self.disk_usage()
            if used > self.max_bytes:
                raise ValueError(f"The runs folder is full ({used / 1024**3:.1f} of {self.max_bytes / 1024**3:.1f} "
                                 "GB, even after removing old runs); try again later.")
            run_id = new_id()
            run_dir = self.runs_dir / run_id
            run_dir.mkdir(parents=True)
            label = " ".join(str(name or "").split())[:60] or time.strftime("fine-tune %b %d %H:%M")
            info = RunInfo(run_id, owner, label, time.time(), RUNNING, bool(shared), init, upload_id, max_steps,
                           float(minutes), float(lr), batch_size, path=run_dir)
            cfg = fine_tune_config(data, run_dir, init_arg, max_steps, minutes, lr, batch_size, self.threads, fit)
            try:
                launched = self.jobs.launch(info, cfg)
            except OSError:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            if client:  # a run of 0 steps (the pictures join the bank) takes seconds
                self.train_quota.charge(client, minutes if max_steps else min(minutes, 1.0))
            return launched

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
        """Ask the owner's running job to stop (it finishes the step and keeps a checkpoint); see JobSupervisor."""
        self.open()
        return self.jobs.stop(owner)

    def wait(self, timeout: float | None = None) -> RunInfo | None:
        """Block until the current job ends (tests and shutdown); returns its final RunInfo."""
        return self.jobs.wait(timeout)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the running job, if any, keeping its checkpoint (called when the server exits)."""
        self.jobs.shutdown(timeout)

    # Disk cap and retention.

    def disk_usage(self) -> int:
        return retention.tree_bytes(self.root)

    def enforce_retention(self, owner: str | None = None) -> list[str]:
        """Delete what the rules say may go (`owner`: a visitor about to start a run, whose own quota makes room);
        returns the deleted run and upload ids. Never the running run, never another visitor's run for room."""
        self.open()
        with self._lock:
            rules = RetentionRules(self.max_runs, self.max_bytes, self.upload_ttl_s, self.max_runs_per_owner)
            return retention.enforce(self.store, self.uploads_dir, self.outputs_dir, rules, self.jobs.active(), owner)
