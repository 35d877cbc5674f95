"""Tensors to PIL images and image grids: shared by the pipeline, training samples and evaluation reports."""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw


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


def captioned_grid(images: list[Image.Image], captions: list[str], tile: int = 128, cols: int | None = None,
                   chars: int = 22, lines: int = 2) -> Image.Image:
    """A grid with each image's caption in small text under it (PIL's default font), so a reader knows what each
    tile should show. Images are enlarged to `tile` px (nearest, to keep pixels honest); captions wrap to `lines`
    lines of `chars` characters, the last one cut with an ellipsis."""
    import textwrap

    line_h = 12
    band = lines * line_h + 4
    tiles = []
    for image, caption in zip(images, captions):
        cell = Image.new("RGB", (tile, tile + band), "white")
        cell.paste(image.resize((tile, tile), Image.Resampling.NEAREST), (0, 0))
        wrapped = textwrap.wrap(caption, chars) or [""]
        if len(wrapped) > lines:
            wrapped = wrapped[: lines - 1] + [textwrap.shorten(" ".join(wrapped[lines - 1:]), chars, placeholder="…")]
        draw = ImageDraw.Draw(cell)
        for i, text in enumerate(wrapped):
            draw.text((3, tile + 2 + i * line_h), text, fill=(40, 40, 40))
        tiles.append(cell)
    return image_grid(tiles, cols)
