"""ContrastiveScorer: a small image encoder trained CLIP-style against the frozen TextEncoder.

It measures how well images match captions (evaluation) and can serve as a frozen feature extractor (a
discriminator's features or an alignment loss). The evaluation scorer must be an instance trained on its own (another
seed, ideally another width), never one that a training loss used, or the figures would reward fooling that network.

    python -m t2i_core.scorer --data CORPUS/train --out assets/scorer [--minutes 10] [--seed 0]
    python -m t2i_core.scorer --data CORPUS/train CORPUS/test --out assets/scorer ...   # both splits: see MODEL_CARD
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .text_encoder import DEFAULT_TEXT_ENCODER, TextEncoder

DEFAULT_SCORER_DIR = Path(__file__).resolve().parent.parent / "assets" / "scorer"
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
                "`python -m t2i_core.scorer --data CORPUS/train --out DIR`."
            )
        config = json.loads((path / "config.json").read_text())
        if text_encoder is None:
            from .pipeline import load_text_encoder

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


@dataclass
class ScorerData:
    """Training tensors.

    images (N, 3, R, R) uint8; pooled (U, pooled_dim): the text vector of each unique caption form; variants (N, V)
    long: the caption forms of each image as indices into `pooled` (-1 pads), its styled forms first (the corpus
    caption at 0), then its style-free ones; styled (N,) and plain (N,): how many of each; groups (N,): group id;
    captions: each image's corpus caption.
    """

    images: torch.Tensor
    pooled: torch.Tensor
    groups: torch.Tensor
    captions: list[str]
    variants: torch.Tensor
    styled: torch.Tensor
    plain: torch.Tensor

    def sample_text(self, idx: torch.Tensor, generator: torch.Generator, styled_share: float = 0.5) -> torch.Tensor:
        """One caption form for each image in idx (B,): a styled one with probability `styled_share` (always when
        it has no style-free form), else a style-free one; uniform within the kind. -> (B,) indices into `pooled`."""
        styled, plain = self.styled[idx], self.plain[idx]
        use_styled = (torch.rand(len(idx), generator=generator) < styled_share) | (plain == 0)
        u = torch.rand(len(idx), generator=generator)
        col = torch.where(use_styled, (u * styled).long(), styled + (u * plain.clamp(min=1)).long())
        return self.variants[idx, col]

    def name_index(self) -> torch.Tensor:
        """(N,) the plainest caption form of each image (its first style-free form, else its corpus caption)."""
        col = torch.where(self.plain > 0, self.styled, torch.zeros_like(self.styled))
        return self.variants[torch.arange(len(col)), col]


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


def read_metadata_rows(folder: str | os.PathLike) -> dict[str, dict]:
    """Map image path (relative to `folder`) -> its metadata.jsonl row (label, style, ... where the corpus has them)."""
    meta = Path(folder) / "metadata.jsonl"
    rows: dict[str, dict] = {}
    if meta.is_file():
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if isinstance(row, dict) and "file_name" in row:
                    rows[os.path.normpath(row["file_name"]).replace(os.sep, "/")] = row
    return rows


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


def caption_forms(pair, row: dict | None, variants: bool = True) -> tuple[list[str], list[str]]:
    """(styled forms, style-free forms) of one pair's caption; the corpus caption is the first styled form.

    With a metadata row that has a "label" (the emoji corpus), all the forms of `t2i_core.captions`; otherwise the
    caption and the pair's alt_texts. variants=False: the corpus caption only.
    """
    from .captions import plain_variants, styled_variants

    if not variants:
        return [pair.text], []
    if row and row.get("label"):
        styled = styled_variants(row["label"], row["style"], pair.text) if row.get("style") else [pair.text]
        return styled, [v for v in plain_variants(row["label"]) if v not in styled]
    return [pair.text], [t for t in dict.fromkeys(pair.alt_texts) if t != pair.text]


def build_scorer_data(pairs, text_encoder: TextEncoder, group_keys: dict[str, str] | None = None,
                      resolution: int = 64, cache_text: bool = False, rows: dict[str, dict] | None = None,
                      variants: bool = True) -> ScorerData:
    """Pairs -> ScorerData. Images with the same group key (else the same caption) are never each other's negatives.
    rows: pair.source -> metadata row, for the caption forms (see `caption_forms`)."""
    from .data import images_to_tensor

    images = images_to_tensor(pairs)
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    captions = [p.text for p in pairs]
    forms = [caption_forms(p, (rows or {}).get(p.source), variants) for p in pairs]
    unique = sorted({f for styled, plain in forms for f in styled + plain})
    index = {c: i for i, c in enumerate(unique)}
    pooled = pooled_text_vectors(text_encoder, unique, cache=cache_text)
    width = max(len(styled) + len(plain) for styled, plain in forms)
    table = torch.full((len(pairs), width), -1, dtype=torch.long)
    for i, (styled, plain) in enumerate(forms):
        table[i, : len(styled) + len(plain)] = torch.tensor([index[f] for f in styled + plain])
    keys = [(group_keys or {}).get(p.source, "text:" + p.text) for p in pairs]
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    groups = torch.tensor([ids[k] for k in keys])
    return ScorerData(images, pooled, groups, captions, table, torch.tensor([len(f[0]) for f in forms]),
                      torch.tensor([len(f[1]) for f in forms]))


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


def is_folder_list(data) -> bool:
    """True for a folder or a list of folders (rather than a list of `Pair`s)."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and len(data) > 0 and all(isinstance(d, (str, os.PathLike)) for d in data)


