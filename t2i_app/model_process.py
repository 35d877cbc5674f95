"""The model process: the web app's models live in a process of their own, started before the page's imports.

On two cores the page's start (gradio, torch, building the page: ~7-9 s on the CI-like host) and the model's
(transformers, diffusers, the weights, the bank: ~8-10 s) then overlap instead of adding up: the first image comes
about 4 s sooner (docs/BENCHMARKS.md, session 22).

    ModelProcess(default)     starts `python -m t2i_app.model_process`; only the standard library runs before that
    RemotePipelines(process)  PipelineCache's interface (`get`, `run`) for app.py, answered by the model process

The model process listens on a Unix socket in a private folder (multiprocessing.connection, with a random authkey)
before it imports anything heavy, then loads the default model. Each connection gets a thread; the models run on
PipelineCache's two model threads, as they did in the app's own process. Requests: ("get", path) -> what the app
needs to know of the model, ("call", path, method, args, kwargs) -> the pipeline's result. Errors come back as their
message: a ValueError (bad input) stays a ValueError. The process exits when the app's process is gone; if it dies,
the next request starts a new one. T2I_MODEL_PROCESS=0 keeps the models in the app's process.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "T2I_MODEL_PROCESS_KEY"
METHODS = ("__call__", "interpolate", "exemplar_images")  # what the app may call on a pipeline


def wanted(environ=os.environ) -> bool:
    """Whether app.py should keep its models in a model process: T2I_MODEL_PROCESS=1 or 0 decides; by default, yes
    where there are two cores or more to load side by side (on one, a second process only costs memory) and Unix
    sockets exist."""
    choice = environ.get("T2I_MODEL_PROCESS", "")
    if choice in ("0", "1"):
        return choice == "1"
    return (os.cpu_count() or 1) >= 2 and hasattr(socket, "AF_UNIX")


def start_if_wanted(environ=os.environ) -> ModelProcess | None:
    """app.py's first step: a model process loading the shipped model, unless T2I_MODEL_PROCESS=0."""
    return ModelProcess(load="default") if wanted(environ) else None


class ModelProcessError(RuntimeError):
    """The model process failed or stopped; the message says what to do."""


