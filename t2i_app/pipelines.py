"""PipelineCache: the last few loaded pipelines (LRU), so that switching models in the app is fast."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path


class PipelineCache:
    """The last few loaded pipelines (LRU), so switching models is fast; reloads a model folder rewritten since."""

    def __init__(self, maxsize: int = 3):
        self.maxsize = maxsize
        self._pipes: OrderedDict[tuple[str, int], object] = OrderedDict()
        self._lock = threading.Lock()

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
