"""Generator: (noise z, text) -> RGB image in [-1, 1], in one forward pass.

The text conditions it twice: the sentence vector (with z) is mapped to a style w that modulates every
block, and image features cross-attend to the per-token states in Transformer blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .layers import CrossAttentionBlock, GBlock, ResBlock, ResidualMLP


class Generator(ModelMixin, ConfigMixin):
    """Text-conditioned GAN generator.

    Config: resolution (power of two >= 8), z_dim, w_dim, text_dim (token state width), pooled_dim (sentence vector
    width), channels (one per resolution from 4x4 up to `resolution`), attention_resolutions (where the
    cross-attention blocks sit), heads, num_mean_samples (z samples that define a prompt's mean style), and extra
    depth: extra_convs / extra_attention (one resolution per extra ResBlock / cross-attention block, after that
    resolution's block; a resolution may repeat) and text_layers (residual MLPs on the sentence vector's path to the
    style). Extra layers start as the identity (their last layers are zero); `deepen` adds them to a trained
    generator.
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 64,
        z_dim: int = 64,
        w_dim: int = 256,
        text_dim: int = 384,
        pooled_dim: int = 384,
        channels: tuple = (256, 128, 64, 32, 16),
        attention_resolutions: tuple = (8, 16),
        heads: int = 4,
        num_mean_samples: int = 64,
        extra_convs: tuple = (),
        extra_attention: tuple = (),
        text_layers: int = 0,
    ):
        super().__init__()
        n_up = int(math.log2(resolution)) - 2
        if 2 ** (n_up + 2) != resolution or n_up < 1:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if len(channels) != n_up + 1:
            raise ValueError(f"channels needs {n_up + 1} entries (4x4 up to {resolution}x{resolution}), got {len(channels)}")
        self.text_proj = nn.Sequential(nn.Linear(pooled_dim, w_dim), nn.LeakyReLU(0.2))
        self.text_mlp = nn.ModuleList([ResidualMLP(w_dim) for _ in range(text_layers)])
        self.mapping = nn.Sequential(
            nn.Linear(z_dim + w_dim, w_dim), nn.LeakyReLU(0.2),
            nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2),
            nn.Linear(w_dim, w_dim),
        )
        self.input = nn.Linear(w_dim, channels[0] * 16)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        res = 4
        for i in range(n_up):
            self.blocks.append(GBlock(channels[i], channels[i + 1], w_dim))
            res *= 2
            if res in attention_resolutions:
                self.attention[str(res)] = CrossAttentionBlock(channels[i + 1], text_dim, res, heads)
        self.to_rgb = nn.Conv2d(channels[-1], 3, 3, padding=1)
        sizes = [4 * 2**s for s in range(n_up + 1)]
        for res in (*extra_convs, *extra_attention):
            if res not in sizes:
                raise ValueError(f"extra layers go at one of the resolutions {sizes}, got {res}")
        self.extra_conv_blocks = nn.ModuleDict({
            str(r): nn.ModuleList([ResBlock(channels[s], w_dim) for _ in range(list(extra_convs).count(r))])
            for s, r in enumerate(sizes) if r in extra_convs})
        self.extra_attention_blocks = nn.ModuleDict({
            str(r): nn.ModuleList([CrossAttentionBlock(channels[s], text_dim, r, heads, zero_init=True)
                                   for _ in range(list(extra_attention).count(r))])
            for s, r in enumerate(sizes) if r in extra_attention})
        # A fixed set of z that defines each prompt's mean style (for truncation); fixed so that it is saved in no
        # file yet is identical on every machine.
        gen = torch.Generator().manual_seed(1234)
        self.register_buffer("mean_z", torch.randn(num_mean_samples, z_dim, generator=gen), persistent=False)

    def style(self, z: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B, z_dim), (B, pooled_dim) -> style w (B, w_dim)."""
        # Both inputs at unit RMS: the sentence vector is L2-normalised (per-dimension values ~0.05), and left as
        # it is, z would drown the text in the mapping's input.
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        pooled = pooled * torch.rsqrt(pooled.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        t = self.text_proj(pooled)
        for layer in self.text_mlp:
            t = layer(t)
        return self.mapping(torch.cat([z, t], dim=1))

    def mean_style(self, pooled: torch.Tensor) -> torch.Tensor:
        """Each prompt's mean style over the fixed z set: (B, pooled_dim) -> (B, w_dim)."""
        b, k = pooled.shape[0], self.mean_z.shape[0]
        z = self.mean_z.to(pooled.dtype).repeat(b, 1)
        return self.style(z, pooled.repeat_interleave(k, dim=0)).view(b, k, -1).mean(dim=1)

    def synthesis(self, w: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Style (B, w_dim) + token states (B, L, D), mask (B, L) -> image (B, 3, R, R) in [-1, 1]."""
        x = self._extras(self.input(w).view(w.shape[0], -1, 4, 4), w, states, mask)
        for block in self.blocks:
            x = block(x, w)
            key = str(x.shape[-1])
            if key in self.attention:
                x = self.attention[key](x, states, mask)
            x = self._extras(x, w, states, mask)
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))

    def _extras(self, x: torch.Tensor, w: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The extra layers at x's resolution: ResBlock and cross-attention, alternating."""
        key = str(x.shape[-1])
        convs = self.extra_conv_blocks[key] if key in self.extra_conv_blocks else []
        attns = self.extra_attention_blocks[key] if key in self.extra_attention_blocks else []
        for i in range(max(len(convs), len(attns))):
            if i < len(convs):
                x = convs[i](x, w)
            if i < len(attns):
                x = attns[i](x, states, mask)
        return x

    def forward(
        self,
        z: torch.Tensor,
        states: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
        truncation: float = 1.0,
        guidance: float = 1.0,
        null_pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z (B, z_dim), states (B, L, text_dim), mask (B, L) bool, pooled (B, pooled_dim) -> (B, 3, R, R).

        truncation pulls w toward the prompt's mean style (0: one image per prompt whatever z); guidance > 1
        pushes w away from the unconditional style of the same z (null_pooled: the empty prompt's vector, (1 or B, D)).
        """
        w = self.style(z, pooled)
        if truncation != 1.0:
            w_mean = self.mean_style(pooled)
            w = w_mean + truncation * (w - w_mean)
        if guidance != 1.0:
            if null_pooled is None:
                raise ValueError("guidance != 1 needs null_pooled, the empty prompt's sentence vector")
            null = null_pooled.expand(pooled.shape[0], -1)
            w_null = self.style(z, null)
            if truncation != 1.0:
                w_null_mean = self.mean_style(null[:1]).expand_as(w_null)
                w_null = w_null_mean + truncation * (w_null - w_null_mean)
            w = w_null + guidance * (w - w_null)
        return self.synthesis(w, states, mask)

    def deepen(self, extra_convs: tuple = (), extra_attention: tuple = (), text_layers: int = 0,
               seed: int = 0) -> "Generator":
        """A deeper copy that computes the same images: the extra layers named (totals, as in the config) are added
        as identities (zero last layers), and everything this generator has keeps its weights. It can only add layers.
        """
        old = self.config
        for name, new_list in (("extra_convs", extra_convs), ("extra_attention", extra_attention)):
            for res in set(old[name]):
                if list(new_list).count(res) < list(old[name]).count(res):
                    raise ValueError(f"deepen can only add layers: {name} {list(new_list)} drops some of "
                                     f"{list(old[name])}")
        if text_layers < old.text_layers:
            raise ValueError(f"deepen can only add layers: text_layers {text_layers} < {old.text_layers}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            new = Generator(**{**dict(old), "extra_convs": tuple(int(r) for r in extra_convs),
                               "extra_attention": tuple(int(r) for r in extra_attention),
                               "text_layers": int(text_layers)})
        missing, unexpected = new.load_state_dict({k: v.float() for k, v in self.state_dict().items()}, strict=False)
        assert not unexpected, unexpected
        return new if self.dtype == torch.float32 else new.to(self.dtype)

    def widen(self, channels: tuple, noise: float = 0.01, seed: int = 0) -> "Generator":
        """A wider copy that computes the same images (Net2Net-style widening), to add capacity to a trained model.

        Each stage's width must be an integer multiple of the old one; stages with cross-attention and the 4x4 input
        keep theirs. A widened stage repeats every channel r times and divides the next layer's input weights by r,
        so with noise=0 the output is unchanged (per-sample group norm sees the same mean and variance). `noise`
        (relative to each weight's std) perturbs the repeated copies so that they can learn different features.
        """
        old = tuple(self.config.channels)
        channels = tuple(int(c) for c in channels)
        if len(channels) != len(old):
            raise ValueError(f"channels needs {len(old)} entries, got {len(channels)}")
        for s, (c_old, c_new) in enumerate(zip(old, channels)):
            res = 4 * 2**s
            if c_new % c_old:
                raise ValueError(f"widening {res}x{res} from {c_old} to {c_new} channels: the new width must be a "
                                 f"multiple of the old one")
            if c_new != c_old and (s == 0 or res in self.config.attention_resolutions):
                raise ValueError(f"the {res}x{res} stage (input or cross-attention) cannot be widened; keep {c_old}")
        for i in range(len(old) - 1):
            if (old[i] == old[i + 1]) != (channels[i] == channels[i + 1]):
                raise ValueError(f"block {i} ({old[i]}->{old[i + 1]} channels) cannot become {channels[i]}->"
                                 f"{channels[i + 1]}: a block keeps equal or unequal in/out widths")
        for s, (c_old, c_new) in enumerate(zip(old, channels)):
            res = str(4 * 2**s)
            if c_new != c_old and (res in self.extra_conv_blocks or res in self.extra_attention_blocks):
                raise ValueError(f"the {res}x{res} stage has extra layers and cannot be widened; keep {c_old}")
        new = Generator(**{**dict(self.config), "channels": channels})
        gen = torch.Generator().manual_seed(seed)
        src = {k: v.detach().float() for k, v in self.state_dict().items()}

        def repeat(w: torch.Tensor, dim: int, c_old: int, c_new: int, scale: bool) -> torch.Tensor:
            idx = torch.arange(c_new) % c_old
            w = w.index_select(dim, idx)
            return w / (c_new // c_old) if scale else w

        def jitter(w: torch.Tensor, c_old: int) -> torch.Tensor:
            # Perturb only the copies (output rows c_old:), so that the first copy keeps the old weights.
            if noise and w.shape[0] > c_old:
                w = w.clone()
                w[c_old:] += noise * w.std() * torch.randn(w[c_old:].shape, generator=gen)
            return w

        out = dict(src)
        for i in range(len(old) - 1):
            a_old, a_new, b_old, b_new = old[i], channels[i], old[i + 1], channels[i + 1]
            if (a_old, b_old) == (a_new, b_new):
                continue
            p = f"blocks.{i}."
            for conv, (ci_old, ci_new) in (("conv1", (a_old, a_new)), ("conv2", (b_old, b_new))):
                w = repeat(src[p + conv + ".weight"], 1, ci_old, ci_new, scale=True)
                out[p + conv + ".weight"] = jitter(repeat(w, 0, b_old, b_new, scale=False), b_old)
                out[p + conv + ".bias"] = repeat(src[p + conv + ".bias"], 0, b_old, b_new, scale=False)
            for mod in ("mod1", "mod2"):
                for kind in ("weight", "bias"):
                    gamma, beta = src[p + mod + ".affine." + kind].chunk(2, dim=0)
                    out[p + mod + ".affine." + kind] = torch.cat(
                        [repeat(gamma, 0, b_old, b_new, False), repeat(beta, 0, b_old, b_new, False)])
            if p + "skip.weight" in src:
                w = repeat(src[p + "skip.weight"], 1, a_old, a_new, scale=True)
                out[p + "skip.weight"] = repeat(w, 0, b_old, b_new, scale=False)
                out[p + "skip.bias"] = repeat(src[p + "skip.bias"], 0, b_old, b_new, scale=False)
        out["to_rgb.weight"] = repeat(src["to_rgb.weight"], 1, old[-1], channels[-1], scale=True)
        new.load_state_dict(out)
        return new if self.dtype == torch.float32 else new.to(self.dtype)
