"""Zip archives of training data, extracted safely: zip slip, absolute paths, symbolic links, encrypted entries,
bombs (declared and actual sizes) and too many entries are refused before anything is written."""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


class DataError(ValueError):
    """The data given cannot be used; the message says what was wrong and what to do instead."""


@dataclass
class UploadLimits:
    """Bounds on untrusted input: archives (entries, bytes), images (pixels, checked before decoding) and rows.

    max_total_pixels bounds the decoding work of one load (each image counted by its header's width x height
    before it is decoded): tiny compressed files can declare huge images. max_rows bounds a saved `datasets`
    Dataset and the rows of the metadata files, checked before they are read one by one.
    """

    max_entries: int = 20000
    max_total_bytes: int = 2 * 1024**3  # total uncompressed
    max_image_pixels: int = 40_000_000  # per image: refuses decompression bombs
    max_file_bytes: int = 200 * 1024**2
    max_total_pixels: int = 4_000_000_000  # all images of one load together
    max_rows: int = 1_000_000


def safe_extract_zip(
    zip_path: str | os.PathLike, dest_dir: str | os.PathLike, limits: UploadLimits | None = None
) -> Path:
    """Extract `zip_path` into `dest_dir` (created; must be new or empty) and return `dest_dir` as a Path.

    Every entry is checked before anything is written: absolute paths, drive letters, '..' components, symlinks,
    encrypted entries, too many entries, declared sizes over the limits. Sizes are counted again while streaming,
    because headers can lie; if that (or anything else) fails mid-way, what was written is removed. On refusal a
    DataError says why, and nothing is left outside (or inside) `dest_dir`.
    """
    limits = limits or UploadLimits()
    dest = Path(dest_dir)
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"cannot extract into {dest}: it exists and is not an empty folder; pass a new or empty one.")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{zip_path} is not a readable zip archive ({error}); re-create it with a zip tool.") from error
    with archive:
        plan = _plan_extraction(archive, Path(zip_path).name, limits)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            _write_members(archive, plan, dest, limits)
        except BaseException as error:
            _remove_extracted(dest, created)
            if isinstance(error, DataError) or not isinstance(error, Exception):
                raise
            raise DataError(f"cannot extract {zip_path}: {error}. The archive looks damaged; re-create it.") from error
    return dest


# ---------------------------------------------------------------------------------------------------------------
# Archive safety.


def _plan_extraction(
    archive: zipfile.ZipFile, name: str, limits: UploadLimits
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Validate every entry up front, so a bad archive is refused before a single byte is written."""
    entries = archive.infolist()
    if len(entries) > limits.max_entries:
        raise DataError(
            f"{name} has {len(entries)} entries, over the limit of {limits.max_entries} (max_entries); "
            "split the data into smaller archives."
        )
    plan, declared = [], 0
    for info in entries:
        parts = _member_parts(info.filename, name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{name} entry {info.filename!r} is a symbolic link; zip the files themselves instead.")
        if info.flag_bits & 0x1:
            raise DataError(f"{name} entry {info.filename!r} is password-protected; upload an unencrypted zip.")
        if info.file_size > limits.max_file_bytes:
            raise DataError(
                f"{name} entry {info.filename!r} unpacks to {info.file_size} bytes, over the per-file limit of "
                f"{limits.max_file_bytes} (max_file_bytes); shrink or drop that file."
            )
        declared += info.file_size
        if declared > limits.max_total_bytes:
            raise DataError(
                f"{name} unpacks to more than {limits.max_total_bytes} bytes (max_total_bytes); "
                "upload a smaller archive."
            )
        if parts:
            plan.append((info, parts))
    return plan


def _member_parts(member: str, name: str) -> list[str]:
    """Split an entry name into path parts that stay inside the destination, or raise DataError."""
    # Zips made on Windows may use backslashes; treat them as separators so '..\\x' is caught too.
    normal = member.replace("\\", "/")
    if "\x00" in normal:
        raise DataError(f"{name} entry {member!r} has a NUL byte in its name; re-create the archive.")
    if normal.startswith("/") or _DRIVE_LETTER.match(normal):
        raise DataError(
            f"{name} entry {member!r} has an absolute path; zip the folder's contents with relative paths "
            "(e.g. `cd data && zip -r ../data.zip .`)."
        )
    parts = [part for part in normal.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DataError(
            f"{name} entry {member!r} climbs out of the archive with '..'; zip the folder's contents with "
            "relative paths (e.g. `cd data && zip -r ../data.zip .`)."
        )
    return parts


def _write_members(
    archive: zipfile.ZipFile, plan: list[tuple[zipfile.ZipInfo, list[str]]], dest: Path, limits: UploadLimits
) -> None:
    total = 0
    for info, parts in plan:
        target = dest.joinpath(*parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        # "xb": a second entry with the same name is refused rather than silently overwriting the first.
        with archive.open(info) as source, open(target, "xb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                total += len(chunk)
                if written > limits.max_file_bytes or total > limits.max_total_bytes:
                    raise DataError(
                        f"entry {info.filename!r} unpacks to more than its header says and over the limits "
                        f"(max_file_bytes={limits.max_file_bytes}, max_total_bytes={limits.max_total_bytes}); "
                        "the archive is unsafe, re-create it."
                    )
                out.write(chunk)


def _remove_extracted(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# Layout detection and the three layouts.
