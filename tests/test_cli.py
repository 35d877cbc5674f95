"""The command line: files written, exit codes, and the one-line error contract.

End-to-end checks run `python -m t2i_core` as subprocesses. Each one pays ~4 s of imports, so they are started
together in one module fixture (two at a time) and each test reads its own result. The many small input checks
call `cli.main` in-process instead.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import pixel_diff
from PIL import Image

from t2i_core import cli
from t2i_core.pipeline import DEFAULT_MODEL_DIR

LONG_PROMPT = " ".join(f"word{i}" for i in range(400))


def run_cli(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "T2I_MODEL"}
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # tiny model; two runs share the cores
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "t2i_core", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def assert_one_line_error(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Run every end-to-end command once (two at a time); {name: (CompletedProcess, its working folder)}."""
    root = tmp_path_factory.mktemp("cli")
    model = str(tiny_model_dir)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "apple", "prompt": "a red apple"}) + "\n\n"
        + json.dumps({"id": 7, "prompt": "café 🍕 ñ 猫"}, ensure_ascii=False) + "\n"
        + json.dumps({"id": "long", "prompt": LONG_PROMPT}) + "\n",
        encoding="utf-8",
    )
    (root / "bad.jsonl").write_text('{"id": "a", "prompt": "a cat"}\n{"id": "b", "prompt": "a dog"\n')
    (root / "unsafe.jsonl").write_text('{"id": "ok", "prompt": "a cat"}\n{"id": "../escape", "prompt": "a dog"}\n')
    commands = {
        "help": ["--help"],
        "generate": ["generate", "--prompt", "a red apple", "--model", model, "--num-images", "2", "--seed", "5",
                     "--size", "48", "--out", "img.png"],
        "prompts": ["generate", "--prompts", prompts, "--out", "dir", "--model", model, "--num-images", "2", "--seed", "3"],
        "gif": ["animate", "--prompt", "a cat", "--prompt", "a dog", "--frames", "5", "--fps", "5", "--size", "32",
                "--out", "clip.gif", "--model", model, "--seed", "1"],
        "mp4": ["animate", "--prompt", "a cat", "--prompt", "a dog", "--frames", "4", "--out", "clip.mp4",
                "--model", model],
        "empty_prompt": ["generate", "--prompt", "  ", "--model", model],
        "missing_model": ["generate", "--prompt", "a cat", "--model", root / "no-such-model"],
        "bad_jsonl": ["generate", "--prompts", root / "bad.jsonl", "--out", "dir", "--model", model],
        "unsafe_id": ["generate", "--prompts", root / "unsafe.jsonl", "--out", "dir", "--model", model],
    }
    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        commands["no_default_model"] = ["generate", "--prompt", "a cat"]
    folders = {name: root / name for name in commands}
    for folder in folders.values():
        folder.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, args, folders[name]) for name, args in commands.items()}
    return {name: (future.result(), folders[name]) for name, future in futures.items()}


def test_help(runs):
    result, _ = runs["help"]
    assert result.returncode == 0, result.stderr
    for command in ("generate", "animate", "train", "eval", "data"):
        assert command in result.stdout


def test_generate_writes_numbered_pngs_at_the_asked_size(runs, tiny_pipe):
    result, folder = runs["generate"]
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["img_0.png", "img_1.png"]
    for path in folder.iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (48, 48) and image.mode == "RGB"
    assert "seed: 5" in result.stdout and "img_1.png" in result.stdout
    # File k is image k of the prompt: seed 5 + k, the same as the Python API gives (Lanczos upscaling can turn a
    # one-level difference into two).
    assert pixel_diff(Image.open(folder / "img_1.png"), tiny_pipe("a red apple", seed=6, size=48).images[0]) <= 2


def test_generate_from_a_prompts_file(runs, tiny_pipe):
    result, folder = runs["prompts"]
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (folder / "dir").iterdir())
    assert names == ["7_0.png", "7_1.png", "apple_0.png", "apple_1.png", "long_0.png", "long_1.png"]
    assert Image.open(folder / "dir" / "apple_0.png").size == (16, 16)
    # <id>_<k>.png is image k of that id's prompt (seed 3 + k).
    expected = tiny_pipe(["a red apple", "café 🍕 ñ 猫"], num_images=2, seed=3).images
    for name, image in zip(["apple_0", "apple_1", "7_0", "7_1"], expected):
        assert pixel_diff(Image.open(folder / "dir" / f"{name}.png"), image) <= 1, name
    # The 400-word prompt is truncated with one warning line, and the run still succeeds.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "truncated" in lines[0], result.stderr
    assert "seed: " in result.stdout


def test_animate_gif(runs):
    result, folder = runs["gif"]
    assert result.returncode == 0, result.stderr
    with Image.open(folder / "clip.gif") as clip:
        assert clip.format == "GIF" and clip.n_frames == 5 and clip.size == (32, 32)
        assert clip.info.get("loop") == 0


def test_animate_mp4(runs):
    result, folder = runs["mp4"]
    assert result.returncode == 0, result.stderr
    data = (folder / "clip.mp4").read_bytes()
    assert len(data) > 1000 and data[4:8] == b"ftyp"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("empty_prompt", "prompt"),
        ("missing_model", "does not exist"),
        ("bad_jsonl", "bad.jsonl:2"),
        ("unsafe_id", "../escape"),
    ],
)
def test_bad_input_exits_2_with_one_line(runs, name, expected):
    result, folder = runs[name]
    assert expected in assert_one_line_error(result)
    assert not list(folder.rglob("*.png")), "nothing is written when the input is bad"


