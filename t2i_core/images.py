"""Tensors to PIL images and image grids: shared by the pipeline, training samples and evaluation reports."""

from __future__ import annotations

import math

import torch
from PIL import Image


def to_pil(images: torch.Tensor, size: int | None = None) -> list[Image.Image]:
    """(B, 3, R, R) in [-1, 1] -> PIL RGB images, optionally upscaled to size x size for display."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = [Image.fromarray(a, "RGB") for a in arr]
    if size is not None and size != arr.shape[1]:
        out = [im.resize((size, size), Image.Resampling.LANCZOS) for im in out]
    return out


def image_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    """Paste equal-size PIL images into a grid (cols defaults to a near-square layout)."""
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid
