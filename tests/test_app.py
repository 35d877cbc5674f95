"""The web app through its API (gradio_client against `python app.py`), and the run manager it wires over.

The server runs as a subprocess, as on a Space, with T2I_MODEL pointing at the tiny random model and T2I_RUNS_DIR
at a temporary folder; fine-tunes are a few steps on a zip of eight 16 px images.
"""

import io
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from t2i_core.data.loading import UploadLimits
from t2i_app import FINISHED, RUNNING, STOPPED, BusyError, RunInfo, RunManager, read_metrics

ROOT = Path(__file__).resolve().parents[1]
OWNER = "test-owner-1"
SERVER_START_S = 90  # generous: the machine may be busy; the cold-start figure is measured separately


# Helpers (test_browser.py uses them too).


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_zip(path: Path, n: int = 8, size: int = 16, extra: dict | None = None) -> Path:
    """n small solid-colour PNGs with captions in metadata.jsonl (plus `extra` {name: bytes} entries)."""
    rows = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (size, size), (40 * i % 256, 255 - 30 * i % 256, 90)).save(buf, "PNG")
            zf.writestr(f"img{i}.png", buf.getvalue())
            colour = ["red", "green", "blue", "pink"][i % 4]
            rows.append(json.dumps({"file_name": f"img{i}.png", "text": f"{colour} square"}))
        zf.writestr("metadata.jsonl", "\n".join(rows) + "\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def launch_app(tmp: Path, model_dir: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start `python app.py` on a free port; returns (process, url, log file) once the page is served."""
    port = free_port()
    env = dict(os.environ, T2I_MODEL=str(model_dir), T2I_RUNS_DIR=str(tmp / "runs"), GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", T2I_TRAIN_THREADS="1",
               GRADIO_TEMP_DIR=str(tmp / "gradio"))
    log = tmp / "server.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=tmp, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return proc, url, log
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"app.py did not serve within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: the app stops a live training run (keeping its checkpoint) and exits
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# The app through gradio_client.


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("app")
    proc, url, log = launch_app(tmp, tiny_model_dir)
    yield url, tmp / "runs"
    stop_app(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def app_url(app):
    return app[0]


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def generate(client, prompt, owner=OWNER, model="default", seed=7, randomize=False, n=3, size=0, retrieval=True,
             with_exemplars=False):
    gallery, seed, status, exemplars = client.predict(prompt, model, seed, randomize, n, 1.0, 1.0, size, retrieval,
                                                      owner, api_name="/generate")
    return (gallery, seed, status, exemplars) if with_exemplars else (gallery, seed, status)


def test_generate_returns_n_images_with_the_seed_used(client):
    gallery, seed, status = generate(client, "a red apple", n=3, size=128)
    assert len(gallery) == 3
    images = [Image.open(item["image"]) for item in gallery]
    assert all(im.size == (128, 128) for im in images)
    assert seed == 7 and "7" in status
    assert [item["caption"] for item in gallery] == ["seed 7", "seed 8", "seed 9"]
    again, _, _ = generate(client, "a red apple", n=1, size=128)
    assert Image.open(again[0]["image"]).tobytes() == images[0].tobytes()
    _, drawn, _ = generate(client, "a red apple", n=1, randomize=True)
    assert isinstance(drawn, int) and 0 <= drawn < 2**32


def test_empty_prompt_gives_a_message_not_a_crash(client):
    gallery, _, status = generate(client, "   ")
    assert gallery == []
    assert "Type a prompt" in status


def test_bad_uploads_are_reported(client, tmp_path):
    slip = make_zip(tmp_path / "slip.zip", n=2, extra={"../escaped.txt": b"x"})
    report = client.predict([_file(slip)], OWNER, api_name="/check_data")
    assert "Cannot use this upload" in report and "climbs out" in report
    assert not (tmp_path / "escaped.txt").exists()
    junk = tmp_path / "notes.bin"
    junk.write_bytes(os.urandom(64))
    png, txt = tmp_path / "cat.png", tmp_path / "cat.txt"
    Image.new("RGB", (16, 16), "orange").save(png)
    txt.write_text("an orange cat")
    report = client.predict([_file(png), _file(txt), _file(junk)], OWNER, api_name="/check_data")
    assert "Found 1 pairs" in report and "notes.bin (not an image" in report


def _file(path):
    from gradio_client import handle_file

    return handle_file(str(path))


def test_finetune_makes_a_private_model_and_refuses_a_second_run(client, app_url, tmp_path):
    from gradio_client import Client

    report = client.predict([_file(make_zip(tmp_path / "data.zip"))], OWNER, api_name="/check_data")
    assert "Found 8 pairs" in report
    status, _ = client.predict("default", "api test", False, 1, 4, 2e-4, 4, OWNER, api_name="/start_training")
    assert "Started" in status
    status, _ = client.predict("default", "again", False, 1, 4, 2e-4, 4, OWNER, api_name="/start_training")
    assert "Busy" in status
    other = Client(app_url, verbose=False)
    other.predict([_file(make_zip(tmp_path / "other.zip"))], "someone-else", api_name="/check_data")
    status, _ = other.predict("default", "theirs", False, 1, 4, 2e-4, 4, "someone-else", api_name="/start_training")
    assert "Busy" in status and "another visitor" in status

    run = wait_for(lambda: (s := client.predict(OWNER, api_name="/run_status"))["status"] != RUNNING and s,
                   timeout=150, what="the fine-tune to finish")
    assert run["status"] == FINISHED and run["step"] == 4, run
    keys = [key for _, key in client.predict(OWNER, api_name="/list_models")]
    assert run["model"] in keys
    gallery, _, _ = generate(client, "red square", model=run["model"], n=2)
    assert len(gallery) == 2 and Image.open(gallery[0]["image"]).size == (16, 16)
    # Not shared: another visitor neither sees it nor can use it.
    assert run["model"] not in [key for _, key in other.predict("someone-else", api_name="/list_models")]
    gallery, _, status = generate(other, "red square", owner="someone-else", model=run["model"], n=1)
    assert gallery == [] and "not available" in status


def test_animate_returns_a_video_and_downloads(client):
    video, files, seed, status = client.predict("a cat", "a dog", "", "", 6, 6, 3, False, 0.8, "default", 0, OWNER,
                                                api_name="/animate")
    path = Path(video["video"] if isinstance(video, dict) else video)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    assert sorted(Path(f).suffix for f in files) == [".gif", ".mp4", ".webp"]
    assert seed == 3 and "6 frames" in status
    for suffix in (".webp", ".gif"):  # animated (the encoders may merge identical neighbouring frames)
        with Image.open(next(f for f in files if f.endswith(suffix))) as anim:
            assert anim.n_frames > 1


def test_the_web_server_does_not_serve_runs_uploads_or_the_secret(client, app):
    url, runs = app
    assert client.predict(OWNER, api_name="/list_models")  # the session exists; runs/ is populated
    secret = runs / ".browser_secret"
    targets = [secret, *runs.glob("runs/*/model/model_index.json"), *runs.glob("uploads/*/upload.json")]
    assert secret.is_file() and len(targets) >= 3
    for target in targets:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={target}", timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        assert status in (403, 404), (target, status)


def test_a_1mb_prompt_is_refused_at_once_and_a_flood_does_not_starve_others(client, app, app_url):
    from gradio_client import Client

    started = time.perf_counter()
    gallery, _, status = generate(client, "x" * 1_000_000)
    assert time.perf_counter() - started < 1.0  # the round trip; the refusal itself is checked in test_app_limits
    assert gallery == [] and "1,000,000 characters" in status
    flooder = Client(app_url, verbose=False)
    jobs = [flooder.submit("a cat", "default", 100 + i, False, 1, 1.0, 1.0, 0, True, None, api_name="/generate")
            for i in range(25)]

    def answer(job) -> str:
        try:
            return job.result(timeout=120)[2]
        except Exception as error:  # refused at the door (429): the address holds its most events in the queue
            return str(error)

    answers = [answer(job) for job in jobs]
    refused = [a for a in answers if "Too many requests" in a or "429" in a]
    assert len(refused) >= 10 and sum("Seed used" in a for a in answers) >= 5, answers
    gallery, _, status = generate(Client(app_url, verbose=False), "a red apple", n=1)  # another visitor
    assert len(gallery) == 1, status


def test_the_page_config_does_not_publish_the_owner_signing_secret(app):
    url, runs = app
    with urllib.request.urlopen(f"{url}config", timeout=10) as response:
        config = response.read().decode()
    secret = (runs / ".browser_secret").read_text().strip()
    assert secret and secret not in config


# The run manager on its own.


def _fake_trainer(tmp: Path) -> Path:
    """A stand-in for `python`: records its arguments and thread setting, then sleeps until stopped."""
    script = tmp / "fake-python"
    script.write_text('#!/bin/sh\necho "$@" > args.txt\necho "$OMP_NUM_THREADS" > omp.txt\nexec sleep 60\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _upload(manager: RunManager, tmp: Path, owner: str) -> str:
    upload = manager.prepare_upload([make_zip(tmp / f"{owner}.zip", n=2)], owner)
    assert upload.ok, upload.report
    return upload.id


def _make_run(manager: RunManager, run_id: str, owner: str, created: float, model_dir: Path | None,
              status: str = FINISHED, shared: bool = False) -> RunInfo:
    import shutil

    path = manager.runs_dir / run_id
    path.mkdir(parents=True)
    if model_dir is not None:
        shutil.copytree(model_dir, path / "model")
    info = RunInfo(run_id, owner, f"run of {owner}", created, status, shared, path=path)
    (path / "run.json").write_text(json.dumps(info.to_json()))
    return info


def test_one_training_process_at_a_time(tmp_path):
    manager = RunManager(tmp_path / "runs", python=str(_fake_trainer(tmp_path)))
    try:
        upload = _upload(manager, tmp_path, "alice")
        info = manager.start("alice", upload, "none", max_steps=10, minutes=1)
        assert manager.active().id == info.id
        with pytest.raises(BusyError, match="your run"):
            manager.start("alice", upload, "none")
        with pytest.raises(BusyError, match="another visitor"):
            manager.start("bob", _upload(manager, tmp_path, "bob"), "none")
        with pytest.raises(PermissionError):
            manager.stop("bob")
        args = wait_for(lambda: (info.path / "args.txt").is_file() and (info.path / "args.txt").read_text(), 20,
                        "the trainer to start")
        assert f"-m t2i_core train --config {info.path / 'train_config.json'}" in args
        started = json.loads((info.path / "train_config.json").read_text())  # a complete TrainConfig
        cores = len(os.sched_getaffinity(0))  # all of them: the trainer pauses while visitors generate
        assert (started["threads"], started["out"], started["max_steps"], started["init"]) == (cores, str(info.path), 10, "none")
        assert (started["keep_checkpoints"], started["fit"]) == (1, "crop")
        assert (info.path / "omp.txt").read_text().strip() == str(cores)
        manager.stop("alice")
        final = manager.wait(20)
        assert final.status == STOPPED and manager.active() is None
        with pytest.raises(ValueError, match="another visitor"):
            manager.start("alice", _upload(manager, tmp_path, "carol"), "none")
    finally:
        manager.shutdown(5)


def test_upload_refuses_unsafe_zips_and_writes_nothing_outside(tmp_path):
    manager = RunManager(tmp_path / "runs", limits=UploadLimits(max_entries=5))
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, extra in {"slip": {"../../outside/evil.txt": b"x"}, "absolute": {"/tmp/evil-abs.txt": b"x"},
                        "many": {f"f{i}.txt": b"x" for i in range(6)}}.items():
        upload = manager.prepare_upload([make_zip(tmp_path / f"{name}.zip", n=1, extra=extra)], "alice")
        assert not upload.ok and "Cannot use this upload" in upload.report, (name, upload.report)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\0" * (3 * 1024**2))
    small = RunManager(tmp_path / "runs2", limits=UploadLimits(max_total_bytes=1024**2, max_file_bytes=1024**2))
    assert "over the per-file limit" in small.prepare_upload([bomb], "alice").report
    assert list(outside.iterdir()) == [] and not Path("/tmp/evil-abs.txt").exists()
    assert list(manager.uploads_dir.iterdir()) == [] and list(small.uploads_dir.iterdir()) == []
    text_only = tmp_path / "a.txt"
    text_only.write_text("a caption with no image")
    upload = manager.prepare_upload([text_only], "alice")
    assert not upload.ok and "a.txt" in upload.report, upload.report


def test_models_are_per_owner_unless_shared(tmp_path, tiny_model_dir):
    manager = RunManager(tmp_path / "runs")
    now = time.time()
    a = _make_run(manager, "20250101-000001-aaaaaa", "alice", now - 30, tiny_model_dir)
    b = _make_run(manager, "20250101-000002-bbbbbb", "bob", now - 20, tiny_model_dir)
    c = _make_run(manager, "20250101-000003-cccccc", "carol", now - 10, tiny_model_dir, shared=True)
    _make_run(manager, "20250101-000004-dddddd", "alice", now, None, status=STOPPED)  # stopped before a checkpoint
    assert [r.id for r in manager.models("alice")] == [a.id, c.id]
    assert [r.id for r in manager.models("bob")] == [b.id, c.id]
    with pytest.raises(ValueError, match="not available"):
        manager.resolve_model(b.id, "alice")
    with pytest.raises(ValueError):
        manager.zip_model(b.id, "alice")
    manager.set_shared(b.id, "bob", True)
    assert b.id in [r.id for r in manager.models("alice")]
    with pytest.raises(ValueError):
        manager.set_shared(a.id, "bob", True)
    archive = manager.zip_model(a.id, "alice")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    # Flat (model_index.json at the root), generator only; test_finetune_tab.py checks dtype and modes.
    assert "model_index.json" in names and any(n.startswith("generator/") for n in names)
    assert not any(n.startswith(("model/", "discriminator/")) for n in names)


def test_retention_per_owner_quota_and_never_the_running_run(tmp_path):
    now = time.time()
    manager = RunManager(tmp_path / "runs", max_runs=4, max_runs_per_owner=2, python=str(_fake_trainer(tmp_path)))
    try:
        theirs = _make_run(manager, "20250101-000009-abcdef", "bob", now - 200, None, shared=True)
        for i in range(3):
            _make_run(manager, f"20250101-00000{i}-abcdef", "alice", now - 100 + i, None)
        assert manager.enforce_retention() == []  # nobody is starting: nothing goes for room
        old_upload = _upload(manager, tmp_path, "old")
        meta = manager.uploads_dir / old_upload / "upload.json"
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {"created": now - 2 * 86400}))
        running = manager.start("alice", _upload(manager, tmp_path, "alice"), "none", max_steps=5)
        # Alice's quota made room for her new run from her own oldest runs; Bob's run stays.
        assert sorted(r.id for r in manager.runs()) == sorted([theirs.id, "20250101-000002-abcdef", running.id])
        assert not (manager.uploads_dir / old_upload).exists()  # a day old: gone at the first check
        manager.max_bytes = 0  # over the disk cap: nothing of anyone's goes, but new runs are refused
        manager.enforce_retention()
        assert len(manager.runs()) == 3 and manager.get(running.id).status == RUNNING
        assert (manager.uploads_dir / running.upload).is_dir()
    finally:
        manager.shutdown(5)


def test_a_restarted_server_adopts_a_live_trainer_and_closes_dead_ones(tmp_path):
    root = tmp_path / "runs"
    manager = RunManager(root)
    now = time.time()
    done = _make_run(manager, "20250101-000001-aaaaaa", "alice", now - 30, None, status=RUNNING)
    (done.path / "log.txt").write_text("Stopped (max steps) at step 5; model: x\n")
    lost = _make_run(manager, "20250101-000002-bbbbbb", "alice", now - 20, None, status=RUNNING)
    live = _make_run(manager, "20250101-000003-cccccc", "bob", now - 10, None, status=RUNNING)
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    # A stand-in trainer with the run folder in its command line, as the real one has.
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(live.path)])
    for info, pid in ((done, gone.pid), (lost, gone.pid), (live, trainer.pid)):
        (info.path / "run.json").write_text(json.dumps(info.to_json() | {"pid": pid}))
    cmdline = Path(f"/proc/{trainer.pid}/cmdline")
    wait_for(lambda: str(live.path).encode() in cmdline.read_bytes(), 10, "the stand-in trainer to start")  # just exec'd
    try:
        restarted = RunManager(root)
        assert restarted.get(done.id).status == FINISHED
        assert restarted.get(lost.id).status == "interrupted"
        assert restarted.active().id == live.id
        with pytest.raises(BusyError):
            restarted.start("alice", _upload(restarted, tmp_path, "alice"), "none")
    finally:
        trainer.kill()
        trainer.wait()
    assert restarted.wait(10).status == "interrupted" and restarted.active() is None


