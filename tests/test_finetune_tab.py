"""The Fine-tune tab as a newcomer lives it (issue 16): progress in the budget's own terms, the trainer paused while
visitors generate, how non-square pictures are fitted, labelled sample grids, a download that drops into the CLI,
slim finished runs, and an About tab whose status reads as the README's. No server: t2i_app and the CLI directly."""

import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from t2i_app import FINISHED, RUNNING, STOPPED, RunInfo, RunManager
from t2i_app.store import RunStore
from t2i_app.uploads import suggest_fit
from t2i_app.views import about_sections, progress_html, status_paragraph
from test_app import _fake_trainer, _make_run, _upload, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _run_with_rows(tmp_path, rows, status=RUNNING, minutes=10.0, max_steps=1000, created=None, end=None):
    store = RunStore(tmp_path / "runs")
    path = store.runs_dir / "20250101-000001-aaaaaa"
    path.mkdir(parents=True)
    info = RunInfo(path.name, "alice", "cats", created or time.time() - 100, status, max_steps=max_steps,
                   minutes=minutes, batch_size=32, ended=end, path=path)
    store.save(info)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return store, info


def test_progress_counts_the_wall_clock_and_the_time_budget(tmp_path):
    now = time.time()
    # Loading took 20 s; the last row was written 15 s ago (rows come every few steps).
    start = now - 80
    rows = [{"step": 0, "time": 0.0, "wall": start, "images": 0},
            {"step": 40, "time": 40.0, "wall": start + 40, "images": 1280},
            {"step": 65, "time": 65.0, "wall": start + 65, "images": 2080}]
    store, info = _run_with_rows(tmp_path, rows, created=now - 100)
    progress = store.progress(info.id, now=now)
    assert abs(progress.elapsed - 100) < 1  # since the run started, loading included: the wall clock
    assert abs(progress.left - (600 - 80)) < 1  # the budget's clock is the trainer's, up to now
    assert progress.rate == pytest.approx(32.0) and progress.images == 2080
    text = progress_html(progress)
    assert "1:40 elapsed" in text and "8:40 left of the 10 min budget" in text and "32.0 images/s" in text
    assert "of 1,000" not in text  # 1,000 steps are out of reach in 10 minutes at this rate


def test_progress_counts_steps_when_the_step_budget_binds(tmp_path):
    now = time.time()
    rows = [{"step": 0, "time": 0.0, "wall": now - 10, "images": 0},
            {"step": 10, "time": 10.0, "wall": now, "images": 320}]
    store, info = _run_with_rows(tmp_path, rows, max_steps=40, created=now - 20)
    text = progress_html(store.progress(info.id, now=now))
    assert "30 of 40 steps left, about 0:30" in text


@pytest.mark.parametrize("end, words", [("time budget", "10-minute time budget ran out"),
                                        ("max steps", "reached its step budget (1,000 steps)")])
def test_the_end_message_says_why_the_run_ended(tmp_path, end, words):
    rows = [{"step": 361, "time": 600.0, "wall": time.time(), "images": 11552, "end": end}]
    store, info = _run_with_rows(tmp_path, rows, status=FINISHED, end=time.time())
    text = progress_html(store.progress(info.id))
    assert words in text and "step 361 · 11,552 images seen" in text and "of 1,000" not in text


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_trainer_pauses_while_a_visitor_generates(tmp_path):
    manager = RunManager(tmp_path / "runs", python=str(_fake_trainer(tmp_path)))
    try:
        info = manager.start("alice", _upload(manager, tmp_path, "alice"), "none", max_steps=10)
        wait_for(lambda: (info.path / "args.txt").is_file(), 20, "the trainer to start")
        assert _state(info.pid) != "T"
        with manager.visitors_first():
            with manager.visitors_first():  # two requests at once: the first to finish does not resume it
                pass
            wait_for(lambda: _state(info.pid) == "T", 5, "the trainer to pause")
        wait_for(lambda: _state(info.pid) != "T", 5, "the trainer to resume")
        with manager.visitors_first():
            manager.stop("alice")  # a paused trainer still gets the stop
            assert manager.wait(20).status == STOPPED
    finally:
        manager.shutdown(5)


def _picture(path: Path, size) -> str:
    Image.new("RGB", size, "orange").save(path)
    return path.name


def test_wide_pictures_are_padded_by_default_and_the_report_says_so(tmp_path):
    wide = [_picture(tmp_path / f"w{i}.png", (40, 30)) for i in range(3)]
    fit, note = suggest_fit(tmp_path, wide + [_picture(tmp_path / "s.png", (30, 30))])
    assert fit == "pad" and "3 of 4 pictures are not square (typically 1.33:1)" in note and "white" in note
    fit, note = suggest_fit(tmp_path, [_picture(tmp_path / "n.png", (33, 30))] + ["s.png"] * 4)
    assert fit == "crop" and "cut off" in note
    assert suggest_fit(tmp_path, ["s.png"]) == ("crop", "All pictures are square.")


def test_a_run_trains_on_the_fit_it_was_given(tmp_path):
    manager = RunManager(tmp_path / "runs", python=str(_fake_trainer(tmp_path)))
    try:
        info = manager.start("alice", _upload(manager, tmp_path, "alice"), "none", fit="pad")
        assert json.loads((info.path / "train_config.json").read_text())["fit"] == "pad"
        manager.stop("alice")
        manager.wait(20)
        with pytest.raises(ValueError, match="Fit must be"):
            manager.start("alice", _upload(manager, tmp_path, "bob"), "none", fit="stretch")
    finally:
        manager.shutdown(5)


