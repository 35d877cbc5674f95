"""One loader for every image-caption layout that training and fine-tuning accept.

Layouts, from a folder or from a .zip of one:

* a Hugging Face ``imagefolder``: ``metadata.jsonl`` or ``metadata.csv`` with a ``file_name`` column and a caption
  column, anywhere in the tree (``file_name`` is relative to the metadata file's folder);
* images with a same-named ``.txt`` caption beside each (``cat.png`` + ``cat.txt``), nested folders allowed;
* a ``datasets`` Dataset (or the "train" split of a DatasetDict) written with ``save_to_disk``.

Every image comes out RGB and ``resolution`` pixels square. A file that cannot be used is skipped and reported
with its reason rather than failing the whole load, so one bad file among thousands costs one pair, and the user
is told which; only "nothing usable at all" is an error. Hidden files and folders (``.DS_Store``, ``.git``) and
``__MACOSX`` archive litter are operating-system artefacts, not data, and are ignored silently everywhere.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from .archives import DataError, UploadLimits, safe_extract_zip  # noqa: F401  (part of this module's API)
from .metadata import METADATA_NAMES, read_all_metadata
from .saved import check_saved_dataset

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
FITS = ("crop", "pad")

LAYOUTS_HELP = (
    "Accepted layouts (a folder, or a .zip of one): "
    "(1) images plus metadata.jsonl or metadata.csv with a file_name column and a caption column (default 'text'); "
    "(2) images with a same-named .txt caption beside each (cat.png + cat.txt); "
    "(3) a `datasets` Dataset saved with save_to_disk, with an image column and a caption column "
    "(defaults 'image' and 'text')."
)

_WHITE = (255, 255, 255)


@dataclass
class Pair:
    """One training example."""

    image: Image.Image  # RGB, already resolution x resolution
    text: str
    source: str  # relative file path or dataset row id, for reports
    # Other captions of the same image (metadata column "alt_texts"), e.g. without the style; training may use them.
    alt_texts: tuple[str, ...] = ()


@dataclass
class LoadReport:
    """What `load_pairs` found, so a user can check it before training starts."""

    pairs: int
    skipped: list[tuple[str, str]]  # (file or row, reason)
    caption_words: tuple[int, float, int]  # min, mean, max words per caption

    def summary(self, max_listed: int = 10) -> str:
        """A few human-readable lines: counts, the first `max_listed` skips with reasons, caption lengths."""
        lines = [f"Found {self.pairs} pairs."]
        if self.skipped:
            listed = "; ".join(f"{source} ({reason})" for source, reason in self.skipped[:max_listed])
            more = len(self.skipped) - max_listed
            tail = f"; and {more} more" if more > 0 else ""
            lines.append(f"Skipped {len(self.skipped)}: {listed}{tail}.")
        else:
            lines.append("Skipped nothing.")
        if self.pairs:
            low, mean, high = self.caption_words
            lines.append(f"Caption length {low}-{high} words (mean {mean:.1f}).")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Options:
    resolution: int
    fit: str
    image_column: str
    caption_column: str
    limits: UploadLimits
    budget: list[int]  # pixels left to decode in this load (one mutable cell)


class _Skip(Exception):
    """One file or row cannot be used; the message is the reason shown in the report."""


# ---------------------------------------------------------------------------------------------------------------
# Public entry points.


def load_pairs(
    path: str | os.PathLike,
    resolution: int = 64,
    *,
    fit: str = "crop",
    image_column: str = "image",
    caption_column: str = "text",
    limits: UploadLimits | None = None,
) -> tuple[list[Pair], LoadReport]:
    """Load every usable image-caption pair under `path` (a folder or a .zip of one).

    fit="crop" centre-crops each image to a square; fit="pad" pads it to a square with white. Pairs come sorted by
    relative path (dataset rows keep their order). Raises DataError when `path` is missing, nothing is usable, a
    limit is passed (e.g. the images together declare more than `limits.max_total_pixels`), or the data cannot be
    read at all; no other exception escapes for bad data.
    """
    if fit not in FITS:
        raise ValueError(f"fit={fit!r} is not supported; pass fit='crop' (centre crop) or fit='pad' (pad with white).")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution={resolution!r} must be a positive int number of pixels, e.g. 64.")
    limits = limits or UploadLimits()
    options = _Options(resolution, fit, image_column, caption_column, limits, [limits.max_total_pixels])
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a data folder or a .zip of one. {LAYOUTS_HELP}")
    if path.is_dir():
        return _guarded_load(path, str(path), options)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is neither a folder nor a readable .zip archive. {LAYOUTS_HELP}")
    workdir = Path(tempfile.mkdtemp(prefix="t2i_data_"))
    try:
        safe_extract_zip(path, workdir, options.limits)
        # Pairs hold resized in-memory copies, so the extracted files are not needed once this returns.
        return _guarded_load(workdir, str(path), options)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _guarded_load(root: Path, shown_as: str, options: _Options) -> tuple[list[Pair], LoadReport]:
    """`_load_tree`, with anything a hostile or damaged file set can make the libraries raise (CSV field limits,
    JSON nesting, undecodable text, arrow errors) turned into the one documented DataError."""
    try:
        return _load_tree(root, shown_as, options)
    except DataError:
        raise
    except Exception as error:  # csv.Error, RecursionError, UnicodeError, OSError, pyarrow errors, MemoryError...
        detail = " ".join(str(error).split())[:200]
        raise DataError(f"cannot read the data in {shown_as} ({type(error).__name__}: {detail}); check that its "
                        f"files are what they claim to be. {LAYOUTS_HELP}") from error


def images_to_tensor(pairs: list[Pair]) -> torch.Tensor:
    """Stack the pairs' images into a (N, 3, R, R) float32 tensor in [-1, 1]."""
    if not pairs:
        raise ValueError("images_to_tensor got no pairs; pass the non-empty list that load_pairs returns.")
    sizes = sorted({pair.image.size for pair in pairs})
    if len(sizes) != 1:
        raise ValueError(f"images_to_tensor needs images of one size, got {sizes}; load them with one resolution.")
    arrays = [np.asarray(p.image if p.image.mode == "RGB" else p.image.convert("RGB")) for p in pairs]
    batch = torch.from_numpy(np.stack(arrays))  # (N, R, R, 3) uint8
    return batch.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def _load_tree(root: Path, shown_as: str, options: _Options) -> tuple[list[Pair], LoadReport]:
    dataset_root = _find_dataset_root(root)
    if dataset_root is not None:
        pairs, skipped = _load_saved_dataset(dataset_root, options)
    else:
        pairs, skipped = _load_files(root, options)
    if not pairs:
        problems = "; ".join(f"{source} ({reason})" for source, reason in skipped[:5]) or "no files found"
        raise DataError(f"No usable image-caption pairs in {shown_as}. First problems: {problems}. {LAYOUTS_HELP}")
    words = [len(pair.text.split()) for pair in pairs]
    report = LoadReport(len(pairs), skipped, (min(words), sum(words) / len(words), max(words)))
    return pairs, report


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _find_dataset_root(root: Path) -> Path | None:
    """The save_to_disk folder at `root`, or inside a chain of single wrapper folders (as zips often have)."""
    folder = root
    while True:
        children = [child for child in folder.iterdir() if not _is_ignored(child.name)]
        if any(child.name in DATASET_MARKERS for child in children):
            return folder
        if len(children) != 1 or not children[0].is_dir():
            return None
        folder = children[0]


