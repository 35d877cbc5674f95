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

from .layers import CrossAttentionBlock, ExemplarEncoder, GBlock


# Config fields of depth experiments that never shipped (see the model card). Folders saved while they existed carry
# them at these values, and still load; any other value names layers this class no longer has.
REMOVED_CONFIG = {"extra_convs": [], "extra_attention": [], "text_layers": 0}


class Generator(ModelMixin, ConfigMixin):
    """Text-conditioned GAN generator.

    Config: resolution (power of two >= 8), z_dim, w_dim, text_dim (token state width), pooled_dim (sentence vector
    width), channels (one per resolution from 4x4 up to `resolution`), attention_resolutions (where the
    cross-attention blocks sit), heads, num_mean_samples (z samples that define a prompt's mean style), and
    exemplar_resolutions: where features of retrieved exemplar images join the blocks (empty: text only), and
    exemplar_text: whether G also reads what the prompt asks beyond its exemplars' captions (their sentence vectors'
    difference shifts the style), so that an exemplar drawn under its own caption is kept and one drawn for another
    caption ("a blue ghost" from a white ghost) is changed.
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
        exemplar_resolutions: tuple = (),
        exemplar_text: bool = False,
    ):
        super().__init__()
        n_up = int(math.log2(resolution)) - 2
        if 2 ** (n_up + 2) != resolution or n_up < 1:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if len(channels) != n_up + 1:
            raise ValueError(f"channels needs {n_up + 1} entries (4x4 up to {resolution}x{resolution}), got {len(channels)}")
        self.text_proj = nn.Sequential(nn.Linear(pooled_dim, w_dim), nn.LeakyReLU(0.2))
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
        self._build_exemplar_path(resolution, channels, pooled_dim, w_dim, exemplar_resolutions, exemplar_text)
        # A fixed set of z that defines each prompt's mean style (for truncation); fixed so that it is saved in no
        # file yet is identical on every machine.
        gen = torch.Generator().manual_seed(1234)
        self.register_buffer("mean_z", torch.randn(num_mean_samples, z_dim, generator=gen), persistent=False)

    def _build_exemplar_path(self, resolution: int, channels: tuple, pooled_dim: int, w_dim: int,
                             exemplar_resolutions: tuple, exemplar_text: bool) -> None:
        """Exemplars: retrieved images enter through a small conv encoder whose features are added after the blocks
        at these resolutions, through zero-initialised 1x1 convs, so that a text-only generator given this path
        draws the same images until it learns to use it; their captions' vectors through a zero-initialised linear
        map to a style shift."""
        if exemplar_resolutions:
            sizes = [4 * 2**s for s in range(len(channels))]
            if any(r not in sizes[1:] for r in exemplar_resolutions):
                raise ValueError(f"exemplar_resolutions must be among {sizes[1:]}, got {list(exemplar_resolutions)}")
            # At the full resolution the exemplar joins the last block's input (after its upsampling), so that
            # block's modulated convs, and with them the text, can still change what it passes on (a colour).
            widths = {r: channels[s - 1 if r == resolution else s] for s, r in enumerate(sizes)
                      if r in exemplar_resolutions}
            self.exemplar_encoder = ExemplarEncoder(resolution, widths)
            self.exemplar_in = nn.ModuleDict({str(r): nn.Conv2d(c, c, 1) for r, c in widths.items()})
            for conv in self.exemplar_in.values():
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        if exemplar_text:
            if not exemplar_resolutions:
                raise ValueError("exemplar_text needs exemplar_resolutions (a generator that draws on exemplars)")
            self.exemplar_text_in = nn.Linear(pooled_dim, w_dim, bias=False)
            nn.init.zeros_(self.exemplar_text_in.weight)

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):
        config_dict = dict(config_dict)
        for key, default in REMOVED_CONFIG.items():
            value = config_dict.pop(key, default)
            if (list(value) if isinstance(value, (list, tuple)) else value) != default:
                raise ValueError(f"this generator's config sets {key}={value!r}: extra layers that t2i_core no longer "
                                 f"builds; load it with t2i_core 0.1.0 as of commit d933a9f")
        return super().extract_init_dict(config_dict, **kwargs)

    def style(self, z: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B, z_dim), (B, pooled_dim) -> style w (B, w_dim)."""
        # Both inputs at unit RMS: the sentence vector is L2-normalised (per-dimension values ~0.05), and left as
        # it is, z would drown the text in the mapping's input.
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        pooled = pooled * torch.rsqrt(pooled.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        return self.mapping(torch.cat([z, self.text_proj(pooled)], dim=1))

    def mean_style(self, pooled: torch.Tensor) -> torch.Tensor:
        """Each prompt's mean style over the fixed z set: (B, pooled_dim) -> (B, w_dim)."""
        b, k = pooled.shape[0], self.mean_z.shape[0]
        z = self.mean_z.to(pooled.dtype).repeat(b, 1)
        return self.style(z, pooled.repeat_interleave(k, dim=0)).view(b, k, -1).mean(dim=1)

    @property
    def uses_exemplars(self) -> bool:
        return bool(self.config.exemplar_resolutions)

    def with_exemplars(self, resolutions: tuple, seed: int = 0, text: bool | None = None) -> "Generator":
        """A copy that also draws on exemplars at these resolutions (a superset of those it has), and reads their
        captions with `text`; it computes this generator's images until its new (zero-initialised) inputs learn."""
        have = set(self.config.exemplar_resolutions)
        text = bool(self.config.exemplar_text) if text is None else text
        if not have <= set(resolutions) or (set(resolutions) == have and text == bool(self.config.exemplar_text)):
            raise ValueError(f"exemplar resolutions {sorted(resolutions)} must add to this generator's {sorted(have)}")
        if self.config.exemplar_text and not text:
            raise ValueError("this generator reads its exemplars' captions; a copy cannot drop that")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            new = Generator(**{**dict(self.config), "exemplar_resolutions": tuple(int(r) for r in resolutions),
                               "exemplar_text": text})
        _, unexpected = new.load_state_dict({k: v.float() for k, v in self.state_dict().items()}, strict=False)
        assert not unexpected, unexpected
        return new if self.dtype == torch.float32 else new.to(self.dtype)

    def encode_exemplars(self, exemplars: torch.Tensor, mask: torch.Tensor | None = None,
                         pooled: torch.Tensor | None = None, exemplar_text: torch.Tensor | None = None
                         ) -> dict[str, torch.Tensor]:
        """Exemplars (B, K, 3, R, R) in [-1, 1], mask (B, K) bool (True = present; None = all) -> per injection
        resolution r the mean of the present exemplars' features, (B, C_r, r, r); zero where an image has none.
        Only present exemplars are encoded. With `exemplar_text` (the exemplars' caption vectors, (B, K, D)) and the
        prompts' `pooled` (B, D), a generator that reads them also gets "w": the style shift (B, w_dim) for what the
        prompt asks beyond its exemplars' mean caption (zero for an image without exemplars)."""
        b, k = exemplars.shape[:2]
        if mask is None or bool(mask.all()):  # every image has all k (generation): a plain mean over them
            feats = self.exemplar_encoder(exemplars.flatten(0, 1))
            feats = {r: f if k == 1 else f.unflatten(0, (b, k)).mean(dim=1) for r, f in feats.items()}
            weights = exemplars.new_full((b, k), 1 / k)
        else:
            weights = mask.to(exemplars.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)  # (B, K)
            present = torch.nonzero(mask.flatten()).squeeze(1)
            feats = self.exemplar_encoder(exemplars.flatten(0, 1)[present])
            owner = torch.div(present, k, rounding_mode="floor")
            scale = weights.flatten()[present, None, None, None]
            feats = {r: f.new_zeros(b, *f.shape[1:]).index_add(0, owner, f * scale.to(f.dtype)) for r, f in feats.items()}
        if self.config.exemplar_text:
            if pooled is None or exemplar_text is None:
                raise ValueError("this generator reads its exemplars' captions: pass pooled and exemplar_text")
            feats["w"] = self.text_shift(pooled, exemplar_text, weights)
        return feats

    def text_shift(self, pooled: torch.Tensor, exemplar_text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The style shift for what a prompt (B, D) asks beyond its exemplars' captions (B, K, D), averaged with
        weights (B, K) (zero rows: no exemplar, no shift). Both sides are unit vectors; their difference is scaled to
        the mapping's input scale (unit RMS per dimension for unit length), so zero means "draw it as it is"."""
        prompt = F.normalize(pooled.float(), dim=-1)
        mean = (F.normalize(exemplar_text.float(), dim=-1) * weights.float()[..., None]).sum(dim=1)
        has = (weights.sum(dim=1, keepdim=True) > 0).float()
        diff = (prompt - mean) * has * math.sqrt(prompt.shape[-1])
        return self.exemplar_text_in(diff.to(self.exemplar_text_in.weight.dtype))

    def synthesis(self, w: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                  exemplar_features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Style (B, w_dim) + token states (B, L, D), mask (B, L) -> image (B, 3, R, R) in [-1, 1].

        exemplar_features: `encode_exemplars`' output for the same B images (None: the text-only path)."""
        features = exemplar_features or {}
        if "w" in features:
            w = w + features["w"].to(w.dtype)
        x = self.input(w).view(w.shape[0], -1, 4, 4)
        full = str(self.config.resolution)
        for i, block in enumerate(self.blocks):
            key = str(8 * 2**i)  # this block's output resolution (a plain int, so that tracing sees a constant)
            # The full resolution's exemplar joins the last block's input; the others join a block's output.
            into = self.exemplar_in[key](features[key]) if key == full and key in features else None
            x = block(x, w, into)
            if key in self.attention:
                x = self.attention[key](x, states, mask)
            if key != full and key in features:
                x = x + self.exemplar_in[key](features[key])
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))

    def forward(
        self,
        z: torch.Tensor,
        states: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
        truncation: float = 1.0,
        guidance: float = 1.0,
        null_pooled: torch.Tensor | None = None,
        exemplars: torch.Tensor | None = None,
        exemplar_mask: torch.Tensor | None = None,
        exemplar_features: dict[str, torch.Tensor] | None = None,
        exemplar_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z (B, z_dim), states (B, L, text_dim), mask (B, L) bool, pooled (B, pooled_dim) -> (B, 3, R, R).

        truncation pulls w toward the prompt's mean style (0: one image per prompt whatever z); guidance > 1
        pushes w away from the unconditional style of the same z (null_pooled: the empty prompt's vector, (1 or B, D)).
        exemplars (B, K, 3, R, R) in [-1, 1] with exemplar_mask (B, K) bool are retrieved images to draw on (or pass
        their exemplar_features), with exemplar_text (B, K, pooled_dim) their captions' sentence vectors (needed by
        a generator that reads them); a generator without the exemplar path ignores them.
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
        if exemplars is not None and self.uses_exemplars:
            exemplar_features = self.encode_exemplars(exemplars, exemplar_mask, pooled, exemplar_text)
        return self.synthesis(w, states, mask, exemplar_features if self.uses_exemplars else None)
