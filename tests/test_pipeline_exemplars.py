"""The pipeline with an exemplar bank: retrieval by the prompt, what each image drew on, and the contracts."""

import pytest
import torch

from t2i_core import T2IPipeline
from tests.conftest import pixel_diff


@pytest.fixture(scope="module")
def pipe(tiny_exemplar_model_dir):
    return T2IPipeline.from_pretrained(tiny_exemplar_model_dir)


def test_images_report_the_bank_entries_they_drew_on(pipe):
    out = pipe(["red square", "a blue square"], num_images=3, seed=0)
    assert len(out.exemplars) == 6 and all(len(e) == 1 for e in out.exemplars)
    assert all(caption.startswith("red square") for caption, _ in (e[0] for e in out.exemplars[:3]))
    assert all(caption.startswith("blue square") for caption, _ in (e[0] for e in out.exemplars[3:]))
    # The seed picks among the best group's entries: three seeds, more than one style of red square.
    assert len({i for e in out.exemplars[:3] for _, i in e}) > 1
    thumbs = pipe.exemplar_images([out.exemplars[0][0][1]])
    assert thumbs[0].size == (16, 16) and thumbs[0].getpixel((8, 8))[0] > 150  # a red square


def test_exemplars_change_the_image_and_zero_turns_retrieval_off(pipe):
    with_bank = pipe("red square", seed=3)
    without = pipe("red square", seed=3, exemplars=0)
    assert without.exemplars == [[]]
    assert pixel_diff(with_bank.images[0], without.images[0]) > 2
    two = pipe("red square", seed=3, exemplars=2)
    groups = [pipe.bank.groups[i] for _, i in two.exemplars[0]]
    assert len(two.exemplars[0]) == 2 and len(set(groups)) == 2  # never two of one kind


def test_contracts_hold_with_retrieval(pipe):
    # Batch independence, and truncation 0 gives one image per prompt whatever the seed.
    alone = pipe("green square", num_images=2, seed=5)
    batched = pipe(["yellow square", "green square"], num_images=2, seed=5)
    assert all(pixel_diff(a, b) <= 1 for a, b in zip(alone.images, batched.images[2:]))
    assert alone.exemplars == batched.exemplars[2:]
    t0 = pipe("green square", num_images=3, seed=11, truncation=0)
    assert max(pixel_diff(t0.images[0], im) for im in t0.images[1:]) <= 1
    assert len({e[0][1] for e in t0.exemplars}) == 1


def test_bad_exemplar_counts_are_refused(pipe, tiny_pipe):
    with pytest.raises(ValueError, match="exemplars"):
        pipe("red square", exemplars=4)
    with pytest.raises(ValueError, match="exemplars"):
        pipe("red square", exemplars=True)
    with pytest.raises(ValueError, match="no exemplar bank"):
        tiny_pipe("red square", exemplars=1)
    assert tiny_pipe("red square").exemplars == [[]]


def test_interpolate_draws_on_each_keyframes_exemplars(pipe):
    frames = pipe.interpolate(["red square", "blue square"], frames=5, seed=0)
    first, last = pipe("red square", seed=0), pipe("blue square", seed=1)
    assert pixel_diff(frames[0], first.images[0]) <= 1 and pixel_diff(frames[-1], last.images[0]) <= 1


def test_bank_round_trips_through_save_pretrained(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    again = T2IPipeline.from_pretrained(tmp_path / "copy")
    assert again.bank.captions == pipe.bank.captions and torch.equal(again.bank.images, pipe.bank.images)
    assert pixel_diff(again("red square", seed=1).images[0], pipe("red square", seed=1).images[0]) <= 1