def _list_files(root: Path) -> list[str]:
    """Relative POSIX paths of all visible files under `root`, sorted so pair order is deterministic."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _is_ignored(d)]
        rel_folder = Path(folder).relative_to(root).as_posix()
        for file in files:
            if not _is_ignored(file):
                found.append(file if rel_folder == "." else f"{rel_folder}/{file}")
    return sorted(found)


def _load_files(root: Path, options: _Options) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Metadata-file and sidecar-.txt layouts; an image listed in metadata uses that caption, else its .txt."""
    files = _list_files(root)
    listed, skipped, has_metadata, alternatives = read_all_metadata(root, files, options.caption_column,
                                                                    options.limits.max_rows)
    file_set = set(files)
    images = {rel for rel in files if posixpath.splitext(rel)[1].lower() in IMAGE_SUFFIXES}
    image_stems = {posixpath.splitext(rel)[0] for rel in images}
    # Metadata may name a file whatever its extension; the decoder, not the name, decides if it is an image.
    candidate_set = images | set(listed)
    candidates = sorted(candidate_set)

    captions: dict[str, str] = {}
    used_sidecars: set[str] = set()
    for rel in candidates:
        if rel in listed:
            captions[rel] = listed[rel]
            continue
        stem = posixpath.splitext(rel)[0]
        sidecar = next((stem + suffix for suffix in (".txt", ".TXT") if stem + suffix in file_set), stem + ".txt")
        if sidecar in file_set:
            used_sidecars.add(sidecar)
            try:
                captions[rel] = (root / sidecar).read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                skipped.append((rel, f"caption file {posixpath.basename(sidecar)} is not UTF-8 text"))
        elif has_metadata:
            skipped.append((rel, "no caption in metadata"))
        else:
            skipped.append((rel, f"no caption: expected {posixpath.basename(sidecar)} beside it"))

    for rel in files:
        stem, suffix = posixpath.splitext(rel)
        if posixpath.basename(rel) in METADATA_NAMES or rel in candidate_set or rel in used_sidecars:
            continue
        if suffix.lower() != ".txt":
            skipped.append((rel, "not an image, caption or metadata file"))
        elif stem in image_stems:
            skipped.append((rel, "not used: metadata already captions its image"))
        else:
            skipped.append((rel, "caption file with no image of the same name"))

    pairs = []
    for rel in sorted(captions):
        try:
            text = _clean_caption(captions[rel])
            cleaned = (" ".join(a.split()) for a in alternatives.get(rel, ()) if isinstance(a, str))
            alts = tuple(dict.fromkeys(a for a in cleaned if a and a != text))
            pairs.append(Pair(_load_image(root / rel, options), text, rel, alts))
        except _Skip as reason:
            skipped.append((rel, str(reason)))
    return pairs, skipped


