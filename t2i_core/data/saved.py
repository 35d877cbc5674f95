"""A `datasets` save_to_disk folder, checked before `datasets.load_from_disk` reads it.

`load_from_disk` trusts state.json: its `_data_files` may repeat one file (a tiny upload then lists millions of
rows) or name files outside the folder (absolute paths, `..`), which would read server files and reveal in the
error text whether they exist. Every data file must be a plain name, listed once, a regular file in the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from .archives import DataError

_HINT = "re-save it with `Dataset.save_to_disk` (or upload images with a metadata.jsonl instead)"


def check_saved_dataset(folder: Path) -> None:
    """Raise DataError unless `folder` (a Dataset or a DatasetDict) lists only its own data files, each once."""
    if (folder / "dataset_dict.json").is_file():
        splits = _read_json(folder / "dataset_dict.json", "dataset_dict.json").get("splits")
        if not isinstance(splits, list) or not all(isinstance(s, str) and _plain_name(s) for s in splits):
            raise DataError(f"dataset_dict.json lists splits {splits!r}, not plain folder names; {_HINT}.")
        for split in splits:
            if (folder / split).is_dir():
                check_saved_dataset(folder / split)
        return
    state = _read_json(folder / "state.json", "state.json")
    files = state.get("_data_files")
    if not isinstance(files, list) or not files:
        raise DataError(f"state.json of the saved dataset lists no data files; {_HINT}.")
    names = [entry.get("filename") if isinstance(entry, dict) else None for entry in files]
    for name in names:
        if not isinstance(name, str) or not _plain_name(name) or not name.endswith(".arrow"):
            raise DataError(f"state.json names data file {name!r}, which is not a plain .arrow file name inside "
                            f"the dataset folder; {_HINT}.")
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise DataError(f"state.json names data file {name!r}, which is missing from the dataset folder; {_HINT}.")
    if len(set(names)) != len(names):
        raise DataError(f"state.json lists a data file more than once ({len(names)} entries, {len(set(names))} "
                        f"files); {_HINT}.")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\:\x00")


def _read_json(path: Path, shown_as: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise DataError(f"{shown_as} of the saved dataset cannot be read ({type(error).__name__}); {_HINT}.") from None
    if not isinstance(value, dict):
        raise DataError(f"{shown_as} of the saved dataset is not a JSON object; {_HINT}.")
    return value
