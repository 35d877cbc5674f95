"""Evaluation metrics on features with known answers, the contrastive scorer, and the eval command end to end."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from t2i_core.cli.evaluate import add_eval_arguments, run_eval_command
from t2i_core.evaluation.metrics import (
    alignment,
    choose_distractors,
    diversity,
    frechet_distance,
    max_distractors,
    paired_difference,
    per_caption_rate,
    pixel_diversity,
    r_precision,
)
from t2i_core.evaluation.report import fd_pairing, generated_images
from t2i_core.evaluation.scorer import ContrastiveScorer, ImageEncoder, contrastive_loss, shift_and_zoom
from t2i_core.evaluation.scorer_training import train_scorer

TINY_SCORER = dict(resolution=16, channels=(8, 16), embed_dim=16)
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "orange": (250, 150, 20)}
COLOURS_RGB = COLOURS
SHAPES = ("circle", "square", "triangle")
TEST_EMOJI = {("orange", "circle"), ("orange", "square"), ("orange", "triangle"), ("blue", "triangle")}


def draw_shape(colour: str, shape: str, style: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    fill, outline = (COLOURS[colour], None) if style == "flat" else (None, COLOURS[colour])
    width = 1 if style == "flat" else max(2, size // 10)
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    else:
        draw.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill, outline=outline, width=width)
    return image


@pytest.fixture(scope="module")
def shapes_corpus(tmp_path_factory):
    """A corpus in the emoji layout: root/{train,test}/metadata.jsonl, split by "emoji" (colour + shape), 2 styles."""
    root = tmp_path_factory.mktemp("shapes")
    for split in ("train", "test"):
        rows = []
        for colour in COLOURS:
            for shape in SHAPES:
                if ((colour, shape) in TEST_EMOJI) != (split == "test"):
                    continue
                for style in ("flat", "outline"):
                    name = f"{style}/{colour}-{shape}.png"
                    (root / split / style).mkdir(parents=True, exist_ok=True)
                    draw_shape(colour, shape, style).save(root / split / name)
                    label = f"{colour} {shape}"
                    rows.append({"file_name": name, "text": f"{label}, {style} style", "label": label,
                                 "style": style, "emoji": f"{colour}-{shape}"})
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tiny_scorer_dir(shapes_corpus, text_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("scorer") / "scorer"
    train_scorer(shapes_corpus, out, minutes=0, max_steps=3, seed=3, text_encoder=text_encoder, threads=1,
                 log=lambda _: None, **TINY_SCORER)
    return out


# Metrics.


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_per_caption_rate_counts_each_captions_own_images():
    hits = torch.tensor([True, False, True, True, False])
    caption = torch.tensor([0, 0, 2, 2, 2])
    assert per_caption_rate(hits, caption, 4) == [0.5, None, 0.6667, None]


def test_paired_difference_tells_a_real_gap_from_noise():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.9, 200).tolist()
    same = paired_difference(base, base)
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["equal"] == 200
    # Every caption 0.1 better: the whole interval is above 0.
    up = paired_difference([b + 0.1 for b in base], base)
    assert abs(up["difference"] - 0.1) < 1e-9 and up["ci95"][0] > 0.09 and up["better"] == 200
    # Noise of +-0.1 around no change: the interval holds 0. Captions missing on either side are left out.
    noisy = [b + d for b, d in zip(base, rng.choice([-0.1, 0.1], 200))]
    mixed = paired_difference(noisy + [None, 0.5], base + [0.5, None])
    assert mixed["captions"] == 200 and mixed["ci95"][0] < 0 < mixed["ci95"][1]
    assert mixed["better"] + mixed["worse"] == 200
    assert paired_difference(noisy, base, seed=3)["difference"] == mixed["difference"]


def test_r_precision_is_one_for_perfect_features_and_chance_for_shuffled():
    gen = torch.Generator().manual_seed(0)
    groups = [i // 2 for i in range(60)]  # captions come in pairs of one group, like two styles of an emoji
    text = unit(torch.randn(60, 32, generator=gen))
    true_idx = torch.arange(60).repeat(40)  # 2400 images
    distractors = choose_distractors(groups, 9, seed=1)[true_idx]
    assert r_precision(text[true_idx], text, true_idx, distractors) == 1.0
    # Images that carry no information about their caption rank it first about 1 time in 10.
    noise = unit(torch.randn(len(true_idx), 32, generator=gen))
    assert abs(r_precision(noise, text, true_idx, distractors) - 0.1) < 0.03
    # An image that matches another caption better than its own is a miss.
    wrong = text[distractors[:, 0]]
    assert r_precision(wrong, text, true_idx, distractors) == 0.0


def test_choose_distractors_skips_the_same_group_and_is_deterministic():
    groups = ["a", "a", "b", "c", "c", "d"]
    d = choose_distractors(groups, 3, seed=5)
    assert d.shape == (6, 3)
    for i, row in enumerate(d.tolist()):
        assert len(set(row)) == 3 and all(groups[j] != groups[i] for j in row)
    assert torch.equal(d, choose_distractors(groups, 3, seed=5))
    assert max_distractors(groups) == 4
    with pytest.raises(ValueError):
        choose_distractors(groups, 5)


def test_alignment_is_100_times_mean_cosine():
    a = unit(torch.randn(10, 8))
    assert alignment(a, a) == pytest.approx(100.0)
    assert alignment(a, -a) == pytest.approx(-100.0)
    b = torch.zeros(10, 8)
    b[:, 0] = 1
    c = torch.zeros(10, 8)
    c[:, 0], c[:, 1] = 1, 1
    assert alignment(b, c) == pytest.approx(100 / math.sqrt(2))


def test_frechet_distance_zero_for_itself_and_growing_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(800, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [frechet_distance(a, a + s) for s in (0.25, 0.5, 1.0)]
    assert shifts[0] < shifts[1] < shifts[2]
    # A pure mean shift of s in every one of the 8 dimensions costs |mu|^2 = 8 s^2.
    assert shifts[2] == pytest.approx(8.0, rel=1e-6)
    # Against scipy's matrix square root on sets of different covariance.
    from scipy import linalg

    b = rng.normal(size=(800, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb).real
    mu = a.mean(0) - b.mean(0)
    expected = mu @ mu + np.trace(ca + cb - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-5)


def test_diversity_zero_for_identical_samples_and_one_for_orthogonal():
    same = unit(torch.randn(5, 1, 16)).expand(5, 4, 16)
    assert diversity(same) == pytest.approx(0.0, abs=1e-9)
    assert diversity(torch.eye(4).expand(3, 4, 4)) == pytest.approx(1.0)
    assert math.isnan(diversity([torch.randn(1, 4)]))
    images = torch.zeros(2, 3, 3, 8, 8)
    assert pixel_diversity(images) == 0.0
    images[:, 1] = 1.0  # one sample of each prompt is white, the other grey: distance 1 / 2 on a 0..1 scale
    assert pixel_diversity(images) == pytest.approx(2 * 0.5 / 3)


def test_fd_pairing_uses_one_sample_per_real_image_of_the_same_caption():
    # Captions 0, 1, 1, 2, 1 with 2 samples per caption (caption-major): the second image of caption 1 gets sample 1.
    assert fd_pairing(torch.tensor([0, 1, 1, 2, 1]), 2).tolist() == [0, 2, 3, 4, 2]


# Scorer.


def test_image_encoder_shapes_and_feature_maps():
    enc = ImageEncoder(resolution=32, channels=(8, 16, 32), embed_dim=12)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert enc(x).shape == (3, 12)
    assert [tuple(m.shape) for m in enc.feature_maps(x)] == [(3, 8, 16, 16), (3, 16, 8, 8), (3, 32, 4, 4)]
    # No batch statistics: an image's embedding does not depend on its batch.
    torch.testing.assert_close(enc(x[:1]), enc(x)[:1], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        ImageEncoder(resolution=20, channels=(8, 16, 32))


def test_shift_and_zoom_keeps_white_and_moves_content():
    white = torch.ones(4, 3, 16, 16)
    out = shift_and_zoom(white, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, white)
    dot = -torch.ones(4, 3, 16, 16)
    assert not torch.allclose(shift_and_zoom(dot, torch.Generator().manual_seed(0)), dot)


def test_contrastive_loss_masks_same_group_negatives():
    logits = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    groups = torch.tensor([0, 0, 1])
    masked = contrastive_loss(logits, groups[:, None] == groups[None, :])
    assert masked < contrastive_loss(logits) and masked < 0.02


def test_scorer_save_load_round_trip(text_encoder, tmp_path):
    torch.manual_seed(0)
    scorer = ContrastiveScorer(ImageEncoder(**TINY_SCORER), text_encoder, {"seed": 7}).eval()
    with torch.no_grad():
        scorer.logit_scale.fill_(2.5)
    scorer.save_pretrained(tmp_path / "s")
    assert (tmp_path / "s" / "image_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["text_encoder"] == text_encoder.name and config["training"]["seed"] == 7
    loaded = ContrastiveScorer.from_pretrained(tmp_path / "s", text_encoder=text_encoder)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    prompts = ["a red circle", "a blue square"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(images), scorer.encode_images(images))
        torch.testing.assert_close(loaded.encode_texts(prompts), scorer.encode_texts(prompts))
        emb = loaded.encode_images(torch.rand(2, 3, 40, 40))  # other sizes are resized to the scorer's
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert loaded.logit_scale.item() == 2.5
    with pytest.raises(ValueError, match="python -m t2i_core.evaluation.scorer_training"):
        ContrastiveScorer.from_pretrained(tmp_path / "missing", text_encoder=text_encoder)


def test_train_scorer_lowers_the_contrastive_loss(shapes_corpus, text_encoder):
    scorer = train_scorer(shapes_corpus, None, minutes=0, max_steps=40, seed=0, augment=False, lr=3e-3,
                          text_encoder=text_encoder, log_every=5, threads=1, log=lambda _: None, **TINY_SCORER)
    history = scorer.info["loss_history"]
    assert history[0][0] == 1 and history[-1][0] == 40 and scorer.info["steps"] == 40
    # Every step sees the whole training split (16 images < batch size), so the losses are comparable.
    assert history[-1][1] < 0.7 * history[0][1]
    assert not scorer.training


# The eval command.


def run_eval(argv, capsys):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    # One thread: tiny tensors on a busy 2-core machine are many times slower with two.
    assert run_eval_command(parser.parse_args(argv + ["--threads", "1"])) == 0
    return capsys.readouterr().out


def table_rows(out: str) -> dict[str, list[str]]:
    """The main table's rows (it ends at the "chance R@1" line; the copy and compositional blocks follow it)."""
    table = out.split("chance R@1", 1)[0]
    return {line.split()[0]: line.split()[1:] for line in table.splitlines()
            if line.split() and line.split()[0] in ("generated", "real", "retrieval", "random", "recoloured")}


