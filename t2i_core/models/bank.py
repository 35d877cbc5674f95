"""The exemplar bank: captioned images a generator may draw on, and retrieval by the prompt's sentence vector.

    bank/
      bank.json                     captions, groups, resolution, shard names
      bank-00000.safetensors        uint8 images (N_i, 3, R, R) and unit-norm fp16 caption sentence vectors (N_i, D);
                                    shards stay under 10 MB each (the Hub's limit outside LFS)
      groups.safetensors            optional: unit-norm fp16 sentence vectors of the group names (G, D), in their
                                    order of first appearance in bank.json's groups; retrieval then also matches them

A group names what an entry depicts regardless of its style (for the emoji corpus, the CLDR label): training uses
it to pick an exemplar that is never the target image itself, and retrieval to avoid picking two of one kind.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

MAX_SHARD_BYTES = 9_500_000  # under the Hub's 10 MB limit for files outside LFS
EXACT = 0.99  # a prompt this close to a caption or name asks for that very picture
GROUPS_FILE = "groups.safetensors"  # fp16 sentence vectors of the group names (G, D), when the bank has them


@dataclass
class ExemplarBank:
    """images (N, 3, R, R) uint8; vectors (N, D) unit-norm caption sentence vectors; captions and groups (N,);
    group_vectors (G, D): unit-norm sentence vectors of the group names, in their order of first appearance in
    `groups` (None: retrieval by captions alone)."""

    images: torch.Tensor
    vectors: torch.Tensor
    captions: list[str]
    groups: list[str]
    group_vectors: torch.Tensor | None = None
    # (vectors, group_vectors, their fp16 copies) for the search's first pass, and each entry's group row; made on
    # first use.
    _half: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _group_rows: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.group_vectors is not None and len(self.group_vectors) != len(self.group_names):
            raise ValueError(f"{len(self.group_vectors)} group vectors for {len(self.group_names)} groups")

    @property
    def group_names(self) -> list[str]:
        """The distinct groups, in their order of first appearance (the rows of group_vectors)."""
        return list(dict.fromkeys(self.groups))

    def group_rows(self) -> torch.Tensor:
        """Each entry's row in group_vectors (N,)."""
        if self._group_rows is None or len(self._group_rows) != len(self):
            row = {g: i for i, g in enumerate(self.group_names)}
            self._group_rows = torch.tensor([row[g] for g in self.groups], dtype=torch.long)
        return self._group_rows

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    @classmethod
    def build(cls, images: torch.Tensor, captions: list[str], groups: list[str] | None, text_encoder,
              batch: int = 256) -> "ExemplarBank":
        """Encode the captions with the model's text encoder. images: (N, 3, R, R) uint8."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"bank images must be (N, 3, R, R) uint8, got {tuple(images.shape)} {images.dtype}")
        if len(captions) != len(images):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        groups = list(groups or captions)

        def encode(texts: list[str]) -> torch.Tensor:
            parts = [text_encoder(texts[i : i + batch]).pooled.float().cpu() for i in range(0, len(texts), batch)]
            return F.normalize(torch.cat(parts) if parts else torch.zeros(0, text_encoder.pooled_dim), dim=-1)

        vectors = encode(list(captions))
        bank = cls(images.contiguous(), vectors, list(captions), groups)
        if groups != list(captions):  # groups that name what an entry depicts: retrieval also matches those names
            bank.group_vectors = encode(bank.group_names)
        return bank

    def with_group_vectors(self, text_encoder, batch: int = 256) -> "ExemplarBank":
        """This bank with its group names encoded (for a bank saved without them)."""
        names = self.group_names
        parts = [text_encoder(names[i : i + batch]).pooled.float().cpu() for i in range(0, len(names), batch)]
        vectors = F.normalize(torch.cat(parts), dim=-1) if parts else torch.zeros(0, self.vectors.shape[1])
        return ExemplarBank(self.images, self.vectors, self.captions, self.groups, vectors)

    def merged(self, other: "ExemplarBank") -> "ExemplarBank":
        """This bank's entries followed by `other`'s (same resolution and vector width)."""
        if other.images.shape[1:] != self.images.shape[1:] or other.vectors.shape[1] != self.vectors.shape[1]:
            raise ValueError("cannot merge banks of different resolutions or text encoders")
        merged = ExemplarBank(torch.cat([self.images, other.images]), torch.cat([self.vectors, other.vectors]),
                              self.captions + other.captions, self.groups + other.groups)
        # Group vectors: each group's from the bank that has it; a group named by its own caption (an upload's
        # pairs) takes that caption's vector. If any group has none, retrieval uses captions alone.
        known = {}
        for bank in (self, other):
            if bank.group_vectors is not None:
                known.update({g: v for g, v in zip(bank.group_names, bank.group_vectors) if g not in known})
            known.update({c: v for c, g, v in zip(bank.captions, bank.groups, bank.vectors) if c == g and g not in known})
        names = merged.group_names
        if (self.group_vectors is not None or other.group_vectors is not None) and all(g in known for g in names):
            merged.group_vectors = torch.stack([known[g].float() for g in names])
        return merged

    # Retrieval.

    def retrieve(self, query: torch.Tensor, k: int, seeds: list[int] | None = None, ties: float | None = None,
                 pool: int = 64) -> torch.Tensor:
        """Query sentence vectors (B, D) -> bank indices (B, k), best first, at most one entry per group.

        Without seeds: the top-k by similarity (see `_nearest`). With a seed per query, seed s draws the
        (s mod n)-th of the query's n near ties in turn (`_turns`), so that "red apple" never draws a pear, and
        consecutive seeds (the images of one call) draw different entries and never repeat one before all n are
        drawn. The near ties are:
        - with group vectors, the entries within `ties` (default 0.05) of the best, of the two best groups among
          them: "grinning face" matches the name of every style's entry equally and draws the face in its different
          styles; "grinning face, google style" ranks the google entry first, so seed 0 draws it. When one entry
          alone is within `ties` and the query is not its caption or name (cosine < EXACT: the bank lacks what the
          query names), its group's next-best entry joins it: "dog face, fluent style" draws "dog, fluent style"
          and "dog, fluent modern style" in turn, as nearest-caption retrieval's two best would be, where one
          picture at every seed made the images of one call alike; further styles would stray from the one named;
        - without, all entries of the two best groups that have one within `ties` (default 0.02) of the best.
        """
        if ties is None:
            ties = 0.05 if self.group_vectors is not None else 0.02
        if k < 1 or len(self) == 0:
            return torch.zeros(len(query), 0, dtype=torch.long)
        unit = F.normalize(query.float(), dim=-1)
        top_sims, top_idx = self._nearest(unit, min(len(self), max(pool, 4 * k)))
        out = []
        for b in range(len(query)):
            order = top_idx[b].tolist()
            if seeds is not None:
                turns = self._turns(order, top_sims[b].tolist(), unit[b], ties)
                turn = int(seeds[b]) % len(turns)
                drawn = {self.groups[j] for j in turns}
                order = turns[turn:] + turns[:turn] + [j for j in order if self.groups[j] not in drawn]
            picked, seen = [], set()
            for j in order:
                if self.groups[j] not in seen:
                    picked.append(j)
                    seen.add(self.groups[j])
                if len(picked) == k:
                    break
            while len(picked) < k:  # fewer groups than k: repeat the best
                picked.append(picked[0])
            out.append(picked)
        return torch.tensor(out, dtype=torch.long)

    def _turns(self, order: list[int], sims: list[float], unit: torch.Tensor, ties: float, kinds: int = 2) -> list[int]:
        """The near ties of one query (its best entries `order` and their scores `sims`, best first), in the order
        seeds take them: the `kinds` best groups alternate, each group's entries best first.

        Entries of one group tie exactly on its name, so an entry ranks by its score plus its own caption's
        similarity, then by index; the order topk gives ties in must not decide (index order alone cost free-form R@1
        0.818 -> 0.771). Taking turns between two groups, rather than a random pick among all the ties, gives the
        emoji test split's exemplars (captions that name a style and an emoji the bank lacks) nearest-caption
        retrieval's R@1 at any seed (0.714-0.719 against 0.714; a random pick among all: 0.62-0.68) and 0.89x its
        diversity (docs/BENCHMARKS.md, session 14)."""
        if self.group_vectors is not None:
            near = [j for j, s in zip(order, sims) if s >= sims[0] - ties]
            if len(near) == 1 and sims[0] < EXACT:  # no close match: its kind's next picture is as good a guess
                near += [j for j in order[1:] if self.groups[j] == self.groups[near[0]]][:1]
        else:
            best = {self.groups[j] for j, s in zip(order, sims) if s >= sims[0] - ties}
            near = [j for j in order if self.groups[j] in best]
        score = dict(zip(order, sims))
        caption = dict(zip(near, (self.vectors[near].float() @ unit).tolist()))
        near.sort(key=lambda j: (-(score[j] + caption[j]), j))
        by_group: dict[str, list[int]] = {}
        for j in near:
            by_group.setdefault(self.groups[j], []).append(j)
        groups = list(by_group.values())[:kinds]
        return [g[r] for r in range(max(map(len, groups))) for g in groups if r < len(g)]

    def _nearest(self, query: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit query vectors (B, D) -> the n best entries' similarities and indices (B, n), best first.

        An entry's similarity is the cosine of the query with its caption or, when the bank has group vectors, with
        its group's name, whichever is higher: "a red car" then finds the emoji named "automobile" although its
        captions ("automobile, google style") sit nearer to "racing car, fluent style".
        For one or two queries (one image at a time) a first pass over the fp16 copies of the caption and group vectors
        reads half the bytes (about 4x faster on a CPU: the fp32 vectors of 14k entries do not stay in cache), then
        the best 2n are scored again in fp32, so the result is the fp32 search's. Larger batches are faster in one fp32 matrix product."""
        rows = self.group_rows() if self.group_vectors is not None else None
        if len(query) > 2 or len(self) <= 4 * n:
            sims = query @ self.vectors.float().T
            if rows is not None:
                sims = torch.maximum(sims, (query @ self.group_vectors.float().T)[:, rows])  # (B, N)
            return sims.topk(n, dim=1)
        if self._half is None or self._half[0] is not self.vectors or self._half[1] is not self.group_vectors:
            self._half = (self.vectors, self.group_vectors, self.vectors.half(),
                          None if rows is None else self.group_vectors.half())
        q16 = query.half().T
        coarse = (self._half[2] @ q16).T.float()  # (B, N)
        if rows is not None:
            coarse = torch.maximum(coarse, (self._half[3] @ q16).T.float()[:, rows])
        coarse = coarse.topk(2 * n, dim=1).indices  # (B, 2n)
        exact = torch.einsum("bd,bkd->bk", query, self.vectors[coarse].float())
        if rows is not None:
            exact = torch.maximum(exact, torch.einsum("bd,bkd->bk", query, self.group_vectors[rows[coarse]].float()))
        sims, order = exact.topk(n, dim=1)
        return sims, coarse.gather(1, order)

    def pixels(self, indices: torch.Tensor) -> torch.Tensor:
        """Bank indices (B, K) -> exemplars (B, K, 3, R, R) float in [-1, 1]."""
        return self.images[indices].float() / 127.5 - 1

    def inputs(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Bank indices (B, K) -> the generator's keyword inputs: the exemplars' pixels and their captions' vectors."""
        return {"exemplars": self.pixels(indices), "exemplar_text": self.vectors[indices].float()}

    # Saving and loading.

    def save(self, folder: str | os.PathLike) -> Path:
        """Write bank.json and shards of (uint8 images, fp16 vectors), each file under MAX_SHARD_BYTES."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.safetensors"):
            old.unlink()
        per_entry = self.images[0].numel() + 2 * self.vectors.shape[1] if len(self) else 1
        per_shard = max(1, MAX_SHARD_BYTES // per_entry)
        shards = []
        for s in range(math.ceil(len(self) / per_shard)):
            part = slice(s * per_shard, (s + 1) * per_shard)
            name = f"bank-{s:05d}.safetensors"
            save_file({"images": self.images[part].contiguous(), "vectors": self.vectors[part].half().contiguous()},
                      str(folder / name))
            os.chmod(folder / name, 0o644)
            shards.append(name)
        meta = {"entries": len(self), "resolution": self.resolution, "vector_dim": int(self.vectors.shape[1]),
                "shards": shards, "captions": self.captions, "groups": self.groups}
        if self.group_vectors is not None:
            save_file({"vectors": self.group_vectors.half().contiguous()}, str(folder / GROUPS_FILE))
            os.chmod(folder / GROUPS_FILE, 0o644)
            meta["group_vectors"] = GROUPS_FILE
        (folder / "bank.json").write_text(json.dumps(meta, ensure_ascii=False))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ExemplarBank":
        folder = Path(folder)
        try:
            meta = json.loads((folder / "bank.json").read_text(encoding="utf-8"))
            shards = [str(s) for s in meta["shards"]]
            captions, groups = [str(c) for c in meta["captions"]], [str(g) for g in meta["groups"]]
            res, dim = int(meta["resolution"]), int(meta["vector_dim"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{folder} is not a readable exemplar bank ({err}); rebuild the model's bank/") from None
        for name in shards:
            if Path(name).name != name or not name.endswith(".safetensors") or not (folder / name).is_file():
                raise ValueError(f"{folder}/bank.json names a missing or invalid shard {name!r}")
        parts = [load_file(str(folder / name)) for name in shards]
        images = torch.cat([p["images"] for p in parts]) if parts else torch.zeros(0, 3, res, res, dtype=torch.uint8)
        vectors = torch.cat([p["vectors"] for p in parts]).float() if parts else torch.zeros(0, dim)
        if images.dtype != torch.uint8 or not (len(images) == len(vectors) == len(captions) == len(groups)):
            raise ValueError(f"{folder}: the bank's images, vectors, captions and groups do not match in number")
        group_vectors = None
        if meta.get("group_vectors") is not None:
            if meta["group_vectors"] != GROUPS_FILE or not (folder / GROUPS_FILE).is_file():
                raise ValueError(f"{folder}/bank.json names a missing or invalid group vectors file")
            group_vectors = load_file(str(folder / GROUPS_FILE))["vectors"].float()
            if group_vectors.shape != (len(dict.fromkeys(groups)), dim):
                raise ValueError(f"{folder}: {GROUPS_FILE} does not hold one vector per group")
        return cls(images, vectors, captions, groups, group_vectors)