def test_stop_keeps_the_last_checkpoint_usable(tmp_path, tiny_model_dir, monkeypatch):
    from t2i_core import T2IPipeline

    monkeypatch.setenv("T2I_MODEL", str(tiny_model_dir))  # "default" = the tiny model, as in the app tests
    manager = RunManager(tmp_path / "runs")
    try:
        info = manager.start("alice", _upload(manager, tmp_path, "alice"), "default", max_steps=2000, batch_size=4)
        wait_for(lambda: any(row["step"] > 0 for row in read_metrics(info.path)), 120, "the first logged step")
        manager.stop("alice")
        final = manager.wait(60)
    finally:
        manager.shutdown(5)
    assert final.status == STOPPED and final.returncode == 0
    step = read_metrics(final.path)[-1]["step"]
    assert 0 < step < 2000
    assert (final.path / f"checkpoint-{step}").is_dir() and final.usable
    out = T2IPipeline.from_pretrained(final.model_dir)("red square", num_images=1, seed=0)
    assert out.images[0].size == (16, 16)


def test_importing_the_app_writes_nothing(tmp_path):
    """`import app` builds the page but creates no runs folder, secret or upload area: that waits for launch."""
    runs = tmp_path / "runs"
    env = {**os.environ, "T2I_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("T2I_BROWSER_SECRET", None)
    code = "import app; assert app.demo is not None; assert app.manager.browser_secret()"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not runs.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