def block_rows(out: str, title: str) -> dict[str, list[str]]:
    """The rows of the block under the main table that starts with `title` (e.g. "copy check:")."""
    block = out.split("\n" + title, 1)[1].split("\nnote:", 1)[0].split("\ncompositional:", 1)[0]
    return {line.split()[0]: line.split()[1:] for line in block.splitlines()[1:]
            if line.split() and line.split()[0] in ("generated", "real", "retrieval", "random", "recoloured")}


def test_eval_command_on_a_corpus(shapes_corpus, tiny_model_dir, tiny_scorer_dir, tmp_path, capsys):
    out = run_eval(["--model", str(tiny_model_dir), "--data", str(shapes_corpus), "--scorer", str(tiny_scorer_dir),
                    "--samples", "2", "--json", str(tmp_path / "r.json"), "--grid", str(tmp_path / "g.png")], capsys)
    header = next(line for line in out.splitlines() if line.startswith("row"))
    for column in ("images", "R@1", "alignment", "FD", "diversity", "pixel div"):
        assert column in header
    rows = table_rows(out)
    assert set(rows) == {"generated", "real", "retrieval", "random"}
    assert "only 6 distractors" in out  # 8 test captions of 4 emoji (2 styles each): 6 of other emoji
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["candidates"] == 7 and report["captions"] == 8 and report["random_row"] == "random training images"
    for name in ("generated", "retrieval", "random"):
        figures = report["rows"][name]
        assert figures["images"] == 16
        for key in ("r_precision", "alignment", "frechet_distance", "diversity", "pixel_diversity"):
            assert math.isfinite(figures[key]), (name, key)
    real = report["rows"]["real"]
    assert real["images"] == 8 and real["frechet_distance"] == 0.0 and real["diversity"] is None
    assert 0 <= real["r_precision"] <= 1 and math.isfinite(real["alignment"])
    assert rows["real"][-2:] == ["n/a", "n/a"]
    assert Image.open(tmp_path / "g.png").size == (8 * 16, 16)  # 8 captions, first sample each, 16 px, 8 a row
    # The copy check: retrieval shows training images themselves (distance 0, all copies); real test images are
    # other emoji, so none is a copy; the random row (training images too) is not computed.
    copies = report["copies"]
    assert set(copies) == {"generated", "real", "retrieval"}
    assert copies["retrieval"]["pixel"]["p95"] < 1e-3 and copies["retrieval"]["pixel"]["share_below"] == 1.0
    assert copies["retrieval"]["scorer"]["p95"] < 1e-4
    assert copies["real"]["pixel"]["p5"] > 0.05 and copies["real"]["pixel"]["share_below"] == 0.0
    for figures in copies.values():
        assert figures["pixel"]["p5"] <= figures["pixel"]["p50"] <= figures["pixel"]["p95"]
    printed = block_rows(out, "copy check:")
    assert set(printed) == {"generated", "real", "retrieval"} and printed["retrieval"][3] == "1.000"
    assert "compositional" not in report


