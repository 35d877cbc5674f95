"""T2IOutput, in a module of its own: it imports neither torch nor the models, so a process that only receives
outputs (the web app's page process, from its model process) does not pay for them."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class T2IOutput:
    """images: PIL RGB images, prompt-major (all images of prompt 0, then prompt 1, ...); seeds and prompts: one per image."""

    images: list[Image.Image]
    seeds: list[int]
    prompts: list[str] = field(default_factory=list)
    # Per image: the bank entries it drew on, as (caption, bank index) pairs, best match first ([] = none).
    exemplars: list[list[tuple[str, int]]] = field(default_factory=list)
