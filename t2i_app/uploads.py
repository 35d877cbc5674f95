"""Uploads: training data a visitor sends, under RUNS/uploads/<upload-id>/ (data/ and upload.json {owner, created,
pairs, report}), extracted with `safe_extract_zip` or copied file by file, and checked with `load_pairs`."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from t2i_core.data import DataError, UploadLimits, load_pairs, safe_extract_zip

from .store import ID_PATTERN, check_owner, new_id, write_json


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
    """The uploads under `uploads_dir`, within `limits`."""

    def __init__(self, uploads_dir: Path, limits: UploadLimits):
        self.uploads_dir, self.limits = uploads_dir, limits

    def prepare(self, files: list[str | os.PathLike], owner: str, resolution: int = 16) -> Upload:
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
        upload_id = new_id()
        base = self.uploads_dir / upload_id
        data = base / "data"
        try:
            data.mkdir(parents=True)
            self._fill(data, files)
            pairs, report = load_pairs(data, resolution, limits=self.limits)
        except DataError as error:
            shutil.rmtree(base, ignore_errors=True)
            # Visitors need not see the server's folders: name the upload, not its path.
            message = str(error).replace(f"{data}/", "").replace(str(data), "the upload")
            return Upload(None, f"Cannot use this upload: {message}")
        except OSError as error:
            shutil.rmtree(base, ignore_errors=True)
            return Upload(None, f"Cannot read the upload ({error}); try again.")
        fit, note = suggest_fit(data, [pair.source for pair in pairs])
        summary = report.summary() + ("\n" + note if note else "")
        write_json(base / "upload.json", {"owner": owner, "created": time.time(), "pairs": len(pairs),
                                          "report": summary, "fit": fit})
        return Upload(upload_id, summary, len(pairs), data, fit)

    def _fill(self, data: Path, files: list[Path]) -> None:
        """Zips extracted (into archive-N/ when there are several), other files copied flat; DataError over limits."""
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
