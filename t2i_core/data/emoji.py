"""The default training corpus: emoji images paired with their CLDR names, built offline.

Images come from pinned npm packages fetched with ``npm pack`` (Node.js is needed only to
rebuild the corpus, never to use a trained model). Captions come from emojibase-data.

Output is an imagefolder::

    out_dir/train/<style>/<hex>.png     RGB, resolution x resolution, composited on white
    out_dir/train/metadata.jsonl        {"file_name": "google/1f600.png", "text": "grinning face, google style", ...}
    out_dir/test/...                    same layout; split by emoji, never by image
    out_dir/ATTRIBUTION.md              sources, versions, licences and the credit they require
    out_dir/stats.json                  pairs per style and split, caption count

Command line: ``python -m t2i_core data emoji --out DIR`` (t2i_core.cli.data).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from .npm import CorpusError, fetch_package

if TYPE_CHECKING:
    from PIL import Image

PACKAGES: dict[str, tuple[str, str]] = {
    "google": ("emoji-datasource-google", "16.0.0"),
    "twitter": ("emoji-datasource-twitter", "16.0.0"),
    "fluent": ("fluentui-emoji", "1.3.0"),
    "openmoji": ("openmoji", "17.0.0"),
    "captions": ("emojibase-data", "17.0.0"),
}

# The three Fluent drawing sets (flat, modern, high contrast) are all MIT; with them the corpus is ~15.5k pairs.
DEFAULT_STYLES = ("google", "twitter", "fluent", "fluent_modern", "fluent_contrast")
# Optional extra styles drawn from the fluentui-emoji package (off by default): the same
# emoji with gradient shading, and as black line art. Style -> (PACKAGES key, icons subfolder).
FLUENT_VARIANTS = {"fluent": "flat", "fluent_modern": "modern", "fluent_contrast": "high-contrast"}
STYLES = ("google", "twitter", *FLUENT_VARIANTS, "openmoji")

# What each source is licensed under and the credit it requires; written to ATTRIBUTION.md.
LICENCES: dict[str, tuple[str, str]] = {
    "google": (
        "Apache-2.0 (Noto Emoji images by Google; emoji-datasource packaging MIT, Cal Henderson)",
        "Noto Emoji graphics by Google, licensed under the Apache License 2.0.",
    ),
    "twitter": (
        "CC-BY-4.0 (Twemoji graphics; emoji-datasource packaging MIT, Cal Henderson)",
        "Twemoji graphics by Twitter, Inc. and other contributors, licensed CC-BY 4.0.",
    ),
    "fluent": (
        "MIT (Fluent UI Emoji by Microsoft; npm packaging by Mohammad Abu Mattar, MIT)",
        "Fluent UI Emoji by Microsoft Corporation, licensed under the MIT License.",
    ),
    "openmoji": (
        "CC-BY-SA-4.0 (share-alike: models trained on it inherit the licence)",
        "OpenMoji graphics by the OpenMoji project, licensed CC BY-SA 4.0.",
    ),
    "captions": (
        "MIT (emojibase-data, Miles Johnson); labels derive from Unicode CLDR (Unicode License v3)",
        "Emoji names from emojibase-data, derived from Unicode CLDR data.",
    ),
}

_FE0F = "FE0F"
_SKIN_TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
# fluentui-emoji names one file per uniform skin tone: "<name>-<tone>.svg", base as "-default".
_FLUENT_TONES = {1: "light", 2: "medium-light", 3: "medium", 4: "medium-dark", 5: "dark"}
# fluentui-emoji file names (slugs) that follow Microsoft's older names instead of CLDR's;
# space-separated where the flat and modern folders disagree.
_FLUENT_ALIASES = {
    "black-bird": "blackbird",
    "smiling-face-with-open-hands": "hugging-face",
    "face-with-crossed-out-eyes": "knocked-out-face",
    "enraged-face": "pouting-face",
    "red-triangle-pointed-up": "red-triangle",
    "stuffed-flatbread": "stuffedbread-flat stuffedbread",
    "phoenix": "phoenix-bird",
    "person-blond-hair": "person-blonde-hair",
    "man-blond-hair": "man-blonde-hair",
    "woman-blond-hair": "woman-blonde-hair",
    "deaf-person": "person-deaf",
    "deaf-man": "man-deaf",
    "deaf-woman": "woman-deaf",
    "merperson": "person-merpeople",
    "merman": "man-merpeople",
    "mermaid": "woman-merpeople",
    "people-with-bunny-ears": "person-with-bunny-ears",
    "men-with-bunny-ears": "man-with-bunny-ears",
    "women-with-bunny-ears": "woman-with-bunny-ears",
    "people-wrestling": "person-wrestling",
    "men-wrestling": "man-wrestling",
    "women-wrestling": "woman-wrestling",
    "elf": "person-elf",
    "fairy": "person-fairy",
    "genie": "person-genie",
    "mage": "person-mage",
    "superhero": "person-superhero",
    "supervillain": "person-supervillain",
    "vampire": "person-vampire",
    "zombie": "person-zombie",
}


@dataclass(frozen=True)
class Emoji:
    """One emojibase entry (a base emoji or one of its skin-tone variants)."""

    hexcode: str  # emojibase spelling, e.g. "1F44B-1F3FB"
    label: str  # CLDR label, e.g. "waving hand: light skin tone"
    tags: tuple[str, ...]
    group: str  # e.g. "people and body"
    tone: int | None  # 1..5 for a uniform skin tone, None for base or mixed tones
    base_label: str  # label of the base emoji, used to find fluent files


# Captions.


def _normalize_hex(hexcode: str) -> str:
    """Image join key: upper-case code points without FE0F (sources disagree on it)."""
    return "-".join(p for p in hexcode.upper().split("-") if p and p != _FE0F)


def split_key(hexcode: str) -> str:
    """Split key: the emoji without FE0F and skin-tone modifiers, so variants stay together."""
    return "-".join(p for p in _normalize_hex(hexcode).split("-") if p not in _SKIN_TONES)


def _is_test(key: str, seed: int, test_fraction: float) -> bool:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < test_fraction


_KEYCAP_WORDS = {"#": "number sign", "*": "asterisk"}


def caption_from_label(label: str) -> str:
    """A CLDR label as plain lower-case words.

    "flag: Japan" -> "flag of japan"; "keycap: #" -> "keycap number sign";
    "waving hand: light skin tone" -> "waving hand, light skin tone".
    """
    if label.startswith("flag: "):
        text = "flag of " + label[len("flag: ") :]
    elif label.startswith("keycap: "):
        key = label[len("keycap: ") :]
        text = "keycap " + _KEYCAP_WORDS.get(key, key)
    else:
        text = label.replace(": ", ", ")
    text = text.replace("’", "'").replace("“", '"').replace("”", '"')
    return " ".join(text.lower().split())


def load_emojis(captions_dir: Path) -> list[Emoji]:
    """Read emojibase-data ``en/data.json``: base entries and their skin-tone variants."""
    data_path = captions_dir / "en" / "data.json"
    if not data_path.is_file():
        raise CorpusError(f"emojibase-data file not found: {data_path}")
    groups = _load_group_names(captions_dir)
    emojis = []
    for entry in json.loads(data_path.read_text(encoding="utf-8")):
        group = groups.get(entry.get("group"), "other")
        base = Emoji(
            hexcode=entry["hexcode"],
            label=entry["label"],
            tags=tuple(entry.get("tags", ())),
            group=group,
            tone=None,
            base_label=entry["label"],
        )
        emojis.append(base)
        for skin in entry.get("skins", ()):
            tone = skin.get("tone")
            emojis.append(
                Emoji(
                    hexcode=skin["hexcode"],
                    label=skin["label"],
                    tags=base.tags,
                    group=group,
                    tone=tone if isinstance(tone, int) else None,
                    base_label=base.label,
                )
            )
    return emojis


def _load_group_names(captions_dir: Path) -> dict[int, str]:
    """Group id -> readable name ("smileys and emotion"), from meta/groups.json + en/messages.json."""
    meta = captions_dir / "meta" / "groups.json"
    messages = captions_dir / "en" / "messages.json"
    keys: dict[int, str] = {}
    if meta.is_file():
        keys = {int(k): v for k, v in json.loads(meta.read_text("utf-8"))["groups"].items()}
    words: dict[str, str] = {}
    if messages.is_file():
        for group in json.loads(messages.read_text("utf-8"))["groups"]:
            words[group["key"]] = group["message"].replace("&", "and")
            keys.setdefault(group["order"], group["key"])
    # Without messages.json, "smileys-emotion" reads as "smileys and emotion".
    return {i: words.get(k, k.replace("-", " and ", 1)) for i, k in keys.items()}


# Image sources: each yields (join key, source path) for every image the package holds.


def _datasource_images(package: Path, style: str) -> Iterator[tuple[str, Path]]:
    folder = package / "img" / style / "64"
    if not folder.is_dir():
        raise CorpusError(f"expected emoji-datasource images at {folder}")
    for path in sorted(folder.glob("*.png")):
        yield _normalize_hex(path.stem), path


def _openmoji_images(package: Path) -> Iterator[tuple[str, Path]]:
    folder = package / "color" / "svg"
    if not folder.is_dir():
        raise CorpusError(f"expected openmoji SVGs at {folder}")
    for path in sorted(folder.glob("*.svg")):
        yield _normalize_hex(path.stem), path


def _slug(label: str) -> str:
    text = label.replace("#", "hashtag").replace("*", "asterisk")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"['’“”.]", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def _fluent_images(package: Path, emojis: list[Emoji], variant: str) -> Iterator[tuple[str, Path]]:
    """fluentui-emoji has no code points, only slugged names: match them to CLDR labels."""
    folder = package / "icons" / variant
    if not folder.is_dir():
        raise CorpusError(f"expected fluentui-emoji {variant} SVGs at {folder}")
    files = {p.stem: p for p in folder.glob("*.svg")}
    for emoji in emojis:
        slug = _slug(emoji.base_label)
        bases = _FLUENT_ALIASES.get(slug, slug).split()
        if emoji.tone is None and emoji.label == emoji.base_label:
            candidates = [n for b in bases for n in (b, f"{b}-default")]
        elif emoji.tone is not None:
            candidates = [f"{b}-{_FLUENT_TONES[emoji.tone]}" for b in bases]
        else:
            candidates = []  # mixed skin tones: fluent draws only uniform ones
        for name in candidates:
            if name in files:
                yield _normalize_hex(emoji.hexcode), files.pop(name)
                break
    for name in sorted(files):  # left over: no CLDR label matched; counted as unmatched
        yield "", files[name]


# Rendering.


def _render(path: Path, resolution: int) -> Image.Image:
    """Any source image -> RGB ``resolution`` x ``resolution`` on white."""
    from PIL import Image

    if path.suffix == ".svg":
        import resvg_py

        png = resvg_py.svg_to_bytes(
            svg_path=str(path),
            width=resolution,
            height=resolution,
            background="#ffffff",
            skip_system_fonts=True,
        )
        image = Image.open(io.BytesIO(bytes(png)))
    else:
        image = Image.open(path)
    image = image.convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, image).convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


# Building.


def _resolve_packages(
    keys: Iterable[str], cache_dir: Path | None, package_dirs: dict[str, Path] | None
) -> dict[str, Path]:
    package_dirs = {k: Path(v) for k, v in (package_dirs or {}).items()}
    resolved = {}
    for key in keys:
        if key in package_dirs:
            resolved[key] = package_dirs[key]
            continue
        if cache_dir is None:
            cache_dir = Path.home() / ".cache" / "t2i_core" / "npm"
        name, version = PACKAGES[key]
        resolved[key] = fetch_package(name, version, cache_dir)
    return resolved


def _package_key(style: str) -> str:
    return "fluent" if style in FLUENT_VARIANTS else style


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "stats.json").is_file():
        raise CorpusError(
            f"{out_dir} is not empty and is not an emoji corpus (no stats.json); "
            "pass an empty or new folder"
        )
    for name in ("train", "test", "stats.json", "ATTRIBUTION.md"):
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def build_emoji_corpus(
    out_dir: str | Path,
    resolution: int = 64,
    styles: Iterable[str] = DEFAULT_STYLES,
    include_openmoji: bool = False,
    cache_dir: str | Path | None = None,
    package_dirs: dict[str, Path] | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Build the emoji imagefolder at ``out_dir`` and return its stats (also in stats.json).

    ``package_dirs`` maps a ``PACKAGES`` key ("google", ..., "captions") to an already
    extracted package folder (the one holding ``package.json``); others are fetched with npm
    into ``cache_dir`` (default ``~/.cache/t2i_core/npm``). Building twice gives identical files.
    """
    styles = list(dict.fromkeys(styles))
    if include_openmoji and "openmoji" not in styles:
        styles.append("openmoji")
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise CorpusError(f"unknown style(s) {unknown}; choose from {', '.join(STYLES)}")
    if not styles:
        raise CorpusError("no styles selected; pass at least one of google, twitter, fluent")
    if not 0.0 <= test_fraction < 1.0:
        raise CorpusError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if resolution < 8:
        raise CorpusError(f"resolution must be at least 8 pixels, got {resolution}")

    out_dir = Path(out_dir)
    package_keys = list(dict.fromkeys(["captions", *map(_package_key, styles)]))
    packages = _resolve_packages(package_keys, Path(cache_dir) if cache_dir else None, package_dirs)
    emojis = load_emojis(packages["captions"])

    _prepare_out_dir(out_dir)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    unmatched: dict[str, int] = {}
    for style in styles:
        unmatched[style] = _write_style(style, packages, emojis, out_dir, resolution, seed, test_fraction, rows)

    for split, split_rows in rows.items():
        split_rows.sort(key=lambda r: r["file_name"])
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        with open(out_dir / split / "metadata.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for row in split_rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")

    stats = _stats(rows, styles, unmatched, resolution, test_fraction, seed)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    (out_dir / "ATTRIBUTION.md").write_text(_attribution(styles), encoding="utf-8")
    return stats


