"""Tests for t2i_core.data.loading: every accepted layout, every image mode, fitting, reports and unsafe archives."""

from __future__ import annotations

import json
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_core.data.loading import (
    DataError,
    LoadReport,
    Pair,
    UploadLimits,
    images_to_tensor,
    load_pairs,
    safe_extract_zip,
)

pytestmark = pytest.mark.timeout(60)

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Fixture builders.


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def solid(color, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, color)


def pixel(pair: Pair, x: int, y: int) -> np.ndarray:
    return np.asarray(pair.image, dtype=np.int32)[y, x]


def assert_color(actual, expected, tolerance=3):
    assert np.abs(np.asarray(actual, dtype=np.int32) - np.asarray(expected)).max() <= tolerance, (actual, expected)


def build_jsonl(root: Path) -> Path:
    save(root / "a.png", solid(RED))
    save(root / "b.png", solid(BLUE))
    lines = [{"file_name": "a.png", "text": "  a   red\n square "}, {"file_name": "b.png", "text": "a blue square"}]
    write(root / "metadata.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return root


def build_csv(root: Path) -> Path:
    save(root / "sub" / "x.png", solid(GREEN))
    save(root / "deeper" / "y.png", solid(BLUE))
    write(root / "metadata.csv", "file_name,text\nsub/x.png,a green thing\n")
    write(root / "deeper" / "metadata.csv", 'file_name,text,other\ny.png,"a blue, thing",7\n')
    return root


def build_sidecar(root: Path) -> Path:
    save(root / "cats" / "cat.png", solid(RED))
    write(root / "cats" / "cat.txt", "  a   cat\n")
    save(root / "dogs" / "deep" / "dog.jpg", solid(BLUE), quality=95)
    write(root / "dogs" / "deep" / "dog.txt", "a dog")
    return root


def build_dataset(root: Path) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    data = {"image": [solid(RED), solid(BLUE)], "text": ["a red  square", "a blue square"]}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(root))
    return root


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, prefix + file.relative_to(folder).as_posix())
        # What macOS's Finder adds to every zip: must not show up as data or as problems.
        archive.writestr(f"__MACOSX/{prefix}._junk", b"\x00\x05\x16\x07")
    return zip_path


def one_image_folder(root: Path, image: Image.Image, name: str = "img.png", **save_kwargs) -> Path:
    save(root / name, image, **save_kwargs)
    write(root / (Path(name).stem + ".txt"), "a test image")
    return root


def load_one(root: Path, resolution: int = 16, **kwargs) -> Pair:
    pairs, report = load_pairs(root, resolution, **kwargs)
    assert len(pairs) == 1, report.skipped
    return pairs[0]


# ---------------------------------------------------------------------------------------------------------------
# Layouts.


def test_metadata_jsonl_layout_with_problems_reported(tmp_path):
    root = build_jsonl(tmp_path / "data")
    save(root / "c.png", solid(GREEN))  # not in metadata
    with open(root / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"file_name": "missing.png", "text": "ghost"}) + "\n")
    write(root / "README.md", "# my data")
    write(root / ".DS_Store", "junk")

    pairs, report = load_pairs(root, 8)

    assert [p.source for p in pairs] == ["a.png", "b.png"]
    assert [p.text for p in pairs] == ["a red square", "a blue square"]
    assert all(p.image.size == (8, 8) and p.image.mode == "RGB" for p in pairs)
    assert_color(pixel(pairs[0], 4, 4), RED)
    assert_color(pixel(pairs[1], 4, 4), BLUE)
    skipped = dict(report.skipped)
    assert skipped["c.png"] == "no caption in metadata"
    assert "missing.png" in skipped["metadata.jsonl:3"] and "not found" in skipped["metadata.jsonl:3"]
    assert "not an image" in skipped["README.md"]
    assert not any(".DS_Store" in source for source, _ in report.skipped)
    assert report.pairs == 2


