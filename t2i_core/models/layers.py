"""Building blocks shared by the generator and the discriminator.

Nothing here normalises over the batch (no BatchNorm), so an image never depends on what else is in its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Modulation(nn.Module):
    """Per-channel affine from a style vector: x * (1 + gamma(w)) + beta(w) (DF-GAN's affine, StyleGAN's role).

    x: (B, C, H, W), w: (B, w_dim) -> (B, C, H, W).
    """

    def __init__(self, w_dim: int, channels: int):
        super().__init__()
        self.affine = nn.Linear(w_dim, 2 * channels)
        # Start as the identity so that early training sees the plain conv stack.
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(w)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta


class GBlock(nn.Module):
    """Upsample x2, two normalised and modulated 3x3 convs, residual 1x1 skip. (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.mod1 = Modulation(w_dim, out_ch)
        self.mod2 = Modulation(w_dim, out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, w: torch.Tensor, added: torch.Tensor | None = None) -> torch.Tensor:
        """added: (B, C_in, 2H, 2W) features summed with the upsampled input (a full-resolution exemplar)."""
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if added is not None:
            x = x + added
        # Each conv output is normalised per sample (one group: C, H, W together) before the style modulates it,
        # so activations cannot grow block after block and saturate the output tanh (gradients then vanish).
        h = F.leaky_relu(self.mod1(F.group_norm(self.conv1(x), 1), w), 0.2)
        h = F.leaky_relu(self.mod2(F.group_norm(self.conv2(h), 1), w), 0.2)
        return (self.skip(x) + h) / math.sqrt(2)


class DBlock(nn.Module):
    """Two 3x3 convs then average-pool x2, with a residual skip. (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2))
        h = self.conv2(F.leaky_relu(h, 0.2))
        h = F.avg_pool2d(h, 2)
        return (F.avg_pool2d(self.skip(x), 2) + h) / math.sqrt(2)


class CrossAttentionBlock(nn.Module):
    """A Transformer block in which image positions cross-attend to the text's token states.

    Image positions get a learned positional encoding, so attention knows *where* each feature is; the token
    states come from the text Transformer, so word order and every word can change the result.
    x: (B, C, H, W), states: (B, L, D), mask: (B, L) bool, True at real tokens -> (B, C, H, W).
    The mask may instead be a float (B, L) bias added to the attention logits (-inf ignores a token): that is how
    animation blends two prompts' tokens smoothly.
    """

    def __init__(self, channels: int, text_dim: int, resolution: int, heads: int = 4):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, resolution * resolution, channels) * 0.02)
        self.norm1 = nn.LayerNorm(channels)
        self.to_kv = nn.Linear(text_dim, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))

    def forward(self, x: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.pos  # (B, HW, C)
        kv = self.to_kv(states)  # (B, L, C)
        key_mask = ~mask if mask.dtype == torch.bool else mask.to(tokens.dtype)
        attended, _ = self.attn(self.norm1(tokens), kv, kv, key_padding_mask=key_mask, need_weights=False)
        tokens = tokens + attended
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class ExemplarEncoder(nn.Module):
    """Retrieved exemplar images -> feature maps for the generator. (N, 3, R, R) in [-1, 1] -> {str(r): (N, C_r, r, r)}.

    Each stage halves the resolution (a strided 4x4 conv, then a 3x3 conv), from R down to the smallest r in
    `widths` (resolution -> channels); stages between the listed resolutions take the next listed width. R itself
    may be listed: a separate branch of two 3x3 convs (16 wide) at full resolution then serves it.
    """

    FULL_WIDTH = 16

    def __init__(self, resolution: int, widths: dict[int, int]):
        super().__init__()
        self.outputs = sorted(widths, reverse=True)
        if resolution in widths:
            c = self.FULL_WIDTH
            self.full = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(c, widths[resolution], 1))
        self.resolution = resolution
        self.stages = nn.ModuleList()
        in_ch, res = 3, resolution
        lower = [r for r in widths if r < resolution]
        while lower and res > min(lower):
            res //= 2
            out_ch = widths.get(res) or widths[min(r for r in lower if r < res)]
            self.stages.append(nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2),
            ))
            in_ch = out_ch

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {str(self.resolution): self.full(x)} if self.resolution in self.outputs else {}
        res = self.resolution  # a plain int, so that tracing sees constants
        for stage in self.stages:
            x, res = stage(x), res // 2
            if res in self.outputs:
                out[str(res)] = x
        return out
