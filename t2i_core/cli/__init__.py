"""Command line: `python -m t2i_core <command>` (or the `t2i` console script).

Commands: generate, animate, train, eval, merge, data emoji. Exit status 0 on success; on bad input, exit status 2 and one
line on stderr that says what was wrong (no traceback). Warnings print as one `warning: ...` line each.

train, eval, merge and data emoji live in their own modules, imported only when that command runs, so the other
commands (and `--help`) work whatever those modules need.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import MAX_SEED

MAX_SIZE = 2048  # --size: a display upscale; larger only costs memory
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Errors that mean "the input was wrong": exit 2 with their message. CorpusError and DataError are matched by name
# so that their modules are imported only by the commands that use them.
BAD_INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
BAD_INPUT_ERROR_NAMES = {"CorpusError", "DataError"}


class UsageError(ValueError):
    """A command-line input that the pipeline itself would not see (e.g. an unsafe id in a prompts file)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the contract for bad input), still with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# Argument types.


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, got {seed}")
    return seed


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_SIZE} (pixels), got {text!r}")
    return value


# Parser.


def _add_model_arguments(p: argparse.ArgumentParser, size_default: int | None) -> None:
    p.add_argument("--seed", type=_seed, default=None, help="0..2**32-1; image k uses seed + k (default: random, printed)")
    p.add_argument("--truncation", type=float, default=1.0, metavar="PSI",
                   help="0 = the prompt's typical image, 1 = full variety, up to 2 (default 1.0)")
    p.add_argument("--guidance", type=float, default=1.0, metavar="G",
                   help="> 1 follows the text more strongly, 0..10 (default 1.0)")
    p.add_argument("--size", type=_size, default=size_default, metavar="PX",
                   help="upscale images to PX x PX" + (f" (default {size_default})" if size_default else
                                                       " (default: the model's resolution)"))
    p.add_argument("--exemplars", type=int, default=None, metavar="K", choices=range(4),
                   help="bank images each image draws on, 0..3; 0 = none (default: 1 if the model has a bank)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="model folder, or a model .zip from the web app (default: $T2I_MODEL, else the "
                        "shipped assets/model/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="(default fp32)")


def _add_delegated(
    sub: argparse._SubParsersAction, name: str, module: str, add_name: str, run_name: str, help: str, selected: bool
) -> None:
    """Register a command whose options and code live in `module`, imported only when the command is used."""
    if not selected:
        # Not the command being run: a stub that is listed in --help and never parses anything.
        sub.add_parser(name, help=help, add_help=False)
        return
    try:
        mod = importlib.import_module(module)
        add, run = getattr(mod, add_name), getattr(mod, run_name)
    except (ImportError, AttributeError) as err:
        p = sub.add_parser(name, help=help, add_help=False)
        p.set_defaults(func=_unavailable(name, err), ignore_extra=True)
        return
    p = sub.add_parser(name, help=help, description=(mod.__doc__ or help).strip().splitlines()[0])
    add(p)
    p.set_defaults(func=run)


def _unavailable(name: str, err: Exception) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"{name} is not available: {err}", file=sys.stderr)
        return 2

    return run


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser. `argv` says which command runs, so that only that command's module is imported."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    parser = OneLineParser(
        prog="python -m t2i_core",
        description="Text-to-image GAN conditioned on a pretrained Transformer text encoder.",
        epilog="Run `python -m t2i_core COMMAND --help` for a command's options.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"t2i_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "generate",
        help="text -> PNG images",
        description="Generate images from a prompt (--prompt) or a prompts file (--prompts).",
        epilog=(
            "Files written: with --prompt, --out (default out.png) for --num-images 1, else out_0.png ... "
            "out_{N-1}.png beside it. With --prompts FILE.jsonl (one {\"id\": ..., \"prompt\": ...} a line), "
            "--out is a folder and gets <id>_<k>.png for k = 0..N-1. Image k of a prompt uses seed + k."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="what the image should show")
    source.add_argument("--prompts", type=Path, metavar="FILE.jsonl", help="one {\"id\": ..., \"prompt\": ...} a line")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="image file (--prompt, default out.png) or folder (--prompts, required)")
    p.add_argument("--num-images", type=int, default=1, metavar="N", help="images per prompt, 1..64 (default 1)")
    _add_model_arguments(p, size_default=None)
    p.set_defaults(func=run_generate)

    p = sub.add_parser(
        "animate",
        help="prompts -> animated .webp/.gif/.mp4",
        description="Animate a smooth walk from each --prompt to the next (one prompt: a walk through its seeds).",
        epilog="Keyframe i uses prompt i and seed + i, so the first frame equals `generate --prompt A --seed S`.",
    )
    p.add_argument("--prompt", action="append", required=True, help="a keyframe prompt; repeat for more")
    p.add_argument("--frames", type=int, default=24, help="number of frames, 2..600 (default 24)")
    p.add_argument("--fps", type=int, default=12, help="frames per second (default 12)")
    p.add_argument("--out", type=Path, default=Path("clip.webp"), metavar="PATH",
                   help="clip.webp, clip.gif or clip.mp4 (default clip.webp)")
    _add_model_arguments(p, size_default=256)
    p.set_defaults(func=run_animate)

    _add_delegated(sub, "train", "t2i_core.cli.train", "add_train_arguments", "run_train_command",
                   "train or fine-tune a model (see train --help)", command == "train")
    _add_delegated(sub, "eval", "t2i_core.cli.evaluate", "add_eval_arguments", "run_eval_command",
                   "measure a model's quality on a data folder", command == "eval")
    _add_delegated(sub, "merge", "t2i_core.cli.merge", "add_merge_arguments", "run_merge_command",
                   "a weighted average of two model folders of one family", command == "merge")

    data = sub.add_parser("data", help="build training corpora", description="Build training corpora offline.")
    data_sub = data.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    _add_delegated(data_sub, "emoji", "t2i_core.cli.data", "add_data_arguments", "run_data_command",
                   "the default emoji corpus (needs Node.js's npm)", command == "data")
    return parser


