"""Exemplar retrieval: the bank, the generator's exemplar path, and what training feeds it."""

import torch

from t2i_core.models.bank import ExemplarBank
from t2i_core.training.exemplars import COLOURS, ExemplarSampler, one_word_variants, recolor, rgb_to_hsv
from t2i_core.models.generator import Generator


def tiny_generator(**kw) -> Generator:
    torch.manual_seed(0)
    return Generator(resolution=16, z_dim=8, w_dim=32, text_dim=16, pooled_dim=16, channels=(32, 16, 8),
                     attention_resolutions=(8,), heads=2, num_mean_samples=4, **kw)


def tiny_bank(n: int = 12, groups: int = 4) -> ExemplarBank:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen)
    vectors = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=-1)
    return ExemplarBank(images, vectors, [f"caption {i}" for i in range(n)], [f"g{i % groups}" for i in range(n)])


def test_exemplar_path_starts_as_the_text_only_generator_and_learns():
    g = tiny_generator()
    gx = g.with_exemplars((8,))
    z, states, mask, pooled = torch.randn(3, 8), torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool), torch.randn(3, 16)
    exemplars = torch.rand(3, 2, 3, 16, 16) * 2 - 1
    assert torch.allclose(g(z, states, mask, pooled), gx(z, states, mask, pooled, exemplars=exemplars), atol=1e-6)
    # The zero-initialised injection gets a gradient, and once it moves the exemplar changes the image.
    out = gx(z, states, mask, pooled, exemplars=exemplars)
    out.square().sum().backward()
    grad = gx.exemplar_in["8"].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad():
        gx.exemplar_in["8"].weight.normal_(0, 0.1)
    a = gx(z, states, mask, pooled, exemplars=exemplars)
    b = gx(z, states, mask, pooled, exemplars=exemplars.flip(0))
    assert (a - b).abs().max() > 1e-3
    # A masked-out exemplar is the same as none.
    none = gx(z, states, mask, pooled)
    masked = gx(z, states, mask, pooled, exemplars=exemplars, exemplar_mask=torch.zeros(3, 2, dtype=torch.bool))
    assert torch.allclose(none, masked, atol=1e-6)
    # Features are the mean over an image's present exemplars, whether all are present or some are masked out.
    both = gx.encode_exemplars(exemplars)
    first = gx.encode_exemplars(exemplars[:, :1])
    second = gx.encode_exemplars(exemplars[:, 1:])
    some = gx.encode_exemplars(exemplars, torch.tensor([[True, True], [True, False], [False, True]]))
    for r in both:
        assert torch.allclose(both[r], (first[r] + second[r]) / 2, atol=1e-6)
        assert torch.allclose(some[r], torch.stack([both[r][0], first[r][1], second[r][2]]), atol=1e-6)


