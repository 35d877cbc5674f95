"""Discriminator: scores an (image, text) pair.

It must tell real-and-matching pairs from fakes *and* from real images with a mismatched caption, so the
text enters the decision: the sentence vector is joined with the 4x4 image features (DF-GAN's joint head)
and also projected onto the pooled features (projection discriminator).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .layers import DBlock


class Discriminator(ModelMixin, ConfigMixin):
    """Config: resolution, pooled_dim (sentence vector width), channels (one per resolution from `resolution`
    down to 4x4)."""

    @register_to_config
    def __init__(self, resolution: int = 64, pooled_dim: int = 384, channels: tuple = (16, 32, 64, 128, 256)):
        super().__init__()
        n_down = int(math.log2(resolution)) - 2
        if 2 ** (n_down + 2) != resolution or n_down < 1:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if len(channels) != n_down + 1:
            raise ValueError(f"channels needs {n_down + 1} entries ({resolution}x{resolution} down to 4x4), got {len(channels)}")
        self.from_rgb = nn.Conv2d(3, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(DBlock(channels[i], channels[i + 1]) for i in range(n_down))
        top = channels[-1]
        self.text_proj = nn.Linear(pooled_dim, top)
        self.joint = nn.Sequential(
            nn.Conv2d(2 * top, top, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(top, 1, 4)
        )
        self.embed = nn.Linear(pooled_dim, top)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, C, 4, 4)."""
        h = self.from_rgb(images)
        for block in self.blocks:
            h = block(h)
        return F.leaky_relu(h, 0.2)

    def head(self, h: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Features (B, C, 4, 4) + sentence vectors (B, pooled_dim) -> logits (B,). Split from `features` so that one
        image's features can be scored against several captions."""
        t = self.text_proj(pooled)[:, :, None, None].expand(-1, -1, 4, 4)
        joint = self.joint(torch.cat([h, t], dim=1)).flatten(1).squeeze(1)
        projection = (h.sum(dim=(2, 3)) * self.embed(pooled)).sum(dim=1) / math.sqrt(h.shape[1])
        return joint + projection

    def forward(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """images (B, 3, R, R), pooled sentence vectors (B, pooled_dim) -> logits (B,): high = real and matching."""
        return self.head(self.features(images), pooled)