def load_scorer_data(data_dir_or_pairs, text_encoder: TextEncoder, resolution: int = 64,
                     group_keys: dict[str, str] | None = None, cache_text: bool = False, log=print,
                     variants: bool = True) -> ScorerData:
    """A training folder (a corpus root with train/ uses train/), a list of folders (all used: e.g. a corpus's
    train/ and test/), or a list of `Pair`s -> ScorerData."""
    from dataclasses import replace

    from .data import load_pairs

    rows = None
    if is_folder_list(data_dir_or_pairs):
        folders = [data_dir_or_pairs] if isinstance(data_dir_or_pairs, (str, os.PathLike)) else data_dir_or_pairs
        pairs, rows, keys = [], {}, {}
        for i, folder in enumerate(training_folder(f) for f in folders):
            found, report = load_pairs(folder, resolution)
            log(f"{folder}: {report.summary()}")
            # Sources are relative to their folder; prefix them so that two folders' files stay apart.
            prefix = f"{i}:" if len(folders) > 1 else ""
            pairs += [replace(p, source=prefix + p.source) for p in found]
            rows.update({prefix + k: v for k, v in read_metadata_rows(folder).items()})
            keys.update({prefix + k: v for k, v in read_group_keys(folder).items()})
        group_keys = keys if group_keys is None else group_keys
    else:
        pairs = list(data_dir_or_pairs)
    start = time.time()
    data = build_scorer_data(pairs, text_encoder, group_keys, resolution, cache_text, rows, variants)
    log(f"encoded {len(data.pooled)} caption forms of {len(set(data.captions))} captions in "
        f"{time.time() - start:.0f}s; {len(pairs)} images in {int(data.groups.max()) + 1} groups")
    return data