def test_eval_command_with_free_form_prompts(shapes_corpus, tiny_model_dir, tiny_scorer_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    words = ["a red ball", "a green box", "a blue kite", "an orange star", "a purple moon"]
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(words)))
    out = run_eval(["--model", str(tiny_model_dir), "--data", str(shapes_corpus), "--prompts", str(prompts),
                    "--scorer", str(tiny_scorer_dir), "--samples", "3", "--json", str(tmp_path / "r.json"),
                    "--exemplars", "0"], capsys)
    rows = table_rows(out)
    assert set(rows) == {"generated", "retrieval", "random"}
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "prompts" and report["candidates"] == 5  # distractors: the 4 other prompts
    assert report["exemplars"] == 0
    for name, figures in report["rows"].items():
        assert figures["images"] == 15 and figures["frechet_distance"] is None
        # Which prompts fail: one R@1 per prompt, averaging to the row's (every prompt has 3 images).
        per_prompt = report["per_caption_r_precision"][name]
        assert len(per_prompt) == 5 and all(0 <= v <= 1 for v in per_prompt)
        assert abs(sum(per_prompt) / 5 - figures["r_precision"]) < 1e-3
        for key in ("r_precision", "alignment", "diversity", "pixel_diversity"):
            assert math.isfinite(figures[key]), (name, key)
    # Generated against retrieval, paired by prompt, with its interval: the same per-prompt figures' difference.
    vs = report["r_precision_vs_retrieval"]
    gen, ret = report["per_caption_r_precision"]["generated"], report["per_caption_r_precision"]["retrieval"]
    assert abs(vs["difference"] - sum(g - r for g, r in zip(gen, ret)) / 5) < 1e-9 and vs["captions"] == 5
    assert vs["ci95"][0] <= vs["difference"] <= vs["ci95"][1] and "R@1 generated - retrieval" in out
    # Without a corpus (and from a .txt): no retrieval row, and the random row is noise.
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(words[:3]) + "\n")
    out = run_eval(["--model", str(tiny_model_dir), "--prompts", str(txt), "--scorer", str(tiny_scorer_dir),
                    "--samples", "1"], capsys)
    assert set(table_rows(out)) == {"generated", "random"} and "uniform noise" in out


