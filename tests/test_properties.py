"""Property-based tests (hypothesis) over hostile input: archive entries, metadata files and prompts. Whatever is
generated, nothing crashes except with the documented errors (DataError; ValueError/TypeError for prompts), and
nothing is written outside the upload folder. Small example counts keep the file within CI's budget."""

from __future__ import annotations

import io
import json
import shutil
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from t2i_app.limits import prompt_problem
from t2i_core.data.loading import DataError, UploadLimits, load_pairs, safe_extract_zip

pytestmark = pytest.mark.timeout(240)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LIMITS = UploadLimits(max_entries=30, max_total_bytes=200_000, max_file_bytes=100_000, max_image_pixels=1_000_000,
                      max_total_pixels=5_000_000, max_rows=50)

_PNG = io.BytesIO()
Image.new("RGB", (8, 8), (200, 30, 30)).save(_PNG, "PNG")
PNG = _PNG.getvalue()

name_parts = st.one_of(st.sampled_from(["..", ".", "", "a", "img.png", "metadata.jsonl", "x.txt", "C:", "\\\\..",
                                        "__MACOSX", ".hidden", "ünï", "שלום", "\x00", "a" * 200]),
                       st.text(min_size=1, max_size=12))
entry_names = st.lists(name_parts, min_size=1, max_size=4).map("/".join).flatmap(
    lambda n: st.sampled_from([n, "/" + n, n + "/"]))
contents = st.one_of(st.just(PNG), st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                     st.just(b"\0" * 150_000))
entries = st.lists(st.tuples(entry_names, contents, st.booleans()), min_size=1, max_size=8)


def make_zip(path: Path, items) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the point
        with zipfile.ZipFile(path, "w") as zf:
            for name, data, link in items:
                info = zipfile.ZipInfo(name)
                if link:
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, data)


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


@FAST
@given(items=entries)
def test_any_archive_extracts_inside_or_is_refused_with_a_data_error(items):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_zip(tmp / "in.zip", items)
        sandbox = tmp / "sandbox"
        sandbox.mkdir()
        dest = sandbox / "upload"
        try:
            safe_extract_zip(tmp / "in.zip", dest, LIMITS)
        except DataError as error:
            assert "\n" not in str(error)
            assert not dest.exists() or not any(dest.iterdir())  # nothing left behind
        outside = files_under(sandbox) - files_under(dest) - {dest}
        assert outside == set() and set(tmp.iterdir()) == {tmp / "in.zip", sandbox}
        assert not any(p.is_symlink() for p in files_under(sandbox))
        try:
            load_pairs(tmp / "in.zip", 8, limits=LIMITS)
        except DataError as error:
            assert "\n" not in str(error)


rows = st.fixed_dictionaries({}, optional={
    "file_name": st.one_of(st.sampled_from(["a.png", "b.png", "../a.png", "/etc/passwd", "missing.png", "sub/a.png",
                                            "a.png\x00", "A.PNG"]), st.text(max_size=20), st.integers()),
    "text": st.one_of(st.text(max_size=50), st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=3)),
    "alt_texts": st.one_of(st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=3), st.text(max_size=5)),
})
encodings = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"])


def encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@FAST
@given(meta=st.lists(rows, max_size=8), kind=st.sampled_from(["jsonl", "csv", "both", "garbage"]),
       encoding=encodings, junk=st.binary(max_size=200), captions=st.booleans(), link=st.booleans())
def test_any_metadata_gives_pairs_or_a_data_error_and_reads_nothing_outside(meta, kind, encoding, junk, captions,
                                                                            link):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        secret = tmp / "secret.png"
        secret.write_bytes(PNG)
        data = tmp / "data"
        (data / "sub").mkdir(parents=True)
        for name in ("a.png", "b.png", "sub/a.png"):
            (data / name).write_bytes(PNG)
        if captions:
            (data / "b.txt").write_bytes(encode("a red square", encoding))
        if link:
            (data / "evil.png").symlink_to(secret)
        jsonl = "\n".join(json.dumps(r, ensure_ascii=False) if not isinstance(r, str) else r for r in meta)
        header = "file_name,text\n"
        csv_text = header + "\n".join(f"{r.get('file_name', '')},{r.get('text', '')}" for r in meta)
        if kind in ("jsonl", "both"):
            (data / "metadata.jsonl").write_bytes(encode(jsonl, encoding))
        if kind in ("csv", "both"):
            (data / "sub" / "metadata.csv" if kind == "both" else data / "metadata.csv").write_bytes(
                encode(csv_text, encoding))
        if kind == "garbage":
            (data / "metadata.jsonl").write_bytes(junk)
        before = files_under(tmp)
        try:
            pairs, report = load_pairs(data, 8, limits=LIMITS)
        except DataError as error:
            assert "\n" not in str(error) and "Traceback" not in str(error)
        else:
            assert pairs and all(p.image.size == (8, 8) and p.text for p in pairs)
            assert all(not p.source.startswith(("/", "..")) for p in pairs)
        assert files_under(tmp) == before  # nothing written anywhere


prompts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]), max_size=40),  # controls, bidi marks
    st.sampled_from(["שלום עולם a cat", "مرحبا \u202e cat \u202c", "猫 кот cat 🐈", "e\u0301" * 50, "\ufeff\u200b"]),
    st.text(min_size=600, max_size=3000),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=prompts)
def test_any_prompt_gives_images_or_a_clear_refusal(tiny_pipe, prompt):
    refusal = prompt_problem([prompt], 500)
    if refusal:
        assert len(prompt) > 500 and "\n" not in refusal
        return
    try:
        out = tiny_pipe(prompt, num_images=1, seed=0)
    except ValueError as error:
        assert not prompt.strip() and "empty" in str(error)
    else:
        assert out.images[0].size == (16, 16)
