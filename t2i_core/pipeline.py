"""T2IPipeline: prompt -> text encoder -> generator -> PIL images. Inference only; imports no training code."""

from __future__ import annotations

import math
import os
import random

import torch
import torch.nn.functional as F
from PIL import Image

from . import MAX_SEED
from .images import to_pil
from .models.folder import (DEFAULT_MODEL_DIR, PRECISIONS, check_model_folder, default_model_path,  # noqa: F401
                            model_text_encoder, read_model_index, save_model_folder)
from .models.bank import ExemplarBank
from .models.folder import load_bank
from .models.generator import Generator
from .output import T2IOutput  # noqa: F401 - public here too
from .text import DEFAULT_TEXT_ENCODER, TextEmbedding, TextEncoder, load_text_encoder  # noqa: F401

MAX_IMAGES = 64
MAX_EXEMPLARS = 3


def noise_for_seeds(seeds: list[int], z_dim: int) -> torch.Tensor:
    """One z per seed, (N, z_dim): each drawn from its own generator, so it never depends on the batch."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the last dimension (keeps Gaussian noise at its usual norm)."""
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


class T2IPipeline:
    """Text-to-image inference: `pipe("a red apple", num_images=4, seed=0).images`."""

    def __init__(self, generator: Generator, text_encoder: TextEncoder, model_index: dict | None = None,
                 bank: ExemplarBank | None = None):
        self.generator = generator.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.model_index = model_index or {}
        self.bank = bank if generator.uses_exemplars else None
        self._null: TextEmbedding | None = None

    # Loading and saving.

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu", precision: str = "fp32"
    ) -> "T2IPipeline":
        """Load a model folder (None: $T2I_MODEL or the shipped assets/model/)."""
        if path is None:
            path = default_model_path()
            if not (path / "model_index.json").is_file():
                raise ValueError(
                    f"No trained default model found at {str(path)!r}. Pass --model PATH (a folder made by "
                    "`python -m t2i_core train`, RUN_DIR/model) or set T2I_MODEL."
                )
        path = check_model_folder(path)
        index, encoder_name = read_model_index(path), model_text_encoder(path, DEFAULT_TEXT_ENCODER)
        try:
            generator = Generator.from_pretrained(path / "generator", use_safetensors=True, low_cpu_mem_usage=False,
                                                  torch_dtype=torch.float32)
        except Exception as err:  # diffusers raises several types for a broken folder
            raise ValueError(f"The generator in {str(path)!r} cannot be loaded ({type(err).__name__}: {err}).") from err
        text_encoder = load_text_encoder(encoder_name)
        pipe = cls(generator, text_encoder, index, load_bank(path) if generator.uses_exemplars else None)
        pipe.model_path = path
        return pipe.to(device, precision)

    def save_pretrained(self, path: str | os.PathLike, discriminator=None) -> None:
        """Write a model folder: model_index.json, generator/ (and discriminator/ when given), safetensors only."""
        save_model_folder(path, self.generator, self.text_encoder.name, discriminator, bank=self.bank)

    def to(self, device: str | torch.device = "cpu", precision: str = "fp32") -> "T2IPipeline":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        dtype = PRECISIONS[precision]
        # Only cast when needed: diffusers warns on every `.to(dtype)`, even a no-op one.
        self.generator.to(device=device, **({"dtype": dtype} if dtype != self.generator.dtype else {}))
        # channels_last lets oneDNN convolutions skip a layout copy per layer (about 13% of the generator's time
        # at batch 1 on the development CPU).
        self.generator.to(memory_format=torch.channels_last)
        self.text_encoder.to(device)
        self._null = None
        return self

    # From the first parameter: diffusers' ModelMixin.device/.dtype walk every submodule (about 0.2 ms each), which
    # is measurable in a 10 ms call.
    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.generator.parameters()).dtype

    # Inputs.

    @property
    def max_exemplars(self) -> int:
        """How many exemplars an image may draw on: 0 without a bank."""
        return MAX_EXEMPLARS if self.bank is not None and len(self.bank) else 0

    def check_exemplars(self, exemplars: int | None) -> int:
        if exemplars is None:
            return min(1, self.max_exemplars)
        if isinstance(exemplars, bool) or not isinstance(exemplars, int) or not 0 <= exemplars <= MAX_EXEMPLARS:
            raise ValueError(f"exemplars must be an integer from 0 (none) to {MAX_EXEMPLARS}, got {exemplars!r}")
        if exemplars > self.max_exemplars:
            raise ValueError(f"exemplars={exemplars}, but this model has no exemplar bank to draw on; pass exemplars=0")
        return exemplars

    def retrieve(self, pooled: torch.Tensor, k: int, seeds: list[int] | None) -> tuple[dict, list]:
        """Sentence vectors (B, D) -> the generator's exemplar inputs (pixels (B, k, 3, R, R) and their captions'
        vectors (B, k, D); empty for k 0) and per image [(caption, index), ...]."""
        if k == 0:
            return {}, [[] for _ in range(len(pooled))]
        idx = self.bank.retrieve(pooled.float().cpu(), k, seeds)
        picked = [[(self.bank.captions[j], j) for j in row] for row in idx.tolist()]
        return {key: v.to(self.device, self.dtype) for key, v in self.bank.inputs(idx).items()}, picked

    def exemplar_images(self, indices: list[int], size: int | None = None) -> list[Image.Image]:
        """Bank entries as PIL images (for showing what an image drew on)."""
        return to_pil(self.bank.pixels(torch.tensor([indices]))[0], size)

    @staticmethod
    def check_inputs(prompts, num_images, seed, truncation, guidance) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError(f"prompt must be a string or a non-empty list of strings, got {type(prompts).__name__}")
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"each prompt must be a string, got {type(p).__name__}: {p!r}")
            if not p.strip():
                raise ValueError("prompt is empty; type what the image should show, e.g. 'a red apple'")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= MAX_IMAGES:
            raise ValueError(f"num_images must be an integer from 1 to {MAX_IMAGES}, got {num_images!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED} (or None for a random one), got {seed!r}")
        if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0.0 <= truncation <= 2.0 or math.isnan(truncation):
            raise ValueError(f"truncation must be a number from 0 (typical image) to 2 (more varied), got {truncation!r}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0.0 <= guidance <= 10.0 or math.isnan(guidance):
            raise ValueError(f"guidance must be a number from 0 to 10 (1 = plain text conditioning), got {guidance!r}")
        return [p.strip() for p in prompts]

    def encode(self, prompts: list[str]) -> TextEmbedding:
        return self.text_encoder(prompts).to(self.device, self.dtype)

    def null_embedding(self) -> TextEmbedding:
        """The empty prompt's embedding: the unconditional path that guidance pushes away from."""
        if self._null is None:
            self._null = self.encode([""])
        return self._null

    # Generation.

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images: int = 1,
        seed: int | None = None,
        truncation: float = 1.0,
        guidance: float = 1.0,
        size: int | None = None,
        batch_size: int = 32,
        exemplars: int | None = None,
    ) -> T2IOutput:
        """Generate `num_images` images per prompt. Image k of a prompt uses seed + k (seed=None draws one).

        exemplars: bank entries each image draws on, retrieved by the prompt's sentence vector (None: 1 when the
        model has a bank, else 0; 0: none). Image k's seed takes its turn among near ties (e.g. one emoji in
        several styles: seed 0 the best match, the next seeds the others; see `ExemplarBank.retrieve`); with
        truncation 0 the best matches are taken, so the image does not depend on the seed.
        """
        prompts = self.check_inputs(prompt, num_images, seed, truncation, guidance)
        n_exemplars = self.check_exemplars(exemplars)
        if seed is None:
            seed = random.randint(0, MAX_SEED)
        all_prompts = [p for p in prompts for _ in range(num_images)]
        # Seeds stay in 0..2**32-1: image k uses seed + k, wrapping past the top.
        all_seeds = [(seed + k) % (MAX_SEED + 1) for _ in prompts for k in range(num_images)]
        images, drawn_on = [], []
        for start in range(0, len(all_prompts), batch_size):
            chunk = slice(start, start + batch_size)
            text = self.encode(all_prompts[chunk])
            z = noise_for_seeds(all_seeds[chunk], self.generator.config.z_dim).to(self.device, self.dtype)
            inputs, picked = self.retrieve(text.pooled, n_exemplars, all_seeds[chunk] if truncation > 0 else None)
            images.append(self._generate(z, text, truncation, guidance, inputs))
            drawn_on += picked
        return T2IOutput(to_pil(torch.cat(images), size), all_seeds, all_prompts, drawn_on)

    def _generate(self, z: torch.Tensor, text: TextEmbedding, truncation: float, guidance: float,
                  exemplars: dict | None = None) -> torch.Tensor:
        """exemplars: the generator's exemplar inputs (`retrieve`'s, or exemplar_features from
        `Generator.encode_exemplars`), or None."""
        null = self.null_embedding().pooled if guidance != 1.0 else None
        # inference_mode (cheaper than no_grad) only here: the text encoder's cached tensors must stay usable by
        # training code that shares the encoder.
        with torch.inference_mode():
            return self.generator(z, text.states, text.mask, text.pooled, truncation, guidance, null, **(exemplars or {}))

    @torch.no_grad()
    def interpolate(
        self,
        prompts: list[str],
        frames: int = 24,
        seed: int | None = 0,
        truncation: float = 1.0,
        guidance: float = 1.0,
        size: int | None = None,
        walk_keyframes: int = 4,
        exemplars: int | None = None,
    ) -> list[Image.Image]:
        """Frames that move smoothly from each prompt to the next, through both text embedding and noise.

        Keyframe i uses prompt i and the noise of seed + i. With one prompt, the text stays and the noise walks
        through `walk_keyframes` seeds. Token states of two prompts are blended inside cross-attention by adding
        log-weights to the attention logits, so the first frame is exactly the first prompt's image. Each keyframe
        draws on its own retrieved exemplars; their features blend along the way.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = self.check_inputs(prompts, 1, seed, truncation, guidance)
        k = self.check_exemplars(exemplars)
        if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= 600:
            raise ValueError(f"frames must be an integer from 2 to 600, got {frames!r}")
        if seed is None:
            seed = random.randint(0, MAX_SEED)
        keys = prompts if len(prompts) > 1 else prompts * max(2, walk_keyframes)
        text = self.encode(keys)
        key_seeds = [(seed + i) % (MAX_SEED + 1) for i in range(len(keys))]
        z = noise_for_seeds(key_seeds, self.generator.config.z_dim).to(self.device, self.dtype)
        inputs, _ = self.retrieve(text.pooled, k, key_seeds if truncation > 0 else None)
        feats = None
        if inputs and self.generator.uses_exemplars:
            with torch.inference_mode():
                feats = self.generator.encode_exemplars(inputs["exemplars"], None, text.pooled, inputs["exemplar_text"])
        out = []
        for j in range(frames):
            u = j / (frames - 1) * (len(keys) - 1)
            i = min(int(u), len(keys) - 2)
            t = u - i
            a, b = text[i : i + 1], text[i + 1 : i + 2]
            z_t = slerp(z[i : i + 1], z[i + 1 : i + 2], t)
            pooled = F.normalize(torch.lerp(a.pooled, b.pooled, t), dim=-1) * torch.lerp(a.pooled.norm(), b.pooled.norm(), t)
            states = torch.cat([a.states, b.states], dim=1)
            bias = torch.cat(
                [torch.where(a.mask, math.log(max(1 - t, 1e-30)) if t < 1 else -math.inf, -math.inf),
                 torch.where(b.mask, math.log(t) if t > 0 else -math.inf, -math.inf)],
                dim=1,
            ).to(self.dtype)
            feats_t = None if feats is None else {
                "exemplar_features": {r: torch.lerp(f[i : i + 1], f[i + 1 : i + 2], t) for r, f in feats.items()}}
            out.append(self._generate(z_t, TextEmbedding(states, bias, pooled), truncation, guidance, feats_t))
        return to_pil(torch.cat(out), size)