def test_eval_scores_the_exemplars_each_image_drew_on_as_a_row(shapes_corpus, tiny_exemplar_model_dir, tiny_scorer_dir,
                                                                  tmp_path, capsys):
    from t2i_core import T2IPipeline

    prompts = tmp_path / "p.txt"
    words = ["a red square", "a blue square", "a green square", "a yellow square"]
    prompts.write_text("\n".join(words) + "\n")
    out = run_eval(["--model", str(tiny_exemplar_model_dir), "--data", str(shapes_corpus), "--prompts", str(prompts),
                    "--scorer", str(tiny_scorer_dir), "--samples", "2", "--json", str(tmp_path / "r.json")], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["rows"]) == {"generated", "exemplars", "retrieval", "random"}
    assert report["rows"]["exemplars"]["images"] == 8 and "R@1 generated - exemplars" in out
    assert "exemplars" not in report["copies"]  # bank pictures: not a question of copying
    vs = report["r_precision_vs_exemplars"]
    gen, ex = report["per_caption_r_precision"]["generated"], report["per_caption_r_precision"]["exemplars"]
    assert vs["captions"] == 4 and abs(vs["difference"] - sum(g - e for g, e in zip(gen, ex)) / 4) < 1e-9
    # The row is made of the bank pictures the generated images drew on, image by image.
    pipe = T2IPipeline.from_pretrained(tiny_exemplar_model_dir)
    drawn_on: list = []
    images = generated_images(pipe, words, 2, 0, log=lambda *a: None, drawn_on=drawn_on)
    assert len(drawn_on) == len(images) == 8
    assert drawn_on == [picked[0][1] for picked in pipe(words, num_images=2, seed=0).exemplars]
    assert all(pipe.bank.captions[j].startswith(w[2:]) for w, j in zip([w for w in words for _ in range(2)], drawn_on))


