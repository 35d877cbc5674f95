"""The GPU recipe's bundle: a text encoder with a cut vocabulary that encodes the corpus captions as the full one does."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("train_h200", ROOT / "t2i_core" / "recipes" / "train_h200.py")
train_h200 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_h200)


def test_cut_encoder_tokenises_and_encodes_like_the_full_one(text_encoder, tmp_path):
    from t2i_core.text import TextEncoder

    texts = ["grinning face, google style", "1st place medal", "keycap 1, fluent style", "a cat wearing sunglasses", ""]
    tok = text_encoder.tokenizer
    ids = tok(texts)["input_ids"]
    special = {tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens}
    keep = sorted(special | {i for row in ids for i in row})
    by_id = {i: t for t, i in tok.get_vocab().items()}
    train_h200.cut_encoder(text_encoder, keep, by_id, tmp_path / "encoder")

    small = TextEncoder(str(tmp_path / "encoder"))
    small.model.float()
    assert small.model.get_input_embeddings().num_embeddings == len(keep) < 100
    assert [[keep[i] for i in row] for row in small.tokenizer(texts)["input_ids"]] == ids
    a, b = text_encoder(texts[:4]), small(texts[:4])
    assert torch.equal(a.mask, b.mask)
    assert (a.pooled - b.pooled).abs().max() < 5e-3
    assert (a.states - b.states).abs().max() < 5e-2
    # Words outside the cut vocabulary are unknown to it: that is why `pack` covers every caption and sample prompt.
    assert small.tokenizer.tokenize("zebra") == ["[UNK]"]
