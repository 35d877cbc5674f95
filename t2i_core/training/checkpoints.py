"""Checkpoints: checkpoint-<step>/ with weights as safetensors, optimiser state via torch.save (loaded with
weights_only=True) and the loop's state as JSON; written atomically, rotated, and RUN_DIR/model refreshed."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..models.folder import save_model_folder

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainState:
    step: int = 0
    images_seen: int = 0
    lr_scale: float = 1.0
    skipped_steps: int = 0
    rollbacks: int = 0
    history: list = field(default_factory=list)


def list_checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def remove_partial_writes(run_dir: Path) -> list[str]:
    """Delete what a write killed half way left behind (never read: checkpoints and the model are swapped in whole).
    A kill between the two renames of the model swap leaves no `model`; the previous one comes back from `.old-model`."""
    if not (run_dir / "model").exists() and (run_dir / ".old-model").is_dir():
        os.replace(run_dir / ".old-model", run_dir / "model")
    partial = [p for p in (*run_dir.glob(".tmp-*"), run_dir / ".old-model") if p.is_dir()]
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in partial)


class CheckpointError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


def save_checkpoint(run_dir: Path, state: TrainState, g, d, g_ema, opt_g, opt_d, keep: int, text_encoder: str,
                    training: dict | None = None, bank=None) -> Path:
    """Write atomically (temporary folder, then rename), rotate, and refresh RUN_DIR/model (with `training` in its
    model_index.json, and the exemplar bank when given). On a write error (a full disk) the partial files go, the previous checkpoint and model stay,
    and CheckpointError says what to do."""
    try:
        return _save_checkpoint(run_dir, state, g, d, g_ema, opt_g, opt_d, keep, text_encoder, training, bank)
    except OSError as err:
        for partial in (run_dir / f".tmp-{CHECKPOINT_PREFIX}{state.step}", run_dir / ".tmp-model"):
            shutil.rmtree(partial, ignore_errors=True)
        previous = list_checkpoints(run_dir)
        kept = f"{previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(err.errno, f"cannot write checkpoint-{state.step} in {run_dir} ({err.strerror or err}); "
                                         f"{kept}. Free disk space, then run again with --resume.") from err


def _save_checkpoint(run_dir: Path, state: TrainState, g, d, g_ema, opt_g, opt_d, keep: int, text_encoder: str,
                     training: dict | None, bank=None) -> Path:
    final = run_dir / f"{CHECKPOINT_PREFIX}{state.step}"
    tmp = run_dir / f".tmp-{CHECKPOINT_PREFIX}{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, m in (("generator", g), ("discriminator", d), ("generator_ema", g_ema)):
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, tmp / f"{name}.safetensors")
    torch.save({"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()}, tmp / "optimizers.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # The model folder holds the EMA generator; swap it in whole so a reader never sees half of it.
    model_tmp = run_dir / ".tmp-model"
    shutil.rmtree(model_tmp, ignore_errors=True)
    save_model_folder(model_tmp, g_ema, text_encoder, d, training=training, bank=bank)
    old = run_dir / ".old-model"
    shutil.rmtree(old, ignore_errors=True)
    if (run_dir / "model").exists():
        os.replace(run_dir / "model", old)
    os.replace(model_tmp, run_dir / "model")
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, g, d, g_ema, opt_g, opt_d) -> TrainState:
    for name, m in (("generator", g), ("discriminator", d), ("generator_ema", g_ema)):
        m.load_state_dict(load_file(ckpt / f"{name}.safetensors"))
    opts = torch.load(ckpt / "optimizers.pt", weights_only=True)
    opt_g.load_state_dict(opts["opt_g"])
    opt_d.load_state_dict(opts["opt_d"])
    return TrainState(**json.loads((ckpt / "trainer_state.json").read_text()))
