"""Metadata files of the Hugging Face ``imagefolder`` layout: ``metadata.jsonl`` / ``metadata.csv`` rows with a
``file_name`` column and a caption column, ``file_name`` relative to the metadata file's folder."""

from __future__ import annotations

import csv
import json
import posixpath
from pathlib import Path
from typing import Any

from .archives import _DRIVE_LETTER, DataError

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")


def read_all_metadata(
    root: Path, files: list[str], caption_column: str, max_rows: int = 1_000_000
) -> tuple[dict[str, Any], list[tuple[str, str]], bool, dict[str, list]]:
    """Map image path -> raw caption from every metadata file; bad rows are skipped with the row as source.
    Also returns image path -> its "alt_texts" list, where a row has one. More than `max_rows` rows in all is a
    DataError, as is a metadata file that is not UTF-8 text or not CSV."""
    metadata_files = [rel for rel in files if posixpath.basename(rel) in METADATA_NAMES]
    folders = [posixpath.dirname(rel) for rel in metadata_files]
    for folder in set(folders):
        if folders.count(folder) > 1:
            raise DataError(
                f"folder {folder or '.'!r} has both metadata.jsonl and metadata.csv; keep one of them."
            )
    listed: dict[str, Any] = {}
    alternatives: dict[str, list] = {}
    origin: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    rows_left = max_rows
    for meta_rel in metadata_files:
        base = posixpath.dirname(meta_rel)
        try:
            rows = metadata_rows(root / meta_rel, meta_rel, caption_column, skipped, rows_left)
        except UnicodeDecodeError:
            raise DataError(f"{meta_rel} is not UTF-8 text; save it as UTF-8.") from None
        except csv.Error as error:
            raise DataError(f"{meta_rel} cannot be read as CSV ({error}); keep captions short and quotes "
                            "balanced.") from None
        rows_left -= len(rows)
        for line, row in rows:
            where = f"{meta_rel}:{line}"
            file_name = row.get("file_name")
            if not isinstance(file_name, str) or not file_name.strip():
                skipped.append((where, "no file_name"))
                continue
            if caption_column not in row:
                skipped.append((where, f"no {caption_column!r} field"))
                continue
            rel = resolve_listed(base, file_name.strip())
            if rel is None:
                skipped.append((where, f"file_name {file_name!r} points outside the data folder"))
            elif not (root / rel).is_file():
                skipped.append((where, f"image {file_name!r} not found"))
            elif rel in listed:
                skipped.append((where, f"{rel} is already captioned by {origin[rel]}"))
            else:
                listed[rel], origin[rel] = row[caption_column], where
                if isinstance(row.get("alt_texts"), list):
                    alternatives[rel] = row["alt_texts"]
    return listed, skipped, bool(metadata_files), alternatives


def metadata_rows(
    path: Path, shown_as: str, caption_column: str, skipped: list[tuple[str, str]], max_rows: int = 1_000_000
) -> list[tuple[int, dict]]:
    """Rows of one metadata file with their line numbers; a missing column or more than `max_rows` rows is an
    error, a bad line a skip."""
    rows: list[tuple[int, dict]] = []
    too_many = DataError(f"{shown_as} takes the metadata files over the row limit (max_rows); upload fewer images.")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for row in reader:
                rows.append((reader.line_num, row))
                if len(rows) > max_rows:
                    raise too_many
    else:
        with open(path, encoding="utf-8-sig") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if len(rows) >= max_rows:
                    raise too_many
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as error:  # bad JSON, a 4,300-digit number, deep nesting
                    reason = " ".join(str(error).split())[:120] or type(error).__name__
                    skipped.append((f"{shown_as}:{line_number}", f"invalid JSON: {reason}"))
                    continue
                if isinstance(row, dict):
                    rows.append((line_number, row))
                else:
                    skipped.append((f"{shown_as}:{line_number}", "line is not a JSON object"))
        columns = sorted({key for _, row in rows for key in row})
    for needed, hint in (("file_name", "name each image in a 'file_name' column"),
                         (caption_column, "pass caption_column= (--caption-column) naming the caption column")):
        if rows and needed not in columns:
            raise DataError(f"{shown_as} has no {needed!r} column (columns: {list(columns)}); {hint}.")
    return rows


def resolve_listed(base: str, file_name: str) -> str | None:
    """A metadata file_name as a path relative to the data root, or None if it would leave the root."""
    normal = file_name.replace("\\", "/")
    if normal.startswith("/") or _DRIVE_LETTER.match(normal):
        return None
    joined = posixpath.normpath(posixpath.join(base, normal))
    if joined == ".." or joined.startswith("../"):
        return None
    return joined