def _load_saved_dataset(folder: Path, options: _Options) -> tuple[list[Pair], list[tuple[str, str]]]:
    """A `datasets` save_to_disk folder: rows in order, images decoded here so the pixel limit applies first."""
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"{folder} is a saved `datasets` Dataset; install it with `pip install datasets`.") from error
    check_saved_dataset(folder)
    try:
        dataset = datasets.load_from_disk(str(folder), keep_in_memory=False)  # memory-mapped: rows counted first
    except Exception as error:  # the library raises many types for a damaged folder
        raise DataError(f"cannot read the saved dataset in {folder}: {error}") from error
    prefix = "row "
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise DataError(f"the DatasetDict in {folder} has splits {list(dataset)} but no 'train' split; save one.")
        dataset, prefix = dataset["train"], "train["
    if dataset.num_rows > options.limits.max_rows:
        raise DataError(f"the saved dataset has {dataset.num_rows} rows, over the limit of {options.limits.max_rows} "
                        "(max_rows); save a smaller one.")
    columns = dataset.column_names
    for column, flag in ((options.image_column, "image_column"), (options.caption_column, "caption_column")):
        if column not in columns:
            raise DataError(
                f"the dataset in {folder} has no {column!r} column; columns available: {columns}. "
                f"Pass {flag}= (--{flag.replace('_', '-')}) naming the right one."
            )
    dataset = dataset.select_columns([options.image_column, options.caption_column])
    if isinstance(dataset.features[options.image_column], datasets.Image):
        dataset = dataset.cast_column(options.image_column, datasets.Image(decode=False))

    pairs, skipped = [], []
    for index, row in enumerate(dataset):
        source = f"{prefix}{index}]" if prefix.endswith("[") else f"{prefix}{index}"
        try:
            text = _clean_caption(row[options.caption_column])
            image = _load_image(_dataset_image_source(row[options.image_column], folder), options)
            pairs.append(Pair(image, text, source))
        except _Skip as reason:
            skipped.append((source, str(reason)))
    return pairs, skipped


def _dataset_image_source(value: Any, folder: Path) -> Path | BinaryIO | Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return io.BytesIO(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value)
    if isinstance(value, str):
        # A path-only row must stay inside the dataset folder: an uploaded dataset must not read server files.
        path = (folder / value).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            raise _Skip(f"image path {value!r} is not a file inside the dataset folder")
        return path
    raise _Skip(f"image value of type {type(value).__name__} is not an image, bytes or path")


# ---------------------------------------------------------------------------------------------------------------
# Captions and images.


def _clean_caption(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Skip(f"caption is {type(raw).__name__}, not text")
    text = " ".join(raw.split())
    if not text:
        raise _Skip("empty caption")
    return text


def _load_image(source: Path | BinaryIO | Image.Image, options: _Options) -> Image.Image:
    """Decode, orient, convert to RGB and fit to a square; raise _Skip with the reason on any failure."""
    try:
        with warnings.catch_warnings():
            # Our own max_image_pixels check below is the limit that governs; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                return _prepare(source, options)
            with Image.open(source) as image:
                return _prepare(image, options)
    except (_Skip, DataError):
        raise
    except Image.DecompressionBombError as error:
        raise _Skip(f"image is too large to decode safely: {error}") from error
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise _Skip(f"cannot decode image: {error}") from error


def _prepare(image: Image.Image, options: _Options) -> Image.Image:
    width, height = image.size  # from the header: nothing is decoded yet
    if width * height > options.limits.max_image_pixels:
        raise _Skip(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{options.limits.max_image_pixels} (max_image_pixels)"
        )
    options.budget[0] -= width * height
    if options.budget[0] < 0:
        raise DataError(
            f"the images together are over the decoding budget of {options.limits.max_total_pixels} pixels "
            "(max_total_pixels); upload fewer or smaller images (64x64 is the model's size)."
        )
    # Lets JPEG decode at 1/2, 1/4 or 1/8 scale when that still covers the target size; other formats ignore it.
    image.draft(None, (options.resolution, options.resolution))
    image.load()
    image = ImageOps.exif_transpose(image)
    return _fit_square(_to_rgb(image), options.resolution, options.fit)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white; 16-bit grey scaled (PIL's convert would clip it)."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        grey = np.asarray(image).astype(np.float64) / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _fit_square(image: Image.Image, resolution: int, fit: str) -> Image.Image:
    width, height = image.size
    size = (resolution, resolution)
    if fit == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
        return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    # Pad after shrinking, not before: padding a 40000x1000 strip first would allocate a 40000x40000 canvas.
    scale = resolution / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", size, _WHITE)
    canvas.paste(image.resize(inner, Image.Resampling.LANCZOS, reducing_gap=3.0),
                 ((resolution - inner[0]) // 2, (resolution - inner[1]) // 2))
    return canvas
