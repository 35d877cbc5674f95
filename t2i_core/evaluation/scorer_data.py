"""The scorer's training data: images, every caption form of each (`captions`), groups that are never each other's
negatives, and the nearest names for hard negatives. Used by `scorer_training`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.loading import images_to_tensor, load_pairs
from ..images import COLOURS, recolourable
from ..text import TextEncoder
from .captions import plain_variants, styled_variants
from .scorer import pooled_text_vectors, read_group_keys, training_folder


@dataclass
class ScorerData:
    """Training tensors.

    images (N, 3, R, R) uint8; pooled (U, pooled_dim): the text vector of each unique caption form; variants (N, V)
    long: the caption forms of each image as indices into `pooled` (-1 pads), its styled forms first (the corpus
    caption at 0), then its style-free ones; styled (N,) and plain (N,): how many of each; groups (N,): group id;
    captions: each image's corpus caption. For recolouring (`recolour_forms`): recolour (N,) long, each image's
    row in colour_pooled (-1: its name already names a colour, or it has none), and colour_pooled (R, len(COLOURS),
    2, pooled_dim), the vectors of "<colour> <name>" and "a <colour> <name>" for each recolourable name.
    """

    images: torch.Tensor
    pooled: torch.Tensor
    groups: torch.Tensor
    captions: list[str]
    variants: torch.Tensor
    styled: torch.Tensor
    plain: torch.Tensor
    recolour: torch.Tensor | None = None
    colour_pooled: torch.Tensor | None = None

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


def caption_forms(pair, row: dict | None, variants: bool = True) -> tuple[list[str], list[str]]:
    """(styled forms, style-free forms) of one pair's caption; the corpus caption is the first styled form.

    With a metadata row that has a "label" (the emoji corpus), all the forms of `captions`; otherwise the
    caption and the pair's alt_texts. variants=False: the corpus caption only.
    """
    if not variants:
        return [pair.text], []
    if row and row.get("label"):
        styled = styled_variants(row["label"], row["style"], pair.text) if row.get("style") else [pair.text]
        return styled, [v for v in plain_variants(row["label"]) if v not in styled]
    return [pair.text], [t for t in dict.fromkeys(pair.alt_texts) if t != pair.text]


def recolour_forms(name: str) -> list[str]:
    """The captions of a recoloured image of `name`, colour-major: for each of COLOURS, "<colour> <name>" and
    "a <colour> <name>" (the forms of the compositional prompts)."""
    return [form for colour in COLOURS for form in (f"{colour} {name}", f"a {colour} {name}")]


def build_scorer_data(pairs, text_encoder: TextEncoder, group_keys: dict[str, str] | None = None,
                      resolution: int = 64, cache_text: bool = False, rows: dict[str, dict] | None = None,
                      variants: bool = True, recolour: bool = False) -> ScorerData:
    """Pairs -> ScorerData. Images with the same group key (else the same caption) are never each other's negatives.
    rows: pair.source -> metadata row, for the caption forms (see `caption_forms`). recolour: also encode the
    captions of recoloured copies of each image whose name ("label") names no colour (`recolour_forms`)."""
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
    data = ScorerData(images, pooled, groups, captions, table, torch.tensor([len(f[0]) for f in forms]),
                      torch.tensor([len(f[1]) for f in forms]))
    if recolour:
        labels = [((rows or {}).get(p.source) or {}).get("label") for p in pairs]
        names = sorted({n for n in labels if n and recolourable(n)})
        row_of = {n: i for i, n in enumerate(names)}
        data.recolour = torch.tensor([row_of.get(n, -1) if n else -1 for n in labels])
        flat = [form for n in names for form in recolour_forms(n)]
        vectors = pooled_text_vectors(text_encoder, flat, cache=cache_text) if flat else pooled.new_zeros(0, pooled.shape[1])
        data.colour_pooled = vectors.view(len(names), len(COLOURS), 2, -1)
    return data


def is_folder_list(data) -> bool:
    """True for a folder or a list of folders (rather than a list of `Pair`s)."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and len(data) > 0 and all(isinstance(d, (str, os.PathLike)) for d in data)


def load_scorer_data(data_dir_or_pairs, text_encoder: TextEncoder, resolution: int = 64,
                     group_keys: dict[str, str] | None = None, cache_text: bool = False, log=print,
                     variants: bool = True, recolour: bool = False) -> ScorerData:
    """A training folder (a corpus root with train/ uses train/), a list of folders (all used: e.g. a corpus's
    train/ and test/), or a list of `Pair`s -> ScorerData."""
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
    data = build_scorer_data(pairs, text_encoder, group_keys, resolution, cache_text, rows, variants, recolour)
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


def data_description(data) -> str:
    """The last two parts of each folder's path (e.g. "emoji/train + emoji/test"), or "pairs"."""
    if not is_folder_list(data):
        return "pairs"
    folders = [data] if isinstance(data, (str, os.PathLike)) else data
    return " + ".join("/".join(Path(f).parts[-2:]) for f in folders)