def test_eval_command_errors_say_what_to_do(shapes_corpus, tiny_model_dir, tiny_scorer_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    with pytest.raises(ValueError, match="python -m t2i_core.evaluation.scorer_training"):
        run_eval_command(parser.parse_args(["--model", str(tiny_model_dir), "--data", str(shapes_corpus),
                                            "--scorer", str(tmp_path / "none")]))
    with pytest.raises(ValueError, match="--data"):
        run_eval_command(parser.parse_args(["--model", str(tiny_model_dir)]))
    with pytest.raises(ValueError, match="no exemplar bank to draw on; pass exemplars=0"):
        run_eval_command(parser.parse_args(["--model", str(tiny_model_dir), "--data", str(shapes_corpus),
                                            "--scorer", str(tiny_scorer_dir), "--exemplars", "1"]))
    with pytest.raises(ValueError, match="does not exist"):
        run_eval_command(parser.parse_args(["--data", str(tmp_path / "nowhere"), "--scorer", str(tiny_scorer_dir)]))


# The stronger scorer's parts: caption forms, degraded copies, the MLP text head, the training command.


def test_caption_variants_name_every_form_once():
    from t2i_core.evaluation.captions import plain_variants, strip_articles, styled_variants

    plain = plain_variants("man in a tuxedo")
    assert plain[0] == "man in a tuxedo" and len(plain) == len(set(plain))
    assert {"man in a tuxedo emoji", "an emoji of a man in a tuxedo", "man in tuxedo", "a picture of a man in tuxedo",
            "man in tuxedo icon"} <= set(plain)
    assert "an emoji of an apple" in plain_variants("apple") and strip_articles("the end of a day") == "end of day"
    assert styled_variants("apple", "fluent_modern", "apple, fluent modern style") == [
        "apple, fluent modern style", "apple in fluent modern style"]


def test_scorer_data_samples_styled_and_plain_forms(shapes_corpus, text_encoder):
    from t2i_core.evaluation.scorer_data import load_scorer_data

    data = load_scorer_data([shapes_corpus / "train", shapes_corpus / "test"], text_encoder, 16, log=lambda _: None)
    assert len(data.images) == 24 and int(data.groups.max()) + 1 == 12  # both splits; styles share the emoji's group
    assert (data.styled == 2).all() and (data.plain > 5).all()
    gen = torch.Generator().manual_seed(0)
    idx = torch.zeros(400, dtype=torch.long)
    forms = data.sample_text(idx, gen, styled_share=0.5)
    styled = torch.isin(forms, data.variants[0, :2])
    assert 0.35 < styled.float().mean() < 0.65 and len(forms.unique()) == 2 + int(data.plain[0])
    assert (data.sample_text(idx, gen, styled_share=1.0) == data.variants[0, 0]).sum() > 150


def test_blobs_keep_colour_and_lose_detail():
    from t2i_core.evaluation.blobs import gaussian_blur, pixelate, random_blobs, silhouette

    image = torch.ones(1, 3, 32, 32)
    image[:, :, 8:24, 8:24] = -1.0
    image[:, 0, 8:16, 8:24] = 1.0  # top half of the square red-ish, bottom black
    sil = silhouette(image)
    assert torch.allclose(sil[0, :, 0, 0], torch.ones(3))
    inside = sil[0, :, 8:24, 8:24].reshape(3, -1)
    assert torch.allclose(inside, inside[:, :1].expand_as(inside)) and torch.allclose(inside[:, 0], torch.tensor([0.0, -1, -1]))
    blurred = gaussian_blur(image, 2.0)
    assert abs(blurred.mean() - image.mean()) < 1e-3 and -0.8 < blurred[0, 0, 16, 16] < 0.8  # an edge
    assert pixelate(image, 4).shape == image.shape
    out = random_blobs(image.expand(6, -1, -1, -1), torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and not torch.equal(out[0], image[0])
    with pytest.raises(ValueError, match="choose from"):
        random_blobs(image, torch.Generator(), ("noise",))


def test_scorer_command_trains_the_strong_recipe_and_saves_a_loadable_scorer(shapes_corpus, text_encoder, tmp_path,
                                                                            capsys):
    from t2i_core.evaluation.scorer_training import main

    out = tmp_path / "scorer"
    assert main(["--data", str(shapes_corpus / "train"), str(shapes_corpus / "test"), "--out", str(out),
                 "--max-steps", "3", "--minutes", "0", "--batch-size", "8", "--channels", "8", "16",
                 "--embed-dim", "16", "--threads", "1", "--seed", "5", "--variants", "--text-hidden", "32",
                 "--hard-negatives", "0.5", "--blob-weight", "1", "--blob-kinds", "blur,pixelate"]) == 0
    printed = capsys.readouterr().out
    assert "NOT held-out" in printed  # the test split was trained on, and the report says so
    scorer = ContrastiveScorer.from_pretrained(out, text_encoder=text_encoder)
    info = scorer.info
    assert info["steps"] == 3 and info["seed"] == 5 and info["variants"] and info["blob_kinds"] == ["blur", "pixelate"]
    assert info["data"].endswith("train + " + "/".join(shapes_corpus.parts[-1:]) + "/test")
    assert info["test"]["held_out"] is False
    with torch.no_grad():
        a = scorer.encode_texts(["red circle", "blue square"])
        scorer.text_mlp[2].weight.zero_()
        scorer.text_mlp[2].bias.zero_()
        b = scorer.encode_texts(["red circle", "blue square"])
    assert a.shape == (2, 16) and not torch.allclose(a, b)  # the saved MLP head is loaded and used

    # A warm restart from the saved scorer; another architecture is refused with what to pass.
    again = tmp_path / "again"
    common = ["--data", str(shapes_corpus / "train"), "--max-steps", "2", "--minutes", "0", "--batch-size", "8",
              "--embed-dim", "16", "--threads", "1", "--text-hidden", "32", "--init", str(out)]
    assert main(common + ["--out", str(again), "--channels", "8", "16"]) == 0
    assert ContrastiveScorer.from_pretrained(again, text_encoder=text_encoder).info["init"]["steps"] == 3
    with pytest.raises(SystemExit) as exit_info:
        main(common + ["--out", str(tmp_path / "wrong"), "--channels", "8", "32"])
    assert exit_info.value.code == 2 and "same --channels" in capsys.readouterr().err


# The copy check and the compositional checks.


def test_copy_distances_find_the_nearest_training_image():
    from t2i_core.evaluation.copies import COPY_THRESHOLD, copy_check, nearest_pixel_distance, summarise

    train = torch.full((5, 3, 32, 32), 255, dtype=torch.uint8)
    for i in range(5):
        train[i, i % 3, 8:24, 8:24] = 0  # squares missing one channel each, so they differ
    same = train[2:3].clone()
    noisy = (train[1:2].int() - 3).clamp(0, 255).to(torch.uint8)  # a copy 3 / 255 darker: RMS ~ 0.011
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)  # nearest: any square, 1/4 of one channel off
    # At their own 32 px (no resizing), in chunks smaller than the sets.
    d = nearest_pixel_distance(torch.cat([same, noisy, white]), train, resolution=32, chunk=2)
    assert d.shape == (3,) and d[0] < 1e-3 and 0.005 < d[1] < COPY_THRESHOLD
    assert abs(d[2] - math.sqrt(16 * 16 / (3 * 32 * 32))) < 1e-3  # one channel of a quarter of the pixels, 0 vs 1
    d64 = nearest_pixel_distance(torch.cat([same, white]), train)  # the default: both resized to 64 px
    assert d64[0] < 1e-3 and 0.25 < d64[1] < 0.32

    figures = summarise(torch.tensor([0.0, 0.01, 0.1, 0.2, 0.3]), COPY_THRESHOLD)
    assert figures["p50"] == pytest.approx(0.1) and figures["share_below"] == pytest.approx(0.4)
    assert figures["p5"] == pytest.approx(0.002) and figures["p95"] == pytest.approx(0.28)
    feats = F.normalize(torch.randn(5, 8), dim=-1)
    out = copy_check({"retrieval": train[:3], "other": white}, {"retrieval": feats[:3], "other": -feats[:1]}, train,
                     feats)
    assert out["retrieval"]["pixel"]["share_below"] == 1.0 and out["retrieval"]["scorer"]["p95"] < 1e-6
    assert out["other"]["pixel"]["share_below"] == 0.0 and out["other"]["scorer"]["p50"] > 0


def test_dominant_colour_names_the_hue_of_saturated_pixels():
    from t2i_core.evaluation.compositional import dominant_colour, read_compositional

    red, blue, white = (np.full((16, 16, 3), 255, dtype=np.uint8) for _ in range(3))
    red[4:12, 4:12] = (220, 30, 30)
    blue[4:12, 4:12] = (40, 60, 220)
    assert dominant_colour(red) == "red" and dominant_colour(blue) == "blue"
    assert dominant_colour(white) is None
    grey = white.copy()
    grey[4:12, 4:12] = (100, 100, 100)  # unsaturated: no colour
    assert dominant_colour(grey) is None
    shipped = read_compositional("bench/prompts_compositional.jsonl")
    assert len(shipped) == 48 and all({"prompt", "object", "colour"} <= set(r) for r in shipped)


def test_the_recoloured_reference_turns_coloured_pictures_to_the_asked_colour_and_keeps_grey_ones():
    from t2i_core.evaluation.compositional import dominant_colour, recoloured

    red, grey = (np.full((16, 16, 3), 255, dtype=np.uint8) for _ in range(2))
    red[4:12, 4:12] = (220, 30, 30)
    grey[4:12, 4:12] = (100, 100, 100)
    images = torch.from_numpy(np.stack([red, red, grey])).permute(0, 3, 1, 2)
    rows = [{"prompt": "a blue apple", "colour": "blue"}, {"prompt": "a green apple", "colour": "green"}]
    seen = []
    out, feats = recoloured(images[[0, 1, 2, 2]], rows, 2, lambda scorer, x: seen.append((scorer, x)) or x[:, 0], "S")
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 16, 16) and seen[0][0] == "S" and seen[0][1] is out
    assert [dominant_colour(im.permute(1, 2, 0).numpy()) for im in out] == ["blue", "blue", None, None]
    assert torch.equal(out[2:], images[[2, 2]]) and torch.equal(out[:, :, 0], images[[0, 1, 2, 2], :, 0])  # white kept


