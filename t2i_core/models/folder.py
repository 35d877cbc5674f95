"""Model folders: model_index.json plus one config.json + safetensors folder per component (see DESIGN.md).

safetensors only: a folder with only pickled weights is refused, since loading them can run arbitrary code.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import __version__

if TYPE_CHECKING:
    from .bank import ExemplarBank
    from .generator import Generator

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Bounds on a component's config.json, checked before the model is built: a folder is untrusted input, and sizes
# such as num_mean_samples allocate memory before any weight is read. Far above any model this project trains.
CONFIG_BOUNDS = {"resolution": 4096, "num_mean_samples": 4096, "heads": 64, "channels": 4096, "z_dim": 4096,
                 "w_dim": 4096, "text_dim": 4096, "pooled_dim": 4096, "attention_resolutions": 4096}
CONFIG_INT_BOUND = 1 << 16  # any other integer in a config.json
CONFIG_LIST_BOUND = 16  # entries of a list (one per resolution)
ALLOW_HUB_ENV = "T2I_ALLOW_HUB_TEXT_ENCODERS"


def default_model_path() -> Path:
    """The folder `from_pretrained()` loads with no argument: $T2I_MODEL, else the shipped assets/model/."""
    return Path(os.environ.get("T2I_MODEL") or DEFAULT_MODEL_DIR)


def check_model_folder(path: str | os.PathLike, components: tuple[str, ...] = ("generator",)) -> Path:
    """Raise ValueError, saying what to do, unless `path` is a model folder with safetensors weights."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"Model folder {str(path)!r} does not exist; pass a folder made by `python -m t2i_core train` (RUN_DIR/model).")
    if not (path / "model_index.json").is_file():
        raise ValueError(f"{str(path)!r} is not a model folder: model_index.json is missing.")
    for name in components:
        sub = path / name
        if not (sub / "config.json").is_file():
            raise ValueError(f"Model folder {str(path)!r} has no {name}/config.json.")
        if not list(sub.glob("*.safetensors")):
            pickled = [p.name for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if pickled:
                raise ValueError(
                    f"{name}/ in {str(path)!r} holds only pickled weights ({', '.join(pickled)}); they are refused because "
                    "loading them can run arbitrary code. Convert them to .safetensors (safetensors.torch.save_file)."
                )
            raise ValueError(f"{name}/ in {str(path)!r} has no .safetensors weights.")
        check_config_bounds(sub / "config.json")
    return path


def check_config_bounds(config_path: Path) -> None:
    """Raise ValueError if a component's config.json holds a size outside CONFIG_BOUNDS (or any integer over
    CONFIG_INT_BOUND, or a list over CONFIG_LIST_BOUND entries)."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{config_path.parent.name}/config.json cannot be read ({type(err).__name__}); re-save the "
                         "model folder.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path.parent.name}/config.json is not a JSON object; re-save the model folder.")
    for key, value in config.items():
        bound = CONFIG_BOUNDS.get(key, CONFIG_INT_BOUND)
        values = value if isinstance(value, list) else [value]
        too_long = isinstance(value, list) and len(value) > CONFIG_LIST_BOUND
        if too_long or any(isinstance(v, (int, float)) and not isinstance(v, bool) and not -bound <= v <= bound
                           for v in values):
            raise ValueError(f"{config_path.parent.name}/config.json sets {key} to {str(value)[:80]}, outside the "
                             f"bounds this loader accepts (at most {bound}"
                             f"{f', {CONFIG_LIST_BOUND} entries' if isinstance(value, list) else ''}); "
                             "the folder is damaged or not made by t2i_core.")


def model_text_encoder(path: str | os.PathLike, shipped: str) -> str:
    """The text encoder a model folder names: the shipped id, an existing local folder, or (only when the operator
    sets T2I_ALLOW_HUB_TEXT_ENCODERS=1) a Hugging Face hub name. ValueError otherwise, before anything is fetched."""
    name = read_model_index(path).get("text_encoder", shipped)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model_index.json in {str(path)!r} names no text encoder; set \"text_encoder\" to {shipped!r}.")
    if name == shipped or Path(name).is_dir() or os.environ.get(ALLOW_HUB_ENV) == "1":
        return name
    raise ValueError(f"model_index.json in {str(path)!r} names the text encoder {name[:100]!r}, which is neither the "
                     f"shipped {shipped!r} nor a local folder; hub models are not fetched for a model folder unless "
                     f"the operator sets {ALLOW_HUB_ENV}=1.")


def read_model_index(path: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"model_index.json in {str(path)!r} cannot be read ({err}); re-save the model folder.") from err


def save_model_folder(path, generator: Generator, text_encoder_name: str, discriminator=None,
                      storage_dtype: torch.dtype | None = None, training: dict | None = None,
                      bank: ExemplarBank | None = None) -> Path:
    """Write model_index.json plus one config.json + safetensors folder per component, and bank/ when given.

    storage_dtype (e.g. torch.float16) stores the weights in that type, halving the files; loading casts back.
    training (steps, images seen, hardware, ...) is recorded in model_index.json under "training".
    """
    def save(model, folder: Path) -> None:
        if storage_dtype is not None and storage_dtype != model.dtype:
            model = copy.deepcopy(model).to(storage_dtype)
        model.save_pretrained(folder, safe_serialization=True)
        # diffusers records where a loaded model came from; a model folder must not carry this machine's paths.
        config = folder / "config.json"
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "_name_or_path"},
                                     indent=2, sort_keys=True) + "\n")

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save(generator, path / "generator")
    index = {
        "_class_name": "T2IPipeline",
        "_t2i_core_version": __version__,
        "text_encoder": text_encoder_name,
        "generator": ["t2i_core", "Generator"],
        "resolution": generator.config.resolution,
    }
    if discriminator is not None:
        save(discriminator, path / "discriminator")
        index["discriminator"] = ["t2i_core", "Discriminator"]
    if bank is not None:
        bank.save(path / "bank")
        index["bank"] = {"entries": len(bank), "folder": "bank"}
    if training is not None:
        index["training"] = training
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


def load_bank(path: str | os.PathLike) -> ExemplarBank | None:
    """The exemplar bank of a model folder (bank/), or None if it has none."""
    from .bank import ExemplarBank

    folder = Path(path) / "bank"
    return ExemplarBank.load(folder) if (folder / "bank.json").is_file() else None