def test_the_download_is_flat_fp16_readable_and_drops_into_the_cli(tmp_path, tiny_model_dir, monkeypatch):
    from safetensors import safe_open

    manager = RunManager(tmp_path / "runs")
    run = _make_run(manager, "20250101-000001-aaaaaa", "alice", time.time(), tiny_model_dir)
    import torch

    from t2i_core.models.bank import ExemplarBank

    vectors = torch.nn.functional.normalize(torch.randn(2, 384), dim=-1)
    ExemplarBank(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), vectors, ["a cat", "a dog"], ["cat", "dog"]).save(
        run.path / "model" / "bank")
    archive = manager.zip_model(run.id, "alice")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert {"model_index.json", "generator/config.json", "bank/bank.json"} <= set(names)
        assert not any(n.startswith("discriminator/") for n in names)
        assert all((info.external_attr >> 16) & 0o777 == 0o644 for info in zf.infolist())
        zf.extractall(tmp_path / "unzipped")
    with safe_open(str(tmp_path / "unzipped/generator/diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    from t2i_core.cli import main

    monkeypatch.setenv("T2I_CACHE", str(tmp_path / "cache"))
    for model in (tmp_path / "unzipped", archive, archive):  # the folder unzipped, and the zip itself (twice)
        out = tmp_path / f"{Path(model).stem}.png"
        assert main(["generate", "--prompt", "red square", "--model", str(model), "--out", str(out)]) == 0
        assert Image.open(out).size == (16, 16)
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1  # extracted once, keyed by the zip's hash


def test_downloads_asked_at_once_all_get_the_whole_zip(tmp_path, tiny_model_dir):
    """The page's timer can ask for the download again before the first zip is written (a slow machine)."""
    from concurrent.futures import ThreadPoolExecutor

    manager = RunManager(tmp_path / "runs")
    run = _make_run(manager, "20250101-000001-aaaaaa", "alice", time.time(), tiny_model_dir)
    for attempt in range(3):
        (run.path / "model.zip").unlink(missing_ok=True)
        with ThreadPoolExecutor(6) as pool:
            archives = list(pool.map(lambda _: manager.zip_model(run.id, "alice"), range(6)))
        for archive in archives:
            with zipfile.ZipFile(archive) as zf:
                assert zf.testzip() is None and "generator/config.json" in zf.namelist()


def test_finished_runs_keep_no_checkpoints_stopped_ones_keep_their_last(tmp_path, tiny_model_dir):
    manager = RunManager(tmp_path / "runs")
    done = _make_run(manager, "20250101-000001-aaaaaa", "alice", time.time() - 20, tiny_model_dir)
    stopped = _make_run(manager, "20250101-000002-bbbbbb", "alice", time.time() - 10, tiny_model_dir, status=STOPPED)
    for info in (done, stopped):
        (info.path / "checkpoint-40").mkdir()
        (info.path / "checkpoint-40" / "optimizers.pt").write_bytes(b"x" * 1000)
    manager.enforce_retention()
    assert not (done.path / "checkpoint-40").exists() and done.usable
    assert (stopped.path / "checkpoint-40" / "optimizers.pt").is_file()


def test_about_shows_the_status_as_the_readme_words_it():
    short, card = about_sections(ROOT / "assets" / "MODEL_CARD.md")
    status = status_paragraph(card)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert status.startswith("**Status:") and status in readme and status in short
    assert len(short.split()) < 400 < len(card.split())  # short on top; the card folds below it
    assert re.search(r"## How to fine-tune", short) and "## Licences" in short


def test_a_run_shows_a_captioned_grid_before_training_and_says_why_it_ended(tmp_path, tiny_model_dir, text_encoder):
    from t2i_core.training.config import TrainConfig
    from t2i_core.training.loop import train
    from test_app import make_zip

    cfg = TrainConfig(data=str(make_zip(tmp_path / "data.zip")), out=str(tmp_path / "run"), init=str(tiny_model_dir),
                      max_steps=2, batch_size=4, log_every=1, sample_every=1000, precision="fp32")
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "wall" in rows[0] and rows[-1]["end"] == "max steps"
    first = Image.open(tmp_path / "run" / "samples" / "step-0000000.png")
    assert first.size[0] % 128 == 0 and first.size[1] % (128 + 28) == 0  # 128 px tiles, each with a caption band
    band = first.crop((0, 130, 128, 156)).convert("L")
    assert band.getextrema()[0] < 128  # there is text under the first tile


def test_zero_steps_puts_the_uploads_in_the_bank_and_their_captions_draw_on_them(tmp_path, tiny_exemplar_model_dir,
                                                                                  monkeypatch):
    """Steps 0 on the Fine-tune tab: no training, a model at once whose bank holds the upload, so each caption draws
    on its own picture (a user's 250 logos: every caption then drew its own logo). From scratch it is refused."""
    from t2i_core import T2IPipeline

    monkeypatch.setenv("T2I_MODEL", str(tiny_exemplar_model_dir))  # "default" = a tiny model with a bank
    manager = RunManager(tmp_path / "runs")
    try:
        with pytest.raises(ValueError, match="0 steps only adds your pictures"):
            manager.start("alice", _upload(manager, tmp_path, "alice"), "none", max_steps=0)
        info = manager.start("alice", _upload(manager, tmp_path, "alice"), "default", max_steps=0, batch_size=4)
        final = manager.wait(120)
    finally:
        manager.shutdown(5)
    assert final.id == info.id and final.status == FINISHED and final.usable
    pipe = T2IPipeline.from_pretrained(final.model_dir)
    assert sorted(pipe.bank.captions) == ["green square", "red square"]  # the upload's pairs, nothing else
    out = pipe("green square", num_images=2, seed=0)
    (caption, index), = out.exemplars[0]
    assert caption == "green square"
    assert pipe.exemplar_images([index])[0].getpixel((8, 8)) == (40, 225, 90)  # the uploaded picture itself