def nearest_names(data: ScorerData, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """For hard negatives: each image's name, and for each name the k names nearest to it in the text space.

    Returns (name_id (N,) long, neighbours (L, k) long): names are the images' plainest caption forms, numbered
    0..L-1; a name is never its own neighbour. Images of near names (other faces, other arrows) in one batch teach
    the fine differences that random batches rarely show.
    """
    names, name_id = torch.unique(data.name_index(), return_inverse=True)
    vectors = F.normalize(data.pooled[names], dim=-1)
    k = min(k, len(names) - 1)
    neighbours = torch.empty(len(names), max(k, 0), dtype=torch.long)
    for start in range(0, len(names), 1024):
        sim = vectors[start : start + 1024] @ vectors.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -2.0
        neighbours[start : start + 1024] = sim.topk(k, dim=1).indices if k > 0 else neighbours[start : start + 1024]
    return name_id, neighbours


def batch_indices(perm_idx: torch.Tensor, name_id: torch.Tensor, neighbours: torch.Tensor, hard: float,
                  generator: torch.Generator) -> torch.Tensor:
    """A batch (B,) of image indices: the first B - H of perm_idx, then for H = hard * B / 2 of them an image
    whose name is one of their name's nearest (hard negatives)."""
    b = len(perm_idx)
    h = int(hard * b / 2) if neighbours.shape[1] > 0 else 0
    if h == 0:
        return perm_idx
    anchors = perm_idx[: b - h]
    pick = neighbours[name_id[anchors[:h]], torch.randint(neighbours.shape[1], (h,), generator=generator)]  # (H,)
    # A random image of each picked name: sort images by name, then index into each name's run.
    order = torch.argsort(name_id, stable=True)
    counts = torch.bincount(name_id, minlength=len(neighbours))
    starts = torch.cumsum(counts, 0) - counts
    offset = (torch.rand(h, generator=generator) * counts[pick]).long()
    return torch.cat([anchors, order[starts[pick] + offset]])


def blob_loss(scale: torch.Tensor, blob_emb: torch.Tensor, image_emb: torch.Tensor, text_emb: torch.Tensor,
              blob_text: torch.Tensor) -> torch.Tensor:
    """Degraded copies must not pass for their images. blob_emb (K, D): blobs of the first K images of the batch,
    whose embeddings are image_emb (B, D) and captions' text_emb (B, D); blob_text (D,): a learned "blob" caption.

    Two terms: each of those captions prefers its real image to its blob (a two-way softmax), and each blob's
    best caption among the batch's and the blob caption is the blob caption, so that no real caption ranks first
    for a blob because of its colours.
    """
    k = len(blob_emb)
    real = (image_emb[:k] * text_emb[:k]).sum(-1)
    fake = (blob_emb * text_emb[:k]).sum(-1)
    prefer_real = F.cross_entropy(scale * torch.stack([real, fake], 1), torch.zeros(k, dtype=torch.long))
    candidates = torch.cat([text_emb, F.normalize(blob_text, dim=-1)[None]])  # (B + 1, D)
    to_blob = F.cross_entropy(scale * blob_emb @ candidates.T, torch.full((k,), len(text_emb), dtype=torch.long))
    return 0.5 * (prefer_real + to_blob)


def train_scorer(
    data_dir_or_pairs,
    out_dir: str | os.PathLike | None = None,
    minutes: float = 10.0,
    max_steps: int = 0,
    batch_size: int = 128,
    seed: int = 0,
    channels: tuple = (32, 64, 128, 192),
    embed_dim: int = 256,
    resolution: int = 64,
    stem_stride: int = 2,
    augment: bool = True,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    text_encoder: TextEncoder | None = None,
    group_keys: dict[str, str] | None = None,
    log_every: int = 50,
    threads: int = 0,
    cache_text: bool = True,
    text_hidden: int = 0,
    variants: bool = False,
    styled_share: float = 0.5,
    hard_negatives: float = 0.0,
    blob_weight: float = 0.0,
    blob_kinds: tuple[str, ...] = ("blur", "silhouette", "pixelate"),
    blob_share: float = 0.25,
    save_every: float = 0.0,
    init: str | os.PathLike | None = None,
    log=print,
) -> ContrastiveScorer:
    """Train a ContrastiveScorer with the symmetric InfoNCE loss; save it to `out_dir` when given.

    data_dir_or_pairs: a training folder (a corpus root with train/ uses train/), a list of folders (all used), or a
    list of `Pair`s (then `group_keys` maps pair.source -> group, else pairs group by caption). Stops after
    `max_steps` (0: no limit) or `minutes` of training (0: no limit; text encoding before it is not counted); one of
    them must be set. The learning rate follows a warm-up then a cosine decay over whichever budget runs out first.
    The returned scorer is in eval mode with `info["loss_history"]` holding (step, loss) at each log point. threads > 0
    sets torch's CPU threads for the call (1 is often fastest on a busy machine); cache_text keeps caption vectors on
    disk.

    What makes a stronger scorer (all off by default): text_hidden > 0 adds a residual MLP to the text head;
    variants=True draws each image's caption from all its forms (`caption_forms`; a styled one with probability
    `styled_share`); hard_negatives = f fills f / 2 of each batch with images whose names are nearest to others'
    in the batch; blob_weight > 0 adds `blob_loss` on random degraded copies (`t2i_core.blobs`, kinds `blob_kinds`) of
    `blob_share` of the batch. save_every > 0 also saves to out_dir every that many minutes. init: a scorer folder
    of the same architecture to start from (a warm restart of the schedule: the steps add to its own).
    """
    from .blobs import random_blobs
    from .pipeline import load_text_encoder

    if not minutes and not max_steps:
        raise ValueError("train_scorer needs a budget: pass minutes > 0 or max_steps > 0.")
    text_encoder = text_encoder or load_text_encoder()
    with torch_threads(threads):
        data = load_scorer_data(data_dir_or_pairs, text_encoder, resolution, group_keys, cache_text, log, variants)
        n = len(data.images)
        batch_size = min(batch_size, n)
        name_id, neighbours = nearest_names(data) if hard_negatives else (None, None)

        # Build the scorer and its optimiser.
        torch.manual_seed(seed)
        image_encoder = ImageEncoder(resolution=resolution, channels=tuple(channels), embed_dim=embed_dim,
                                     stem_stride=stem_stride)
        scorer = ContrastiveScorer(image_encoder, text_encoder, text_hidden=text_hidden).train()
        if init is not None:
            start_from = ContrastiveScorer.from_pretrained(init, text_encoder=text_encoder)
            own = {k: v for k, v in scorer.state_dict().items() if not k.startswith("text_encoder.")}
            theirs = {k: v for k, v in start_from.state_dict().items() if not k.startswith("text_encoder.")}
            if {k: v.shape for k, v in own.items()} != {k: v.shape for k, v in theirs.items()}:
                raise ValueError(f"--init {str(init)!r} has another architecture; pass the same --channels, "
                                 "--stem-stride, --embed-dim and --text-hidden as it was trained with.")
            scorer.load_state_dict(theirs, strict=False)
            init_info = {k: start_from.info.get(k) for k in ("data", "steps", "minutes")}
        blob_text = nn.Parameter(torch.randn(embed_dim) * embed_dim**-0.5)  # training only; never saved
        params = [p for name, p in scorer.named_parameters() if not name.startswith("text_encoder.")]
        opt = torch.optim.AdamW(
            [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
             {"params": [p for p in params if p.ndim < 2] + [blob_text], "weight_decay": 0.0}],
            lr=lr, betas=(0.9, 0.98),
        )
        gen = torch.Generator().manual_seed(seed)
        warmup = 100 if not max_steps else min(100, max(1, max_steps // 10))
        settings = {"init": init_info if init is not None else None, "text_hidden": text_hidden,
                    "variants": variants, "styled_share": styled_share, "hard_negatives": hard_negatives, "blob_weight": blob_weight, "blob_kinds": list(blob_kinds),
                    "blob_share": blob_share, "weight_decay": weight_decay}

        def info(step: int, history: list) -> dict:
            return {
                # The last two parts of each path (e.g. emoji/train): provenance without this machine's layout.
                "data": data_description(data_dir_or_pairs),
                "pairs": n, "seed": seed, "steps": step, "batch_size": batch_size,
                "minutes": round((time.time() - start) / 60, 2), "lr": lr, "augment": augment, **settings,
                "final_loss": history[-1][1] if history else None, "loss_history": history,
            }

        start, step, history, perm, pos = time.time(), 0, [], torch.randperm(n, generator=gen), 0
        last_save = start
        while True:
            # Schedule: warm-up, then cosine decay over the budget that runs out first.
            progress = max(step / max_steps if max_steps else 0.0,
                           (time.time() - start) / (60 * minutes) if minutes else 0.0)
            if progress >= 1.0:
                break
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
            for group in opt.param_groups:
                group["lr"] = lr * scale

            # Batch: walk a per-epoch permutation; hard negatives replace its tail.
            if pos + batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            if hard_negatives:
                idx = batch_indices(idx, name_id, neighbours, hard_negatives, gen)
            images = data.images[idx].float().div(127.5).sub(1.0)
            if augment:
                images = shift_and_zoom(images, gen)
            text_idx = data.sample_text(idx, gen, styled_share) if variants else data.variants[idx, 0]

            # Update.
            groups = data.groups[idx]
            image_emb = scorer.encode_images(images)
            text_emb = scorer.encode_pooled(data.pooled[text_idx])
            logits = scorer.logits(image_emb, text_emb)
            loss = contrastive_loss(logits, groups[:, None] == groups[None, :])
            if blob_weight:
                k = max(1, int(blob_share * len(idx)))
                blob_emb = scorer.encode_images(random_blobs(images[:k], gen, tuple(blob_kinds)))
                loss = loss + blob_weight * blob_loss(scorer.logit_scale.exp().clamp(max=100.0), blob_emb, image_emb,
                                                      text_emb, blob_text)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == 1 or step % log_every == 0:
                history.append((step, round(loss.item(), 4)))
                log(f"step {step} loss {loss.item():.4f} scale {scorer.logit_scale.exp().item():.1f} "
                    f"lr {lr * scale:.2e} {time.time() - start:.0f}s")

            # Save checkpoint.
            if out_dir is not None and save_every and time.time() - last_save > 60 * save_every:
                scorer.info = {**info(step, history), "checkpoint": True}
                scorer.save_pretrained(out_dir)
                last_save = time.time()
                log(f"checkpoint at step {step} saved to {out_dir}")

    scorer.eval().requires_grad_(False)
    scorer.info = info(step, history)
    if out_dir is not None:
        scorer.save_pretrained(out_dir)
        log(f"saved scorer to {out_dir}")
    return scorer


def data_description(data) -> str:
    """The last two parts of each folder's path (e.g. "emoji/train + emoji/test"), or "pairs"."""
    if not is_folder_list(data):
        return "pairs"
    folders = [data] if isinstance(data, (str, os.PathLike)) else data
    return " + ".join("/".join(Path(f).parts[-2:]) for f in folders)


# Command line: python -m t2i_core.scorer


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m t2i_core.scorer", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+",
                        help="training folder(s), all used (a corpus root with train/ uses train/); the shipped "
                             "scorer is trained on both splits, CORPUS/train CORPUS/test")
    parser.add_argument("--out", required=True, help="scorer folder to write")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget (default 10)")
    parser.add_argument("--max-steps", type=int, default=0, help="step budget (0 = none)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--text-hidden", type=int, default=0,
                        help="width of a residual MLP in the text head (0 = a linear head only)")
    parser.add_argument("--variants", action="store_true",
                        help="train on every caption form (name, with/without style, 'emoji of ...', paraphrases)")
    parser.add_argument("--styled-share", type=float, default=0.5,
                        help="with --variants, the share of captions that name the style (default 0.5)")
    parser.add_argument("--hard-negatives", type=float, default=0.0, metavar="F",
                        help="share of each batch drawn as the nearest names of the rest (default 0)")
    parser.add_argument("--blob-weight", type=float, default=0.0,
                        help="weight of the loss that ranks degraded copies (blur, silhouette, pixelated) below the "
                             "real image (default 0: off)")
    parser.add_argument("--blob-kinds", default="blur,silhouette,pixelate",
                        help="comma-separated degradations for --blob-weight")
    parser.add_argument("--init", default=None, metavar="DIR",
                        help="start from this scorer folder (same architecture flags); a warm restart")
    parser.add_argument("--save-every", type=float, default=0.0, metavar="MIN",
                        help="also save to --out every MIN minutes (default 0: only at the end)")
    parser.add_argument("--test", default=None,
                        help="held-out folder to measure R@1 on (default: the corpus's test/ beside train/)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        data = args.data[0] if len(args.data) == 1 else args.data
        scorer = train_scorer(data, args.out if args.save_every else None, minutes=args.minutes,
                              max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed,
                              channels=tuple(args.channels), embed_dim=args.embed_dim, stem_stride=args.stem_stride,
                              augment=not args.no_augment, lr=args.lr, threads=args.threads,
                              text_hidden=args.text_hidden, variants=args.variants, styled_share=args.styled_share,
                              hard_negatives=args.hard_negatives, blob_weight=args.blob_weight,
                              blob_kinds=tuple(k.strip() for k in args.blob_kinds.split(",") if k.strip()),
                              save_every=args.save_every, init=args.init)
        test = Path(args.test) if args.test else training_folder(args.data[0]).parent / "test"
        if (test / "metadata.jsonl").is_file():
            from .evaluation import scorer_test_r_precision

            trained_on = {training_folder(d).resolve() for d in args.data}
            held_out = test.resolve() not in trained_on
            figures = scorer_test_r_precision(scorer, test)
            scorer.info["test"] = {"folder": "/".join(test.parts[-2:]), "held_out": held_out, **figures}
            kind = "held-out" if held_out else "NOT held-out (trained on it)"
            print(f"{kind} R@1 of real images in {test} among {figures['candidates']} captions: "
                  f"{figures['r_precision']:.3f} (chance {1 / figures['candidates']:.3f}); "
                  f"alignment {figures['alignment']:.2f}")
        scorer.save_pretrained(args.out)
        print(f"saved scorer to {args.out}")
    except ValueError as err:
        parser.exit(2, f"error: {' '.join(str(err).split())}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
