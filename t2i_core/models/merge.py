"""Merge two model folders of one family by a weighted average of their weights.

    merged = (1 - weight) * A + weight * B        (per module, `module_weights` may set another weight)

This is the checkpoint merger that users of kohya_ss and the Stable Diffusion web UIs know (a weighted sum, and
block-weighted merges), and WiSE-FT (Wortsman et al., CVPR 2022) for a fine-tune and the model it started from: the
average of two models on one training path often keeps what each does well. The shipped default model is such a
merge of two of its own training chunks (assets/MODEL_CARD.md).

Only models of one family merge: the same text encoder, resolution and widths. Where one generator lacks inputs that
training adds later with zero weights (exemplars at a new resolution, the caption map), it is first widened with those
zeros (`Generator.with_exemplars`), which leaves its images as they were. The merged folder takes B's bank (A's if B
has none; `bank="both"`: B's entries, then A's, e.g. a fine-tune's pairs and the default corpus), both discriminators
merged when both have one of one shape (else none: fine-tuning it starts a new one), and B's storage precision.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import safe_open

from .discriminator import Discriminator
from .folder import check_model_folder, load_bank, read_model_index, save_model_folder
from .generator import Generator

_LOAD = dict(use_safetensors=True, low_cpu_mem_usage=False, torch_dtype=torch.float32)


def _widened(g: Generator, other: Generator) -> Generator:
    """`g`, with the zero-initialised exemplar inputs that `other` has and `g` lacks."""
    have, want = set(g.config.exemplar_resolutions), set(other.config.exemplar_resolutions)
    text = bool(g.config.exemplar_text or other.config.exemplar_text)
    if (have | want) == have and text == bool(g.config.exemplar_text):
        return g
    if not have and want:  # a generator without exemplars at all is a different family
        return g
    return g.with_exemplars(tuple(sorted(have | want)), text=text)


def _config(model) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items() if not k.startswith("_")}


def _stored_dtype(folder: Path) -> torch.dtype:
    """The precision the folder's weights are stored in (the first floating-point tensor's)."""
    with safe_open(sorted(folder.glob("*.safetensors"))[0], "pt") as f:
        dtypes = (f.get_tensor(key).dtype for key in f.keys())
        return next((t for t in dtypes if t.is_floating_point), torch.float32)


def _average(a: dict, b: dict, weight: float, module_weights: dict[str, float]) -> dict:
    out = {}
    for key, vb in b.items():
        va = a[key]
        w = next((mw for prefix, mw in module_weights.items() if key == prefix or key.startswith(prefix + ".")), weight)
        out[key] = torch.lerp(va.float(), vb.float(), w) if vb.is_floating_point() else vb
    return out


def check_weights(weight: float, module_weights: dict[str, float], names: list[str]) -> None:
    for what, w in [("weight", weight), *((f"module weight {m}", v) for m, v in module_weights.items())]:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise ValueError(f"{what} must be a number from 0 (model A) to 1 (model B), got {w!r}")
    for prefix in module_weights:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"module {prefix!r} names no weights of the generator; its modules are: {', '.join(tops)}")


BANKS = ("b", "a", "both")


def _bank(a: Path, b: Path, which: str):
    if which not in BANKS:
        raise ValueError(f"bank must be one of {', '.join(BANKS)}, got {which!r}")
    bank_a, bank_b = load_bank(a), load_bank(b)
    if which == "both" and bank_a is not None and bank_b is not None:
        return bank_b.merged(bank_a)
    first, second = (bank_a, bank_b) if which == "a" else (bank_b, bank_a)
    return first if first is not None else second


def merge_models(a: str | os.PathLike, b: str | os.PathLike, out: str | os.PathLike, weight: float = 0.5,
                 module_weights: dict[str, float] | None = None, bank: str = "b") -> Path:
    """Write the merge of model folders `a` and `b` to `out` (a new folder) and return it. ValueError, saying what
    to do, when they do not merge or `out` would overwrite something. `bank`: "b", "a" or "both" (see above)."""
    a, b, out = Path(a), Path(b), Path(out)
    module_weights = dict(module_weights or {})
    check_model_folder(a)
    check_model_folder(b)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {str(out)!r} exists and is not empty; name a new folder (a merge never overwrites)")
    index_a, index_b = read_model_index(a), read_model_index(b)
    if index_a.get("text_encoder") != index_b.get("text_encoder"):
        raise ValueError(f"the models read different text encoders ({index_a.get('text_encoder')!r} and "
                         f"{index_b.get('text_encoder')!r}); only models of one family merge")
    ga = Generator.from_pretrained(a / "generator", **_LOAD)
    gb = Generator.from_pretrained(b / "generator", **_LOAD)
    ga, gb = _widened(ga, gb), _widened(gb, ga)
    if _config(ga) != _config(gb):
        diff = sorted(k for k in _config(ga).keys() | _config(gb).keys() if _config(ga).get(k) != _config(gb).get(k))
        raise ValueError(f"the generators differ in {', '.join(diff)}; only models of one family merge (a fine-tune "
                         "and the model it started from, or two training chunks of one model)")
    check_weights(weight, module_weights, list(gb.state_dict()))
    merged_bank = _bank(a, b, bank)
    gb.load_state_dict(_average(ga.state_dict(), gb.state_dict(), weight, module_weights))
    d = None
    if (a / "discriminator" / "config.json").is_file() and (b / "discriminator" / "config.json").is_file():
        da = Discriminator.from_pretrained(a / "discriminator", **_LOAD)
        db = Discriminator.from_pretrained(b / "discriminator", **_LOAD)
        if _config(da) == _config(db):
            db.load_state_dict(_average(da.state_dict(), db.state_dict(), weight, {}))
            d = db
    training = {"merged": {"weight": weight, "module_weights": module_weights, "bank": bank,
                           "a": index_a.get("training", {}), "b": index_b.get("training", {})}}
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    try:
        save_model_folder(tmp, gb, index_b["text_encoder"], d, storage_dtype=_stored_dtype(b / "generator"),
                          training=training, bank=merged_bank)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
