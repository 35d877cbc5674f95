"""ContrastiveScorer: a small image encoder trained CLIP-style against the frozen TextEncoder.

It measures how well images match captions (evaluation) and can serve as a frozen feature extractor (a
discriminator's features or an alignment loss). The evaluation scorer must be an instance trained on its own (another
seed, ideally another width), never one that a training loss used, or the figures would reward fooling that network.

Training it: `scorer_training.train_scorer`, or
    python -m t2i_core.evaluation.scorer_training --data CORPUS/train --out assets/scorer [--minutes 10] [--seed 0]
    python -m t2i_core.evaluation.scorer_training --data CORPUS/train CORPUS/test --out assets/scorer ...  # both splits
(the shipped scorer's full command is in its config.json and docs/BENCHMARKS.md; see also assets/MODEL_CARD.md)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..text import DEFAULT_TEXT_ENCODER, TextEncoder

DEFAULT_SCORER_DIR = Path(__file__).resolve().parents[2] / "assets" / "scorer"
WHITE = 1.0  # the corpus's background in [-1, 1]; augmentation pads with it


# Image encoder.


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual skip. (B, C_in, H, W) -> (B, C_out, H, W).

    GroupNorm, not BatchNorm: an image's embedding must not depend on the rest of its batch.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ImageEncoder(ModelMixin, ConfigMixin):
    """Small CNN: images (B, 3, R, R) in [-1, 1] -> embedding (B, embed_dim), not normalised.

    A strided stem (a `stem_stride` x `stem_stride` patch embedding, cheap on a CPU) takes R to R / stem_stride,
    then one ResBlock per entry of `channels`, halving the resolution between stages: R=64, stride 2 and 4 stages run
    at 32, 16, 8 and 4. Mean pooling, then a linear head.
    """

    @register_to_config
    def __init__(self, resolution: int = 64, channels: tuple = (32, 64, 128, 192), embed_dim: int = 256,
                 stem_stride: int = 2):
        super().__init__()
        if resolution % (stem_stride * 2 ** (len(channels) - 1)) != 0:
            raise ValueError(f"resolution {resolution} must be divisible by stem_stride * 2**(len(channels) - 1) = "
                             f"{stem_stride * 2 ** (len(channels) - 1)}")
        self.stem = nn.Conv2d(3, channels[0], stem_stride, stride=stem_stride)
        self.stages = nn.ModuleList(ResBlock(cin, cout) for cin, cout in zip((channels[0],) + tuple(channels[:-1]), channels))
        self.norm = nn.GroupNorm(min(8, channels[-1]), channels[-1])
        self.head = nn.Linear(channels[-1], embed_dim)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, R, R) -> one map per stage, (B, channels[i], R / (stem_stride * 2**i), same), before pooling."""
        x = self.stem(images)
        maps = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, embed_dim)."""
        x = self.feature_maps(images)[-1]
        return self.head(F.silu(self.norm(x)).mean(dim=(2, 3)))


# Scorer.


class ContrastiveScorer(nn.Module):
    """CLIP-style image-text scorer: ImageEncoder + a head on the frozen TextEncoder's pooled vector.

    Both sides map to L2-normalised (B, D) embeddings; `logit_scale` (learned, log space) sharpens their cosine
    similarities into the logits of the contrastive loss. The text head is linear, plus a residual MLP of width
    `text_hidden` when that is > 0 (a linear map cannot undo what the frozen sentence vector mixes up, e.g. a style
    word against the object's name).
    """

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder, info: dict | None = None,
                 text_hidden: int = 0):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder  # frozen, shared; never saved with the scorer
        self.text_head = nn.Linear(text_encoder.pooled_dim, image_encoder.config.embed_dim)
        self.text_hidden = text_hidden
        self.text_mlp = (nn.Sequential(nn.Linear(text_encoder.pooled_dim, text_hidden), nn.GELU(),
                                       nn.Linear(text_hidden, image_encoder.config.embed_dim))
                         if text_hidden else None)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.info = dict(info or {})  # training facts saved in config.json (seed, steps, data, measured R@1, ...)

    @property
    def resolution(self) -> int:
        return self.image_encoder.config.resolution

    @property
    def embed_dim(self) -> int:
        return self.image_encoder.config.embed_dim

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], any size (resized to the scorer's resolution) -> (B, D), unit norm."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   antialias=True, align_corners=False)
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The TextEncoder's pooled vectors (B, pooled_dim) -> (B, D), unit norm (for precomputed text)."""
        out = self.text_head(pooled)
        if self.text_mlp is not None:
            out = out + self.text_mlp(pooled)
        return F.normalize(out, dim=-1)

    def encode_texts(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> (B, D), unit norm. The TextEncoder's cache makes repeated prompts cheap."""
        if isinstance(prompts, str):
            prompts = [prompts]
        pooled = pooled_text_vectors(self.text_encoder, list(prompts), batch_size)
        return self.encode_pooled(pooled.to(self.text_head.weight.device))

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(B, D) x (T, D) unit embeddings -> (B, T) logits; the scale is capped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=100.0) * image_emb @ text_emb.T

    # Saving and loading.

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write config.json, image_encoder/ (diffusers, safetensors) and text_head.safetensors."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.image_encoder.save_pretrained(path / "image_encoder", safe_serialization=True)
        head = {"weight": self.text_head.weight, "bias": self.text_head.bias, "logit_scale": self.logit_scale}
        if self.text_mlp is not None:
            head.update({f"mlp.{k}": v for k, v in self.text_mlp.state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(path / "text_head.safetensors"))
        config = {
            "_class_name": "ContrastiveScorer",
            "text_encoder": self.text_encoder.name,
            "embed_dim": self.embed_dim,
            "text_hidden": self.text_hidden,
            "image_encoder": dict(self.image_encoder.config),
            "training": self.info,
        }
        (path / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, text_encoder: TextEncoder | None = None) -> "ContrastiveScorer":
        """Load a scorer folder (None: the shipped assets/scorer/). The text encoder named in it is shared."""
        from safetensors.torch import load_file

        path = Path(path) if path is not None else DEFAULT_SCORER_DIR
        if not (path / "config.json").is_file() or not (path / "text_head.safetensors").is_file():
            raise ValueError(
                f"{str(path)!r} is not a scorer folder (config.json and text_head.safetensors are needed). Train one with "
                "`python -m t2i_core.evaluation.scorer_training --data CORPUS/train --out DIR`."
            )
        config = json.loads((path / "config.json").read_text())
        if text_encoder is None:
            from ..text import load_text_encoder

            text_encoder = load_text_encoder(config.get("text_encoder", DEFAULT_TEXT_ENCODER))
        elif text_encoder.name != config.get("text_encoder", DEFAULT_TEXT_ENCODER):
            raise ValueError(f"The scorer in {str(path)!r} was trained with text encoder {config.get('text_encoder')!r}, "
                             f"not {text_encoder.name!r}; pass that one or none.")
        image_encoder = ImageEncoder.from_pretrained(path / "image_encoder", use_safetensors=True, low_cpu_mem_usage=False)
        scorer = cls(image_encoder, text_encoder, config.get("training"), text_hidden=config.get("text_hidden", 0))
        head = load_file(str(path / "text_head.safetensors"))
        with torch.no_grad():
            scorer.text_head.weight.copy_(head["weight"])
            scorer.text_head.bias.copy_(head["bias"])
            scorer.logit_scale.copy_(head["logit_scale"])
            if scorer.text_mlp is not None:
                scorer.text_mlp.load_state_dict({k[len("mlp."):]: v for k, v in head.items() if k.startswith("mlp.")})
        return scorer.eval().requires_grad_(False)


# Training.


def contrastive_loss(logits: torch.Tensor, same_group: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE on a (B, B) logit matrix whose diagonal holds the matching pairs.

    same_group: (B, B) bool, True where two items show the same thing (one emoji in several styles or skin tones);
    those off-diagonal entries are masked out so that they do not count as negatives.
    """
    if same_group is not None:
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same_group & ~eye, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def shift_and_zoom(images: torch.Tensor, generator: torch.Generator, shift: float = 0.1, scale: float = 0.1) -> torch.Tensor:
    """Random per-image translation (up to `shift` of the width) and zoom (1 +- `scale`), padding with white.

    No flips and no colour changes: captions name directions ("left arrow") and colours ("red heart").
    (B, 3, R, R) -> (B, 3, R, R).
    """
    b = images.shape[0]
    s = 1 + (torch.rand(b, generator=generator) * 2 - 1) * scale
    t = (torch.rand(b, 2, generator=generator) * 2 - 1) * shift * 2  # grid units: the image spans [-1, 1]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    # grid_sample pads with zeros, so shift white to zero first.
    return F.grid_sample(images - WHITE, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + WHITE


def read_group_keys(folder: str | os.PathLike) -> dict[str, str]:
    """Map image path (relative to `folder`, as `load_pairs` reports it) -> its "emoji" key, from metadata.jsonl."""
    meta = Path(folder) / "metadata.jsonl"
    keys: dict[str, str] = {}
    if meta.is_file():
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if isinstance(row, dict) and "file_name" in row and "emoji" in row:
                    keys[os.path.normpath(row["file_name"]).replace(os.sep, "/")] = str(row["emoji"])
    return keys


def training_folder(path: str | os.PathLike) -> Path:
    """A corpus root holding train/ means its train/ split; any other folder is used as it is."""
    path = Path(path)
    return path / "train" if (path / "train" / "metadata.jsonl").is_file() else path


def text_cache_dir() -> Path:
    """Where pooled caption vectors are cached: $T2I_CACHE/text, else ~/.cache/t2i_core/text."""
    base = os.environ.get("T2I_CACHE") or Path.home() / ".cache" / "t2i_core"
    return Path(base) / "text"


def pooled_text_vectors(text_encoder: TextEncoder, captions: list[str], batch_size: int = 256,
                        cache: bool = False) -> torch.Tensor:
    """The TextEncoder's pooled vectors of many captions, (C, pooled_dim) float32 on the CPU, in the given order.

    Encodes in length-sorted batches, so that little padding is computed. With cache=True the
    result is also kept on disk (see `text_cache_dir`), keyed by the encoder and the exact caption list: encoding a
    corpus's ~14k captions takes minutes on a CPU, and evaluation and scorer training need the same ones every run.
    """
    import hashlib

    from safetensors.torch import load_file, save_file

    key = hashlib.sha256("\n".join([text_encoder.name, *captions]).encode()).hexdigest()[:24]
    file = text_cache_dir() / f"{key}.safetensors"
    if cache and file.is_file():
        vectors = load_file(str(file))["pooled"]
        if vectors.shape == (len(captions), text_encoder.pooled_dim):
            return vectors
    order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
    out = torch.empty(len(captions), text_encoder.pooled_dim)
    for start in range(0, len(order), batch_size):
        chunk = [captions[i] for i in order[start : start + batch_size]]
        out[order[start : start + batch_size]] = text_encoder(chunk).pooled.float().cpu()
    if cache and len(captions) >= batch_size:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        save_file({"pooled": out.contiguous()}, str(tmp))
        os.replace(tmp, file)
    return out


@contextlib.contextmanager
def torch_threads(threads: int):
    """Use `threads` CPU threads inside the block (0: leave torch's setting), then restore the previous number."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
