"""Generator and Discriminator: shapes, ranges, text conditioning, save/load, config checks."""

import json

import pytest
import torch
from conftest import make_tiny_discriminator, make_tiny_generator

from t2i_core import Discriminator, Generator

CONFIGS = [
    dict(resolution=16, channels=(32, 16, 16), attention_resolutions=(8,)),
    dict(resolution=32, channels=(32, 16, 16, 8), attention_resolutions=(8, 16)),
]


def run_generator(g, text_encoder, prompts, seed=0, **kwargs):
    text = text_encoder(prompts)
    z = torch.randn(len(prompts), g.config.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g(z, text.states, text.mask, text.pooled, **kwargs)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"res{c['resolution']}")
def test_generator_shape_and_range(config, text_encoder):
    torch.manual_seed(0)
    g = make_tiny_generator(**config)
    images = run_generator(g, text_encoder, ["a red apple", "a very long description of a small green frog"])
    r = config["resolution"]
    assert images.shape == (2, 3, r, r)
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 1e-3, "a random generator should not output a constant image"
    assert torch.isfinite(images).all()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"res{c['resolution']}")
def test_discriminator_shape(config, text_encoder):
    r = config["resolution"]
    torch.manual_seed(0)
    d = make_tiny_discriminator(resolution=r, channels=tuple(reversed(config["channels"])))
    images = torch.rand(3, 3, r, r) * 2 - 1
    with torch.no_grad():
        scores = d(images, text_encoder(["a", "b", "c"]).pooled)
    assert scores.shape == (3,)
    assert torch.isfinite(scores).all()


def test_one_word_changes_the_image(text_encoder):
    torch.manual_seed(0)
    g = make_tiny_generator()
    a, b = run_generator(g, text_encoder, ["a red apple on a table", "a green apple on a table"])
    assert (a - b).abs().max() > 1e-2


def test_word_order_matters(text_encoder):
    torch.manual_seed(0)
    g = make_tiny_generator()
    a, b = run_generator(g, text_encoder, ["a red circle above a blue square", "a blue square above a red circle"])
    assert (a - b).abs().max() > 1e-2


def test_token_states_reach_the_image_through_cross_attention(text_encoder):
    # Same z and the same sentence vector; only the token states differ, so only cross-attention can tell them apart.
    torch.manual_seed(0)
    g = make_tiny_generator()
    text = text_encoder(["a red circle above a blue square", "a blue square above a red circle"])
    z = torch.randn(1, g.config.z_dim).expand(2, -1)
    pooled = text.pooled[:1].expand(2, -1)
    with torch.no_grad():
        a, b = g(z, text.states, text.mask, pooled)
    assert (a - b).abs().max() > 1e-3


def test_padding_tokens_are_ignored(text_encoder):
    # A prompt padded to a longer batch must give the image it gives alone.
    torch.manual_seed(0)
    g = make_tiny_generator()
    alone = run_generator(g, text_encoder, ["a cat"])
    text = text_encoder(["a cat", "a much longer prompt about a cat sitting on a red mat"])
    z = torch.randn(1, g.config.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = g(z.expand(2, -1), text.states, text.mask, text.pooled)
    assert text.states.shape[1] > text_encoder(["a cat"]).states.shape[1]
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=0)


def test_discriminator_reads_the_caption(text_encoder):
    torch.manual_seed(0)
    d = make_tiny_discriminator()
    image = (torch.rand(1, 3, 16, 16) * 2 - 1).expand(2, -1, -1, -1)
    with torch.no_grad():
        scores = d(image, text_encoder(["a red apple", "a blue car on a road"]).pooled)
    assert abs(float(scores[0] - scores[1])) > 1e-4


def test_truncation_zero_ignores_z(text_encoder):
    torch.manual_seed(0)
    g = make_tiny_generator()
    a = run_generator(g, text_encoder, ["a cat"], seed=1, truncation=0.0)
    b = run_generator(g, text_encoder, ["a cat"], seed=2, truncation=0.0)
    c = run_generator(g, text_encoder, ["a cat"], seed=2, truncation=1.0)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (b - c).abs().max() > 1e-3


def test_guidance_needs_the_null_vector(text_encoder):
    torch.manual_seed(0)
    g = make_tiny_generator()
    with pytest.raises(ValueError, match="null_pooled"):
        run_generator(g, text_encoder, ["a cat"], guidance=2.0)


def test_generator_save_load_round_trip(tmp_path, text_encoder):
    torch.manual_seed(0)
    g = make_tiny_generator()
    g.save_pretrained(tmp_path / "g", safe_serialization=True)
    assert (tmp_path / "g" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = Generator.from_pretrained(tmp_path / "g", use_safetensors=True).eval()
    # JSON turns tuples into lists; compare the public keys as JSON would store them.
    public = lambda config: {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k[0] != "_"}  # noqa: E731
    assert public(loaded.config) == public(g.config)
    for kwargs in ({}, {"truncation": 0.5}):
        torch.testing.assert_close(
            run_generator(loaded, text_encoder, ["a cat", "a dog"], **kwargs),
            run_generator(g, text_encoder, ["a cat", "a dog"], **kwargs),
            atol=1e-6,
            rtol=0,
        )


def test_discriminator_save_load_round_trip(tmp_path, text_encoder):
    torch.manual_seed(0)
    d = make_tiny_discriminator()
    d.save_pretrained(tmp_path / "d", safe_serialization=True)
    loaded = Discriminator.from_pretrained(tmp_path / "d", use_safetensors=True).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    pooled = text_encoder(["a cat", "a dog"]).pooled
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, pooled), d(images, pooled), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "model, config",
    [
        (Generator, dict(resolution=12, channels=(8, 8))),
        (Generator, dict(resolution=4, channels=(8,))),
        (Generator, dict(resolution=16, channels=(8, 8))),
        (Discriminator, dict(resolution=24, channels=(8, 8, 8))),
        (Discriminator, dict(resolution=16, channels=(8, 8, 8, 8))),
    ],
    ids=["G-res12", "G-res4", "G-channels", "D-res24", "D-channels"],
)
def test_invalid_config_raises(model, config):
    with pytest.raises(ValueError, match="resolution|channels"):
        model(**config)


def test_a_config_with_the_removed_depth_fields_at_their_defaults_still_loads(tmp_path):
    """Folders saved while Generator had extra_convs / extra_attention / text_layers (always empty in shipped models)
    load to the same weights."""
    torch.manual_seed(0)
    g = make_tiny_generator()
    g.save_pretrained(tmp_path / "g", safe_serialization=True)
    config_path = tmp_path / "g" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"extra_convs": [], "extra_attention": [], "text_layers": 0}))
    loaded = Generator.from_pretrained(tmp_path / "g", use_safetensors=True, low_cpu_mem_usage=False)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in g.state_dict().items())
    config_path.write_text(json.dumps(config | {"extra_convs": [8]}))
    with pytest.raises(ValueError, match="extra_convs"):
        Generator.from_pretrained(tmp_path / "g", use_safetensors=True, low_cpu_mem_usage=False)
