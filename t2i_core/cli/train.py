"""`python -m t2i_core train`: flags generated from TrainConfig's fields (their help text lives there).

Precedence: TrainConfig defaults < --config file (a recipe) < flags given. A resumed run keeps the options it
started with; flags given on its command line still win.
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import fields
from pathlib import Path

from ..training.config import TrainConfig, read_options

_ELEMENT_TYPES = {"int": int, "float": float, "str": str}
# Options that may change on resume without a notice: where and how long it runs, how often it reports.
_QUIET_ON_RESUME = {"out", "data", "resume", "max_steps", "minutes", "checkpoint_every", "checkpoint_minutes",
                    "sample_every", "sample_minutes", "log_every", "threads"}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file of training options, or a recipe name in t2i_core/recipes "
                        "(e.g. emoji64_cpu); flags given here override it")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default: {default!r})"}
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, tuple):
            # The annotation names the element type: "tuple[float, float]", "tuple[int, ...]", "tuple[str, ...]".
            elem = _ELEMENT_TYPES[str(f.type).split("[")[1].split(",")[0].strip()]
            parser.add_argument(flag, nargs="+", type=elem, **kw)
        else:
            parser.add_argument(flag, type=type(default), **kw)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = read_options(args.config) if getattr(args, "config", None) else {}
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(given)
    out = values.get("out", TrainConfig.out)
    if values.get("resume") and (Path(out) / "training_options.json").is_file():
        # A resumed run keeps the options it started with (not today's defaults or --config); flags given on this
        # command line still win, and the log says which ones changed. The run folder is always the one passed.
        saved = read_options(str(Path(out) / "training_options.json"))
        changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in given.items()
                   if k not in _QUIET_ON_RESUME and k in saved and saved[k] != (list(v) if isinstance(v, tuple) else v)]
        if changed:
            print("Resuming with changed options: " + ", ".join(changed), flush=True)
        values = saved | given | {"out": out, "resume": True}
    cfg = TrainConfig.from_dict(values)
    if not cfg.data:
        raise ValueError("--data is required: a folder or .zip of image-caption pairs")
    return cfg


class StoppedWhileLoading(BaseException):
    """SIGTERM or Ctrl-C before the first step: raised from the signal handler, so even a long load ends at once.
    A BaseException, so that no loader turns it into a skipped file."""


def run_train_command(args: argparse.Namespace) -> int:
    from ..training.loop import Trainer

    cfg = config_from_args(args)
    stop = {"flag": False, "training": False}

    def request_stop(signum, frame):
        stop["flag"] = True
        if not stop["training"]:
            # Still loading data or models (minutes for a big upload): nothing to checkpoint yet, so end now.
            raise StoppedWhileLoading("stop requested while loading: nothing was trained yet")
        print("stop requested: finishing the step and writing a checkpoint", flush=True)

    old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        trainer = Trainer(cfg, should_stop=lambda: stop["flag"])
        stop["training"] = True
        model = trainer.run()
    except StoppedWhileLoading as stopped:
        print(stopped, flush=True)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(f"model folder: {model}")
    return 0
