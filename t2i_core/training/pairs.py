"""The training pairs in memory: images as uint8, captions encoded once, and each step's batch order."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from ..data.loading import images_to_tensor
from ..images import grey_share, saturated_share
from ..text import TextEmbedding
from ..models.bank import ExemplarBank
from .augment import AugmentParams
from .exemplars import COLOURS, ExemplarPicks, ExemplarSampler, recolor, recoloured_caption


# Images with fewer saturated pixels than this are never recoloured (`ExemplarSampler`'s colourful).
MIN_COLOURFUL = 0.03
# With --recolour-grey, an image with fewer saturated pixels but at least this share of mid-grey ones (a grey elephant)
# is tinted instead.
MIN_GREY = 0.1


class PairData:
    """Images (N, 3, R, R) uint8, caption index per image, and the encoded unique captions.

    alt_ids (N, A) holds each image's alternative captions (-1 = none), e.g. the emoji label without its style.
    An image's group is what it depicts whatever its style: its first alternative caption, else its caption;
    group_ids (N,) index group_names (G,), whose caption ids are group_name_ids (G,).
    """

    def __init__(self, images: torch.Tensor, caption_ids: torch.Tensor, captions: list[str], text: TextEmbedding,
                 alt_ids: torch.Tensor | None = None, text_encoder=None):
        self.images, self.caption_ids, self.captions, self.text = images, caption_ids, captions, text
        self.alt_ids = alt_ids if alt_ids is not None else torch.full((len(images), 1), -1)
        self.text_encoder = text_encoder  # for captions made during training (recoloured images)
        first_alt = self.alt_ids[:, 0]
        self.group_name_ids, self.group_ids = torch.unique(torch.where(first_alt >= 0, first_alt, caption_ids),
                                                           return_inverse=True)
        self.group_names = [captions[int(i)] for i in self.group_name_ids]
        self.sampler: ExemplarSampler | None = None  # set by `use_exemplars`
        self.grey = torch.zeros(len(images), dtype=torch.bool)  # images recolouring tints (see `use_exemplars`)

    def use_exemplars(self, tint_grey: bool = False) -> "PairData":
        """Prepare exemplar picks (a generator that draws on exemplars trains with them). tint_grey: grey drawings
        (few saturated pixels, many mid-grey ones) are recoloured too, by tinting their grey."""
        # An image's style: its caption without its group's name ("google style" in "red apple, google style").
        styles = []
        for cap, group in zip(self.caption_ids.tolist(), self.group_ids.tolist()):
            caption, name = self.captions[cap], self.group_names[group]
            styles.append(caption[len(name):].lstrip(", ") if caption.startswith(name) else "")
        index = {style: i for i, style in enumerate(sorted(set(styles)))}
        style_ids = torch.tensor([index[style] for style in styles])
        colourful = saturated_share(self.images) >= MIN_COLOURFUL
        if tint_grey:
            self.grey = ~colourful & (grey_share(self.images) >= MIN_GREY)
        self.sampler = ExemplarSampler(self.group_ids, self.group_names, self.text.pooled[self.group_name_ids].cpu(),
                                       style_ids=style_ids, colourful=colourful | self.grey)
        return self

    def bank(self) -> ExemplarBank:
        """The exemplar bank of a model trained on these pairs: every image under its own caption."""
        vectors = F.normalize(self.text.pooled[self.caption_ids].float().cpu(), dim=-1)
        bank = ExemplarBank(self.images, vectors, [self.captions[int(c)] for c in self.caption_ids],
                            [self.group_names[int(g)] for g in self.group_ids])
        if bank.groups != bank.captions:  # groups that name what an image depicts: retrieval matches them too
            names = F.normalize(self.text.pooled[self.group_name_ids].float().cpu(), dim=-1)
            by_name = dict(zip(self.group_names, names))
            bank.group_vectors = torch.stack([by_name[g] for g in bank.group_names])
        return bank

    @classmethod
    def build(cls, pairs, text_encoder, batch: int = 256, article: bool = False) -> "PairData":
        """article: each pair's first alternative caption also joins its alternatives with an article ('a ghost')."""
        images = ((images_to_tensor(pairs) + 1) * 127.5).round().to(torch.uint8)
        alts = []
        for p in pairs:
            extra = (with_article(p.alt_texts[0]),) if article and p.alt_texts else ()
            alts.append(tuple(dict.fromkeys((*p.alt_texts, *extra))))
        captions = sorted({t for p, a in zip(pairs, alts) for t in (p.text, *a)})
        index = {c: i for i, c in enumerate(captions)}
        caption_ids = torch.tensor([index[p.text] for p in pairs])
        width = max([1] + [len(a) for a in alts])
        alt_ids = torch.tensor([[index[t] for t in a] + [-1] * (width - len(a)) for a in alts])
        chunks = [text_encoder(captions[i : i + batch]) for i in range(0, len(captions), batch)]
        return cls(images, caption_ids, captions, TextEmbedding.cat(chunks + [text_encoder([""])]), alt_ids, text_encoder)

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


