"""`python -m t2i_core merge A B --out DIR`: a model folder whose weights are (1 - weight) * A + weight * B.

See t2i_core.models.merge: a weighted-sum checkpoint merger (WiSE-FT for a fine-tune and the model it started from).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Imported with the command (before `main` quiets the libraries' loggers), so diffusers' notes on saving stay quiet.
from ..models.merge import merge_models
from .model_zip import model_folder


def _module_weight(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be MODULE=WEIGHT (e.g. exemplar_text_in=0.5), got {text!r}") from None


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", type=Path, metavar="A", help="model folder (or the app's model .zip): weight 0 gives it")
    p.add_argument("b", type=Path, metavar="B", help="model folder (or .zip): weight 1 gives it")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the merged model folder (must be new)")
    p.add_argument("--weight", type=float, default=0.5, help="share of B, 0..1 (default 0.5)")
    p.add_argument("--module-weight", type=_module_weight, action="append", default=[], metavar="MODULE=W",
                   help="another share of B for one generator module (a parameter-name prefix); repeat for more")
    p.add_argument("--bank", choices=("b", "a", "both"), default="b",
                   help="the exemplar bank: B's (default), A's, or both (B's entries, then A's)")


def run_merge_command(args: argparse.Namespace) -> int:
    out = merge_models(model_folder(args.a), model_folder(args.b), args.out, args.weight, dict(args.module_weight),
                       args.bank)
    print(out)
    return 0
