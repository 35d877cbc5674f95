"""`python -m t2i_core data emoji`: build the default training corpus offline (see t2i_core.data.emoji)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.emoji import DEFAULT_STYLES, STYLES, build_emoji_corpus


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``data emoji`` options to an argparse (sub)parser."""
    parser.add_argument("--out", required=True, type=Path, help="folder for the imagefolder corpus")
    parser.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument(
        "--openmoji",
        action="store_true",
        help="also include OpenMoji (CC BY-SA 4.0: share-alike reaches trained weights)",
    )
    parser.add_argument("--cache", type=Path, default=None, help="npm package cache folder")
    parser.add_argument(
        "--styles",
        default=",".join(DEFAULT_STYLES),
        help=f"comma-separated image styles (default {','.join(DEFAULT_STYLES)}; any of {','.join(STYLES)})",
    )


def run_data_command(args: argparse.Namespace) -> int:
    """Build the corpus from parsed ``add_data_arguments`` options and print a short report."""
    styles = [s.strip() for s in getattr(args, "styles", ",".join(DEFAULT_STYLES)).split(",") if s.strip()]
    stats = build_emoji_corpus(
        args.out,
        resolution=args.resolution,
        styles=styles,
        include_openmoji=args.openmoji,
        cache_dir=args.cache,
    )
    print(f"emoji corpus written to {args.out}")
    for split, per_style in stats["pairs"].items():
        counts = ", ".join(f"{style} {n}" for style, n in per_style.items())
        print(f"  {split}: {sum(per_style.values())} pairs ({counts})")
    print(f"  {stats['total_pairs']} pairs over {stats['captions']} captions")
    return 0