# Commands.


def _load_pipeline(args: argparse.Namespace):
    import torch

    from ..pipeline import T2IPipeline

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    from .model_zip import model_folder

    return T2IPipeline.from_pretrained(model_folder(args.model), device=args.device, precision=args.precision)


def _resolve_seed(seed: int | None) -> int:
    return random.randint(0, MAX_SEED) if seed is None else seed


def _check_image_path(path: Path) -> Path:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"--out {str(path)!r} must end in one of {', '.join(IMAGE_SUFFIXES)}")
    return path


def check_safe_id(value: object, where: str) -> str:
    """An id from a prompts file as a file name stem; refuse anything that could leave the output folder."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(f"{where}: \"id\" must be a string or an integer, got {value!r}")
    text = str(value)
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if (not text.strip() or ".." in text or any(s in text for s in separators) or text.startswith(".")
            or any(ord(c) < 32 for c in text)):
        raise UsageError(
            f"{where}: id {text!r} is not a safe file name; use letters, digits, '-', '_' "
            "(no path separators, no '..', not starting with '.')"
        )
    return text


def read_prompts_file(path: Path) -> list[tuple[str, str]]:
    """Read a prompts .jsonl -> [(id, prompt)], checking every line before any image is made."""
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{number}: not valid JSON ({err.msg}); each line must be "
                             '{"id": ..., "prompt": ...}') from None
        if not isinstance(record, dict) or "id" not in record or "prompt" not in record:
            raise UsageError(f'{path}:{number}: each line must be an object {{"id": ..., "prompt": ...}}, got {raw[:60]!r}')
        ident = check_safe_id(record["id"], f"{path}:{number}")
        if ident in seen:
            raise UsageError(f"{path}:{number}: id {ident!r} appears twice; ids name the output files")
        seen.add(ident)
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f'{path}:{number}: "prompt" must be a non-empty string, got {prompt!r}')
        items.append((ident, prompt))
    if not items:
        raise UsageError(f"prompts file {str(path)!r} has no prompts")
    return items


def run_generate(args: argparse.Namespace) -> int:
    from ..pipeline import T2IPipeline

    seed = _resolve_seed(args.seed)
    n = args.num_images
    if args.prompts is not None:
        if args.out is None:
            raise UsageError("--prompts needs --out DIR, the folder for <id>_<k>.png")
        if args.out.suffix.lower() in IMAGE_SUFFIXES:
            raise UsageError(f"with --prompts, --out is a folder; got the file name {str(args.out)!r}")
        items = read_prompts_file(args.prompts)
        # Check every option before loading the model, so that a typo fails in a second, not after loading.
        T2IPipeline.check_inputs([p for _, p in items], n, seed, args.truncation, args.guidance)
        pipe = _load_pipeline(args)
        args.out.mkdir(parents=True, exist_ok=True)
        chunk = 16  # prompts per call: bounds memory on long files; images do not depend on the batch
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            out = pipe([p for _, p in part], num_images=n, seed=seed, truncation=args.truncation,
                       guidance=args.guidance, size=args.size, exemplars=args.exemplars)
            for i, (ident, _) in enumerate(part):
                for k in range(n):
                    path = args.out / f"{ident}_{k}.png"
                    out.images[i * n + k].save(path)
                    print(path)
    else:
        out_path = _check_image_path(args.out or Path("out.png"))
        T2IPipeline.check_inputs(args.prompt, n, seed, args.truncation, args.guidance)
        pipe = _load_pipeline(args)
        out = pipe(args.prompt, num_images=n, seed=seed, truncation=args.truncation, guidance=args.guidance,
                   size=args.size, exemplars=args.exemplars)
        paths = [out_path] if n == 1 else [out_path.with_name(f"{out_path.stem}_{k}{out_path.suffix}") for k in range(n)]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        for image, path in zip(out.images, paths):
            image.save(path)
            print(path)
        for path, drawn_on in zip(paths, out.exemplars):
            if drawn_on:
                print(f"{path.name} drew on: " + "; ".join(f"{caption} (bank #{i})" for caption, i in drawn_on))
    print(f"seed: {seed}" + (f" (image k uses seed {seed} + k)" if n > 1 else ""))
    return 0


def run_animate(args: argparse.Namespace) -> int:
    from ..pipeline import T2IPipeline
    from ..video import check_animation_path, save_animation

    check_animation_path(args.out)
    seed = _resolve_seed(args.seed)
    T2IPipeline.check_inputs(args.prompt, 1, seed, args.truncation, args.guidance)
    if not 1 <= args.fps <= 120:
        raise UsageError(f"--fps must be from 1 to 120, got {args.fps}")
    pipe = _load_pipeline(args)
    frames = pipe.interpolate(args.prompt, frames=args.frames, seed=seed, truncation=args.truncation,
                              guidance=args.guidance, size=args.size, exemplars=args.exemplars)
    path = save_animation(frames, args.out, fps=args.fps)
    print(path)
    print(f"{len(frames)} frames at {args.fps} fps; seed: {seed} (keyframe i uses seed {seed} + i)")
    return 0


# Entry point.


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Print each warning as one `warning: message` line on stderr (no file/line noise) while the command runs."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"warning: {text}", file=sys.stderr if file is None else file)

    original = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


@contextlib.contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """Keep transformers' and diffusers' log lines (multi-line, unprefixed) off stderr while the command runs.

    The conditions users need to know about reach them as Python warnings (one line each) or errors.
    """
    loggers = []
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(f"{name}.utils.logging")
        if module is not None:  # never import a library just to silence it
            loggers.append((module, module.get_verbosity()))
            module.set_verbosity_error()
    try:
        yield
    finally:
        for module, level in loggers:
            module.set_verbosity(level)


def _is_bad_input(err: BaseException) -> bool:
    return isinstance(err, BAD_INPUT_ERRORS) or any(c.__name__ in BAD_INPUT_ERROR_NAMES for c in type(err).__mro__)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 2 bad input). argparse errors exit 2 by themselves."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "ignore_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with _one_line_warnings(), _quiet_library_logs():
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except ImportError as err:
            # A missing optional dependency: the message carries the pip install hint.
            print(f"error: {err}", file=sys.stderr)
            return 1
        except Exception as err:
            if type(err).__name__ == "CheckpointError":
                print(f"error: {err.strerror}", file=sys.stderr)  # e.g. a full disk: what to do, in one line
                return 1
            if type(err).__name__ == "TrainingDiverged":
                print(f"error: {err}", file=sys.stderr)  # the last good checkpoint stays; what to do, in one line
                return 1
            if not _is_bad_input(err):
                raise
            message = " ".join(str(err).split()) or type(err).__name__
            print(f"error: {message}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    raise SystemExit(main())
