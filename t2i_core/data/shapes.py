"""A built-in synthetic captioned shapes set, and a deterministic checker that reads images back.

A tiny, fully known world for tests and for a time-to-quality benchmark. The few colours sit far apart in RGB and
the three shapes fill different fractions of their bounding box (square 1.0, circle pi/4, triangle 1/2), so a
classical checker with no learned model can tell whether an image shows what its caption says. Some colour-shape
combinations (HELD_OUT) never appear in the training split, so the test split measures composition, not recall.

Object dicts: {"color", "shape", "size": "small" | "large", "x", "y"} where x, y are the object's centre as a
fraction of the canvas (0..1), so ground truth does not depend on the resolution it is rendered at.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 20),
    "purple": (140, 50, 170),
    "orange": (245, 125, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square")})

# Single objects may say where they are; two-object captions say where the first is relative to the second.
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}

RELATION_FRACTION = 0.3  # of training items, when relations=True
POSITION_FRACTION = 0.5  # of single-object training items
MIN_RESOLUTION = 32  # below this a small object is under 8 px and the checker is no longer reliable

_WHITE = (255, 255, 255)
# Pixels nearest to these are background or junk, not an object: keeps grey/black smudges from counting as colour.
_NON_OBJECT = (_WHITE, (0, 0, 0), (128, 128, 128))
_REFERENCE = np.array(list(COLORS.values()) + list(_NON_OBJECT), dtype=np.int32)  # (6 + 3, 3)
_COLOR_NAMES = tuple(COLORS)


def _pixels(resolution: int) -> dict[str, int]:
    """Object sides and margins in pixels: 16 / 28 px at 64, scaled with the resolution."""
    scale = resolution / 64
    return {
        "small": max(1, round(16 * scale)),
        "large": max(1, round(28 * scale)),
        "margin": max(1, round(2 * scale)),
    }


# ---------------------------------------------------------------------------------------------------------------
# Rendering and captions.


def render(objects: list[dict], resolution: int = 64) -> Image.Image:
    """Draw `objects` (see the module docstring) on a white `resolution` x `resolution` RGB canvas."""
    canvas = Image.new("RGB", (resolution, resolution), _WHITE)
    draw = ImageDraw.Draw(canvas)
    px = _pixels(resolution)
    for obj in objects:
        _check_object(obj)
        side = px[obj["size"]]
        x0 = round(obj["x"] * resolution - side / 2)
        y0 = round(obj["y"] * resolution - side / 2)
        x1, y1 = x0 + side - 1, y0 + side - 1
        fill = COLORS[obj["color"]]
        if obj["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:  # apex up, base along the bottom of the box: fills half of it
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return canvas


def _check_object(obj: dict) -> None:
    for key, choices in (("color", tuple(COLORS)), ("shape", SHAPES), ("size", SIZES)):
        if obj.get(key) not in choices:
            raise ValueError(f"object {obj!r} has {key}={obj.get(key)!r}; pass one of {list(choices)}.")
    for key in ("x", "y"):
        if not isinstance(obj.get(key), (int, float)) or not 0 <= obj[key] <= 1:
            raise ValueError(f"object {obj!r} has {key}={obj.get(key)!r}; pass the centre as a fraction 0..1.")


def _phrase(obj: dict, with_size: bool) -> str:
    words = ([obj["size"]] if with_size else []) + [obj["color"], obj["shape"]]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


def make_caption(objects: list[dict], relation: str | None = None, position: str | None = None) -> str:
    """The caption for one object (with an optional `position` key of POSITIONS) or two related by `relation`."""
    if len(objects) == 1 and relation is None:
        text = _phrase(objects[0], with_size=True)
        return f"{text} {POSITIONS[position]}" if position else text
    if len(objects) == 2 and relation in RELATIONS and position is None:
        return f"{_phrase(objects[0], False)} {RELATIONS[relation]} {_phrase(objects[1], False)}"
    raise ValueError(
        f"cannot caption {len(objects)} objects with relation={relation!r}, position={position!r}; pass one object "
        f"(position optional, one of {list(POSITIONS)}) or two with a relation in {list(RELATIONS)}."
    )


_OBJECT_PATTERN = (
    r"an? (?:(?P<size{i}>small|large) )?(?P<color{i}>" + "|".join(COLORS) + r") (?P<shape{i}>" + "|".join(SHAPES) + ")"
)
_SINGLE = re.compile(
    "^" + _OBJECT_PATTERN.format(i=0) + "(?: (?P<position>" + "|".join(POSITIONS.values()) + "))?$"
)
_RELATION = re.compile(
    "^" + _OBJECT_PATTERN.format(i=0) + " (?P<relation>" + "|".join(RELATIONS.values()) + ") "
    + _OBJECT_PATTERN.format(i=1) + "$"
)


def parse_caption(text: str) -> list[dict]:
    """Invert `make_caption`: one dict per object with "color", "shape", and "size" when stated.

    A single object may carry "position" (a POSITIONS key); in a two-object caption the first carries "relation"
    (a RELATIONS key), meaning "object 0 is <relation> object 1".
    """
    normal = " ".join(text.lower().split()).rstrip(".")
    match = _SINGLE.match(normal) or _RELATION.match(normal)
    if match is None:
        raise ValueError(
            f"cannot parse caption {text!r}; expected e.g. 'a large red circle', 'a small blue square on the left' "
            "or 'a red circle above a green square'."
        )
    groups = match.groupdict()
    objects = []
    for i in (0, 1):
        if groups.get(f"color{i}") is None:
            continue
        obj = {"color": groups[f"color{i}"], "shape": groups[f"shape{i}"]}
        if groups[f"size{i}"]:
            obj["size"] = groups[f"size{i}"]
        objects.append(obj)
    if groups.get("position"):
        objects[0]["position"] = {v: k for k, v in POSITIONS.items()}[groups["position"]]
    if groups.get("relation"):
        objects[0]["relation"] = {v: k for k, v in RELATIONS.items()}[groups["relation"]]
    return objects


# ---------------------------------------------------------------------------------------------------------------
# The dataset.


def make_shapes_dataset(
    out_dir: str | os.PathLike,
    n: int = 2000,
    resolution: int = 64,
    seed: int = 0,
    split: str = "train",
    relations: bool = True,
) -> Path:
    """Write an imagefolder of `n` rendered items (PNG + metadata.jsonl) into `out_dir` (new or empty).

    metadata.jsonl rows: {"file_name", "text", "objects" (ground truth), "held_out"}. split="train" never uses a
    HELD_OUT combo; about RELATION_FRACTION of its items are two-object relation captions when `relations`.
    split="test" cycles through every colour-shape combo and both sizes, single objects only, and marks which
    combos are held out. The same arguments always give byte-identical files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; pass 'train' or 'test'.")
    if n < 1:
        raise ValueError(f"n={n}; pass a positive number of items.")
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution={resolution}; pass at least {MIN_RESOLUTION} so the checker can read images.")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; pass a new or empty folder so old items cannot mix in.")
    out.mkdir(parents=True, exist_ok=True)

    # A string seed is hashed the same way on every run and platform, unlike hash() of a tuple.
    rng = random.Random(f"t2i-shapes:{split}:{seed}")
    rows = []
    for index in range(n):
        if split == "test":
            objects, text = _test_item(index, rng, resolution)
        elif relations and rng.random() < RELATION_FRACTION:
            objects, text = _relation_item(rng, resolution)
        else:
            objects, text = _single_item(rng, resolution)
        file_name = f"{split}_{index:05d}.png"
        render(objects, resolution).save(out / file_name, format="PNG")
        held_out = any((obj["color"], obj["shape"]) in HELD_OUT for obj in objects)
        rows.append({"file_name": file_name, "text": text, "objects": objects, "held_out": held_out})
    with open(out / "metadata.jsonl", "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return out


_ALL_COMBOS = tuple(itertools.product(COLORS, SHAPES))
_TRAIN_COMBOS = tuple(combo for combo in _ALL_COMBOS if combo not in HELD_OUT)


def _place(rng: random.Random, side: int, low: float, high: float) -> float:
    """The centre (px) of an object `side` px wide whose top-left pixel is drawn from [low, high] (px)."""
    return rng.randint(int(np.ceil(low)), int(np.floor(high))) + side / 2


def _object(color: str, shape: str, size: str, x_px: float, y_px: float, resolution: int) -> dict:
    return {"color": color, "shape": shape, "size": size,
            "x": round(x_px / resolution, 4), "y": round(y_px / resolution, 4)}


def _single_item(rng: random.Random, resolution: int) -> tuple[list[dict], str]:
    px = _pixels(resolution)
    color, shape = rng.choice(_TRAIN_COMBOS)
    size = rng.choice(SIZES)
    side, margin = px[size], px["margin"]
    position = rng.choice(tuple(POSITIONS)) if rng.random() < POSITION_FRACTION else None
    # A stated position keeps the centre in the outer 40% of the canvas, well clear of the checker's midline test.
    x_range = y_range = (margin, resolution - margin - side)
    near, far = (margin, 0.4 * resolution - side / 2), (0.6 * resolution - side / 2, resolution - margin - side)
    if position == "left":
        x_range = near
    elif position == "right":
        x_range = far
    elif position == "top":
        y_range = near
    elif position == "bottom":
        y_range = far
    obj = _object(color, shape, size, _place(rng, side, *x_range), _place(rng, side, *y_range), resolution)
    return [obj], make_caption([obj], position=position)


def _relation_item(rng: random.Random, resolution: int) -> tuple[list[dict], str]:
    px = _pixels(resolution)
    first = rng.choice(_TRAIN_COMBOS)
    # Different colours, so the checker can tell which blob is which object.
    second = rng.choice([combo for combo in _TRAIN_COMBOS if combo[0] != first[0]])
    relation = rng.choice(tuple(RELATIONS))
    sides = [px[rng.choice(SIZES)] for _ in range(2)]
    sizes = ["small" if side == px["small"] else "large" for side in sides]
    margin, half = px["margin"], resolution / 2
    # The first object goes in one half and the second in the other, 2+ px apart across the midline.
    leading = [(margin, half - 1 - side) for side in sides]  # left or top half
    trailing = [(half + 1, resolution - margin - side) for side in sides]  # right or bottom half
    anywhere = [(margin, resolution - margin - side) for side in sides]
    first_leads = relation in ("left", "above")
    along = [leading[0], trailing[1]] if first_leads else [trailing[0], leading[1]]
    horizontal = relation in ("left", "right")
    objects = []
    for i, (color, shape) in enumerate((first, second)):
        main, cross = _place(rng, sides[i], *along[i]), _place(rng, sides[i], *anywhere[i])
        x, y = (main, cross) if horizontal else (cross, main)
        objects.append(_object(color, shape, sizes[i], x, y, resolution))
    return objects, make_caption(objects, relation=relation)


def _test_item(index: int, rng: random.Random, resolution: int) -> tuple[list[dict], str]:
    px = _pixels(resolution)
    color, shape = _ALL_COMBOS[index % len(_ALL_COMBOS)]
    size = SIZES[(index // len(_ALL_COMBOS)) % len(SIZES)]
    side, margin = px[size], px["margin"]
    span = (margin, resolution - margin - side)
    obj = _object(color, shape, size, _place(rng, side, *span), _place(rng, side, *span), resolution)
    return [obj], make_caption([obj])


# ---------------------------------------------------------------------------------------------------------------
# The checker.


def check_image(image: Image.Image, caption: str) -> dict[str, bool]:
    """Whether `image` shows what `caption` says, read back with classical image analysis.

    Non-background pixels are labelled with their nearest palette colour and grouped into 8-connected blobs; each
    caption object is matched to a blob (the largest one, or for two objects the assignment of the two largest
    that gets most colours right). A blob's colour is its majority label, its shape comes from how much of its
    bounding box it fills (square ~1.0, circle ~0.785, triangle ~0.5), its size from its extent.
    Keys: "color", "shape", "all"; plus "size" when the caption states sizes, "position" when it states where
    a single object is, "relation" for two-object captions.
    """
    objects = parse_caption(caption)
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)  # (H, W, 3)
    resolution = rgb.shape[1]
    px = _pixels(resolution)
    distances = ((rgb[:, :, None, :] - _REFERENCE[None, None]) ** 2).sum(-1)  # (H, W, references)
    labels = distances.argmin(-1)  # (H, W); < len(COLORS) means an object colour
    blobs = _blobs(labels, min_area=max(4, round(0.2 * px["small"] ** 2)))[:len(objects)]
    blobs += [None] * (len(objects) - len(blobs))

    # Try each way of matching blobs to objects; keep the one with most colours, then shapes, right.
    def agreement(order: tuple) -> tuple[int, int]:
        return (sum(b is not None and b["color"] == o["color"] for b, o in zip(order, objects)),
                sum(b is not None and b["shape"] == o["shape"] for b, o in zip(order, objects)))
    matched = max(itertools.permutations(blobs), key=agreement)

    result = {
        "color": all(b is not None and b["color"] == o["color"] for b, o in zip(matched, objects)),
        "shape": all(b is not None and b["shape"] == o["shape"] for b, o in zip(matched, objects)),
    }
    if any("size" in o for o in objects):
        threshold = (px["small"] + px["large"]) / 2
        result["size"] = all(
            b is not None and ("large" if b["extent"] >= threshold else "small") == o["size"]
            for b, o in zip(matched, objects) if "size" in o
        )
    if "position" in objects[0]:
        result["position"] = matched[0] is not None and _is_at(matched[0], objects[0]["position"], resolution)
    if "relation" in objects[0]:
        result["relation"] = None not in matched and _is_related(*matched, objects[0]["relation"], resolution)
    result["all"] = all(result.values())
    return result


def score_images(images: Sequence[Image.Image], captions: Sequence[str]) -> dict[str, float]:
    """The mean of each `check_image` key over the items whose captions have it."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"got {len(images)} images and {len(captions)} captions; pass equally many, at least one.")
    totals: dict[str, list[bool]] = {}
    for image, text in zip(images, captions):
        for key, ok in check_image(image, text).items():
            totals.setdefault(key, []).append(ok)
    return {key: float(np.mean(values)) for key, values in totals.items()}


def _blobs(labels: np.ndarray, min_area: int) -> list[dict]:
    """8-connected blobs of object-coloured pixels with at least `min_area` pixels, largest first."""
    height, width = labels.shape
    is_object = (labels < len(COLORS)).tolist()  # nested lists: much faster to index in this loop than numpy
    seen = [[False] * width for _ in range(height)]
    blobs = []
    for y0, x0 in zip(*np.nonzero(labels < len(COLORS))):
        if seen[y0][x0]:
            continue
        seen[y0][x0] = True
        stack, ys, xs = [(int(y0), int(x0))], [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < height and 0 <= nx < width and is_object[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
        if len(ys) >= min_area:
            blobs.append(_describe_blob(np.array(ys), np.array(xs), labels))
    return sorted(blobs, key=lambda blob: -blob["area"])


def _describe_blob(ys: np.ndarray, xs: np.ndarray, labels: np.ndarray) -> dict:
    box_w, box_h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    fill = len(ys) / (box_w * box_h)
    votes = np.bincount(labels[ys, xs], minlength=len(COLORS))
    return {
        "area": len(ys),
        "color": _COLOR_NAMES[int(votes.argmax())],
        "shape": _classify_shape(fill, box_w / box_h),
        "extent": max(box_w, box_h),
        "cx": float(xs.mean()) + 0.5,
        "cy": float(ys.mean()) + 0.5,
    }


def _classify_shape(fill: float, aspect: float) -> str | None:
    """All three shapes have square boxes; the fraction of the box they fill tells them apart."""
    if not 0.75 <= aspect <= 1 / 0.75:
        return None
    if fill >= 0.9:
        return "square"
    if fill >= 0.66:
        return "circle"
    if fill >= 0.35:
        return "triangle"
    return None


def _is_at(blob: dict, position: str, resolution: int) -> bool:
    middle = resolution / 2
    return {
        "left": blob["cx"] < middle, "right": blob["cx"] > middle,
        "top": blob["cy"] < middle, "bottom": blob["cy"] > middle,
    }[position]


def _is_related(first: dict, second: dict, relation: str, resolution: int) -> bool:
    tolerance = resolution / 32  # 2 px at 64: centroids closer than this are not "left of" anything
    dx, dy = second["cx"] - first["cx"], second["cy"] - first["cy"]
    ahead = {"left": dx, "right": -dx, "above": dy, "below": -dy}[relation]
    return ahead > tolerance
