"""Issue 15 in the core: untrusted model folders, checkpoints by time, a damaged latest checkpoint, weights that
explode to huge finite values, a run that keeps diverging, a full disk while saving, and Stop while the trainer
still loads its data."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from t2i_core.data import shapes
from t2i_core.pipeline import T2IPipeline
from t2i_core.training import checkpoints
from t2i_core.training.checkpoints import CheckpointError, list_checkpoints
from t2i_core.training.config import TrainConfig
from t2i_core.training.loop import Trainer, TrainingDiverged, train

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TINY = dict(init="none", resolution=16, g_channels=(32, 32, 16), d_channels=(16, 32, 32), batch_size=8,
            precision="fp32", r1_every=2, sample_every=1000, log_every=1, seed=3)  # no `threads`: it is process-wide


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return shapes.make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "train", n=16, resolution=32)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_a_huge_config_value_is_refused_before_anything_is_allocated(tiny_model_dir, tmp_path):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    edit_json(model / "generator" / "config.json", num_mean_samples=10**12)  # ~TBs if it were allocated
    with pytest.raises(ValueError, match="num_mean_samples.*outside the bounds"):
        T2IPipeline.from_pretrained(model)


def test_a_hub_text_encoder_in_model_index_is_refused_offline_in_one_line(tiny_model_dir, tmp_path):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    edit_json(model / "model_index.json", text_encoder="someone/unknown-encoder")
    with pytest.raises(ValueError, match="T2I_ALLOW_HUB_TEXT_ENCODERS"):
        T2IPipeline.from_pretrained(model)
    cli = [sys.executable, "-m", "t2i_core", "generate", "--prompt", "a", "--model", str(model),
           "--out", str(tmp_path / "o.png")]
    for allow in ("0", "1"):  # refused; or allowed, but offline it cannot be fetched: one line either way
        r = subprocess.run(cli, env=ENV | {"T2I_ALLOW_HUB_TEXT_ENCODERS": allow}, capture_output=True, text=True,
                           timeout=120)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "someone/unknown-encoder" in lines[0], r.stderr[-2000:]


def test_checkpoints_are_also_written_by_time(shapes_dir, tmp_path, monkeypatch):
    clock = {"t": 1000.0}

    def fake_time():
        clock["t"] += 40.0  # every call: the loop reads the clock once or twice a step
        return clock["t"]

    monkeypatch.setattr("t2i_core.training.loop.time.time", fake_time)
    train(TrainConfig(data=str(shapes_dir), out=str(tmp_path / "r"), max_steps=7, checkpoint_every=1000,
                      checkpoint_minutes=2.0, keep_checkpoints=100, **TINY))
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path / "r")]
    assert len(steps) >= 3 and steps[-1] == 7, steps  # by time during the run, not only at the end


def test_resume_skips_a_damaged_latest_checkpoint(shapes_dir, tmp_path):
    opts = TINY | dict(data=str(shapes_dir), out=str(tmp_path / "r"), checkpoint_every=2, keep_checkpoints=3)
    train(TrainConfig(max_steps=4, **opts))
    latest = list_checkpoints(tmp_path / "r")[-1]
    assert latest.name == "checkpoint-4"
    (latest / "generator.safetensors").write_bytes(b"\x00" * 100)  # a kill mid-write on a file system without rename
    trainer = Trainer(TrainConfig(max_steps=6, resume=True, **opts))
    trainer.run()
    assert "Skipped checkpoint-4" in (tmp_path / "r" / "log.txt").read_text()
    assert "Resumed from checkpoint-2" in (tmp_path / "r" / "log.txt").read_text()
    assert trainer.state.step == 6 and T2IPipeline.from_pretrained(tmp_path / "r" / "model")


def test_a_resume_clears_half_written_folders_and_restores_a_model_caught_between_renames(tmp_path):
    run = tmp_path / "r"
    for name in (".tmp-checkpoint-7", ".tmp-model", ".old-model"):
        (run / name).mkdir(parents=True)
        (run / name / "marker.txt").write_text(name)
    # Killed between `model -> .old-model` and `.tmp-model -> model`: no model folder; the old one comes back.
    assert checkpoints.remove_partial_writes(run) == [".tmp-checkpoint-7", ".tmp-model"]
    assert (run / "model" / "marker.txt").read_text() == ".old-model"
    assert sorted(p.name for p in run.iterdir()) == ["model"]
    (run / ".old-model").mkdir()  # killed after the swap, before the old one was deleted: the new model stays
    assert checkpoints.remove_partial_writes(run) == [".old-model"]
    assert (run / "model" / "marker.txt").read_text() == ".old-model" and not (run / ".old-model").exists()


def test_weights_exploding_to_huge_finite_values_are_rolled_back_not_saved(shapes_dir, tmp_path, monkeypatch):
    real_step, exploded = Trainer.train_step, []

    def exploding(self, step):
        losses = real_step(self, step)
        if step == 2 and not exploded:  # once per run
            exploded.append(step)
            with torch.no_grad():
                next(self.g.parameters()).mul_(1e30)  # finite, but the run is ruined
        return losses

    monkeypatch.setattr(Trainer, "train_step", exploding)
    opts = TINY | dict(data=str(shapes_dir), max_steps=4)
    with pytest.raises(RuntimeError, match="diverged before the first checkpoint"):
        train(TrainConfig(out=str(tmp_path / "a"), checkpoint_every=100, **opts))
    assert not (tmp_path / "a" / "model").exists()
    exploded.clear()
    model = train(TrainConfig(out=str(tmp_path / "b"), checkpoint_every=2, **opts))
    assert "rolled back to step 2" in (tmp_path / "b" / "log.txt").read_text()
    pipe = T2IPipeline.from_pretrained(model)
    assert max(p.abs().max().item() for p in pipe.generator.parameters()) < 1e4


def test_a_run_that_keeps_diverging_stops_after_k_rollbacks_in_a_row_and_keeps_its_checkpoint(
        shapes_dir, tmp_path, monkeypatch, capsys):
    real_step, explode_at = Trainer.train_step, set()

    def exploding(self, step):
        losses = real_step(self, step)
        if step in explode_at or "always" in explode_at and step >= 2:
            explode_at.discard(step)
            with torch.no_grad():
                next(self.g.parameters()).mul_(1e30)
        return losses

    monkeypatch.setattr(Trainer, "train_step", exploding)
    run = tmp_path / "r"
    opts = TINY | dict(data=str(shapes_dir), out=str(run), max_steps=20, checkpoint_every=2, max_rollbacks=3)
    explode_at.add("always")  # every step after checkpoint-2 explodes, however low the learning rate goes
    with pytest.raises(TrainingDiverged, match="again after 3 rollbacks in a row to checkpoint-2"):
        train(TrainConfig(**opts))
    assert (run / "log.txt").read_text().count("rolled back to step 2") == 3
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]
    assert json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2
    pipe = T2IPipeline.from_pretrained(run / "model")  # the last good weights, finite
    assert max(p.abs().max().item() for p in pipe.generator.parameters()) < 1e4
    # On the command line, resuming it: the same, in one line and exit status 1.
    from t2i_core.cli import main

    assert main(["train", "--out", str(run), "--resume"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: training diverged again") and "--resume" in err[0], err
    # Rollbacks with a checkpoint written between them are not in a row: one allowed, two happen, the run finishes.
    explode_at.clear()
    explode_at.update({2, 4})
    out = tmp_path / "s"
    train(TrainConfig(**opts | dict(out=str(out), max_steps=6, max_rollbacks=1)))
    assert (out / "log.txt").read_text().count("rolled back") == 2
    assert list_checkpoints(out)[-1].name == "checkpoint-6"


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(shapes_dir, tmp_path, monkeypatch):
    opts = TINY | dict(data=str(shapes_dir), out=str(tmp_path / "r"), checkpoint_every=2)
    train(TrainConfig(max_steps=2, **opts))
    before = (tmp_path / "r" / "checkpoint-2" / "generator.safetensors").read_bytes()
    real_save = checkpoints.save_file

    def full_disk(tensors, path, *args, **kwargs):
        if "discriminator" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left.*checkpoint-2 is intact.*--resume"):
        train(TrainConfig(max_steps=4, resume=True, **opts))
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert "checkpoint-2" in names and not [n for n in names if n.startswith(".tmp")]
    assert (tmp_path / "r" / "checkpoint-2" / "generator.safetensors").read_bytes() == before
    assert T2IPipeline.from_pretrained(tmp_path / "r" / "model")


def test_stop_ends_a_trainer_within_seconds_while_it_loads_data(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.new("L", (6000, 6000)).save(data / "big.png", optimize=True)
    for i in range(60):  # about a minute of decoding on this machine
        shutil.copy(data / "big.png", data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text("black")
    cmd = [sys.executable, "-m", "t2i_core", "train", "--data", str(data), "--out", str(tmp_path / "r"),
           "--init", "none", "--resolution", "16", "--threads", "1", "--max-steps", "1"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(12)  # imports, the text encoder, then the images
    assert proc.poll() is None, proc.stdout.read()
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 5, out
    assert proc.returncode == 0 and "nothing was trained yet" in out