class ModelProcess:
    """The app's side: starts the model process and sends it requests over pooled connections."""

    def __init__(self, load: str | os.PathLike | None = "default", connect_timeout: float = 300.0):
        self.load = str(load) if load else None  # a model folder to load at once; "default": the shipped one
        self.connect_timeout = connect_timeout
        self.folder = tempfile.mkdtemp(prefix="t2i-models-")  # mode 0700: only this user reaches the socket
        self.address = os.path.join(self.folder, "socket")
        self.authkey = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._idle: list = []  # open connections no request is using
        self.proc: subprocess.Popen | None = None
        self.start()
        atexit.register(self.close)  # the app's exit (SIGTERM included) ends it; a SIGKILL is seen by the process

    def start(self) -> None:
        with self._lock:
            self._start()

    def _start(self) -> None:
        self._idle.clear()
        if os.path.exists(self.address):
            os.unlink(self.address)  # a dead process's socket
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), **{KEY_ENV: self.authkey.hex()},
                   PYTHONPATH=os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, "-m", "t2i_app.model_process", self.address, "--parent", str(os.getpid())]
        if self.load:
            cmd += ["--load", self.load]
        # Its output goes where the app's goes (the server log).
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def _connect(self):
        deadline = time.monotonic() + self.connect_timeout
        while True:
            proc = self.proc
            if proc.poll() is not None:
                raise ModelProcessError(f"The model process exited (status {proc.returncode}); see the server log.")
            try:
                return Client(self.address, family="AF_UNIX", authkey=self.authkey)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise ModelProcessError("The model process did not start in time; see the server log.") from None
                time.sleep(0.02)

    def request(self, message: tuple, retry: bool = True):
        """Send one request and return its result; re-raises the model process's error (ValueError stays one)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            proc = self.proc
        try:
            conn = conn or self._connect()
            conn.send(message)
            status, value = conn.recv()
        except (EOFError, OSError) as error:
            if conn is not None:
                conn.close()
            if proc.poll() is None:
                raise ModelProcessError(f"Lost the model process's answer ({error}); try again.") from error
            code = proc.returncode
            self._restart(dead=proc)  # killed, out of memory: a new one for this and later requests
            if retry:
                return self.request(message, retry=False)
            raise ModelProcessError(f"The model process stopped (status {code}); see the server log.") from error
        with self._lock:
            self._idle.append(conn)
        if status == "error":
            kind, text = value
            raise (ValueError if kind == "ValueError" else ModelProcessError)(text)
        return value

    def _restart(self, dead: subprocess.Popen) -> None:
        with self._lock:
            if self.proc is dead:  # not already restarted by another request
                self._start()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


class RemotePipe:
    """What app.py uses of a T2IPipeline, answered by the model process."""

    def __init__(self, process: ModelProcess, path: str, max_exemplars: int):
        self.process, self.path, self.max_exemplars = process, path, max_exemplars

    def _call(self, method: str, args: tuple, kwargs: dict):
        return self.process.request(("call", self.path, method, args, kwargs))

    def __call__(self, *args, **kwargs):
        return self._call("__call__", args, kwargs)

    def interpolate(self, *args, **kwargs):
        return self._call("interpolate", args, kwargs)

    def exemplar_images(self, *args, **kwargs):
        return self._call("exemplar_images", args, kwargs)


class RemotePipelines:
    """PipelineCache's interface over a ModelProcess: `get(path)` loads there (or finds it loaded), `run` calls."""

    def __init__(self, process: ModelProcess):
        self.process = process

    def get(self, path: str | os.PathLike) -> RemotePipe:
        path = str(Path(path).resolve())
        info = self.process.request(("get", path))
        return RemotePipe(self.process, path, info["max_exemplars"])

    def run(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


# The model process itself.


def _handle(conn, cache) -> None:
    with conn:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            try:
                kind, path, *rest = message
                pipe = cache.get(path)
                if kind == "get":
                    reply = ("ok", {"max_exemplars": pipe.max_exemplars})
                elif kind == "call" and rest and rest[0] in METHODS:
                    method, args, kwargs = rest
                    reply = ("ok", cache.run(pipe if method == "__call__" else getattr(pipe, method), *args, **kwargs))
                else:
                    reply = ("error", ("ValueError", f"unknown request {kind!r}"))
            except Exception as error:  # noqa: BLE001 - every failure goes back to the app as a message
                reply = ("error", (type(error).__name__, str(error)))
            try:
                conn.send(reply)
            except OSError:
                return


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def serve(address: str, authkey: bytes, parent: int | None = None, load: str | None = None) -> None:
    """Listen first, then import and load: the app can connect at once, its requests wait for the model."""
    listener = Listener(address, family="AF_UNIX", authkey=authkey)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the app: the app's exit ends this process
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="t2i-parent").start()
    from .limits import cap_malloc_arenas
    from .pipelines import PipelineCache

    cap_malloc_arenas()
    cache = PipelineCache(maxsize=3)

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()
            except Exception:  # noqa: BLE001 - a client that failed the authkey, or broke off
                time.sleep(0.01)
                continue
            threading.Thread(target=_handle, args=(conn, cache), daemon=True, name="t2i-conn").start()

    threading.Thread(target=accept, daemon=True, name="t2i-accept").start()
    if load == "default":
        from t2i_core.models.folder import default_model_path

        path = default_model_path()  # $T2I_MODEL or assets/model/, as the app's manager has it
        load = str(path) if (path / "model_index.json").is_file() else None
    if load:
        try:
            cache.get(load)  # requests that come meanwhile wait on the cache's lock
        except ValueError as error:
            print(f"model process: could not load {load}: {error}", file=sys.stderr, flush=True)
    threading.Event().wait()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The web app's model process (started by app.py).")
    parser.add_argument("address", help="the Unix socket to listen on")
    parser.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--load", default=None, help='a model folder to load at once ("default": the shipped one)')
    args = parser.parse_args(argv)
    key = os.environ.pop(KEY_ENV, "")
    if not key:
        raise SystemExit(f"{KEY_ENV} is not set: this process is started by app.py")
    serve(args.address, bytes.fromhex(key), args.parent, args.load)


if __name__ == "__main__":
    main()
