"""Uploads: training data a visitor sends, under RUNS/uploads/<upload-id>/ (data/ and upload.json {owner, created,
pairs, report}), extracted with `safe_extract_zip` or copied file by file, and checked with `load_pairs`."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from t2i_core.data import DataError, UploadLimits, load_pairs, safe_extract_zip

from .retention import tree_bytes
from .store import ID_PATTERN, check_owner, new_id, write_json

# Directory part of an absolute path (e.g. a temporary folder of the server): reports name files, not folders.
_ABSOLUTE_DIRS = re.compile(r"(?<![\w.~])/(?:[^/\s'\"]+/)+")


@dataclass
class Upload:
    """A checked upload: `id` is None when nothing usable was found, and `report` says why."""

    id: str | None
    report: str
    pairs: int = 0
    path: Path | None = None
    fit: str = "crop"  # the suggested way to make pictures square: "pad" when many have a wide aspect

    @property
    def ok(self) -> bool:
        return self.id is not None


WIDE = 1.2  # width:height (either way) from which cropping to a square cuts off a picture's edges


def suggest_fit(data: Path, sources: list[str]) -> tuple[str, str]:
    """How non-square pictures should become square, and a line for the report that says so.

    Reads image headers only (the loader already decoded and fitted them). "pad" (white borders, nothing cut) when
    at least a quarter of the pictures are WIDE or more; else "crop" (the centre square, as the default corpus is
    square). Sources that are not files (dataset rows) are not counted."""
    from PIL import Image

    ratios = []
    for source in sources:
        try:
            with Image.open(data / source) as image:
                width, height = image.size
        except (OSError, ValueError):
            continue
        ratios.append(max(width, height) / max(1, min(width, height)))
    off = [r for r in ratios if r > 1.02]
    if not off:
        return "crop", ("All pictures are square." if ratios else "")
    wide = sum(r >= WIDE for r in ratios)
    fit = "pad" if wide * 4 >= len(ratios) else "crop"
    typical = sorted(off)[len(off) // 2]
    how = ("padded to a square with white borders (nothing is cut off)" if fit == "pad"
           else "centre-cropped to a square (their edges are cut off)")
    return fit, (f"{len(off)} of {len(ratios)} pictures are not square (typically {typical:.2f}:1); they will be "
                 f"{how}. Choose *Pad* or *Crop* under *Non-square pictures*.")


class Uploads:
    """The uploads under `uploads_dir`: each within `limits` (bytes and files counted over all the files and archives
    of one upload), all of them together within `max_total_bytes`, and one upload per owner (a new one replaces the
    owner's earlier ones, except `keep`, the upload of the running run)."""

    def __init__(self, uploads_dir: Path, limits: UploadLimits, max_total_bytes: int | None = None):
        self.uploads_dir, self.limits = uploads_dir, limits
        self.max_total_bytes = max_total_bytes if max_total_bytes is not None else 4 * limits.max_total_bytes

    def prepare(self, files: list[str | os.PathLike], owner: str, resolution: int = 16,
                keep: str | None = None) -> Upload:
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
        self._drop_earlier(owner, keep)
        room = self.max_total_bytes - tree_bytes(self.uploads_dir)
        if room <= 0:
            return Upload(None, "The server's upload space is full; try again in a while.")
        limits = replace(self.limits, max_total_bytes=min(self.limits.max_total_bytes, room))
        upload_id = new_id()
        base = self.uploads_dir / upload_id
        data = base / "data"
        try:
            data.mkdir(parents=True)
            self._fill(data, files, limits)
            pairs, report = load_pairs(data, resolution, limits=limits)
        except BaseException as error:
            shutil.rmtree(base, ignore_errors=True)  # nothing left behind, whatever went wrong
            if not isinstance(error, Exception):
                raise
            return Upload(None, self._public(error, data, files))
        fit, note = suggest_fit(data, [pair.source for pair in pairs])
        summary = report.summary() + ("\n" + note if note else "")
        write_json(base / "upload.json", {"owner": owner, "created": time.time(), "pairs": len(pairs),
                                          "report": summary, "fit": fit, "bytes": tree_bytes(data)})
        return Upload(upload_id, summary, len(pairs), data, fit)

    def _public(self, error: Exception, data: Path, files: list[Path]) -> str:
        """The refusal a visitor sees: one line that names their files, never the server's folders."""
        message = " ".join(str(error).split())
        for path, shown in [(f"{data}/", ""), (str(data), "the upload")] + [(str(f), f.name) for f in files]:
            message = message.replace(path, shown)
        message = _ABSOLUTE_DIRS.sub("", message)
        if isinstance(error, DataError):
            return f"Cannot use this upload: {message}"
        return f"Cannot read the upload ({type(error).__name__}: {message[:300]}); check the files and try again."

    def _drop_earlier(self, owner: str, keep: str | None) -> None:
        for d in list(self.uploads_dir.iterdir()) if self.uploads_dir.is_dir() else []:
            try:
                earlier = json.loads((d / "upload.json").read_text()).get("owner") == owner
            except (OSError, ValueError):
                continue
            if earlier and d.name != keep:
                shutil.rmtree(d, ignore_errors=True)

    def _fill(self, data: Path, files: list[Path], limits: UploadLimits) -> None:
        """Zips extracted (into archive-N/ when there are several), other files copied flat; DataError over limits,
        which count every archive and file of the upload together."""
        zips = [f for f in files if f.suffix.lower() == ".zip"]
        others = [f for f in files if f.suffix.lower() != ".zip"]
        for i, archive in enumerate(zips):
            target = data if len(zips) == 1 and not others else data / f"archive-{i + 1}"
            safe_extract_zip(archive, target, limits)
            written = sum(1 for p in target.rglob("*") if p.is_file())
            limits = replace(limits, max_total_bytes=limits.max_total_bytes - tree_bytes(target),
                             max_entries=limits.max_entries - written)
        if len(others) > limits.max_entries:
            raise DataError(f"{len(others)} files uploaded, over the limit of {max(0, limits.max_entries)} left for "
                            "this upload; upload fewer files.")
        total = 0
        for f in others:
            name = f.name
            if name.startswith(".") or not name:
                continue
            size = f.stat().st_size
            total += size
            if size > limits.max_file_bytes or total > limits.max_total_bytes:
                raise DataError(f"{name} makes the upload larger than the space left for it "
                                f"({max(0, limits.max_total_bytes) // 1024**2} MB); upload less data.")
            dest = data / name
            if dest.exists():
                continue  # the same name twice: the first copy wins, as a file system would have it
            shutil.copyfile(f, dest)

    def data_dir(self, upload_id: str, owner: str) -> Path:
        """The data folder of an upload of this owner; ValueError that says what to do otherwise."""
        if not isinstance(upload_id, str) or not ID_PATTERN.match(upload_id):
            raise ValueError("Upload your training data first (the upload was not found).")
        base = self.uploads_dir / upload_id
        try:
            meta = json.loads((base / "upload.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise ValueError("That upload is gone (uploads are kept for a day); upload the data again.") from None
        if meta.get("owner") != owner:
            raise ValueError("That upload belongs to another visitor; upload your own data.")
        return base / "data"