def _write_style(style: str, packages: dict[str, Path], emojis: list[Emoji], out_dir: Path, resolution: int,
                 seed: int, test_fraction: float, rows: dict[str, list[dict]]) -> int:
    """Render one style's images into their split folders and append their metadata rows; returns how many of
    its images match no emojibase entry."""
    by_key = {_normalize_hex(e.hexcode): e for e in emojis}
    if style in FLUENT_VARIANTS:
        images = _fluent_images(packages[_package_key(style)], emojis, FLUENT_VARIANTS[style])
    elif style == "openmoji":
        images = _openmoji_images(packages[style])
    else:
        images = _datasource_images(packages[style], style)
    seen: set[str] = set()
    unmatched = 0
    for join_key, path in images:
        emoji = by_key.get(join_key)
        if emoji is None or join_key in seen:
            unmatched += emoji is None
            continue
        seen.add(join_key)
        key = split_key(emoji.hexcode)
        split = "test" if _is_test(key, seed, test_fraction) else "train"
        file_name = f"{style}/{emoji.hexcode.lower()}.png"
        target = out_dir / split / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        # Fixed options and no metadata chunks, so PNG bytes are reproducible.
        _render(path, resolution).save(target, format="PNG", compress_level=6)
        label = caption_from_label(emoji.label)
        rows[split].append(
            {
                "file_name": file_name,
                "text": f"{label}, {style.replace('_', ' ')} style",
                # Style-free captions: prompts typed without a style then let the noise choose one.
                "alt_texts": [label, f"{label} emoji"],
                "label": label,
                "style": style,
                "emoji": emoji.hexcode,
                "tags": list(emoji.tags),
                "group": emoji.group,
            }
        )
    return unmatched


