"""t2i_core: a text-to-image GAN conditioned on a pretrained Transformer text encoder.

The public names are imported on first use, so `python -m t2i_core --help` and tools that only need the data
or corpus modules do not pay for importing torch, transformers and diffusers.
"""

import importlib

__version__ = "0.1.0"
MAX_SEED = 2**32 - 1  # seeds are integers 0..MAX_SEED; here so the CLI can check them without importing torch

_EXPORTS = {
    "Discriminator": ".models.discriminator",
    "Generator": ".models.generator",
    "T2IOutput": ".output",
    "T2IPipeline": ".pipeline",
    "save_model_folder": ".pipeline",
    "merge_models": ".models.merge",
    "TextEmbedding": ".text",
    "TextEncoder": ".text",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 't2i_core' has no attribute {name!r}")
