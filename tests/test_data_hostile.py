"""Hostile training data (issue 15): every crafted input gets one DataError line, reads nothing outside its folder,
and costs bounded work. The property-based versions of these live in tests/test_properties.py."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from t2i_core.data.loading import DataError, UploadLimits, load_pairs

pytestmark = pytest.mark.timeout(120)


def saved_dataset(root: Path, rows: int = 2) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    data = {"image": [Image.new("RGB", (8, 8), (255, 0, 0))] * rows, "text": ["red square"] * rows}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(root))
    return root


def rewrite_state(root: Path, filenames: list[str]) -> None:
    state = json.loads((root / "state.json").read_text())
    state["_data_files"] = [{"filename": name} for name in filenames]
    (root / "state.json").write_text(json.dumps(state))


def one_line_data_error(call) -> str:
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_saved_dataset_repeating_its_data_file_is_refused(tmp_path):
    root = saved_dataset(tmp_path / "ds")
    name = json.loads((root / "state.json").read_text())["_data_files"][0]["filename"]
    rewrite_state(root, [name] * 1000)  # a few bytes that would list 1000 x the rows
    message = one_line_data_error(lambda: load_pairs(root, 8))
    assert "more than once" in message


@pytest.mark.parametrize("target", ["absolute", "dotdot"])
def test_saved_dataset_naming_files_outside_is_refused_without_saying_if_they_exist(tmp_path, target):
    outside = saved_dataset(tmp_path / "server_side")
    real = outside / json.loads((outside / "state.json").read_text())["_data_files"][0]["filename"]
    messages = []
    for victim in (real, outside / "no_such_file.arrow"):
        root = saved_dataset(tmp_path / f"upload-{target}-{victim.name}")
        rewrite_state(root, [str(victim) if target == "absolute" else f"../{victim.parent.name}/{victim.name}"])
        messages.append(one_line_data_error(lambda: load_pairs(root, 8)))
    # Existing and missing server files get the same answer (modulo their names): nothing leaks.
    assert messages[0].replace(real.name, "X") == messages[1].replace("no_such_file.arrow", "X")
    assert "not a plain .arrow file name" in messages[0]


def test_saved_dataset_over_the_row_limit_is_refused_before_reading_rows(tmp_path):
    root = saved_dataset(tmp_path / "ds", rows=30)
    message = one_line_data_error(lambda: load_pairs(root, 8, limits=UploadLimits(max_rows=20)))
    assert "30 rows" in message and "max_rows" in message


def test_metadata_rows_over_the_row_limit_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    lines = [json.dumps({"file_name": "a.png", "text": "black"})] * 50
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines))
    assert "max_rows" in one_line_data_error(lambda: load_pairs(tmp_path, 8, limits=UploadLimits(max_rows=10)))


def test_tiny_files_declaring_huge_images_stop_at_the_pixel_budget(tmp_path):
    big = tmp_path / "src.png"
    Image.new("L", (6000, 6000)).save(big, optimize=True)  # 36 M pixels in a few kB
    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):  # 1.4 G pixels declared: minutes of decoding without a budget
        shutil.copy(big, data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text("black")
    started = time.monotonic()
    message = one_line_data_error(lambda: load_pairs(data, 8, limits=UploadLimits(max_total_pixels=100_000_000)))
    assert "max_total_pixels" in message
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("case", ["non_utf8_jsonl", "non_utf8_csv", "huge_csv_field", "deep_json", "long_integer"])
def test_odd_metadata_gives_a_data_error_or_a_reported_skip(tmp_path, case):
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "a.png")
    good = json.dumps({"file_name": "a.png", "text": "blue"})
    if case == "non_utf8_jsonl":
        (tmp_path / "metadata.jsonl").write_bytes(good.encode() + b'\n{"file_name": "b.png", "text": "\xff\xfe"}\n')
    elif case == "non_utf8_csv":
        (tmp_path / "metadata.csv").write_bytes(b"file_name,text\na.png,caf\xe9\n")
    elif case == "huge_csv_field":
        (tmp_path / "metadata.csv").write_text("file_name,text\na.png,\"" + "x" * 200_000 + "\"\n")
    elif case == "deep_json":
        (tmp_path / "metadata.jsonl").write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    else:
        (tmp_path / "metadata.jsonl").write_text(good + "\n" + '{"file_name": "a.png", "n": ' + "9" * 5000 + "}\n")
    try:
        pairs, report = load_pairs(tmp_path, 8)
    except DataError as error:
        assert "\n" not in str(error) and "Traceback" not in str(error)
    else:  # the good row is kept, the bad line reported
        assert len(pairs) == 1 and report.skipped
