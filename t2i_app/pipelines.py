"""PipelineCache: the last few loaded pipelines (LRU), so that switching models in the app is fast."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class PipelineCache:
    """The last few loaded pipelines (LRU), so switching models is fast; reloads a model folder rewritten since.

    `run` calls a pipeline on one of `model_threads` long-lived threads. The server answers events on any of its many
    worker threads (anyio's pool holds up to 40), and every thread that once ran the model keeps about 10 MB of its
    own for good (the math libraries' per-thread buffers; measured: 1 / 8 / 16 threads running generate held +17 /
    +85 / +165 MB): memory then grew with each new thread the server used.

    After each call the allocator hands its free memory back to the system (`trim_heap`, when `trim` is set): a
    large request (16 images or a 120-frame animation at 512 px) frees hundreds of MB, which glibc would otherwise
    keep for good. What the server's other threads free after a call (pictures and videos sent out) is handed back
    by a trim every `trim_every` seconds for `trim_rounds` rounds after the last call. T2I_MALLOC_TRIM=0 turns both
    off."""

    def __init__(self, maxsize: int = 3, model_threads: int = 2, trim: bool | None = None, trim_every: float = 10.0,
                 trim_rounds: int = 6):
        self.maxsize = maxsize
        self.trim = os.environ.get("T2I_MALLOC_TRIM", "1") != "0" if trim is None else trim
        self.trim_every, self.trim_rounds = trim_every, trim_rounds
        self._called = threading.Event()  # a call ended since the last trim
        self._trimmer: threading.Thread | None = None
        self._pipes: OrderedDict[tuple[str, int], object] = OrderedDict()
        self._lock = threading.Lock()
        self._model_threads = ThreadPoolExecutor(max_workers=model_threads, thread_name_prefix="t2i-model")

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on a model thread; waits for it and returns its result or raises its error."""
        return self._model_threads.submit(self._call, fn, args, kwargs).result()

    def _call(self, fn, args, kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            if self.trim:
                trim_heap()
                self._called.set()
                if self._trimmer is None:
                    self._trimmer = threading.Thread(target=self._trim_later, daemon=True, name="t2i-trim")
                    self._trimmer.start()

    def _trim_later(self) -> None:
        while True:
            self._called.wait()
            self._called.clear()
            # Every trim_every seconds for trim_rounds rounds after the last call (a 120-frame animation at 512 px
            # still encodes its videos well after the model is done); a new call starts the count again.
            for _ in range(self.trim_rounds):
                time.sleep(self.trim_every)
                trim_heap()
                if self._called.is_set():
                    break

    def get(self, path: str | os.PathLike):
        """A T2IPipeline for the model folder `path` (ValueError, from the loader, when it is not one)."""
        from t2i_core import T2IPipeline

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


_LIBC = None


def trim_heap() -> bool:
    """Give the memory glibc's malloc holds free back to the system (malloc_trim(0): the top of each heap, and whole
    free pages inside it). After a request of 16 images at 512 px the server otherwise kept +400 MB
    (bench/load_test.py, docs/BENCHMARKS.md). False where it does not apply (not glibc)."""
    global _LIBC
    import ctypes
    import ctypes.util

    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
            _LIBC = _LIBC if _LIBC and hasattr(_LIBC, "malloc_trim") else False
        except OSError:
            _LIBC = False
    return bool(_LIBC and _LIBC.malloc_trim(0))
