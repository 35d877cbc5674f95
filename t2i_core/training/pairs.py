"""The training pairs in memory: images as uint8, captions encoded once, and each step's batch order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from ..data.loading import images_to_tensor
from ..text import TextEmbedding
from .augment import AugmentParams


class PairData:
    """Images (N, 3, R, R) uint8, caption index per image, and the encoded unique captions.

    alt_ids (N, A) holds each image's alternative captions (-1 = none), e.g. the emoji label without its style.
    """

    def __init__(self, images: torch.Tensor, caption_ids: torch.Tensor, captions: list[str], text: TextEmbedding,
                 alt_ids: torch.Tensor | None = None):
        self.images, self.caption_ids, self.captions, self.text = images, caption_ids, captions, text
        self.alt_ids = alt_ids if alt_ids is not None else torch.full((len(images), 1), -1)

    @classmethod
    def build(cls, pairs, text_encoder, batch: int = 256) -> "PairData":
        images = ((images_to_tensor(pairs) + 1) * 127.5).round().to(torch.uint8)
        captions = sorted({t for p in pairs for t in (p.text, *p.alt_texts)})
        index = {c: i for i, c in enumerate(captions)}
        caption_ids = torch.tensor([index[p.text] for p in pairs])
        width = max([1] + [len(p.alt_texts) for p in pairs])
        alt_ids = torch.tensor([[index[t] for t in p.alt_texts] + [-1] * (width - len(p.alt_texts)) for p in pairs])
        chunks = [text_encoder(captions[i : i + batch]) for i in range(0, len(captions), batch)]
        return cls(images, caption_ids, captions, TextEmbedding.cat(chunks + [text_encoder([""])]), alt_ids)

    @property
    def null_id(self) -> int:
        return len(self.captions)

    def batch_indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """Global batch for a step: walk a per-epoch permutation, so the order depends only on (seed, step)."""
        n = len(self.images)
        start = step * batch_size
        out = []
        while len(out) < batch_size:
            epoch, offset = divmod(start + len(out), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            out.extend(perm[offset : offset + batch_size - len(out)].tolist())
        return torch.tensor(out)


@dataclass
class Batch:
    """This process's slice of one step's global batch, with every random draw of the step.

    real (b, 3, R, R) in [-1, 1]; cap (b,) caption ids as G and D's real/fake terms see them (null where dropped)
    and text their embeddings; text_mis a mismatched caption per sample, mis_ok (b,) where it really differs;
    paired (b,) where the caption fixes the pixels (pixel losses apply); z_d, z_g (b, z_dim) noise of the D and G
    steps; aug four DiffAugment draws (None when off); directions (16, 3) for the colour loss; g_inputs extra
    keyword inputs of the generator, per sample (none yet).
    """

    real: torch.Tensor
    cap: torch.Tensor
    text: TextEmbedding
    text_mis: TextEmbedding
    mis_ok: torch.Tensor
    paired: torch.Tensor
    z_d: torch.Tensor
    z_g: torch.Tensor
    aug: list[AugmentParams | None]
    directions: torch.Tensor
    g_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def select(self, index: torch.Tensor) -> "Batch":
        """Samples `index` of the captions, their images and generator inputs; noise and augmentation stay per slot."""
        return replace(self, real=self.real[index], cap=self.cap[index], text=self.text[index],
                       text_mis=self.text_mis[index], mis_ok=self.mis_ok[index], paired=self.paired[index],
                       g_inputs={k: v[index] for k, v in self.g_inputs.items()})


def draw_batch(data: PairData, cfg, step: int, z_dim: int, resolution: int, rank: int = 0, world: int = 1,
               device: torch.device | str = "cpu") -> Batch:
    """Draw the global batch of `step` and every random number of it from (seed, step), then keep this process's
    slice: a resumed or multi-process run draws what a single uninterrupted run draws."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = data.batch_indices(step, cfg.batch_size, cfg.seed)
    b = len(idx)
    part = slice(rank * b // world, (rank + 1) * b // world)
    drop = torch.rand(b, generator=gen) < cfg.caption_dropout
    # Some samples train on an alternative caption; only an image's own caption fixes its pixels.
    alts = data.alt_ids[idx]
    n_alts = (alts >= 0).sum(1)
    pick = (torch.rand(b, generator=gen) * n_alts).long().clamp(max=alts.shape[1] - 1)
    use_alt = (torch.rand(b, generator=gen) < cfg.alt_caption_prob) & (n_alts > 0)
    cap = torch.where(use_alt, alts.gather(1, pick[:, None]).squeeze(1), data.caption_ids[idx])
    g_cap = torch.where(drop, torch.full_like(cap, data.null_id), cap)
    mis = cap.roll(1)
    mis_ok = (mis != cap) & ~drop  # a mismatched pair only counts when the captions differ
    z_d = torch.randn(b, z_dim, generator=gen)
    z_g = torch.randn(b, z_dim, generator=gen)
    aug = [AugmentParams.draw(b, resolution, gen) for _ in range(4)] if cfg.augment else [None] * 4
    directions = F.normalize(torch.randn(16, 3, generator=gen), dim=1)
    real = data.images[idx[part]].to(device).float() / 127.5 - 1
    local = lambda v: v[part].to(device)  # noqa: E731
    return Batch(real=real.contiguous(memory_format=torch.channels_last), cap=local(g_cap),
                 text=data.text[local(g_cap)], text_mis=data.text[local(mis)], mis_ok=local(mis_ok),
                 paired=local(~drop & ~use_alt), z_d=local(z_d), z_g=local(z_g),
                 aug=[a[part] if a is not None else None for a in aug], directions=directions.to(device))
