"""The app's model process (t2i_app/model_process.py): the same images as in the app's own process, errors that keep
their kind, a restart after it dies, nothing heavy imported before it starts."""

import subprocess
import sys
import time

import numpy as np
import pytest

from t2i_app.model_process import ModelProcess, ModelProcessError, RemotePipelines


@pytest.fixture(scope="module")
def models(tiny_exemplar_model_dir):
    process = ModelProcess(load=tiny_exemplar_model_dir)
    yield process
    process.close()


def test_remote_images_match_the_in_process_pipeline(models, tiny_exemplar_model_dir):
    from t2i_core import T2IOutput, T2IPipeline

    local = T2IPipeline.from_pretrained(tiny_exemplar_model_dir)
    pipelines = RemotePipelines(models)
    pipe = pipelines.get(tiny_exemplar_model_dir)
    assert pipe.max_exemplars == local.max_exemplars > 0
    out = pipelines.run(pipe, "red square", num_images=2, seed=3)
    want = local("red square", num_images=2, seed=3)
    assert isinstance(out, T2IOutput) and out.seeds == want.seeds and out.exemplars == want.exemplars
    for a, b in zip(out.images, want.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    index = out.exemplars[0][0][1]
    assert np.array_equal(np.asarray(pipe.exemplar_images([index])[0]), np.asarray(local.exemplar_images([index])[0]))
    frames = pipelines.run(pipe.interpolate, ["red square", "blue square"], frames=3, seed=1)
    assert len(frames) == 3


def test_bad_input_stays_a_value_error_and_the_process_lives_on(models, tmp_path, tiny_exemplar_model_dir):
    pipelines = RemotePipelines(models)
    with pytest.raises(ValueError, match="does not exist"):
        pipelines.get(tmp_path / "no-such-model")
    pipe = pipelines.get(tiny_exemplar_model_dir)
    with pytest.raises(ValueError):
        pipe("red square", num_images=0)
    assert len(pipe("red square", seed=0).images) == 1


def test_a_killed_model_process_is_started_again(models, tiny_exemplar_model_dir):
    pipe = RemotePipelines(models).get(tiny_exemplar_model_dir)
    first = models.proc
    first.kill()
    first.wait(10)
    assert len(pipe("red square", seed=0).images) == 1  # the request that found it dead is answered by a new one
    assert models.proc is not first and models.proc.poll() is None


def test_it_exits_when_the_app_is_gone(tmp_path, tiny_exemplar_model_dir):
    """A model process must not outlive a server killed with SIGKILL (no atexit runs then)."""
    code = (f"from t2i_app.model_process import ModelProcess; m = ModelProcess(load=None); "
            f"print(m.proc.pid, flush=True); import time; time.sleep(60)")
    app = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(app.stdout.readline())
    app.kill()
    app.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break  # exited; a zombie until init reaps it
        except FileNotFoundError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"model process {child} still runs after its app was killed")


def test_starting_it_imports_nothing_heavy_and_outputs_need_no_torch():
    code = ("import sys, pickle; import t2i_app.model_process; from t2i_core import T2IOutput; "
            "pickle.loads(pickle.dumps(T2IOutput([], [1]))); "
            "print(sorted(m for m in ('torch', 'gradio', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_process_that_exited_before_listening_says_so():
    broken = ModelProcess(load=None, connect_timeout=30)
    try:
        broken.proc.kill()
        broken.proc.wait(10)
        broken.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        broken.proc.wait(10)
        with pytest.raises(ModelProcessError, match="status 3"):
            broken._connect()
    finally:
        broken.close()


def test_one_core_keeps_one_process_unless_asked(monkeypatch):
    from t2i_app import model_process

    assert model_process.wanted({"T2I_MODEL_PROCESS": "0"}) is False
    assert model_process.wanted({"T2I_MODEL_PROCESS": "1"}) is True
    monkeypatch.setattr(model_process.os, "cpu_count", lambda: 1)
    assert model_process.wanted({}) is False  # nothing to load side by side on: a second process only costs memory
    monkeypatch.setattr(model_process.os, "cpu_count", lambda: 2)
    assert model_process.wanted({}) is True
