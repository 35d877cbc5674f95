"""Retention: what the runs folder may delete, and when.

Quotas are per owner: when a visitor starts a run, their own finished runs beyond `max_runs_per_owner` go, oldest
first. Another visitor's runs are never deleted to make room: runs go for space only by their owner's quota, and
otherwise only by age (`run_ttl_s`); a full server (`max_runs`, `max_bytes`) refuses new runs instead. Uploads
older than `upload_ttl_s` go, download files after OUTPUT_TTL_S or when outputs/ is over `max_output_bytes`
(oldest first); the running run and its upload never.
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
    max_runs: int = 30  # the whole server: new runs are refused beyond it
    max_bytes: int = 5 * 1024**3  # the whole runs folder: new runs and uploads are refused beyond it
    upload_ttl_s: float = 24 * 3600.0
    max_runs_per_owner: int = 5
    run_ttl_s: float = 7 * 24 * 3600.0
    max_output_bytes: int = 512 * 1024**2


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


def prune_outputs(outputs_dir: Path, now: float, max_bytes: int = 512 * 1024**2) -> None:
    """Download folders older than OUTPUT_TTL_S, then the oldest until outputs/ is within `max_bytes`."""
    entries = sorted(outputs_dir.iterdir(), key=lambda d: d.stat().st_mtime)
    usage = tree_bytes(outputs_dir)
    for d in entries:
        if now - d.stat().st_mtime <= OUTPUT_TTL_S and usage <= max_bytes:
            continue
        usage -= tree_bytes(d)
        shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)


def prune_runs(store: RunStore, rules: RetentionRules, keep: str | None, owner: str | None) -> list[str]:
    """Runs older than run_ttl_s; and `owner`'s own oldest finished runs beyond max_runs_per_owner (room for the
    run they start). Never another visitor's run for room."""
    now, deleted = time.time(), []
    finished = sorted((r for r in store.runs() if r.id != keep and r.status != RUNNING), key=lambda r: r.created)
    expired = [r for r in finished if now - r.created > rules.run_ttl_s]
    mine = [r for r in finished if r.owner == owner and r not in expired]
    for info in expired + mine[: max(0, len(mine) - max(0, rules.max_runs_per_owner - 1))]:
        shutil.rmtree(info.path, ignore_errors=True)
        deleted.append(info.id)
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


def enforce(store: RunStore, uploads_dir: Path, outputs_dir: Path, rules: RetentionRules, running: RunInfo | None,
            owner: str | None = None) -> list[str]:
    """Delete what the rules say may go (`owner`: the visitor about to start a run, whose quota makes room);
    returns the deleted run and upload ids. Never the running run, never another visitor's run for room."""
    now = time.time()
    deleted = prune_uploads(uploads_dir, rules.upload_ttl_s, running.upload if running else None, now)
    prune_outputs(outputs_dir, now, rules.max_output_bytes)
    slim_finished_runs(store)
    return deleted + prune_runs(store, rules, running.id if running else None, owner)