def test_eval_command_prints_the_compositional_checks(shapes_corpus, tiny_model_dir, tiny_scorer_dir, tmp_path,
                                                      capsys):
    rows = [{"id": "c0", "prompt": "a green circle", "object": "circle", "colour": "green"},
            {"id": "c1", "prompt": "a red triangle", "object": "triangle", "colour": "red"},
            {"id": "c2", "prompt": "a blue square", "object": "square", "colour": "blue"}]
    prompts = tmp_path / "c.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_eval(["--model", str(tiny_model_dir), "--data", str(shapes_corpus), "--prompts", str(prompts),
                    "--scorer", str(tiny_scorer_dir), "--samples", "2", "--json", str(tmp_path / "r.json")], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    figures = report["compositional"]
    assert set(figures) == {"generated", "retrieval", "recoloured"}
    assert set(block_rows(out, "compositional:")) == set(figures)
    for row in figures.values():
        assert row["images"] == 6 and len(row["per_prompt"]) == 3
        assert 0 <= row["both"] <= min(row["colour"], row["object"]) <= 1
    # The corpus has green circles, red triangles and blue squares (flat and outline): retrieval finds them.
    assert figures["retrieval"]["colour"] >= 0.5
    # The reference row is those pictures turned to the asked colours: the filled shapes take them, the outlines keep
    # their black (6 images, one of each shape kind; at least every filled one of them has the colour).
    assert figures["recoloured"]["colour"] >= figures["retrieval"]["colour"]
    # Objects ranked among the corpus's names that do not contain them (12 names, 4 of each shape: 8 others + 1).
    assert report["compositional_candidates"] == "12"
    assert set(report["copies"]) == {"generated", "retrieval"}  # no real row with prompts


