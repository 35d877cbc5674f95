"""The emoji corpus builder, on a tiny offline fixture shaped like the real npm packages."""

import argparse
import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from t2i_core.data import emoji
from t2i_core.cli.data import add_data_arguments
from t2i_core.data.emoji import (
    CorpusError,
    build_emoji_corpus,
    caption_from_label,
    fetch_package,
    split_key,
)

FIXTURE = Path(__file__).parent / "fixtures" / "emoji"
PACKAGE_DIRS = {
    "google": FIXTURE / "emoji-datasource-google",
    "twitter": FIXTURE / "emoji-datasource-twitter",
    "fluent": FIXTURE / "fluentui-emoji",
    "captions": FIXTURE / "emojibase-data",
}


def build(out, **kwargs):
    kwargs.setdefault("test_fraction", 0.5)  # five emoji: a larger fraction puts some in test
    return build_emoji_corpus(out, package_dirs=PACKAGE_DIRS, **kwargs)


def read_rows(out):
    return {
        split: [json.loads(line) for line in (out / split / "metadata.jsonl").read_text("utf-8").splitlines()]
        for split in ("train", "test")
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji")
    stats = build(out)
    return out, stats, read_rows(out)


def test_layout_metadata_and_stats(corpus):
    out, stats, rows = corpus
    for split, split_rows in rows.items():
        listed = {r["file_name"] for r in split_rows}
        on_disk = {p.relative_to(out / split).as_posix() for p in (out / split).rglob("*.png")}
        assert listed == on_disk
        for r in split_rows:
            assert set(r) == {"file_name", "text", "alt_texts", "label", "style", "emoji", "tags", "group"}
            assert r["alt_texts"] == [r["label"], f"{r['label']} emoji"]
            assert r["file_name"] == f"{r['style']}/{r['emoji'].lower()}.png"
            assert stats["pairs"][split][r["style"]] > 0
        for style, n in stats["pairs"][split].items():
            assert n == sum(r["style"] == style for r in split_rows)
    # 6 google + 6 twitter + 5 fluent flat + 5 modern + 4 high-contrast images in the fixture, all with captions
    # (high contrast has no skin-tone variants).
    assert stats["total_pairs"] == 26
    assert stats["captions"] == 6  # grinning, waving, waving light, keycap #, red heart, flag
    assert stats["unmatched_images"] == {"google": 0, "twitter": 0, "fluent": 0, "fluent_modern": 0, "fluent_contrast": 0}
    assert json.loads((out / "stats.json").read_text()) == stats
    attribution = (out / "ATTRIBUTION.md").read_text()
    assert "Twemoji graphics by Twitter, Inc. and other contributors, licensed CC-BY 4.0" in attribution
    for name, version in ("emoji-datasource-google", "16.0.0"), ("fluentui-emoji", "1.3.0"), ("emojibase-data", "17.0.0"):
        assert f"{name}@{version}" in attribution
    assert "openmoji" not in attribution


def test_captions_join_images_to_cldr_labels(corpus):
    _, _, rows = corpus
    by_file = {r["file_name"]: r for split_rows in rows.values() for r in split_rows}
    grin = by_file["google/1f600.png"]
    assert grin["text"] == "grinning face, google style"
    assert grin["group"] == "smileys and emotion"
    assert "smile" in grin["tags"]
    assert by_file["twitter/1f44b-1f3fb.png"]["text"] == "waving hand, light skin tone, twitter style"
    assert by_file["fluent/1f44b.png"]["text"] == "waving hand, fluent style"  # waving-hand-default.svg
    assert by_file["fluent/0023-fe0f-20e3.png"]["text"] == "keycap number sign, fluent style"
    assert by_file["google/1f1fa-1f1f8.png"]["text"] == "flag of united states, google style"
    # The datasource file is 2764-fe0f.png, emojibase spells the emoji 2764: joined without FE0F.
    assert by_file["google/2764.png"]["label"] == "red heart"
    # Captions without an image (1F601, other skin tones) and images a style lacks are skipped.
    assert not any("beaming" in r["text"] for r in by_file.values())
    assert "fluent/1f1fa-1f1f8.png" not in by_file
    assert "google/1f44b-1f3ff.png" not in by_file


def test_images_are_rgb_on_white(corpus):
    out, _, rows = corpus
    for split, split_rows in rows.items():
        for r in split_rows:
            with Image.open(out / split / r["file_name"]) as image:
                assert image.mode == "RGB" and image.size == (64, 64), r["file_name"]
                pixels = image.load()
                corners = [pixels[0, 0], pixels[63, 0], pixels[0, 63], pixels[63, 63]]
                assert all(c == (255, 255, 255) for c in corners), (r["file_name"], corners)
                assert image.getextrema() != ((255, 255),) * 3  # not blank


def test_resolution_is_respected(tmp_path):
    build(tmp_path, resolution=32, styles=("google", "fluent"))
    sizes = {Image.open(p).size for p in tmp_path.rglob("*.png")}
    assert sizes == {(32, 32)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_by_emoji(tmp_path, seed):
    build(tmp_path, seed=seed)
    rows = read_rows(tmp_path)
    keys = {split: {split_key(r["emoji"]) for r in split_rows} for split, split_rows in rows.items()}
    assert keys["train"] and keys["test"]  # seeds 0-2 put some of the five emoji in each split
    assert not keys["train"] & keys["test"]
    for split, split_rows in rows.items():
        files = {r["file_name"] for r in split_rows}
        # Every style of an emoji, and its skin-tone variant, sits with the base emoji.
        if "google/1f44b.png" in files:
            assert {"twitter/1f44b.png", "fluent/1f44b.png", "google/1f44b-1f3fb.png", "fluent/1f44b-1f3fb.png"} <= files
        if "google/1f600.png" in files:
            assert {"twitter/1f600.png", "fluent/1f600.png"} <= files


def test_split_key_drops_fe0f_and_skin_tones():
    assert split_key("1F44B-1F3FB") == split_key("1F44B") == "1F44B"
    assert split_key("2764-FE0F") == split_key("2764")
    assert split_key("1F3C3-1F3FD-200D-2642-FE0F") == split_key("1F3C3-200D-2642-FE0F") == "1F3C3-200D-2642"
    assert split_key("1F600") != split_key("1F601")


def test_caption_from_label():
    assert caption_from_label("flag: Japan") == "flag of japan"
    assert caption_from_label("keycap: *") == "keycap asterisk"
    assert caption_from_label("keycap: 1") == "keycap 1"
    assert caption_from_label("family: man, woman, boy") == "family, man, woman, boy"
    assert caption_from_label("one o’clock") == "one o'clock"


def test_build_is_deterministic(tmp_path):
    build(tmp_path / "a")
    build(tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 17
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_rebuild_replaces_previous_corpus(tmp_path):
    build(tmp_path, styles=("google", "twitter"))
    build(tmp_path, styles=("fluent",))
    assert not list(tmp_path.rglob("google/*.png"))
    assert read_rows(tmp_path)["train"][0]["style"] == "fluent"


def test_refuses_non_empty_folder_that_is_not_a_corpus(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        build(tmp_path)
    assert (tmp_path / "notes.txt").exists()


def test_unknown_style_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="unknown style"):
        build(tmp_path, styles=("apple",))


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError) as info:
        build_emoji_corpus(tmp_path / "out", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "install Node.js/npm to rebuild the corpus" in message
    assert "the shipped model does not need it" in message
    assert "emojibase-data@17.0.0" in message


def _fake_npm(tmp_path, monkeypatch, script_body):
    """Put a fake `npm` first on PATH; it logs its arguments to npm.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(
        f"#!{sys.executable}\n"
        "import sys, pathlib, tarfile\n"
        f"pathlib.Path({str(tmp_path / 'npm.log')!r}).open('a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        + script_body
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "npm.log"


def test_failed_fetch_reports_package_and_npm_stderr(tmp_path, monkeypatch):
    _fake_npm(tmp_path, monkeypatch, "sys.stderr.write('npm error code E404\\n'); sys.exit(1)\n")
    with pytest.raises(CorpusError) as info:
        fetch_package("emojibase-data", "17.0.0", tmp_path / "cache")
    assert "emojibase-data@17.0.0" in str(info.value)
    assert "E404" in str(info.value)


def test_fetch_packs_extracts_and_caches(tmp_path, monkeypatch):
    # The fake npm packs the fixture's emojibase folder the way npm does: under package/.
    log = _fake_npm(
        tmp_path,
        monkeypatch,
        "dest = pathlib.Path(sys.argv[sys.argv.index('--pack-destination') + 1])\n"
        "name, version = sys.argv[2].rsplit('@', 1)\n"
        "with tarfile.open(dest / f'{name}-{version}.tgz', 'w:gz') as tar:\n"
        f"    tar.add({str(PACKAGE_DIRS['captions'])!r}, arcname='package')\n"
        "print(f'{name}-{version}.tgz')\n",
    )
    cache = tmp_path / "cache"
    package = fetch_package("emojibase-data", "17.0.0", cache)
    assert package == cache / "emojibase-data-17.0.0" / "package"
    assert (package / "en" / "data.json").read_bytes() == (PACKAGE_DIRS["captions"] / "en" / "data.json").read_bytes()
    assert fetch_package("emojibase-data", "17.0.0", cache) == package
    assert log.read_text().splitlines() == [f"pack emojibase-data@17.0.0 --pack-destination {cache}"]


def test_fetch_refuses_unsafe_tarball(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / "evil-1.0.0.tgz", "w:gz") as tar:
        data = b"pwned"
        member = tarfile.TarInfo("../outside.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with pytest.raises(CorpusError, match="could not extract"):
        fetch_package("evil", "1.0.0", cache)
    assert not (tmp_path / "outside.txt").exists()


def test_data_arguments():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    args = parser.parse_args(["--out", "corpus", "--openmoji", "--cache", "npm"])
    assert (args.out, args.resolution, args.openmoji, args.cache) == (Path("corpus"), 64, True, Path("npm"))
    assert args.styles == "google,twitter,fluent,fluent_modern,fluent_contrast"
    assert parser.parse_args(["--out", "c"]).openmoji is False
