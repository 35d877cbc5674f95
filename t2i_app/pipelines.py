"""PipelineCache: the last few loaded pipelines (LRU), so that switching models in the app is fast."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class PipelineCache:
    """The last few loaded pipelines (LRU), so switching models is fast; reloads a model folder rewritten since.

    `run` calls a pipeline on one of `model_threads` long-lived threads. The server answers events on any of its many
    worker threads (anyio's pool holds up to 40), and every thread that once ran the model keeps about 10 MB of its
    own for good (the math libraries' per-thread buffers; measured: 1 / 8 / 16 threads running generate held +17 /
    +85 / +165 MB): memory then grew with each new thread the server used."""

    def __init__(self, maxsize: int = 3, model_threads: int = 2):
        self.maxsize = maxsize
        self._pipes: OrderedDict[tuple[str, int], object] = OrderedDict()
        self._lock = threading.Lock()
        self._model_threads = ThreadPoolExecutor(max_workers=model_threads, thread_name_prefix="t2i-model")

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on a model thread; waits for it and returns its result or raises its error."""
        return self._model_threads.submit(fn, *args, **kwargs).result()

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