def with_article(name: str) -> str:
    """'a ghost', 'an apple'; a name that already starts with an article is kept."""
    if re.match(r"(a|an|the)\s", name, re.IGNORECASE):
        return name
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


@dataclass
class Batch:
    """This process's slice of one step's global batch, with every random draw of the step.

    real (b, 3, R, R) in [-1, 1]; cap (b,) caption ids as G and D's real/fake terms see them (null where dropped)
    and text their embeddings; text_mis a mismatched caption per sample, mis_ok (b,) where it really differs;
    paired (b,) where the caption or the first exemplar fixes the pixels (pixel losses apply); z_d, z_g (b, z_dim) noise of the D and G
    steps; aug four DiffAugment draws (None when off); directions (16, 3) for the colour loss; g_inputs extra
    keyword inputs of the generator, per sample: exemplars (b, K, 3, R, R) and exemplar_mask (b, K).
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
                       g_inputs={k: _select(v, index) for k, v in self.g_inputs.items()})


def _select(value, index: torch.Tensor):
    """Rows `index` of a tensor, or of each tensor in a dict (e.g. exemplar features per resolution)."""
    return {k: v[index] for k, v in value.items()} if isinstance(value, dict) else value[index]


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
    mis = cap.roll(1)
    picks = None
    paired = ~drop & ~use_alt  # only an image's own caption fixes its pixels ...
    if data.sampler is not None:
        picks = data.sampler.pick(idx, gen, cfg.exemplar_slots, cfg.exemplar_prob, cfg.exemplar_same_group,
                                  cfg.exemplar_second_prob, cfg.recolour_prob, cfg.exemplar_self,
                                  cfg.exemplar_variants)
        drop &= ~picks.recolour  # a recoloured image needs its caption
        use_alt &= ~picks.recolour
        mis = hard_negatives(data, picks, mis, use_alt, cfg.hard_negative_prob, gen)
        # ... or its own picture as the exemplar: "a ghost" with the ghost drawn beside it is that very ghost, so the
        # style-less captions people type learn to keep the exemplar's colours, as the styled ones do.
        paired = (~drop & ~use_alt) | (picks.exemplars[:, 0] == idx)
    g_cap = torch.where(drop, torch.full_like(cap, data.null_id), cap)
    mis_ok = (mis != cap) & ~drop  # a mismatched pair only counts when the captions differ
    z_d = torch.randn(b, z_dim, generator=gen)
    z_g = torch.randn(b, z_dim, generator=gen)
    aug = [AugmentParams.draw(b, resolution, gen) for _ in range(4)] if cfg.augment else [None] * 4
    directions = F.normalize(torch.randn(16, 3, generator=gen), dim=1)
    real = data.images[idx[part]].to(device).float() / 127.5 - 1
    local = lambda v: v[part].to(device)  # noqa: E731
    batch = Batch(real=real, cap=local(g_cap), text=data.text[local(g_cap)], text_mis=data.text[local(mis)],
                  mis_ok=local(mis_ok), paired=local(paired), z_d=local(z_d), z_g=local(z_g),
                  aug=[a[part] if a is not None else None for a in aug], directions=directions.to(device))
    if picks is not None:
        batch = apply_picks(batch, data, picks, idx, part, gen)
    batch.real = batch.real.contiguous(memory_format=torch.channels_last)
    return batch


def hard_negatives(data: PairData, picks: ExemplarPicks, mis: torch.Tensor, use_alt: torch.Tensor, prob: float,
                   gen: torch.Generator) -> torch.Tensor:
    """D's mismatched captions (B,) with a share `prob` replaced by a caption of the nearest other groups, in the
    same form as the sample's caption (the group's name alone, or a full caption of one of its images)."""
    mis = mis.clone()
    hard = (torch.rand(len(mis), generator=gen) < prob) & (picks.negative_groups >= 0)
    for i in torch.nonzero(hard).flatten().tolist():
        group = int(picks.negative_groups[i])
        if use_alt[i]:
            mis[i] = data.group_name_ids[group]
        else:
            mis[i] = data.caption_ids[data.sampler.member(group, gen)]
    return mis


def apply_picks(batch: Batch, data: PairData, picks: ExemplarPicks, idx: torch.Tensor, part: slice,
                gen: torch.Generator) -> Batch:
    """This process's slice of the picks applied to its batch: exemplar pixels into g_inputs, and recoloured
    targets with their captions (a caption naming another colour becomes their mismatch)."""
    device = batch.real.device
    local = torch.arange(len(idx))[part]
    ex = picks.exemplars[part]
    g_inputs = {"exemplars": (data.images[ex.clamp(min=0)].to(device).float() / 127.5 - 1),  # (b, K, 3, R, R)
                "exemplar_mask": (ex >= 0).to(device),
                # their captions' sentence vectors, as the bank holds them (each picture under its own caption)
                "exemplar_text": F.normalize(data.text.pooled[data.caption_ids[ex.clamp(min=0)]].float(), dim=-1).to(device)}
    rows = [i for i, j in enumerate(local.tolist()) if picks.recolour[j]]
    if not rows:
        return replace(batch, g_inputs=g_inputs)
    colours = [picks.colours[int(local[i])] for i in rows]
    real = batch.real.clone()
    grey = data.grey[idx[local[rows]]]
    real[rows] = recolor(real[rows], torch.tensor([COLOURS[c] for c in colours]), grey).to(real.dtype)
    names = list(COLOURS)
    captions, mismatches = [], []
    for i, colour in zip(rows, colours):
        target = int(idx[int(local[i])])
        name = data.group_names[int(data.group_ids[target])]
        full = data.captions[int(data.caption_ids[target])]
        style = full[len(name) + 2:] if full.startswith(name + ", ") else None
        other = names[(names.index(colour) + 1 + int(torch.randint(len(names) - 1, (1,), generator=gen))) % len(names)]
        captions.append(recoloured_caption(colour, name, style, gen))
        mismatches.append(captions[-1].replace(colour, other, 1))
    fresh = data.text_encoder(captions + mismatches).to(device)
    texts = {}
    for key, made in (("text", fresh[: len(rows)]), ("text_mis", fresh[len(rows):])):
        old = getattr(batch, key)
        merged = TextEmbedding.cat([old, made.to(old.states.device, old.states.dtype)])
        order = torch.arange(len(old))
        order[rows] = len(old) + torch.arange(len(rows))
        texts[key] = merged[order.to(merged.states.device)]
    mis_ok = batch.mis_ok.clone()
    mis_ok[rows] = True
    return replace(batch, real=real, g_inputs=g_inputs, mis_ok=mis_ok, **texts)
