"""What training feeds an exemplar generator: exemplars that are not the target (or, for a share, the target itself),
recoloured targets whose caption says what the exemplar does not, and hard negative captions for the discriminator.

Groups: an image's group names what it depicts regardless of style (its first alternative caption, e.g. the emoji's
CLDR label "red apple" for "red apple, twitter style"; else its caption). An exemplar comes from the target's group
(the same emoji in another style), from a neighbouring group (the nearest *different* captions: heart colours, skin
tones, similar animals) or is absent, so the generator must read the text to get the target right.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..images import COLOURS, hsv_to_rgb, recolor, recolourable, rgb_to_hsv  # noqa: F401 (re-exported)


@dataclass
class ExemplarPicks:
    """One step's choices for a batch of B targets: exemplar indices (B, K) into the pair images (-1 = none),
    which targets are recoloured (B,) with their colour names, and hard negative group ids (B,) (-1 = none)."""

    exemplars: torch.Tensor
    recolour: torch.Tensor
    colours: list[str | None]
    negative_groups: torch.Tensor


class ExemplarSampler:
    """Groups of a training set and each group's nearest other groups (by the text encoder's group vectors).

    group_ids (N,) per image; group_names (G,); group_pooled (G, D) the sentence vectors of the group names;
    style_ids (N,) optional: a neighbouring group's exemplar is taken in the target's style where it has one
    (an orange heart drawn from the red heart of the same artwork set), since pixels of one style line up.
    colourful (N,) bool optional: images that recolouring changes; only they are recoloured (a black-and-white
    drawing, such as the high-contrast style, would otherwise be captioned "a blue ..." unchanged).
    variants: per group, up to this many other groups whose names differ from its own in exactly one word ("a small
    red circle" -> "a small blue circle"), the most similar first. The sentence vectors' nearest groups mostly
    differ in what a sentence encoder weighs most (in a set of captioned shapes: the position, never the colour),
    so a generator shown only those learns to copy what they share; a one-word variant is a pair in which the text
    says what the exemplar does not.
    """

    def __init__(self, group_ids: torch.Tensor, group_names: list[str], group_pooled: torch.Tensor,
                 neighbours: int = 8, style_ids: torch.Tensor | None = None, colourful: torch.Tensor | None = None,
                 variants: int = 16):
        self.group_ids, self.group_names = group_ids, group_names
        self.colourful = colourful if colourful is not None else torch.ones(len(group_ids), dtype=torch.bool)
        self.style_ids = style_ids if style_ids is not None else torch.zeros_like(group_ids)
        n_groups = len(group_names)
        order = torch.argsort(group_ids)
        counts = torch.bincount(group_ids, minlength=n_groups)
        self.members = list(torch.split(order, counts.tolist()))  # per group: image indices
        self.recolourable = torch.tensor([recolourable(name) for name in group_names])
        k = min(neighbours, n_groups - 1)
        v = F.normalize(group_pooled.float(), dim=-1)
        if k > 0:
            sims = v @ v.T
            sims.fill_diagonal_(-2.0)
            self.neighbours = sims.topk(k, dim=1).indices  # (G, k)
        else:
            self.neighbours = torch.zeros(n_groups, 0, dtype=torch.long)
        self.variants = one_word_variants(group_names, v, variants)


    def member(self, group: int, gen: torch.Generator, exclude: int = -1, style: int | None = None) -> int:
        """A random image of `group` other than `exclude` (-1 if it has none), in `style` where it has one."""
        members = self.members[group]
        if style is not None:
            same = members[self.style_ids[members] == style]
            members = same if len(same) and not (len(same) == 1 and int(same[0]) == exclude) else members
        if len(members) == 1 and int(members[0]) == exclude:
            return -1
        while True:
            j = int(members[int(torch.randint(len(members), (1,), generator=gen))])
            if j != exclude:
                return j

    def _neighbour(self, group: int, gen: torch.Generator, variant_prob: float = 0.0) -> int:
        """A neighbouring group: with chance `variant_prob` one of its one-word variants (where it has any), else
        one of its nearest groups by sentence vector."""
        variants = self.variants[group]
        if variant_prob > 0 and len(variants) and float(torch.rand(1, generator=gen)) < variant_prob:
            return int(variants[int(torch.randint(len(variants), (1,), generator=gen))])
        row = self.neighbours[group]
        return int(row[int(torch.randint(len(row), (1,), generator=gen))]) if len(row) else -1

    def pick(self, idx: torch.Tensor, gen: torch.Generator, slots: int = 2, exemplar_prob: float = 0.85,
             same_group_prob: float = 0.5, second_prob: float = 0.3, recolour_prob: float = 0.3,
             self_prob: float = 0.0, variant_prob: float = 0.0) -> ExemplarPicks:
        """Draw exemplars, recolouring and hard negatives for targets idx (B,), from `gen` only (reproducible).

        self_prob: share of (not recoloured) samples with an exemplar whose first one is the target itself, as at
        generation time, when a prompt's nearest caption is often its own picture. variant_prob: share of
        neighbouring groups (exemplars and hard negatives) taken from the one-word variants."""
        b = len(idx)
        exemplars = torch.full((b, slots), -1, dtype=torch.long)
        negatives = torch.full((b,), -1, dtype=torch.long)
        u = torch.rand(b, 5, generator=gen)
        colour_names = list(COLOURS)
        colour_pick = torch.randint(len(colour_names), (b,), generator=gen)
        own = torch.rand(b, generator=gen) < self_prob if self_prob > 0 else torch.zeros(b, dtype=torch.bool)
        groups = self.group_ids[idx]
        recolour = (u[:, 0] < recolour_prob) & self.recolourable[groups] & self.colourful[idx]
        colours: list[str | None] = []
        for i in range(b):
            target, group = int(idx[i]), int(groups[i])
            negatives[i] = self._neighbour(group, gen, variant_prob)
            if recolour[i]:
                colours.append(colour_names[int(colour_pick[i])])
                # The exemplar shows the thing in its own colours (this very image or another style of it).
                exemplars[i, 0] = target if u[i, 1] < 0.5 else self.member(group, gen)
                continue
            colours.append(None)
            if u[i, 2] >= exemplar_prob:
                continue
            for s in range(slots):
                if s > 0 and u[i, 4] >= second_prob:
                    break
                if s == 0 and own[i]:
                    exemplars[i, s] = target
                    continue
                same = s == 0 and u[i, 3] < same_group_prob
                j = self.member(group, gen, exclude=target) if same else -1
                if j < 0:
                    other = self._neighbour(group, gen, variant_prob)
                    j = self.member(other, gen, style=int(self.style_ids[target])) if other >= 0 else -1
                exemplars[i, s] = j
        return ExemplarPicks(exemplars, recolour, colours, negatives)


def one_word_variants(names: list[str], vectors: torch.Tensor, limit: int) -> list[torch.Tensor]:
    """Per name, the indices of the other names with the same words but one ("a small red circle" -> "a small blue
    circle"; case and punctuation aside), at most `limit` of them, the nearest by `vectors` (unit rows) first.
    Names of one word have none (any other one-word name would do, which says nothing)."""
    words = [tuple(re.findall(r"\w+", name.lower())) for name in names]
    slots: dict[tuple, list[int]] = defaultdict(list)  # the words with one of them blanked -> names that fit
    for g, w in enumerate(words):
        for i in range(len(w) if len(w) > 1 else 0):
            slots[(len(w), i, w[:i], w[i + 1 :])].append(g)
    out = []
    for g, w in enumerate(words):
        found = set()
        for i in range(len(w) if len(w) > 1 and limit > 0 else 0):
            found.update(slots[(len(w), i, w[:i], w[i + 1 :])])
        found = torch.tensor(sorted(h for h in found if words[h] != w), dtype=torch.long)
        if len(found) > limit:
            found = found[(vectors[found] @ vectors[g]).topk(limit).indices]
        out.append(found)
    return out


def recoloured_caption(colour: str, group_name: str, style: str | None, gen: torch.Generator) -> str:
    """A caption for a recoloured image, in one of the forms people type."""
    forms = [f"{colour} {group_name}", f"a {colour} {group_name}"]
    if style:
        forms.append(f"{colour} {group_name}, {style}")
    return forms[int(torch.randint(len(forms), (1,), generator=gen))]