def test_no_default_model(runs):
    if "no_default_model" not in runs:
        pytest.skip("assets/model/ holds a model, so there is no missing-model message to check")
    line = assert_one_line_error(runs["no_default_model"][0])
    assert "No trained default model" in line and "--model" in line


# In-process checks: cli.main(argv) -> exit status.


def test_generate_one_image_defaults_to_out_png(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "--prompt", "a cat", "--model", str(tiny_model_dir), "--seed", "3"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert Image.open(tmp_path / "out.png").size == (16, 16)
    assert "seed: 3" in capsys.readouterr().out


def test_same_seed_same_file(tiny_model_dir, tmp_path):
    for name in ("a.png", "b.png"):
        cli.main(["generate", "--prompt", "a cat", "--model", str(tiny_model_dir), "--seed", "8", "--out", str(tmp_path / name)])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_animate_webp(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "clip.webp"
    argv = ["animate", "--prompt", "a cat", "--frames", "6", "--size", "24", "--out", str(out), "--model", str(tiny_model_dir)]
    assert cli.main(argv) == 0
    with Image.open(out) as clip:
        assert clip.format == "WEBP" and clip.n_frames == 6 and clip.size == (24, 24)
    assert "seed: " in capsys.readouterr().out


def test_generate_help_documents_the_file_names(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["generate", "--help"])
    assert info.value.code == 0
    assert "out_0.png" in capsys.readouterr().out


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


IN_PROCESS_BAD = {
    "num_images_0": (["generate", "--prompt", "a", "--num-images", "0"], "num_images"),
    "num_images_65": (["generate", "--prompt", "a", "--num-images", "65"], "num_images"),
    "seed_negative": (["generate", "--prompt", "a", "--seed", "-1"], "--seed"),
    "seed_too_big": (["generate", "--prompt", "a", "--seed", str(2**32)], "--seed"),
    "truncation_nan": (["generate", "--prompt", "a", "--truncation", "nan"], "truncation"),
    "guidance_11": (["generate", "--prompt", "a", "--guidance", "11"], "guidance"),
    "size_0": (["generate", "--prompt", "a", "--size", "0"], "--size"),
    "size_huge": (["animate", "--prompt", "a", "--size", "100000", "--out", "{tmp}/c.gif"], "--size"),
    "out_suffix": (["generate", "--prompt", "a", "--out", "picture.bmp"], "--out"),
    "prompts_without_out": (["generate", "--prompts", "{ok}"], "--out"),
    "prompts_missing_file": (["generate", "--prompts", "{tmp}/none.jsonl", "--out", "{tmp}/d"], "does not exist"),
    "prompts_empty_file": (["generate", "--prompts", "{empty}", "--out", "{tmp}/d"], "no prompts"),
    "prompts_no_prompt_key": (["generate", "--prompts", "{nokey}", "--out", "{tmp}/d"], "prompt"),
    "prompts_duplicate_id": (["generate", "--prompts", "{dup}", "--out", "{tmp}/d"], "twice"),
    "prompts_hidden_id": (["generate", "--prompts", "{hidden}", "--out", "{tmp}/d"], "safe file name"),
    "prompts_backslash_id": (["generate", "--prompts", "{backslash}", "--out", "{tmp}/d"], "safe file name"),
    "prompts_empty_prompt": (["generate", "--prompts", "{blank}", "--out", "{tmp}/d"], "prompt"),
    "animate_suffix": (["animate", "--prompt", "a", "--out", "{tmp}/clip.avi"], ".webp"),
    "animate_one_frame": (["animate", "--prompt", "a", "--frames", "1", "--out", "{tmp}/c.gif"], "frames"),
    "animate_fps_0": (["animate", "--prompt", "a", "--fps", "0", "--out", "{tmp}/c.gif"], "fps"),
    "unknown_command": (["paint"], "invalid choice"),
    "missing_prompt": (["generate"], "--prompt"),
}


@pytest.mark.parametrize("name", IN_PROCESS_BAD)
def test_bad_input_in_process(name, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = {
        "tmp": tmp_path,
        "ok": _write(tmp_path / "ok.jsonl", '{"id": "a", "prompt": "a cat"}\n'),
        "empty": _write(tmp_path / "empty.jsonl", "\n\n"),
        "nokey": _write(tmp_path / "nokey.jsonl", '{"id": "a", "text": "a cat"}\n'),
        "dup": _write(tmp_path / "dup.jsonl", '{"id": "a", "prompt": "a cat"}\n{"id": "a", "prompt": "a dog"}\n'),
        "hidden": _write(tmp_path / "hidden.jsonl", '{"id": ".a", "prompt": "a cat"}\n'),
        "backslash": _write(tmp_path / "backslash.jsonl", '{"id": "a\\\\b", "prompt": "a cat"}\n'),
        "blank": _write(tmp_path / "blank.jsonl", '{"id": "a", "prompt": " "}\n'),
    }
    argv, expected = IN_PROCESS_BAD[name]
    argv = [arg.format(**files) for arg in argv]
    if argv[0] in ("generate", "animate"):
        argv += ["--model", str(tiny_model_dir)]
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0]
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".png", ".gif", ".webp", ".avi")]
    assert not written


def test_missing_command_module_is_reported(monkeypatch, capsys):
    real_import = cli.importlib.import_module

    def fake_import(name, *args):
        if name == "t2i_core.cli.evaluate":
            raise ModuleNotFoundError("No module named 't2i_core.cli.evaluate'")
        return real_import(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", fake_import)
    assert cli.main(["eval", "--model", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval is not available") and "\n" not in err


def test_warnings_print_as_one_line(tiny_model_dir, tmp_path, capsys):
    argv = ["generate", "--prompt", LONG_PROMPT + " unique", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o.png")]
    assert cli.main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "longer than" in lines[0]
