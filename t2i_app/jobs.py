"""The job supervisor: at most one training process per server, started from a TrainConfig.

Training runs in a child process (`python -m t2i_core train --config RUN_DIR/train_config.json`, OMP_NUM_THREADS
as configured: all cores by default, lowered priority), so closing a browser loses nothing. While a visitor's
request runs (`visitors_first`), the trainer is paused with SIGSTOP and resumed with SIGCONT: the request gets every
core at once, with no oversubscription and no wait for a training step to end, and training uses them all again
when it is done. Stop sends SIGTERM: the trainer finishes its step, writes a checkpoint and exits 0, so the run keeps a
usable model. After a server restart a trainer that still runs is adopted; one that is gone is marked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from t2i_core.training.config import TrainConfig

from .store import FAILED, FINISHED, INTERRUPTED, RUNNING, STOPPED, RunInfo, RunStore

_REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "train_config.json"


class BusyError(RuntimeError):
    """A training run is already going on this server."""


@dataclass
class _Job:
    run_id: str
    pid: int
    proc: subprocess.Popen | None  # None for a process adopted after a server restart

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class JobSupervisor:
    """Starts, stops and watches the training process; records how it ended in the run store.

    `lock` is shared with the manager so that "is one running?" and "start one" happen as one step. `on_end` runs
    after a job ended and was recorded (the manager enforces retention then)."""

    def __init__(self, store: RunStore, python: str, threads: int, lock: threading.RLock,
                 on_end: Callable[[], object] = lambda: None):
        self.store, self.python, self.threads, self.lock, self.on_end = store, python, threads, lock, on_end
        self._job: _Job | None = None
        self._holds = 0  # requests that have paused the trainer

    @contextmanager
    def visitors_first(self) -> Iterator[None]:
        """Pause the trainer (SIGSTOP) while the block runs; the last request to finish resumes it (SIGCONT)."""
        with self.lock:
            self._holds += 1
            if self._holds == 1:
                self._signal(signal.SIGSTOP)
        try:
            yield
        finally:
            with self.lock:
                self._holds -= 1
                if self._holds == 0:
                    self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        job = self._job
        if job is not None and job.alive():
            try:
                os.kill(job.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def active(self) -> RunInfo | None:
        """The run training now, if any."""
        with self.lock:
            if self._job is None or not self._job.alive():
                return None
            return self.store.get(self._job.run_id)

    def launch(self, info: RunInfo, cfg: TrainConfig) -> RunInfo:
        """Write cfg to RUN_DIR/train_config.json and start `python -m t2i_core train --config` on it."""
        run_dir = info.path
        (run_dir / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2))
        cmd = [self.python, "-m", "t2i_core", "train", "--config", str(run_dir / CONFIG_NAME)]
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
        with open(run_dir / "console.txt", "wb") as console:
            # A new session: a Ctrl-C meant for the server must not kill the trainer between checkpoints.
            proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=console, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, 10)  # generation in the server comes first
        except (OSError, AttributeError):
            pass
        info.pid = proc.pid
        self.store.save(info)
        self._job = _Job(info.id, proc.pid, proc)
        threading.Thread(target=self._watch, args=(self._job,), daemon=True, name=f"watch-{info.id}").start()
        return info

    def stop(self, owner: str) -> RunInfo | None:
        """Ask the owner's running job to stop (SIGTERM: it finishes the step and keeps a checkpoint).

        Returns the run, or None when nothing of theirs is running; PermissionError for another owner's run."""
        with self.lock:
            running = self.active()
            if running is None:
                return None
            if running.owner != owner:
                raise PermissionError("The run training now belongs to another visitor; only they can stop it.")
            running.stop_requested = True
            self.store.save(running)
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused trainer must run to act on it
            return running

    def wait(self, timeout: float | None = None) -> RunInfo | None:
        """Block until the current job ends (tests and shutdown); returns its final RunInfo."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                job = self._job
            if job is None:
                return None
            info = self.store.get(job.run_id)
            if info is not None and info.status != RUNNING:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {job.run_id} still running after {timeout} s")
            time.sleep(0.1)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the running job, if any, keeping its checkpoint (called when the server exits)."""
        with self.lock:
            job = self._job
        if job is None or not job.alive():
            return
        with self.lock:
            info = self.store.get(job.run_id)
            if info is not None:
                info.stop_requested, info.message = True, "stopped when the server shut down"
                self.store.save(info)
        try:
            os.kill(job.pid, signal.SIGTERM)
            os.kill(job.pid, signal.SIGCONT)  # never leave it paused
            if job.proc is not None:
                # The watcher thread may not get to record the end before the interpreter exits.
                self._close(job.run_id, job.proc.wait(timeout))
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass

    def adopt_or_close_running(self) -> None:
        """After a restart: keep watching a trainer that still runs; mark runs whose process is gone."""
        for info in self.store.runs():
            if info.status != RUNNING:
                continue
            alive = info.pid is not None and pid_alive(info.pid) and str(info.path) in cmdline(info.pid)
            if alive and self._job is None:
                self._job = _Job(info.id, info.pid, None)
                threading.Thread(target=self._watch, args=(self._job,), daemon=True).start()
            else:
                self._close(info.id, None)

    def _watch(self, job: _Job) -> None:
        if job.proc is not None:
            rc = job.proc.wait()
        else:
            while job.alive():
                time.sleep(1.0)
            rc = None
        self._close(job.run_id, rc)
        self.on_end()

    def _close(self, run_id: str, rc: int | None) -> None:
        with self.lock:
            info = self.store.get(run_id)
            if info is None:
                return
            info.returncode, info.ended = rc, time.time()
            if rc == 0:
                info.status = STOPPED if info.stop_requested else FINISHED
            elif rc is None:
                # Not our child (adopted after a restart), so no exit status: the trainer's last log line tells.
                clean = "Stopped (" in _tail(info.path / "log.txt")
                info.status = (STOPPED if info.stop_requested else FINISHED) if clean else INTERRUPTED
            elif info.stop_requested and rc in (-signal.SIGTERM, 128 + signal.SIGTERM):
                info.status = STOPPED  # stopped before training began: there was nothing to checkpoint
            else:
                info.status = FAILED
                info.message = _error_line(info.path) or f"the trainer exited with status {rc}"
            self.store.save(info)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _error_line(run_dir: Path) -> str:
    lines = [line.strip() for line in _tail(run_dir / "console.txt", 40).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line:
            return line[:500]
    return lines[-1][:500] if lines else ""
