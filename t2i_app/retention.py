"""Retention: what the runs folder may delete, and when.

Finished runs beyond `max_runs`, or beyond `max_bytes` of disk for the whole folder, go oldest first; uploads
older than `upload_ttl_s` go too, and download files after OUTPUT_TTL_S; the running run and its upload never.
A run that finished keeps only what downloading and fine-tuning on need (model/, samples, logs): its checkpoints
(weights in fp32 and optimiser state, several times the model) go, since nothing resumes a finished run. A stopped
or interrupted run keeps its one last checkpoint, so `python -m t2i_core train --resume --out RUN_DIR` continues it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .store import FINISHED, RUNNING, RunInfo, RunStore

OUTPUT_TTL_S = 3600.0


@dataclass
class RetentionRules:
    max_runs: int = 30
    max_bytes: int = 5 * 1024**3
    upload_ttl_s: float = 24 * 3600.0


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (links not followed; files that vanish meanwhile count 0)."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def prune_uploads(uploads_dir: Path, ttl_s: float, keep: str | None, now: float) -> list[str]:
    deleted = []
    for d in list(uploads_dir.iterdir()):
        if d.name == keep:
            continue
        try:
            created = json.loads((d / "upload.json").read_text()).get("created", 0)
        except (OSError, json.JSONDecodeError):
            created = d.stat().st_mtime  # an upload being prepared, or a broken one
        if now - created > ttl_s:
            shutil.rmtree(d, ignore_errors=True)
            deleted.append(d.name)
    return deleted


def prune_outputs(outputs_dir: Path, now: float) -> None:
    for d in list(outputs_dir.iterdir()):
        if now - d.stat().st_mtime > OUTPUT_TTL_S:
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)


def prune_runs(store: RunStore, root: Path, rules: RetentionRules, keep: str | None) -> list[str]:
    """Oldest finished runs first, until both the run count and the folder's size are within the rules."""
    deleted = []
    candidates = sorted((r for r in store.runs() if r.id != keep and r.status != RUNNING), key=lambda r: r.created)
    count = len(store.runs())
    usage = tree_bytes(root)
    for info in candidates:
        if count <= rules.max_runs and usage <= rules.max_bytes:
            break
        size = tree_bytes(info.path)
        shutil.rmtree(info.path, ignore_errors=True)
        deleted.append(info.id)
        count -= 1
        usage -= size
    return deleted


def slim_finished_runs(store: RunStore) -> None:
    """Delete the checkpoints of finished runs, and leftovers of interrupted writes in any run that is not running."""
    for info in store.runs():
        if info.status == RUNNING:
            continue
        junk = [p for p in info.path.glob(".tmp-*")] + [info.path / ".old-model"]
        if info.status == FINISHED and info.has_model:
            junk += [p for p in info.path.glob("checkpoint-*") if p.is_dir()]
        for path in junk:
            shutil.rmtree(path, ignore_errors=True)


def enforce(store: RunStore, root: Path, uploads_dir: Path, outputs_dir: Path, rules: RetentionRules,
            running: RunInfo | None) -> list[str]:
    """Delete what the rules say may go; returns the deleted run and upload ids. Never the running run."""
    now = time.time()
    deleted = prune_uploads(uploads_dir, rules.upload_ttl_s, running.upload if running else None, now)
    prune_outputs(outputs_dir, now)
    slim_finished_runs(store)
    return deleted + prune_runs(store, root, rules, running.id if running else None)
