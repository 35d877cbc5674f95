"""TrainConfig: every option of a run, each with its default and help text. One configuration path:

    TrainConfig defaults < a recipe (a complete TrainConfig as JSON, `recipes/*.json`) < command-line flags

The command line's flags are generated from these fields (`t2i_core.cli.train`), the app builds a TrainConfig,
and each run writes the config it used to RUN_DIR/training_options.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..models.folder import PRECISIONS
from ..text import DEFAULT_TEXT_ENCODER

RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # named configs, e.g. --config emoji64_cpu


# Options of experiments that never shipped (the model card keeps their history). Runs started before they went
# carry them in training_options.json; at these values they changed nothing, so such runs still resume.
REMOVED_OPTIONS = {"fm_weight": 0.0, "g_extra_convs": [], "g_extra_attention": [], "g_text_layers": 0}


def option(default: Any, help: str) -> Any:
    """A TrainConfig field: its default and the help text that `--help` shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run needs; written to RUN_DIR/training_options.json as resolved."""

    data: str = option("", "training pairs: an image folder (metadata.jsonl/csv or .txt captions), a .zip of one, "
                           "or a saved datasets folder")
    out: str = option("runs/train", "run folder: checkpoints, samples, logs; RUN_DIR/model is the trained model folder")
    init: str = option("default", "start from 'default' (the shipped model), 'none' (from scratch) or a model folder")
    max_steps: int = option(1000, "stop after this many steps")
    minutes: float = option(0.0, "stop after this many minutes of training (0 = no limit)")
    batch_size: int = option(32, "images per step (over all processes)")
    lr_g: float = option(2e-4, "generator learning rate")
    lr_d: float = option(2e-4, "discriminator learning rate")
    betas: tuple[float, float] = option((0.0, 0.99), "Adam betas")
    # Larger than Adam's 1e-8: gradients that cancel to float noise (~1e-9) then move weights by ~0 instead of
    # by ~lr in a random direction, which also keeps runs equal across process counts.
    adam_eps: float = option(1e-6, "Adam epsilon")
    grad_clip: float = option(10.0, "clip gradient norms to this value")
    seed: int = option(0, "seed for initialisation, data order, noise and augmentation")
    # Losses (training/loss.py owns their maths and weighting).
    caption_dropout: float = option(0.1, "share of samples trained with an empty caption (the unconditional path "
                                          "that --guidance needs)")
    mismatch: bool = option(True, "train D to reject real images with a wrong caption")
    r1_gamma: float = option(0.1, "R1 gradient penalty weight")
    r1_every: int = option(4, "apply the R1 penalty every N steps (lazy regularisation)")
    rec_weight: float = option(1.0, "weight of the mean-image reconstruction loss (0 when one caption has very "
                                    "different images)")
    color_weight: float = option(1.0, "weight of the position-free colour-distribution loss of each sample against "
                                      "its real image")
    shape_weight: float = option(0.0, "weight of the position-free shape loss (Fourier amplitude spectrum of each "
                                      "sample against its real image)")
    alt_caption_prob: float = option(0.3, "share of samples trained on an alternative caption (metadata column "
                                          "alt_texts), if any")
    article_captions: bool = option(False, "also train on each image's first alternative caption with 'a'/'an' "
                                           "before it ('a ghost'), the form people type")
    diversity_weight: float = option(1.0, "weight of the mode-seeking term (pairs of samples share a caption; 0 = off)")
    diversity_cap: float = option(0.5, "the mode-seeking ratio is not rewarded above this value")
    augment: bool = option(True, "differentiable augmentation of D's inputs (helps small data sets)")
    ema_halflife_images: float = option(5000.0, "half-life of the generator EMA, in images")
    ema_rampup: float = option(0.05, "EMA half-life ramp-up as a share of images seen (0 = off)")
    # Exemplars (training/exemplars.py): what the generator draws on besides the text.
    exemplar_resolutions: tuple[int, ...] = option((), "resolutions at which the generator takes in retrieved "
                                                        "exemplars, e.g. 8 16 32 64; a loaded model gains those "
                                                        "it lacks (empty: a model's own setting)")
    exemplar_text: bool = option(False, "the generator also reads its exemplars' captions (what the prompt asks "
                                        "beyond them shifts its style); a loaded model gains it, zero-initialised")
    exemplar_init: str = option("zero", "a loaded model's new exemplar injections: 'zero' (its images unchanged at "
                                        "first) or 'random' (on from the first step)")
    exemplar_lr_mult: float = option(1.0, "learning rate of the exemplar path as a multiple of --lr-g (it also "
                                          "gets Adam momentum 0.9)")
    exemplar_prob: float = option(0.85, "share of (not recoloured) samples trained with an exemplar")
    exemplar_same_group: float = option(0.5, "share of exemplars showing the target's own group in another image "
                                             "(another style of the same emoji)")
    exemplar_self: float = option(0.2, "share of (not recoloured) samples with an exemplar whose first exemplar is "
                                       "the target image itself (at generation, a prompt's nearest caption is often "
                                       "the very picture wanted, as an uploaded pair's own caption is; without "
                                       "any, a fine-tune unlearns redrawing it)")
    exemplar_variants: float = option(0.5, "share of the exemplars from other groups, and of D's hard negatives, "
                                           "taken from groups whose names differ in one word ('a red circle' -> "
                                           "'a blue circle'), where there are such")
    exemplar_slots: int = option(2, "exemplars per sample at most")
    exemplar_second_prob: float = option(0.3, "chance that a sample with an exemplar gets a second one")
    recolour_prob: float = option(0.3, "share of samples turned to a named colour, the caption saying which")
    recolour_grey: bool = option(False, "grey drawings (a grey elephant) are recoloured too, by tinting their grey "
                                        "(else only pictures with saturated colours are)")
    bank_keeps_init: bool = option(False, "the trained model's exemplar bank also keeps the initial model's "
                                          "bank (else it holds the training pairs only)")
    hard_negative_prob: float = option(0.5, "share of D's mismatched captions taken from the nearest other groups")
    # Model (used with init="none").
    resolution: int = option(64, "image resolution for --init none (power of two)")
    text_encoder: str = option(DEFAULT_TEXT_ENCODER, "text encoder id, Hugging Face name or local folder, for --init none")
    g_channels: tuple[int, ...] = option((), "generator widths from 4x4 up, for --init none")
    d_channels: tuple[int, ...] = option((), "discriminator widths from full resolution down to 4x4, for --init none")
    # Data.
    fit: str = option("crop", "how images become square: 'crop' (centre crop) or 'pad' (white borders)")
    image_column: str = option("image", "image column of a datasets folder")
    caption_column: str = option("text", "caption column of a datasets folder or metadata file")
    # Bookkeeping.
    checkpoint_every: int = option(200, "write a checkpoint every N steps")
    checkpoint_minutes: float = option(5.0, "also write a checkpoint when this many minutes passed since the last "
                                            "one, so a kill loses little work on a slow machine (0 = by steps only)")
    keep_checkpoints: int = option(3, "keep the last K checkpoints")
    max_rollbacks: int = option(5, "end the run with an error when its weights explode again after this many "
                                   "rollbacks in a row (with no checkpoint written between them); its last good "
                                   "checkpoint and model stay (0 = roll back forever)")
    sample_every: int = option(200, "save a sample grid every N steps")
    sample_minutes: float = option(0.0, "also save a sample grid every M minutes of training (0 = by steps only)")
    log_every: int = option(10, "write metrics every N steps")
    sample_prompts: tuple[str, ...] = option((), "prompts of the sample grid (default: 16 captions of the data)")
    device: str = option("cpu", "cpu or cuda")
    precision: str = option("auto", "autocast precision of forward passes: auto, fp32, bf16 or fp16 (weights stay "
                                    "fp32); auto takes bf16 where the device computes it natively, else fp32")
    threads: int = option(0, "torch threads (0 = default)")
    resume: bool = option(False, "continue from the latest checkpoint in --out")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        for key, inert in REMOVED_OPTIONS.items():
            value = d.pop(key, inert)
            if (list(value) if isinstance(value, (list, tuple)) else value) != inert:
                raise ValueError(f"training option {key}={value!r} was removed (an experiment that did not ship); "
                                 f"drop it, or use t2i_core as of commit d933a9f")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def check(self) -> None:
        if self.batch_size < 1 or self.max_steps < 0 or self.minutes < 0:
            raise ValueError("batch_size must be >= 1, max_steps and minutes >= 0")
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.fit not in ("crop", "pad"):
            raise ValueError(f"fit must be 'crop' or 'pad', got {self.fit!r}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError("caption_dropout must be in [0, 1)")
        if self.exemplar_init not in ("zero", "random"):
            raise ValueError(f"exemplar_init must be 'zero' or 'random', got {self.exemplar_init!r}")
        if self.exemplar_slots < 1:
            raise ValueError("exemplar_slots must be >= 1")
        if self.max_rollbacks < 0:
            raise ValueError("max_rollbacks must be >= 0")


def recipe_path(name_or_path: str) -> Path:
    """A JSON file, or the name of one in t2i_core/recipes (e.g. "emoji64_cpu")."""
    path = Path(name_or_path)
    if not path.is_file() and (RECIPES / f"{name_or_path}.json").is_file():
        path = RECIPES / f"{name_or_path}.json"
    return path


def read_options(name_or_path: str) -> dict:
    """The options of a recipe or of a run's training_options.json (its "resolved" record left out)."""
    try:
        values = json.loads(recipe_path(name_or_path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--config {name_or_path!r} cannot be read as JSON: {err}") from err
    values.pop("resolved", None)
    return values


def load_recipe(name: str, **overrides) -> TrainConfig:
    """A shipped recipe, which must set every TrainConfig option (a test holds them to it), with overrides."""
    return TrainConfig.from_dict(read_options(name) | overrides)


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX. Elsewhere
    (an AVX2-only CPU) autocast emulates bf16, and a training step took 10x longer than in fp32 (docs/BENCHMARKS.md)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of a training precision on `device`; None for fp32 (no autocast)."""
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    return None if precision == "fp32" else PRECISIONS[precision]