def test_scorer_training_recolours_images_and_captions_together(tmp_path, text_encoder, monkeypatch):
    """With recolour_share, an image whose name names no colour is recoloured and captioned "a <colour> <name>";
    names that already say a colour ("red circle") are left alone."""
    from t2i_core.evaluation import scorer_training
    from t2i_core.evaluation.scorer_data import load_scorer_data
    from t2i_core.images import COLOURS, rgb_to_hsv

    rows = []
    for label, colour in (("circle", "green"), ("square", "green"), ("red circle", "red")):
        name = f"{label.replace(' ', '-')}.png"
        image = Image.new("RGB", (16, 16), "white")
        ImageDraw.Draw(image).rectangle((3, 3, 12, 12), fill=COLOURS_RGB[colour])
        image.save(tmp_path / name)
        rows.append({"file_name": name, "text": f"{label}, flat style", "label": label, "style": "flat"})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_scorer_data(tmp_path, text_encoder, 16, log=lambda _: None, recolour=True)
    order = [data.captions.index(f"{label}, flat style") for label in ("circle", "square", "red circle")]
    assert data.recolour[order].tolist() == [0, 1, -1] and data.colour_pooled.shape == (2, len(COLOURS), 2, 384)
    blue = list(COLOURS).index("blue")
    expected = text_encoder(["a blue circle"]).pooled.float()[0]
    assert torch.allclose(data.colour_pooled[0, blue, 1], expected, atol=1e-4)

    seen = {}

    class Spy(torch.nn.Module):
        def encode_images(self, images):
            seen["images"] = images.clone()
            return torch.zeros(len(images), 4, requires_grad=True)

        def encode_pooled(self, pooled):
            seen["pooled"] = pooled.clone()
            return torch.zeros(len(pooled), 4, requires_grad=True)

        def logits(self, a, b):
            return a @ b.T

    recipe = scorer_training.Recipe(recolour_share=1.0)
    idx = torch.tensor(order)
    scorer_training._loss(Spy(), data, recipe, idx, False, torch.Generator().manual_seed(0), None)
    hue = rgb_to_hsv((seen["images"][:, :, 8, 8:9] + 1) / 2)[:, 0, 0] * 360  # the centre pixel's hue
    assert abs(hue[2].item() - 0.0) < 2 or abs(hue[2].item() - 360) < 2  # "red circle" keeps its red
    for i in (0, 1):
        # Each recoloured image's caption vector is its own name in the colour its pixels now have.
        row = data.colour_pooled[int(data.recolour[order[i]])].view(-1, 384)
        match = int(torch.nonzero((row - seen["pooled"][i]).abs().sum(1) < 1e-6)[0]) // 2
        assert abs(hue[i].item() - list(COLOURS.values())[match]) < 2 or {hue[i].item() // 1, match} == {359.0, 0}
    assert torch.equal(seen["pooled"][2], data.pooled[data.variants[order[2], 0]])
