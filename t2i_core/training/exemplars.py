"""What training feeds an exemplar generator: exemplars that are never the target, recoloured targets whose caption
says what the exemplar does not, and hard negative captions for the discriminator.

Groups: an image's group names what it depicts regardless of style (its first alternative caption, e.g. the emoji's
CLDR label "red apple" for "red apple, twitter style"; else its caption). An exemplar comes from the target's group
(the same emoji in another style), from a neighbouring group (the nearest *different* captions: heart colours, skin
tones, similar animals) or is absent, so the generator must read the text to get the target right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Colour words and the hue (degrees) a recoloured image takes; saturated pixels get the hue, others stay.
COLOURS = {"red": 0.0, "orange": 28.0, "yellow": 55.0, "green": 120.0, "teal": 175.0, "blue": 220.0,
           "purple": 275.0, "pink": 325.0}
# Labels that already name a colour (or have none to change) are not recoloured: "blue heart" stays blue.
_COLOUR_WORDS = re.compile(r"\b(red|orange|yellow|green|teal|blue|purple|pink|brown|black|white|grey|gray|"
                           r"skin tone|light|dark|flag|keycap|button)\b")


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = delta / maxc.clamp(min=1e-6)
    d = delta.clamp(min=1e-6)
    h = torch.where(maxc == r, ((g - b) / d) % 6, torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    return torch.stack([h % 1.0, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def recolor(images: torch.Tensor, hues_deg: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> the same with every saturated pixel turned to hue (B,) degrees.

    Saturation and value are kept, so shading and outlines survive; near-grey pixels (outlines, white
    background, eyes) keep their colour. Saturation is raised a little where it was weak, so that a pale
    yellow face turned blue reads as blue.
    """
    hsv = rgb_to_hsv((images.float() + 1) / 2)
    h, s, v = hsv.unbind(1)
    colourful = (s > 0.25) & (v > 0.15)
    h = torch.where(colourful, (hues_deg / 360.0)[:, None, None].to(h), h)
    s = torch.where(colourful, s.clamp(min=0.55), s)
    return hsv_to_rgb(torch.stack([h, s, v], 1)) * 2 - 1


def recolourable(label: str) -> bool:
    return not _COLOUR_WORDS.search(label.lower())


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
    """

    def __init__(self, group_ids: torch.Tensor, group_names: list[str], group_pooled: torch.Tensor,
                 neighbours: int = 8, style_ids: torch.Tensor | None = None):
        self.group_ids, self.group_names = group_ids, group_names
        self.style_ids = style_ids if style_ids is not None else torch.zeros_like(group_ids)
        n_groups = len(group_names)
        order = torch.argsort(group_ids)
        counts = torch.bincount(group_ids, minlength=n_groups)
        self.members = list(torch.split(order, counts.tolist()))  # per group: image indices
        self.recolourable = torch.tensor([recolourable(name) for name in group_names])
        k = min(neighbours, n_groups - 1)
        if k > 0:
            v = F.normalize(group_pooled.float(), dim=-1)
            sims = v @ v.T
            sims.fill_diagonal_(-2.0)
            self.neighbours = sims.topk(k, dim=1).indices  # (G, k)
        else:
            self.neighbours = torch.zeros(n_groups, 0, dtype=torch.long)

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

    def _neighbour(self, group: int, gen: torch.Generator) -> int:
        row = self.neighbours[group]
        return int(row[int(torch.randint(len(row), (1,), generator=gen))]) if len(row) else -1

    def pick(self, idx: torch.Tensor, gen: torch.Generator, slots: int = 2, exemplar_prob: float = 0.85,
             same_group_prob: float = 0.5, second_prob: float = 0.3, recolour_prob: float = 0.3) -> ExemplarPicks:
        """Draw exemplars, recolouring and hard negatives for targets idx (B,), from `gen` only (reproducible)."""
        b = len(idx)
        exemplars = torch.full((b, slots), -1, dtype=torch.long)
        negatives = torch.full((b,), -1, dtype=torch.long)
        u = torch.rand(b, 5, generator=gen)
        colour_names = list(COLOURS)
        colour_pick = torch.randint(len(colour_names), (b,), generator=gen)
        groups = self.group_ids[idx]
        recolour = (u[:, 0] < recolour_prob) & self.recolourable[groups]
        colours: list[str | None] = []
        for i in range(b):
            target, group = int(idx[i]), int(groups[i])
            negatives[i] = self._neighbour(group, gen)
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
                same = s == 0 and u[i, 3] < same_group_prob
                j = self.member(group, gen, exclude=target) if same else -1
                if j < 0:
                    other = self._neighbour(group, gen)
                    j = self.member(other, gen, style=int(self.style_ids[target])) if other >= 0 else -1
                exemplars[i, s] = j
        return ExemplarPicks(exemplars, recolour, colours, negatives)


def recoloured_caption(colour: str, group_name: str, style: str | None, gen: torch.Generator) -> str:
    """A caption for a recoloured image, in one of the forms people type."""
    forms = [f"{colour} {group_name}", f"a {colour} {group_name}"]
    if style:
        forms.append(f"{colour} {group_name}, {style}")
    return forms[int(torch.randint(len(forms), (1,), generator=gen))]

