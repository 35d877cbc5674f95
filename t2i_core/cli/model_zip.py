"""`--model` may name a zipped model folder (the web app's download): it is extracted once, safely, into a cache
folder keyed by the zip's SHA-256, and that folder is used. Both layouts are accepted: model_index.json at the zip's
root (the app's downloads), or inside one top folder (older downloads wrapped everything in `model/`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
import zipfile
from pathlib import Path

from ..data.archives import safe_extract_zip


def cache_root() -> Path:
    """$T2I_CACHE, else $XDG_CACHE_HOME/t2i, else ~/.cache/t2i."""
    if os.environ.get("T2I_CACHE"):
        return Path(os.environ["T2I_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t2i"


def model_folder(path: str | os.PathLike | None) -> str | os.PathLike | None:
    """A model folder for `--model`: `path` itself, unless it is a .zip file, which is extracted (see above)."""
    if path is None or not Path(path).is_file() or not zipfile.is_zipfile(path):
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    target = cache_root() / "models" / digest.hexdigest()[:32]
    if not target.is_dir():
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        safe_extract_zip(path, tmp)  # refuses zip slip, links, bombs; leaves nothing behind on refusal
        try:
            os.replace(tmp, target)
        except OSError:  # another process extracted the same zip first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    if (target / "model_index.json").is_file():
        return target
    inner = [d for d in target.iterdir() if (d / "model_index.json").is_file()]
    if len(inner) == 1:
        return inner[0]
    raise ValueError(f"--model {str(path)!r}: the zip holds no model folder (model_index.json at its root or in one "
                     "top folder); pass a model folder or a model .zip downloaded from the app")
