"""Training data: `load_pairs` (every accepted layout, folders and .zip), the emoji corpus, the shapes set.

`load_pairs`, `Pair`, `LoadReport`, `DataError`, `UploadLimits`, `images_to_tensor` and `safe_extract_zip` are
importable from here; they load on first use, so `python -m t2i_core data emoji` does not import torch.
"""

import importlib

_EXPORTS = {name: ".loading" for name in
            ("DataError", "LoadReport", "Pair", "UploadLimits", "images_to_tensor", "load_pairs", "safe_extract_zip")}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 't2i_core.data' has no attribute {name!r}")