def _stats(rows, styles, unmatched, resolution, test_fraction, seed) -> dict:
    pairs = {split: {s: sum(r["style"] == s for r in rs) for s in styles} for split, rs in rows.items()}
    all_rows = rows["train"] + rows["test"]
    return {
        "pairs": pairs,
        "total_pairs": len(all_rows),
        "captions": len({r["label"] for r in all_rows}),
        "emoji_keys": {split: len({split_key(r["emoji"]) for r in rs}) for split, rs in rows.items()},
        "unmatched_images": unmatched,
        "resolution": resolution,
        "test_fraction": test_fraction,
        "seed": seed,
        "packages": {s: "{}@{}".format(*PACKAGES[_package_key(s)]) for s in ["captions", *styles]},
    }


def _attribution(styles: list[str]) -> str:
    lines = [
        "# Emoji corpus: sources and licences",
        "",
        "Built by `t2i_core.data.emoji.build_emoji_corpus` from these npm packages.",
        "",
        "| part | package | licence | credit |",
        "|---|---|---|---|",
    ]
    keys = list(dict.fromkeys([*map(_package_key, styles), "captions"]))
    for key in keys:
        name, version = PACKAGES[key]
        licence, credit = LICENCES[key]
        lines.append(f"| {key} | {name}@{version} | {licence} | {credit} |")
    lines += ["", "Required credit:", ""]
    lines += [f"- {LICENCES[key][1]}" for key in keys]
    return "\n".join(lines) + "\n"
