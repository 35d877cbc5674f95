"""Tests for t2i_core.data.shapes: the checker reads its own renders, rejects wrong ones; the set is deterministic."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from t2i_core.data.loading import load_pairs
from t2i_core.data.shapes import (
    COLORS,
    HELD_OUT,
    SHAPES,
    SIZES,
    check_image,
    make_caption,
    make_shapes_dataset,
    parse_caption,
    render,
    score_images,
)

pytestmark = pytest.mark.timeout(60)

COMBOS = list(itertools.product(COLORS, SHAPES))
PLACES = [(0.5, 0.5), (0.25, 0.3), (0.75, 0.7), (0.3, 0.75), (0.72, 0.25)]  # large objects still fit at each


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def obj(color, shape, size="large", x=0.5, y=0.5) -> dict:
    return {"color": color, "shape": shape, "size": size, "x": x, "y": y}


@pytest.mark.parametrize("resolution", [64, 32])
def test_checker_reads_its_own_renders(resolution):
    images, captions = [], []
    for (color, shape), size, (x, y) in itertools.product(COMBOS, SIZES, PLACES):
        item = obj(color, shape, size, x, y)
        images.append(render([item], resolution))
        captions.append(make_caption([item]))
    scores = score_images(images, captions)
    assert scores["color"] >= 0.97 and scores["shape"] >= 0.97 and scores["size"] >= 0.97, scores


def test_checker_scores_blank_images_zero():
    blank = Image.new("RGB", (64, 64), "white")
    captions = [make_caption([obj(c, s)]) for c, s in COMBOS] + ["a red circle above a green square"]
    scores = score_images([blank] * len(captions), captions)
    assert scores["color"] == scores["shape"] == scores["all"] == 0.0
    assert scores["relation"] == 0.0

    # Scattered single pixels (the speckle a half-trained generator makes) are noise, not a tiny blue square.
    speckled = blank.copy()
    for i in range(0, 64, 8):
        speckled.putpixel((i, (i * 5) % 64), COLORS["blue"])
    assert not check_image(speckled, "a small blue square")["color"]


def test_checker_catches_wrong_colour_shape_and_size():
    colors, shapes = list(COLORS), list(SHAPES)
    images, wrong_color, wrong_shape, wrong_size = [], [], [], []
    for i, (color, shape) in enumerate(COMBOS):
        images.append(render([obj(color, shape, "large", *PLACES[i % len(PLACES)])]))
        other_color = colors[(colors.index(color) + 1) % len(colors)]
        other_shape = shapes[(shapes.index(shape) + 1) % len(shapes)]
        wrong_color.append(make_caption([obj(other_color, shape)]))
        wrong_shape.append(make_caption([obj(color, other_shape)]))
        wrong_size.append(make_caption([obj(color, shape, "small")]))
    by_color = score_images(images, wrong_color)
    assert by_color["color"] <= 0.05 and by_color["all"] <= 0.05 and by_color["shape"] >= 0.97
    by_shape = score_images(images, wrong_shape)
    assert by_shape["shape"] <= 0.05 and by_shape["color"] >= 0.97
    assert score_images(images, wrong_size)["size"] <= 0.05


def test_checker_reads_positions_and_relations():
    for x, y, right_places in [(0.2, 0.2, {"left", "top"}), (0.8, 0.8, {"right", "bottom"})]:
        image = render([obj("red", "circle", "small", x, y)])
        for place, words in [("left", "on the left"), ("right", "on the right"),
                             ("top", "at the top"), ("bottom", "at the bottom")]:
            assert check_image(image, f"a small red circle {words}")["position"] == (place in right_places)

    pair = [obj("red", "circle", "large", 0.25, 0.3), obj("green", "square", "small", 0.75, 0.7)]
    image = render(pair)
    assert check_image(image, "a red circle to the left of a green square") == {
        "color": True, "shape": True, "relation": True, "all": True,
    }
    assert check_image(image, "a red circle above a green square")["relation"]
    for wrong in ("a red circle to the right of a green square", "a green square to the left of a red circle",
                  "a red circle below a green square"):
        result = check_image(image, wrong)
        assert result["color"] and not result["relation"] and not result["all"], wrong


def test_train_split_avoids_held_out_and_matches_its_ground_truth(tmp_path):
    folder = make_shapes_dataset(tmp_path / "train", n=200, seed=3)
    items = rows(folder)
    assert len(items) == 200
    relation_items = [row for row in items if len(row["objects"]) == 2]
    assert 0.15 <= len(relation_items) / len(items) <= 0.45
    assert any("position" in parse_caption(row["text"])[0] for row in items)
    for row in items:
        assert not row["held_out"]
        parsed = parse_caption(row["text"])
        assert [(o["color"], o["shape"]) for o in parsed] == [(o["color"], o["shape"]) for o in row["objects"]]
        for truth in row["objects"]:
            assert (truth["color"], truth["shape"]) not in HELD_OUT
            assert_fully_inside(truth, 64)
        if len(row["objects"]) == 2:
            assert row["objects"][0]["color"] != row["objects"][1]["color"]
    images = [Image.open(folder / row["file_name"]) for row in items]
    scores = score_images(images, [row["text"] for row in items])
    assert min(scores.values()) >= 0.97, scores
    assert {"color", "shape", "size", "position", "relation", "all"} <= set(scores)


def assert_fully_inside(item: dict, resolution: int) -> None:
    half = {"small": 16, "large": 28}[item["size"]] * resolution / 64 / 2
    for key in ("x", "y"):
        centre = item[key] * resolution
        assert 0 <= centre - half and centre + half <= resolution, item


def test_relations_off_gives_single_objects_only(tmp_path):
    items = rows(make_shapes_dataset(tmp_path / "train", n=60, relations=False))
    assert all(len(row["objects"]) == 1 for row in items)


def test_test_split_covers_every_combo_and_marks_held_out(tmp_path):
    folder = make_shapes_dataset(tmp_path / "test", n=2 * len(COMBOS), split="test", resolution=32)
    items = rows(folder)
    seen = {(row["objects"][0]["color"], row["objects"][0]["shape"], row["objects"][0]["size"]) for row in items}
    assert seen == set(itertools.product(COLORS, SHAPES, SIZES))
    for row in items:
        (truth,) = row["objects"]
        assert row["held_out"] == ((truth["color"], truth["shape"]) in HELD_OUT)
        assert_fully_inside(truth, 32)
    assert sum(row["held_out"] for row in items) == 2 * len(HELD_OUT)
    assert Image.open(folder / items[0]["file_name"]).size == (32, 32)


def test_dataset_is_byte_identical_when_rebuilt(tmp_path):
    first = make_shapes_dataset(tmp_path / "a", n=40, seed=7)
    second = make_shapes_dataset(tmp_path / "b", n=40, seed=7)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and len(names) == 41
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = make_shapes_dataset(tmp_path / "c", n=40, seed=8)
    assert (other / "metadata.jsonl").read_bytes() != (first / "metadata.jsonl").read_bytes()


def test_dataset_loads_through_load_pairs(tmp_path):
    folder = make_shapes_dataset(tmp_path / "train", n=30)
    pairs, report = load_pairs(folder, 64)
    assert report.pairs == 30 and report.skipped == []
    truth = {row["file_name"]: row for row in rows(folder)}
    for pair in pairs:
        assert pair.text == truth[pair.source]["text"]
        assert check_image(pair.image, pair.text)["all"]


def test_dataset_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="'train' or 'test'"):
        make_shapes_dataset(tmp_path / "x", split="val")
    with pytest.raises(ValueError, match="at least 32"):
        make_shapes_dataset(tmp_path / "x", resolution=16)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        make_shapes_dataset(tmp_path / "full", n=2)


def test_captions_round_trip_through_the_parser():
    assert make_caption([obj("orange", "circle")]) == "a large orange circle"
    assert make_caption([obj("blue", "square", "small")], position="left") == "a small blue square on the left"
    two = [obj("orange", "circle"), obj("red", "square")]
    assert make_caption(two, relation="above") == "an orange circle above a red square"
    assert parse_caption("an orange circle above a red square") == [
        {"color": "orange", "shape": "circle", "relation": "above"}, {"color": "red", "shape": "square"},
    ]
    assert parse_caption("  A Small  BLUE square on the left.") == [
        {"color": "blue", "shape": "square", "size": "small", "position": "left"},
    ]
    assert parse_caption("a red triangle to the right of a green circle")[0]["relation"] == "right"
    for bad in ("a pink circle", "a red circle beside a green square", "two red circles", ""):
        with pytest.raises(ValueError, match="cannot parse caption"):
            parse_caption(bad)


def test_render_and_score_refuse_bad_input():
    with pytest.raises(ValueError, match="color"):
        render([obj("pink", "circle")])
    with pytest.raises(ValueError, match="fraction"):
        render([obj("red", "circle", x=3)])
    with pytest.raises(ValueError, match="equally many"):
        score_images([render([])], [])