def test_a_full_resolution_exemplar_path_is_added_to_a_trained_one_and_joins_the_last_block():
    """An exemplar generator gains a full-resolution injection (the exemplar's own pixels, before the last block's
    modulated convs): unchanged images until it learns, then the exemplar's fine detail reaches the output."""
    gx = tiny_generator().with_exemplars((8,))
    with torch.no_grad():
        gx.exemplar_in["8"].weight.normal_(0, 0.1)
    full = gx.with_exemplars((8, 16))
    assert "16" in full.exemplar_in and hasattr(full.exemplar_encoder, "full")
    z, states, pooled = torch.randn(2, 8), torch.randn(2, 5, 16), torch.randn(2, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    exemplars = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    assert torch.allclose(gx(z, states, mask, pooled, exemplars=exemplars),
                          full(z, states, mask, pooled, exemplars=exemplars), atol=1e-6)
    full(z, states, mask, pooled, exemplars=exemplars).square().sum().backward()
    assert full.exemplar_in["16"].weight.grad.abs().sum() > 0
    with torch.no_grad():
        full.exemplar_in["16"].weight.normal_(0, 0.1)
    # One changed pixel of the exemplar reaches the output at that pixel.
    moved = exemplars.clone()
    moved[:, :, :, 12, 12] = -moved[:, :, :, 12, 12]
    diff = (full(z, states, mask, pooled, exemplars=exemplars) - full(z, states, mask, pooled, exemplars=moved)).abs()
    assert diff[:, :, 12, 12].max() > 1e-4
    for bad in ((8,), (8, 32)):
        try:
            full.with_exemplars(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_a_generator_that_reads_its_exemplars_captions_keeps_an_exemplar_under_its_own_caption():
    """The exemplars' caption vectors against the prompt's: the same caption shifts nothing (the picture drawn as it
    is), another caption shifts the style ("a blue ghost" beside a white ghost). Added to a trained exemplar
    generator it starts at zero, so it draws that generator's images until it learns."""
    import pytest

    gx = tiny_generator(exemplar_resolutions=(8, 16))
    with torch.no_grad():
        for conv in gx.exemplar_in.values():
            conv.weight.normal_(0, 0.1)
    gt = gx.with_exemplars((8, 16), text=True)
    z, states, mask = torch.randn(3, 8), torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    exemplars = torch.rand(3, 1, 3, 16, 16) * 2 - 1
    captions = torch.nn.functional.normalize(torch.randn(3, 1, 16), dim=-1)
    own, other = captions[:, 0] * 3.0, torch.randn(3, 16)  # a prompt's vector need not be unit length
    ex = dict(exemplars=exemplars, exemplar_text=captions)
    assert torch.allclose(gx(z, states, mask, other, exemplars=exemplars), gt(z, states, mask, other, **ex), atol=1e-6)
    gt(z, states, mask, other, **ex).square().sum().backward()
    assert gt.exemplar_text_in.weight.grad.abs().sum() > 0
    with torch.no_grad():
        gt.exemplar_text_in.weight.normal_(0, 0.1)
    assert torch.allclose(gx(z, states, mask, own, exemplars=exemplars), gt(z, states, mask, own, **ex), atol=1e-5)
    assert (gx(z, states, mask, other, exemplars=exemplars) - gt(z, states, mask, other, **ex)).abs().max() > 1e-3
    # No exemplar present, no shift; and the mean image (truncation 0) gets the same shift as the samples.
    none = torch.zeros(3, 1, dtype=torch.bool)
    assert torch.allclose(gx(z, states, mask, other, exemplars=exemplars, exemplar_mask=none),
                          gt(z, states, mask, other, exemplar_mask=none, **ex), atol=1e-6)
    feats = gt.encode_exemplars(exemplars, None, other, captions)
    assert torch.allclose(gt.synthesis(gt.mean_style(other), states, mask, feats),
                          gt(z, states, mask, other, truncation=0.0, **ex), atol=1e-5)
    with pytest.raises(ValueError, match="pass pooled and exemplar_text"):
        gt(z, states, mask, other, exemplars=exemplars)
    with pytest.raises(ValueError, match="cannot drop"):
        gt.with_exemplars((8, 16), text=False)
    with pytest.raises(ValueError, match="needs exemplar_resolutions"):
        tiny_generator(exemplar_text=True)


def test_bank_round_trip_shards_and_retrieval(tmp_path, monkeypatch):
    import t2i_core.models.bank as bank_module

    monkeypatch.setattr(bank_module, "MAX_SHARD_BYTES", 5 * (3 * 16 * 16 + 2 * 16))  # five entries a shard
    bank = tiny_bank()
    bank.save(tmp_path / "bank")
    assert len(list((tmp_path / "bank").glob("bank-*.safetensors"))) == 3
    loaded = ExemplarBank.load(tmp_path / "bank")
    assert torch.equal(loaded.images, bank.images) and loaded.captions == bank.captions and loaded.groups == bank.groups
    assert torch.allclose(loaded.vectors, bank.vectors, atol=1e-3)
    # Deterministic top-k without seeds: the query equal to entry 5 finds entry 5 first; never two of one group.
    idx = loaded.retrieve(bank.vectors[5:6], 3)
    assert idx[0, 0] == 5
    assert len({bank.groups[j] for j in idx[0].tolist()}) == 3
    # With seeds, a seed picks among the best group's entries only.
    same_group = torch.nn.functional.normalize(bank.vectors[[1, 5, 9]].mean(0, keepdim=True), dim=-1)
    picks = {int(loaded.retrieve(same_group, 1, seeds=[s], ties=0.0)[0, 0]) for s in range(20)}
    assert picks <= {1, 5, 9} and len(picks) > 1
    assert torch.equal(loaded.retrieve(bank.vectors[:4], 1, seeds=[3] * 4), loaded.retrieve(bank.vectors[:4], 1, seeds=[3] * 4))


def test_one_image_search_in_half_precision_finds_what_the_full_precision_search_finds():
    # A bank big enough for the fp16 first pass (one or two queries); its ranking must be the fp32 one's.
    gen = torch.Generator().manual_seed(0)
    n = 3000
    vectors = torch.nn.functional.normalize(torch.randn(n, 64, generator=gen), dim=-1)
    bank = ExemplarBank(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), vectors, [f"c{i}" for i in range(n)],
                        [f"g{i // 3}" for i in range(n)])
    # Queries near an entry (a near tie among a few) and random ones.
    queries = torch.nn.functional.normalize(
        torch.cat([vectors[:20] + 0.05 * torch.randn(20, 64, generator=gen), torch.randn(20, 64, generator=gen)]), dim=-1)
    for rows in (queries[i : i + 2] for i in range(0, 40, 2)):
        for q in (rows[:1], rows):
            sims, idx = bank._nearest(q, 64)
            full_sims, full_idx = (q @ vectors.T).topk(64, dim=1)
            assert torch.equal(idx, full_idx)
            assert torch.allclose(sims, full_sims, atol=1e-6)
            assert bank._half is not None  # the fp16 pass ran
    assert torch.equal(bank.retrieve(queries[:1], 3, seeds=[7]), bank.retrieve(queries[:1], 3, seeds=[7]))
    # With group names, an entry scores the better of its caption and its group's name; the same holds.
    bank.group_vectors = torch.nn.functional.normalize(torch.randn(n // 3, 64, generator=gen), dim=-1)
    rows = bank.group_rows()
    for q in (queries[:1], queries[20:22], bank.group_vectors[5:6]):
        sims, idx = bank._nearest(q, 64)
        full = torch.maximum(q @ vectors.T, (q @ bank.group_vectors.T)[:, rows])
        # A group's entries may tie on its name: compare the scores, and each pick's score.
        assert torch.allclose(sims, full.topk(64, dim=1).values, atol=1e-6)
        assert torch.allclose(full.gather(1, idx), sims, atol=1e-6)
    assert set(bank._nearest(bank.group_vectors[5:6], 3)[1][0].tolist()) == {15, 16, 17}  # group g5's entries


def test_a_prompt_finds_the_picture_by_its_name_when_its_captions_sit_elsewhere(text_encoder, tmp_path):
    # In the emoji corpus the red car is named "automobile"; its captions sit nearer "racing car, ..." than the
    # prompt does, but the name is what the prompt means.
    captions = ["automobile, google style", "racing car, fluent contrast style", "automobile, twitter style",
                "racing car, google style"]
    groups = ["automobile", "racing car", "automobile", "racing car"]
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    bank = ExemplarBank.build(images, captions, groups, text_encoder)
    query = text_encoder(["a red car"]).pooled
    by_caption = ExemplarBank(bank.images, bank.vectors, bank.captions, bank.groups)
    assert by_caption.retrieve(query, 1)[0, 0] == 1 and bank.retrieve(query, 1)[0, 0] == 0
    # The seed picks among near ties: the name matches each style's entry alike; a named style picks its own.
    picks = lambda prompt: {int(bank.retrieve(text_encoder([prompt]).pooled, 1, seeds=[s])[0, 0]) for s in range(12)}  # noqa: E731
    assert picks("automobile") == {0, 2} and picks("automobile, twitter style") == {2}
    loaded = ExemplarBank.load(bank.save(tmp_path / "bank"))
    assert loaded.group_vectors.shape == (2, text_encoder.pooled_dim) and loaded.retrieve(query, 1)[0, 0] == 0
    # Merged with an upload's pairs (groups = their captions), every group keeps a vector.
    upload = ExemplarBank.build(images[:1], ["a red car drawn by me"], None, text_encoder)
    assert upload.group_vectors is None
    merged = loaded.merged(upload)
    assert merged.group_names == ["automobile", "racing car", "a red car drawn by me"]
    assert merged.retrieve(query, 1)[0, 0] == 4
    assert torch.allclose(merged.group_vectors[2], upload.vectors[0])


def test_sampler_never_gives_a_target_itself_unless_recoloured():
    group_ids = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    sampler = ExemplarSampler(group_ids, ["cat face", "dog face", "red heart", "apple"], torch.randn(4, 16), neighbours=2)
    idx = torch.arange(8).repeat(25)
    picks = sampler.pick(idx, torch.Generator().manual_seed(0), slots=2, exemplar_prob=1.0, recolour_prob=0.3)
    for i, target in enumerate(idx.tolist()):
        chosen = [j for j in picks.exemplars[i].tolist() if j >= 0]
        if picks.recolour[i]:
            assert picks.colours[i] in COLOURS and group_ids[target] != 2  # "red heart" already names its colour
            assert chosen and all(group_ids[j] == group_ids[target] for j in chosen)
        else:
            assert target not in chosen
    assert picks.recolour.any() and (picks.exemplars[:, 0] >= 0).all()
    # Asked for, a share of the others draws on the target itself, as a prompt's nearest caption does at generation.
    picks = sampler.pick(idx, torch.Generator().manual_seed(0), slots=2, exemplar_prob=1.0, recolour_prob=0.0,
                         self_prob=0.4)
    own = (picks.exemplars[:, 0] == idx).float().mean().item()
    assert 0.25 < own < 0.55 and not (picks.exemplars[:, 1] == idx).any()


def test_one_word_variants_pair_captions_that_differ_in_a_single_word():
    names = ["a small red circle", "a small blue circle", "a large red circle", "A small red circle!",
             "a small red circle on the left", "a blue square", "apple", "pear"]
    vectors = torch.nn.functional.normalize(torch.randn(len(names), 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    variants = [sorted(v.tolist()) for v in one_word_variants(names, vectors, limit=16)]
    assert variants[0] == [1, 2]  # colour or size; not itself, its case/punctuation twin, a longer one or a 2-word swap
    assert variants[3] == [1, 2] and variants[4] == [] and variants[5] == []
    assert variants[6] == [] and variants[7] == []  # one-word names: any other would "differ in one word"
    # Past the limit, the nearest by sentence vector stay.
    near = one_word_variants(names, vectors, limit=1)[0].tolist()
    assert near == [max([1, 2], key=lambda j: float(vectors[j] @ vectors[0]))]


def test_sampler_draws_variant_neighbours_when_asked():
    names = ["a red circle", "a blue circle", "a red circle on the left", "a red circle at the top"]
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.0, 1, 0], [0.9, 0, 0.1], [0.5, 0.5, 0.5]]), dim=-1)
    sampler = ExemplarSampler(torch.arange(4), names, vectors, neighbours=1)  # nearest by vector: position variants
    idx = torch.zeros(400, dtype=torch.long)
    for prob, lo, hi in ((0.0, 0.0, 0.0), (0.5, 0.4, 0.6), (1.0, 1.0, 1.0)):
        picks = sampler.pick(idx, torch.Generator().manual_seed(0), slots=1, exemplar_prob=1.0, same_group_prob=0.0,
                             recolour_prob=0.0, variant_prob=prob)
        blue = (picks.exemplars[:, 0] == 1).float().mean().item()
        assert lo <= blue <= hi and ((picks.exemplars[:, 0] == 1) | (picks.exemplars[:, 0] == 2)).all()
        assert lo <= (picks.negative_groups == 1).float().mean().item() <= hi


def test_recolour_turns_saturated_pixels_to_the_named_hue_and_keeps_grey():
    img = torch.ones(1, 3, 8, 8)  # white
    img[:, :, 2:6, 2:6] = torch.tensor([0.9, -0.8, -0.8])[:, None, None]  # a red square in [-1, 1]
    img[:, :, 0, 0] = -1.0  # a black outline pixel
    out = recolor(img, torch.tensor([COLOURS["blue"]]))
    hsv = rgb_to_hsv((out + 1) / 2)
    assert abs(hsv[0, 0, 3, 3].item() * 360 - COLOURS["blue"]) < 2
    assert torch.allclose(out[:, :, 7, 7], img[:, :, 7, 7], atol=1e-5) and torch.allclose(out[:, :, 0, 0], img[:, :, 0, 0], atol=1e-5)


def test_training_with_exemplars_resumes_and_ships_its_pairs_as_the_bank(tmp_path):
    from t2i_core.data import shapes
    from t2i_core.pipeline import T2IPipeline
    from t2i_core.training.checkpoints import list_checkpoints
    from t2i_core.training.config import TrainConfig
    from t2i_core.training.loop import train
    from safetensors.torch import load_file

    data = shapes.make_shapes_dataset(tmp_path / "shapes", n=24, resolution=32)
    tiny = dict(data=str(data), init="none", resolution=16, g_channels=(32, 32, 16), d_channels=(16, 32, 32),
                batch_size=8, precision="fp32", r1_every=2, sample_every=1000, log_every=1, seed=3,
                exemplar_resolutions=(8,), recolour_prob=0.5, checkpoint_every=2)
    # Zero steps: the uploaded pairs are in the model's bank at once.
    first = train(TrainConfig(out=str(tmp_path / "zero"), max_steps=0, **tiny))
    pipe = T2IPipeline.from_pretrained(first)
    assert len(pipe.bank) == 24 and pipe("a red circle", seed=0).exemplars[0]
    # From that model, the exemplars' captions are read too (--exemplar-text): unchanged images at first.
    reads = dict(tiny, init=str(first), exemplar_text=True)
    again = T2IPipeline.from_pretrained(train(TrainConfig(out=str(tmp_path / "zero_text"), max_steps=0, **reads)))
    assert again.generator.config.exemplar_text
    assert again("a red circle", seed=0).images[0].tobytes() == pipe("a red circle", seed=0).images[0].tobytes()
    # A few steps, interrupted and resumed, equal an uninterrupted run; the exemplar path learns.
    full = train(TrainConfig(out=str(tmp_path / "a"), max_steps=4, **reads))
    train(TrainConfig(out=str(tmp_path / "b"), max_steps=2, **reads))
    train(TrainConfig(out=str(tmp_path / "b"), max_steps=4, resume=True, **reads))
    a = load_file(list_checkpoints(tmp_path / "a")[-1] / "generator.safetensors")
    b = load_file(list_checkpoints(tmp_path / "b")[-1] / "generator.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert a["exemplar_in.8.weight"].abs().sum() > 0 and a["exemplar_text_in.weight"].abs().sum() > 0
    trained = T2IPipeline.from_pretrained(full)
    assert trained.bank.captions == pipe.bank.captions and trained("a red circle", seed=0).exemplars[0]
    assert len(trained.interpolate(["a red circle", "a blue square"], frames=3)) == 3


def test_black_and_white_drawings_are_never_recoloured():
    """Recolouring leaves a drawing without saturated pixels as it is, so captioning it "a blue cat face" would
    teach a falsehood: such images (the high-contrast style) are never picked for recolouring."""
    from t2i_core.images import saturated_share
    from t2i_core.training.pairs import MIN_COLOURFUL

    images = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    images[:2, :, 2:6, 2:6] = 0  # black outlines on white
    images[2:, 0, 2:6, 2:6] = 230  # a red square
    images[2:, 1:, 2:6, 2:6] = 20
    share = saturated_share(images)
    assert torch.allclose(share, torch.tensor([0.0, 0.0, 0.25, 0.25]))
    colourful = share >= MIN_COLOURFUL
    group_ids = torch.tensor([0, 1, 0, 1])
    sampler = ExemplarSampler(group_ids, ["cat face", "apple"], torch.randn(2, 16), neighbours=1, colourful=colourful)
    idx = torch.arange(4).repeat(50)
    picks = sampler.pick(idx, torch.Generator().manual_seed(0), recolour_prob=0.5)
    assert not picks.recolour[idx < 2].any() and picks.recolour[idx >= 2].float().mean() > 0.3


def test_recolour_grey_tints_a_grey_drawing_and_still_leaves_black_and_white_ones(text_encoder):
    """A grey elephant has no saturated pixels to turn, so "a yellow elephant" was never trained on and a model that
    reads its exemplar's caption kept the grey. With --recolour-grey such drawings are tinted (their mid-grey takes
    the hue; outline black and background white stay); black-and-white line drawings are still never recoloured."""
    from PIL import Image

    from t2i_core.data.loading import Pair
    from t2i_core.images import rgb_to_hsv
    from t2i_core.training.config import TrainConfig
    from t2i_core.training.pairs import PairData, draw_batch

    def drawing(body):
        img = Image.new("RGB", (16, 16), (255, 255, 255))
        img.paste((0, 0, 0), (3, 3, 13, 13))
        img.paste(body, (4, 4, 12, 12))
        return img

    pairs = [Pair(drawing((128, 128, 128)), "elephant, google style", "0.png"),
             Pair(drawing((255, 255, 255)), "cat face, contrast style", "1.png"),
             Pair(drawing((220, 30, 30)), "apple, google style", "2.png")]
    for tint, want in ((False, [False, False, True]), (True, [True, False, True])):
        data = PairData.build(pairs, text_encoder).use_exemplars(tint_grey=tint)
        assert data.sampler.colourful.tolist() == want and data.grey.tolist() == [tint, False, False]
        cfg = TrainConfig(batch_size=6, recolour_prob=1.0, caption_dropout=0.0, recolour_grey=tint)
        for step in range(4):
            b = draw_batch(data, cfg, step, z_dim=4, resolution=16)
            original = data.images[data.batch_indices(step, 6, cfg.seed)].float() / 127.5 - 1
            for real, orig, ok in zip(b.real, original, torch.tensor(want)[data.batch_indices(step, 6, cfg.seed)]):
                hsv = rgb_to_hsv((real[None] + 1) / 2)[0]
                assert torch.allclose(real[:, 0, 0], orig[:, 0, 0]) and torch.allclose(real[:, 3, 3], orig[:, 3, 3])
                assert bool(hsv[1, 8, 8] > 0.5) == bool(ok)  # the body is coloured exactly when it could be


def test_a_seed_picks_the_same_entry_whatever_order_ties_come_in():
    # Four entries of one group tie exactly on the group's name; the order topk returns ties in (or last-bit noise
    # in the query, such as fp16 text-encoder weights give) must not change which one a seed draws.
    bank = tiny_bank(n=16, groups=4)
    bank.group_vectors = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    query = bank.group_vectors[2:3]
    picks = {s: bank.retrieve(query, 1, seeds=[s]).item() for s in range(12)}
    assert {bank.groups[j] for j in picks.values()} == {"g2"} and len(set(picks.values())) > 1
    noisy = torch.nn.functional.normalize(query + 1e-5 * torch.randn(1, 16, generator=torch.Generator().manual_seed(2)))
    assert {s: bank.retrieve(noisy, 1, seeds=[s]).item() for s in range(12)} == picks
    # The same scores with exact ties listed the other way round: the picks follow the entries, not the order.
    nearest = bank._nearest

    def ties_reversed(q, n):
        sims, idx = nearest(q, n)
        key = sims.double() * 1e6 + idx.double() * 1e-3  # ties on the score: the higher index first
        order = key.argsort(dim=1, descending=True)
        return sims.gather(1, order), idx.gather(1, order)

    assert nearest(query, 8)[1][0, :4].tolist() != ties_reversed(query, 8)[1][0, :4].tolist()
    bank._nearest = ties_reversed
    assert {s: bank.retrieve(query, 1, seeds=[s]).item() for s in range(12)} == picks


def test_consecutive_seeds_draw_every_near_tie_once_before_any_twice():
    # The images of one call use consecutive seeds; a random pick among ties gave two of them the same exemplar (the
    # same picture twice in a grid). Each near tie must come once before any comes again, the best-ranked at seed 0,
    # whatever seed the run starts at.
    bank = tiny_bank(n=16, groups=4)
    bank.group_vectors = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    query = bank.group_vectors[1:2]
    ties = [j for j in range(16) if bank.groups[j] == "g1"]
    for start in (0, 5, 1_000_003):
        drawn = [bank.retrieve(query, 1, seeds=[start + s]).item() for s in range(2 * len(ties))]
        assert sorted(drawn[: len(ties)]) == ties and drawn[len(ties):] == drawn[: len(ties)]
    # Seed 0 draws the tie whose own caption is nearest the query.
    caption_sims = bank.vectors[ties] @ torch.nn.functional.normalize(query, dim=-1)[0]
    assert bank.retrieve(query, 1, seeds=[0]).item() == ties[int(caption_sims.argmax())]


def test_seeds_take_turns_between_the_two_best_kinds_and_never_draw_a_third():
    # Three kinds (groups) within the ties margin of a prompt: consecutive seeds alternate between the two best and
    # go through each one's entries; the third is never drawn.
    eye = torch.eye(16)
    group_vectors = eye[:3].clone()
    gen = torch.Generator().manual_seed(3)
    groups = [f"kind {i % 3}" for i in range(12)]
    vectors = torch.nn.functional.normalize(eye[[i % 3 for i in range(12)]] + 0.5 * torch.cat(
        [torch.zeros(12, 3), torch.randn(12, 13, generator=gen)], dim=1), dim=-1)
    bank = ExemplarBank(torch.zeros(12, 3, 8, 8, dtype=torch.uint8), vectors, [f"c{i}" for i in range(12)], groups,
                        group_vectors)
    query = torch.nn.functional.normalize(eye[0] + 0.999 * eye[1] + 0.98 * eye[2], dim=-1)[None]
    drawn = [bank.retrieve(query, 1, seeds=[s]).item() for s in range(8)]
    kinds = [groups[j] for j in drawn]
    assert set(kinds) == {"kind 0", "kind 1"} and kinds[0] != kinds[1] and kinds == kinds[:2] * 4
    assert len(set(drawn)) == 8  # each kind's four entries, once each


def test_without_a_close_match_seeds_take_turns_among_the_best_kinds_pictures():
    # The bank lacks what the prompt names and one picture alone lies within the ties margin ("dog face, fluent style"
    # finds "dog, fluent style" 0.06 above "dog, fluent modern style"): consecutive seeds draw that kind's next
    # picture too, never a third one nor another kind's. A prompt that is a picture's own caption keeps that picture.
    eye = torch.eye(16)
    groups = ["kind 0"] * 3 + ["kind 1"] * 3
    bank = ExemplarBank(torch.zeros(6, 3, 8, 8, dtype=torch.uint8), eye[2:8].clone(), [f"c{i}" for i in range(6)],
                        groups, eye[:2].clone())
    near = torch.nn.functional.normalize(0.9 * eye[2] + 0.3 * eye[0] + 0.316 * eye[8], dim=-1)[None]
    assert [bank.retrieve(near, 1, seeds=[s]).item() for s in range(6)] == [0, 1] * 3
    assert {bank.retrieve(eye[2:3], 1, seeds=[s]).item() for s in range(6)} == {0}


def test_a_style_less_caption_learns_the_pixels_of_its_own_picture_drawn_beside_it(text_encoder):
    """People type 'a ghost', not 'ghost, fluent style'. A sample trained on such a caption with its own picture as
    the exemplar gets the pixel losses, as a styled caption does, so it keeps the exemplar's colours; with another
    picture beside it, the caption does not fix the pixels and it gets none."""
    from PIL import Image

    from t2i_core.data.loading import Pair
    from t2i_core.training.config import TrainConfig
    from t2i_core.training.pairs import PairData, draw_batch

    pairs = [Pair(Image.new("RGB", (16, 16), (40 * i, 90, 200 - 30 * i)), f"{name}, {style} style", str(i),
                  (name, f"{name} emoji"))
             for i, (name, style) in enumerate([("ghost", "google"), ("ghost", "twitter"), ("apple", "google"),
                                                ("apple", "twitter"), ("the moon", "google"), ("the moon", "apple")])]
    assert "a ghost" not in PairData.build(pairs, text_encoder).captions
    data = PairData.build(pairs, text_encoder, article=True).use_exemplars()
    assert {"a ghost", "an apple"} <= set(data.captions) and "a the moon" not in data.captions
    cfg = TrainConfig(batch_size=6, alt_caption_prob=1.0, caption_dropout=0.0, recolour_prob=0.0, exemplar_prob=1.0,
                      exemplar_self=0.5, exemplar_same_group=0.5)
    own, paired = [], []
    for step in range(20):
        b = draw_batch(data, cfg, step, z_dim=4, resolution=16)
        own.append((b.g_inputs["exemplars"][:, 0] == b.real).flatten(1).all(1) & b.g_inputs["exemplar_mask"][:, 0])
        paired.append(b.paired)
        # Each exemplar comes with its own caption's vector, as the bank holds it.
        shown = (b.g_inputs["exemplars"][:, 0, None] == data.images.float() / 127.5 - 1).flatten(2).all(2).float().argmax(1)
        bank = data.bank()
        assert torch.allclose(b.g_inputs["exemplar_text"][:, 0], bank.vectors[shown].float(), atol=1e-3)
    own, paired = torch.cat(own), torch.cat(paired)
    assert 0 < own.sum() < len(own) and torch.equal(paired, own)


def test_a_fine_tune_keeps_practising_to_redraw_an_uploaded_picture_from_itself(text_encoder):
    """An upload's own caption retrieves its own picture at generation. A fine-tune with the defaults must practise
    that case, with pixel losses, or it unlearns it (a user's 250 logos: 0.85 of captions drew their own logo after
    10 minutes without it, 1.00 with nothing trained). Its other exemplars stay other pictures, to read the text."""
    from PIL import Image

    from t2i_core.data.loading import Pair
    from t2i_core.training.config import TrainConfig
    from t2i_core.training.pairs import PairData, draw_batch

    names = ["acme logo", "globex logo", "initech logo", "umbrella logo", "hooli logo", "soylent logo"]
    pairs = [Pair(Image.new("RGB", (16, 16), (40 * i, 90, 200 - 30 * i)), name, f"{i}.png")
             for i, name in enumerate(names)]
    data = PairData.build(pairs, text_encoder).use_exemplars()
    cfg = TrainConfig(batch_size=8)
    own, other, paired = [], [], []
    for step in range(40):
        b = draw_batch(data, cfg, step, z_dim=4, resolution=16)
        present = b.g_inputs["exemplar_mask"][:, 0]
        same = (b.g_inputs["exemplars"][:, 0] == b.real).flatten(1).all(1)
        own.append(same & present)
        other.append(~same & present)
        paired.append(b.paired)
    own, other, paired = torch.cat(own), torch.cat(other), torch.cat(paired)
    assert 0.05 < own.float().mean() < 0.4 and other.sum() > own.sum()
    assert paired[own].all()