def test_metadata_csv_nested_and_relative_to_its_folder(tmp_path):
    pairs, report = load_pairs(build_csv(tmp_path / "data"), 8)
    assert [(p.source, p.text) for p in pairs] == [("deeper/y.png", "a blue, thing"), ("sub/x.png", "a green thing")]
    assert_color(pixel(pairs[0], 4, 4), BLUE)
    assert report.skipped == []


def test_metadata_custom_caption_column(tmp_path):
    root = tmp_path / "data"
    save(root / "a.png", solid(RED))
    write(root / "metadata.jsonl", json.dumps({"file_name": "a.png", "caption": "red", "text": "wrong"}) + "\n")
    pairs, _ = load_pairs(root, 8, caption_column="caption")
    assert [p.text for p in pairs] == ["red"]


def test_metadata_missing_caption_column_names_the_columns(tmp_path):
    root = tmp_path / "data"
    save(root / "a.png", solid(RED))
    write(root / "metadata.csv", "file_name,caption\na.png,red\n")
    with pytest.raises(DataError, match="no 'text' column") as info:
        load_pairs(root, 8)
    assert "caption" in str(info.value) and "caption_column" in str(info.value)


def test_metadata_file_name_outside_the_folder_is_refused(tmp_path):
    save(tmp_path / "secret.png", solid(RED))
    root = tmp_path / "data"
    save(root / "a.png", solid(BLUE))
    lines = [{"file_name": "../secret.png", "text": "x"}, {"file_name": "a.png", "text": "ok"}]
    write(root / "metadata.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    pairs, report = load_pairs(root, 8)
    assert [p.source for p in pairs] == ["a.png"]
    assert "outside" in dict(report.skipped)["metadata.jsonl:1"]


def test_sidecar_layout_nested_with_problems_reported(tmp_path):
    root = build_sidecar(tmp_path / "data")
    save(root / "lonely.png", solid(GREEN))
    write(root / "orphan.txt", "no image here")
    save(root / "blank.png", solid(GREEN))
    write(root / "blank.txt", "  \n ")
    save(root / "upper" / "IMG.PNG", solid(GREEN))  # cameras and Windows tools write upper-case names
    write(root / "upper" / "IMG.TXT", "shouting")

    pairs, report = load_pairs(root, 8)

    assert [(p.source, p.text) for p in pairs] == [
        ("cats/cat.png", "a cat"), ("dogs/deep/dog.jpg", "a dog"), ("upper/IMG.PNG", "shouting"),
    ]
    assert_color(pixel(pairs[0], 4, 4), RED)
    assert_color(pixel(pairs[1], 4, 4), BLUE, tolerance=12)  # JPEG
    skipped = dict(report.skipped)
    assert "lonely.txt" in skipped["lonely.png"]
    assert "no image" in skipped["orphan.txt"]
    assert skipped["blank.png"] == "empty caption"
    assert len(report.skipped) == 3


def test_pairs_are_sorted_by_relative_path(tmp_path):
    root = tmp_path / "data"
    for name in ["b.png", "sub/c.png", "a.png", "B2.png"]:
        one_image_folder(root / Path(name).parent, solid(RED), Path(name).name)
    pairs, _ = load_pairs(root, 8)
    assert [p.source for p in pairs] == ["B2.png", "a.png", "b.png", "sub/c.png"]


def test_saved_dataset_layout_and_datasetdict_train_split(tmp_path):
    import datasets

    root = build_dataset(tmp_path / "ds")
    before = sorted(p.name for p in root.iterdir())
    pairs, report = load_pairs(root, 8)
    assert [(p.source, p.text) for p in pairs] == [("row 0", "a red square"), ("row 1", "a blue square")]
    assert_color(pixel(pairs[1], 4, 4), BLUE)
    assert report.skipped == []
    assert sorted(p.name for p in root.iterdir()) == before  # loading wrote no cache files into the user's folder

    features = datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")})
    train = datasets.Dataset.from_dict({"picture": [solid(GREEN)], "caption": ["green"]}, features=features)
    test = datasets.Dataset.from_dict({"picture": [solid(RED)], "caption": ["red"]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    pairs, _ = load_pairs(tmp_path / "dd", 8, image_column="picture", caption_column="caption")
    assert [(p.source, p.text) for p in pairs] == [("train[0]", "green")]
    assert_color(pixel(pairs[0], 4, 4), GREEN)


def test_saved_dataset_missing_column_names_available_columns(tmp_path):
    root = build_dataset(tmp_path / "ds")
    with pytest.raises(DataError, match="no 'caption' column") as info:
        load_pairs(root, 8, caption_column="caption")
    assert "['image', 'text']" in str(info.value)


def test_saved_dataset_bad_rows_are_skipped(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    data = {
        "image": [solid(RED), {"bytes": b"not an image", "path": None}, solid(BLUE)],
        "text": ["red", "broken", "   "],
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(tmp_path / "ds"))
    pairs, report = load_pairs(tmp_path / "ds", 8)
    assert [p.source for p in pairs] == ["row 0"]
    skipped = dict(report.skipped)
    assert skipped["row 1"].startswith("cannot decode image")
    assert skipped["row 2"] == "empty caption"


@pytest.mark.parametrize("builder", [build_jsonl, build_csv, build_sidecar, build_dataset])
@pytest.mark.parametrize("prefix", ["", "wrapper/"])
def test_zip_of_each_layout_matches_the_folder(tmp_path, monkeypatch, builder, prefix):
    folder = builder(tmp_path / "data")
    archive = zip_folder(folder, tmp_path / "data.zip", prefix)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    from_folder, _ = load_pairs(folder, 8)
    from_zip, report = load_pairs(archive, 8)

    assert [p.text for p in from_zip] == [p.text for p in from_folder]
    assert [p.source.removeprefix(prefix) for p in from_zip] == [p.source for p in from_folder]
    assert [p.image.tobytes() for p in from_zip] == [p.image.tobytes() for p in from_folder]
    assert report.skipped == []  # __MACOSX litter is ignored
    assert list(scratch.iterdir()) == []  # the extraction folder is removed


# ---------------------------------------------------------------------------------------------------------------
# Image modes and orientation: check the pixels, not just the size.


def half_and_half(mode: str, left, right, size=16) -> Image.Image:
    image = Image.new(mode, (size, size), left)
    image.paste(right, (size // 2, 0, size, size))
    return image


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # index 0 black (transparent), index 1 red
    image.paste(1, (8, 0, 16, 16))
    image.info["transparency"] = 0
    return image


MODE_CASES = {
    # name: (image, file name, expected left pixel, expected right pixel)
    "P+transparency": (palette_with_transparency(), "img.png", WHITE, RED),
    "RGBA": (half_and_half("RGBA", (0, 0, 0, 0), (0, 0, 255, 255)), "img.png", WHITE, BLUE),
    "RGBA half alpha": (half_and_half("RGBA", (255, 0, 0, 128), (0, 0, 0, 255)), "img.png", (255, 127, 127), BLACK),
    "LA": (half_and_half("LA", (0, 0), (50, 255)), "img.png", WHITE, (50, 50, 50)),
    "CMYK": (half_and_half("CMYK", (0, 255, 255, 0), (0, 0, 0, 0)), "img.tiff", RED, WHITE),
    "I;16 mid grey": (Image.fromarray(np.full((16, 16), 32768, np.uint16)), "img.png", (128,) * 3, (128,) * 3),
    "I 16-bit range": (Image.new("I", (16, 16), 32768), "img.tiff", (128,) * 3, (128,) * 3),
    "L": (half_and_half("L", 100, 200), "img.png", (100,) * 3, (200,) * 3),
    "1": (half_and_half("1", 0, 1), "img.png", BLACK, WHITE),
}


@pytest.mark.parametrize("name", list(MODE_CASES))
def test_image_modes_become_rgb_with_alpha_on_white(tmp_path, name):
    image, file_name, left, right = MODE_CASES[name]
    pair = load_one(one_image_folder(tmp_path / "data", image, file_name))
    assert pair.image.mode == "RGB" and pair.image.size == (16, 16)
    assert_color(pixel(pair, 2, 8), left, tolerance=2)
    assert_color(pixel(pair, 13, 8), right, tolerance=2)


def test_exif_orientation_is_applied(tmp_path):
    # Stored upright: red on top, blue below. Orientation 6 says "rotate 90 degrees clockwise to display",
    # which puts red on the right and blue on the left.
    stored = Image.new("RGB", (32, 32), BLUE)
    stored.paste(RED, (0, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    pair = load_one(one_image_folder(tmp_path / "square", stored, "photo.jpg", exif=exif.tobytes(), quality=95), 32)
    assert_color(pixel(pair, 4, 16), BLUE, tolerance=40)
    assert_color(pixel(pair, 27, 16), RED, tolerance=40)

    # A wide stored image turns tall, so padding puts white bands at the sides, not at the top and bottom.
    wide = Image.new("RGB", (32, 16), GREEN)
    pair = load_one(one_image_folder(tmp_path / "wide", wide, "photo.jpg", exif=exif.tobytes(), quality=95), 32,
                    fit="pad")
    assert_color(pixel(pair, 2, 16), WHITE, tolerance=10)
    assert_color(pixel(pair, 16, 2), GREEN, tolerance=40)


def thirds() -> Image.Image:
    image = Image.new("RGB", (60, 20), BLUE)  # blue | red | green
    image.paste(RED, (20, 0, 40, 20))
    image.paste(GREEN, (40, 0, 60, 20))
    return image


def test_fit_crop_takes_the_centre_square(tmp_path):
    pair = load_one(one_image_folder(tmp_path / "data", thirds()), 12, fit="crop")
    assert pair.image.size == (12, 12)
    pixels = np.asarray(pair.image, dtype=np.int32).reshape(-1, 3)
    assert np.abs(pixels - RED).max() <= 20  # only the red middle third, give or take filter bleed at its edges


def test_fit_pad_keeps_everything_on_white(tmp_path):
    pair = load_one(one_image_folder(tmp_path / "data", thirds()), 12, fit="pad")
    assert pair.image.size == (12, 12)
    for x, y in [(6, 1), (6, 10), (0, 0), (11, 11)]:
        assert_color(pixel(pair, x, y), WHITE, tolerance=20)
    assert_color(pixel(pair, 1, 6), BLUE, tolerance=40)
    assert_color(pixel(pair, 6, 6), RED, tolerance=40)
    assert_color(pixel(pair, 10, 6), GREEN, tolerance=40)


def test_bad_fit_and_resolution_are_refused(tmp_path):
    root = one_image_folder(tmp_path / "data", solid(RED))
    with pytest.raises(ValueError, match="fit='crop'"):
        load_pairs(root, 8, fit="stretch")
    with pytest.raises(ValueError, match="resolution"):
        load_pairs(root, 0)


def test_corrupt_image_is_skipped_with_reason(tmp_path):
    root = one_image_folder(tmp_path / "data", solid(RED), "good.png")
    write(root / "broken.png", "definitely not a png")
    write(root / "broken.txt", "broken")
    pairs, report = load_pairs(root, 8)
    assert [p.source for p in pairs] == ["good.png"]
    assert dict(report.skipped)["broken.png"].startswith("cannot decode image:")


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is rewritten to claim width x height (a decompression bomb's header)."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), RED).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after 8-byte signature + length + type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("claimed", [(2000, 2000), (20000, 20000)])
def test_pixel_bomb_is_skipped_before_decoding(tmp_path, claimed):
    root = one_image_folder(tmp_path / "data", solid(RED), "good.png")
    (root / "bomb.png").write_bytes(png_claiming_size(*claimed))
    write(root / "bomb.txt", "boom")
    pairs, report = load_pairs(root, 8, limits=UploadLimits(max_image_pixels=1_000_000))
    assert [p.source for p in pairs] == ["good.png"]
    reason = dict(report.skipped)["bomb.png"]
    # A decode attempt would fail on the tiny pixel data with "cannot decode"; the limit must refuse it first.
    assert "pixels" in reason and "cannot decode" not in reason
    if claimed == (2000, 2000):
        assert "max_image_pixels" in reason


# ---------------------------------------------------------------------------------------------------------------
# Reports, errors and tensors.


def test_report_counts_and_summary(tmp_path):
    root = tmp_path / "data"
    for name, text in [("a", "two words"), ("b", "three words here"), ("c", "one two three four five six seven")]:
        save(root / f"{name}.png", solid(RED))
        write(root / f"{name}.txt", text)
    save(root / "d.png", solid(RED))
    pairs, report = load_pairs(root, 8)
    assert isinstance(report, LoadReport)
    assert report.pairs == 3 == len(pairs)
    assert report.caption_words == (2, 4.0, 7)
    summary = report.summary()
    assert "Found 3 pairs" in summary
    assert "Skipped 1" in summary and "d.png (no caption" in summary
    assert "2-7 words" in summary and "mean 4.0" in summary


def test_no_usable_pair_lists_layouts_and_reasons(tmp_path):
    root = tmp_path / "data"
    write(root / "README.md", "hello")
    write(root / "orphan.txt", "a caption")
    with pytest.raises(DataError) as info:
        load_pairs(root, 8)
    message = str(info.value)
    for needed in ("metadata.jsonl", "metadata.csv", ".txt", "save_to_disk", "README.md", "orphan.txt"):
        assert needed in message


def test_missing_empty_and_non_zip_paths_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "nope", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No usable"):
        load_pairs(tmp_path / "empty", 8)
    write(tmp_path / "fake.zip", "not a zip")
    with pytest.raises(DataError, match="neither a folder nor"):
        load_pairs(tmp_path / "fake.zip", 8)


def test_images_to_tensor_range_layout_and_checks():
    pairs = [Pair(solid(WHITE, (4, 4)), "w", "w"), Pair(solid(RED, (4, 4)), "r", "r")]
    batch = images_to_tensor(pairs)
    assert batch.shape == (2, 3, 4, 4) and batch.dtype == torch.float32
    assert torch.equal(batch[0], torch.ones(3, 4, 4))
    assert torch.equal(batch[1, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # channels first
    with pytest.raises(ValueError, match="one size"):
        images_to_tensor(pairs + [Pair(solid(RED, (8, 8)), "big", "big")])
    with pytest.raises(ValueError, match="no pairs"):
        images_to_tensor([])


# ---------------------------------------------------------------------------------------------------------------
# Unsafe archives: refused with DataError, and nothing written outside (or, where checkable up front, inside).


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so external_attr carries the file type
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def lying_zip(path: Path, real_size: int, claimed_size: int) -> Path:
    """A zip whose local and central headers claim `claimed_size` for an entry that inflates to `real_size`."""
    make_zip(path, [("big.bin", b"\0" * real_size)])
    data = bytearray(path.read_bytes())
    data[22:26] = struct.pack("<I", claimed_size)  # local header: uncompressed size
    central = data.find(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", claimed_size)  # central directory: uncompressed size
    path.write_bytes(bytes(data))
    return path


def unsafe_cases(area: Path) -> dict[str, tuple[list, UploadLimits]]:
    ok = ("ok.txt", b"fine")  # a harmless entry first: it must not be written either
    return {
        "zip slip": ([ok, ("../evil.txt", b"pwned")], UploadLimits()),
        "nested zip slip": ([ok, ("sub/../../evil.txt", b"pwned")], UploadLimits()),
        "backslash zip slip": ([ok, ("..\\evil.txt", b"pwned")], UploadLimits()),
        "absolute path": ([ok, (str(area / "evil.txt"), b"pwned")], UploadLimits()),
        "drive letter": ([ok, ("C:/evil.txt", b"pwned")], UploadLimits()),
        "symlink": ([ok, symlink_entry("link", "../evil.txt")], UploadLimits()),
        "total bomb": ([ok, ("big.bin", b"\0" * 5000)], UploadLimits(max_total_bytes=1000)),
        "file too big": ([ok, ("big.bin", b"\0" * 500)], UploadLimits(max_file_bytes=100)),
        "too many entries": ([(f"f{i}.txt", b"x") for i in range(6)], UploadLimits(max_entries=5)),
    }


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("case", list(unsafe_cases(Path("/x"))))
def test_unsafe_zip_is_refused_and_writes_nothing(tmp_path, monkeypatch, case):
    area = tmp_path / "area"
    area.mkdir()
    (area / "existing.txt").write_text("keep")
    entries, limits = unsafe_cases(area)[case]
    archive = make_zip(tmp_path / "upload.zip", entries)
    before = listing(tmp_path)
    opened = []  # every one of these is visible in the headers, so no entry may even be decompressed
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))

    with pytest.raises(DataError):
        safe_extract_zip(archive, area / "dest", limits)

    assert opened == []
    assert listing(tmp_path) == before  # no dest folder, no evil.txt, no link, nothing anywhere
    assert not (area / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_zip_whose_header_lies_about_size_is_refused_and_cleaned_up(tmp_path):
    area = tmp_path / "area"
    area.mkdir()
    archive = lying_zip(tmp_path / "liar.zip", real_size=50_000, claimed_size=10)
    assert zipfile.ZipFile(archive).infolist()[0].file_size == 10  # the header really does claim 10 bytes
    before = listing(tmp_path)
    with pytest.raises(DataError):
        safe_extract_zip(archive, area / "dest", UploadLimits(max_total_bytes=1000, max_file_bytes=1000))
    assert listing(tmp_path) == before


def test_safe_extract_zip_extracts_a_valid_archive(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", [("a.txt", b"A"), ("./sub/", b""), ("sub//b.txt", b"B")])
    dest = safe_extract_zip(archive, tmp_path / "dest")
    assert dest == tmp_path / "dest"
    assert listing(dest) == ["a.txt", "sub", "sub/b.txt"]
    assert (dest / "sub" / "b.txt").read_bytes() == b"B"


def test_safe_extract_zip_needs_a_new_or_empty_folder(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", [("a.txt", b"A")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    with pytest.raises(DataError, match="empty folder"):
        safe_extract_zip(archive, tmp_path / "full")
    assert listing(tmp_path / "full") == ["mine.txt"]
    (tmp_path / "empty").mkdir()
    assert listing(safe_extract_zip(archive, tmp_path / "empty")) == ["a.txt"]


def test_load_pairs_refuses_unsafe_zip_and_leaves_no_temp_files(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = make_zip(tmp_path / "upload.zip", [("a.png", b"x"), ("../evil.txt", b"pwned")])
    with pytest.raises(DataError, match=r"'\.\.'"):
        load_pairs(archive, 8)
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_metadata_alt_texts_are_kept(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "b.png")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "red, flat style", "alt_texts": ["red", " red  ", "", 3, "red, flat style"]})
        + "\n" + json.dumps({"file_name": "b.png", "text": "blue"}) + "\n")
    pairs, _ = load_pairs(tmp_path, 8)
    assert [(p.text, p.alt_texts) for p in pairs] == [("red, flat style", ("red",)), ("blue", ())]
