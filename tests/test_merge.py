"""The checkpoint merger (`python -m t2i_core merge`, t2i_core.models.merge): weighted averages of two model folders."""

import pytest
import torch
from conftest import make_tiny_discriminator, make_tiny_generator, pixel_diff
from safetensors.torch import load_file

pytestmark = pytest.mark.timeout(120)


def _weights(folder, part="generator"):
    return load_file(next((folder / part).glob("*.safetensors")))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, text_encoder):
    """Two tiny model folders of one family (same widths), different weights, with discriminators."""
    from t2i_core import save_model_folder

    root = tmp_path_factory.mktemp("merge")
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folders.append(save_model_folder(root / f"m{seed}", make_tiny_generator(), text_encoder.name,
                                         make_tiny_discriminator()))
    return folders


def test_a_merge_is_the_weighted_average_of_both_models_weights(two_models, tmp_path):
    from t2i_core import merge_models  # a public name

    a, b = two_models
    wa, wb = _weights(a), _weights(b)
    da, db = _weights(a, "discriminator"), _weights(b, "discriminator")
    for weight in (0.0, 0.3, 1.0):
        out = merge_models(a, b, tmp_path / f"w{weight}", weight)
        merged, merged_d = _weights(out), _weights(out, "discriminator")
        assert merged.keys() == wb.keys()
        for key in wb:
            torch.testing.assert_close(merged[key], torch.lerp(wa[key], wb[key], weight), rtol=0, atol=1e-6)
        for key in db:
            torch.testing.assert_close(merged_d[key], torch.lerp(da[key], db[key], weight), rtol=0, atol=1e-6)
    assert any(not torch.equal(wa[k], wb[k]) for k in wb)  # the two models differ, so the check above means something


def test_weight_zero_draws_model_a_images_and_the_record_names_both(two_models, tmp_path):
    from t2i_core import T2IPipeline
    from t2i_core.models.folder import read_model_index
    from t2i_core.models.merge import merge_models

    a, b = two_models
    out = merge_models(a, b, tmp_path / "m", 0.0)
    merged, pipe_a, pipe_b = (T2IPipeline.from_pretrained(p) for p in (out, a, b))
    images = [p("a red apple", num_images=2, seed=3).images for p in (merged, pipe_a, pipe_b)]
    assert all(pixel_diff(m, x) <= 1 for m, x in zip(images[0], images[1]))
    assert any(pixel_diff(m, x) > 8 for m, x in zip(images[0], images[2]))
    record = read_model_index(out)["training"]["merged"]
    assert record["weight"] == 0.0 and record["module_weights"] == {}


def test_a_generator_without_the_caption_map_merges_as_if_its_map_were_zero(tiny_exemplar_model_dir, tmp_path):
    """The shipped model's case: chunk 2 has no caption map, chunk 4 (trained from it) has one."""
    from t2i_core import Generator, T2IPipeline, save_model_folder
    from t2i_core.models.folder import load_bank, read_model_index
    from t2i_core.models.merge import merge_models

    a = tiny_exemplar_model_dir
    g = Generator.from_pretrained(a / "generator").with_exemplars((8,), text=True)
    with torch.no_grad():
        g.exemplar_text_in.weight.normal_(0.0, 0.5)
        g.exemplar_in["8"].weight.mul_(1.5)
    b = save_model_folder(tmp_path / "b", g, read_model_index(a)["text_encoder"], make_tiny_discriminator(),
                          bank=load_bank(a))
    half = merge_models(a, b, tmp_path / "half", 0.5)
    torch.testing.assert_close(_weights(half)["exemplar_text_in.weight"], 0.5 * g.exemplar_text_in.weight.detach())
    # Weight 0 with the map at full strength: A's other weights, B's map.
    only_map = merge_models(a, b, tmp_path / "map", 0.0, {"exemplar_text_in": 1.0})
    merged = _weights(only_map)
    torch.testing.assert_close(merged["exemplar_text_in.weight"], g.exemplar_text_in.weight.detach())
    torch.testing.assert_close(merged["exemplar_in.8.weight"], _weights(a)["exemplar_in.8.weight"])
    # Weight 0 alone gives A's pictures: the zero map A is widened with leaves its images as they were.
    zero = merge_models(a, b, tmp_path / "zero", 0.0)
    for left, right in zip(*(T2IPipeline.from_pretrained(p)(["a red square", "a blue square"], seed=1).images
                             for p in (zero, a))):
        assert pixel_diff(left, right) <= 1
    assert len(load_bank(zero)) == len(load_bank(a))
    both = load_bank(merge_models(a, b, tmp_path / "both", 0.5, bank="both"))
    assert len(both) == 2 * len(load_bank(a)) and both.captions[:12] == load_bank(b).captions
    with pytest.raises(ValueError, match="bank must be one of b, a, both"):
        merge_models(a, b, tmp_path / "bad", 0.5, bank="all")


def test_models_of_different_families_or_bad_weights_are_refused_with_what_to_do(two_models, tmp_path, text_encoder):
    from t2i_core import save_model_folder
    from t2i_core.models.merge import merge_models

    a, b = two_models
    wide = save_model_folder(tmp_path / "wide", make_tiny_generator(channels=(48, 16, 16)), text_encoder.name)
    with pytest.raises(ValueError, match="differ in channels.*one family"):
        merge_models(a, wide, tmp_path / "x")
    with pytest.raises(ValueError, match="from 0 .model A. to 1 .model B., got 1.5"):
        merge_models(a, b, tmp_path / "y", 1.5)
    with pytest.raises(ValueError, match="'no_such_module' names no weights.*text_proj"):
        merge_models(a, b, tmp_path / "z", 0.5, {"no_such_module": 0.5})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        merge_models(a, b, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written folder left behind


def test_merge_command_writes_a_folder_and_bad_input_is_one_line(two_models, tmp_path, capsys):
    from t2i_core.cli import main

    a, b = two_models
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m"), "--weight", "0.7",
                 "--module-weight", "text_proj=0.2"]) == 0
    assert (tmp_path / "m" / "model_index.json").is_file()
    wa, wb, merged = _weights(a), _weights(b), _weights(tmp_path / "m")
    torch.testing.assert_close(merged["text_proj.0.weight"], torch.lerp(wa["text_proj.0.weight"], wb["text_proj.0.weight"], 0.2))
    capsys.readouterr()
    assert main(["merge", str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(a), str(b), "--out", str(tmp_path / "o"), "--module-weight", "text_proj"])
    assert exit_info.value.code == 2
    assert "MODULE=WEIGHT" in capsys.readouterr().err
