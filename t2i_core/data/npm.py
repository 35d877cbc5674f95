"""Pinned npm packages, fetched once with ``npm pack`` into a cache folder and extracted safely (Node.js is needed
only to rebuild a corpus)."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path


class CorpusError(RuntimeError):
    """The corpus could not be built (npm missing, a package fetch failed, bad inputs)."""


def fetch_package(name: str, version: str, cache_dir: str | Path) -> Path:
    """Fetch ``name@version`` with ``npm pack`` and extract it; return its ``package`` folder.

    Cached: a second call with the same ``cache_dir`` neither runs npm nor re-extracts.
    """
    cache_dir = Path(cache_dir)
    dest = cache_dir / f"{name}-{version}"
    package = dest / "package"
    if (dest / ".complete").is_file():
        return package

    cache_dir.mkdir(parents=True, exist_ok=True)
    tgz = cache_dir / f"{name}-{version}.tgz"
    if not tgz.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise CorpusError(
                f"npm not found: install Node.js/npm to rebuild the corpus (needed to fetch "
                f"{name}@{version}); the shipped model does not need it."
            )
        proc = subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", str(cache_dir)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not tgz.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise CorpusError(
                f"could not fetch npm package {name}@{version} (npm exit {proc.returncode}):\n{tail}"
            )

    # Extract into a temporary sibling and rename, so a crash never leaves a half package.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        try:
            with tarfile.open(tgz, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # refuses links and paths outside tmp
        except (tarfile.TarError, OSError) as err:
            raise CorpusError(f"could not extract {tgz} ({err}); delete it and rebuild") from err
        if not (tmp / "package").is_dir():
            raise CorpusError(f"{tgz} has no package/ folder; delete it and rebuild")
        (tmp / ".complete").write_text(f"{name}@{version}\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return package
