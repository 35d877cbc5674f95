"""Tensors to PIL images and image grids, and recolouring: shared by the pipeline, training and evaluation."""

from __future__ import annotations

import math
import re

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


def recolor(images: torch.Tensor, hues_deg: torch.Tensor, grey: torch.Tensor | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> the same with every saturated pixel turned to hue (B,) degrees.

    Saturation and value are kept, so shading and outlines survive; near-grey pixels (outlines, white
    background, eyes) keep their colour. Saturation is raised a little where it was weak, so that a pale
    yellow face turned blue reads as blue. Images flagged `grey` (B,) bool (a grey elephant: no saturated
    pixels to turn) are tinted instead: their mid-grey pixels take the hue too; black and white stay.
    """
    hsv = rgb_to_hsv((images.float() + 1) / 2)
    h, s, v = hsv.unbind(1)
    colourful = (s > 0.25) & (v > 0.15)
    if grey is not None:
        colourful = colourful | (grey.to(colourful.device)[:, None, None] & mid_grey(s, v))
    h = torch.where(colourful, (hues_deg / 360.0)[:, None, None].to(h), h)
    s = torch.where(colourful, s.clamp(min=0.55), s)
    return hsv_to_rgb(torch.stack([h, s, v], 1)) * 2 - 1


def mid_grey(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pixels of a grey drawing's body: unsaturated, neither outline black nor background white."""
    return (s <= 0.25) & (v > 0.2) & (v < 0.9)


def grey_share(images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> (N,) the share of mid-grey pixels (what `recolor` tints in a grey image)."""
    out = []
    for start in range(0, len(images), batch):
        hsv = rgb_to_hsv(images[start : start + batch].float() / 255)
        out.append(mid_grey(hsv[:, 1], hsv[:, 2]).float().mean(dim=(1, 2)))
    return torch.cat(out) if out else torch.zeros(0)


def saturated_share(images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> (N,) the share of pixels that `recolor` changes (saturated and not dark)."""
    out = []
    for start in range(0, len(images), batch):
        hsv = rgb_to_hsv(images[start : start + batch].float() / 255)
        out.append(((hsv[:, 1] > 0.25) & (hsv[:, 2] > 0.15)).float().mean(dim=(1, 2)))
    return torch.cat(out) if out else torch.zeros(0)


def recolourable(label: str) -> bool:
    return not _COLOUR_WORDS.search(label.lower())
