"""Training the ContrastiveScorer CLIP-style (symmetric InfoNCE) against the frozen TextEncoder.

    python -m t2i_core.evaluation.scorer_training --data CORPUS/train --out assets/scorer [--minutes 10] [--seed 0]
    python -m t2i_core.evaluation.scorer_training --data CORPUS/train CORPUS/test --out assets/scorer ...  # both splits

The shipped scorer's recipe (its options are recorded in assets/scorer/config.json, "training"; figures in
docs/BENCHMARKS.md) adds --variants --text-hidden 1024 --hard-negatives 0.5 --blob-weight 1 --blob-kinds
blur,pixelate --channels 64 128 256 --stem-stride 4.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..images import COLOURS, recolor
from ..text import TextEncoder, load_text_encoder
from .blobs import KINDS, random_blobs
from .report import scorer_test_r_precision
from .scorer import ContrastiveScorer, ImageEncoder, contrastive_loss, shift_and_zoom, torch_threads, training_folder
from .scorer_data import ScorerData, batch_indices, data_description, load_scorer_data, nearest_names


@dataclass
class Recipe:
    """What makes a stronger scorer (all off by default); recorded in the scorer's config.json.

    text_hidden > 0 adds a residual MLP to the text head; variants=True draws each image's caption from all its forms
    (`scorer_data.caption_forms`; a styled one with probability `styled_share`); hard_negatives = f fills f / 2 of
    each batch with images whose names are nearest to others' in the batch; blob_weight > 0 adds `blob_loss` on random
    degraded copies (`blobs`, kinds `blob_kinds`) of `blob_share` of the batch. recolour_share = f turns about f of
    the images whose name names no colour to one of COLOURS (`images.recolor`), captioned "a blue <name>": the
    object stays that object in any colour, which the compositional set's object check relies on.
    """

    text_hidden: int = 0
    variants: bool = False
    styled_share: float = 0.5
    hard_negatives: float = 0.0
    blob_weight: float = 0.0
    blob_kinds: tuple[str, ...] = KINDS
    blob_share: float = 0.25
    weight_decay: float = 0.05
    recolour_share: float = 0.0


def blob_loss(scale: torch.Tensor, blob_emb: torch.Tensor, image_emb: torch.Tensor, text_emb: torch.Tensor,
              blob_text: torch.Tensor) -> torch.Tensor:
    """Degraded copies must not pass for their images. blob_emb (K, D): blobs of the first K images of the batch,
    whose embeddings are image_emb (B, D) and captions' text_emb (B, D); blob_text (D,): a learned "blob" caption.

    Two terms: each of those captions prefers its real image to its blob (a two-way softmax), and each blob's
    best caption among the batch's and the blob caption is the blob caption, so that no real caption ranks first
    for a blob because of its colours.
    """
    k = len(blob_emb)
    real = (image_emb[:k] * text_emb[:k]).sum(-1)
    fake = (blob_emb * text_emb[:k]).sum(-1)
    prefer_real = F.cross_entropy(scale * torch.stack([real, fake], 1), torch.zeros(k, dtype=torch.long))
    candidates = torch.cat([text_emb, F.normalize(blob_text, dim=-1)[None]])  # (B + 1, D)
    to_blob = F.cross_entropy(scale * blob_emb @ candidates.T, torch.full((k,), len(text_emb), dtype=torch.long))
    return 0.5 * (prefer_real + to_blob)


def train_scorer(data_dir_or_pairs, out_dir: str | os.PathLike | None = None, minutes: float = 10.0, max_steps: int = 0,
                 batch_size: int = 128, seed: int = 0, channels: tuple = (32, 64, 128, 192), embed_dim: int = 256,
                 resolution: int = 64, stem_stride: int = 2, augment: bool = True, lr: float = 2e-3,
                 text_encoder: TextEncoder | None = None, group_keys: dict[str, str] | None = None,
                 log_every: int = 50, threads: int = 0, cache_text: bool = True, save_every: float = 0.0,
                 init: str | os.PathLike | None = None, log=print, **recipe) -> ContrastiveScorer:
    """Train a ContrastiveScorer with the symmetric InfoNCE loss; save it to `out_dir` when given.

    data_dir_or_pairs: a training folder (a corpus root with train/ uses train/), a list of folders (all used), or a
    list of `Pair`s (then `group_keys` maps pair.source -> group, else pairs group by caption). Stops after
    `max_steps` (0: no limit) or `minutes` of training (0: no limit; text encoding before it is not counted); one of
    them must be set. The learning rate follows a warm-up then a cosine decay over whichever budget runs out first.
    The returned scorer is in eval mode with `info["loss_history"]` holding (step, loss) at each log point. threads > 0
    sets torch's CPU threads for the call (1 is often fastest on a busy machine); cache_text keeps caption vectors on
    disk. recipe: the fields of `Recipe` (text_hidden, variants, hard_negatives, blob_weight, ...). save_every > 0
    also saves to out_dir every that many minutes. init: a scorer folder of the same architecture to start from (a
    warm restart of the schedule: the steps add to its own).
    """
    recipe = Recipe(**recipe)
    recipe.blob_kinds = tuple(recipe.blob_kinds)
    if not minutes and not max_steps:
        raise ValueError("train_scorer needs a budget: pass minutes > 0 or max_steps > 0.")
    text_encoder = text_encoder or load_text_encoder()
    with torch_threads(threads):
        data = load_scorer_data(data_dir_or_pairs, text_encoder, resolution, group_keys, cache_text, log,
                                recipe.variants, recolour=recipe.recolour_share > 0)
        n = len(data.images)
        batch_size = min(batch_size, n)
        torch.manual_seed(seed)
        image_encoder = ImageEncoder(resolution=resolution, channels=tuple(channels), embed_dim=embed_dim,
                                     stem_stride=stem_stride)
        scorer = ContrastiveScorer(image_encoder, text_encoder, text_hidden=recipe.text_hidden).train()
        init_info = _start_from(scorer, init, text_encoder) if init is not None else None
        start = time.time()
        facts = {"data": data_description(data_dir_or_pairs), "pairs": n, "seed": seed, "batch_size": batch_size,
                 "lr": lr, "augment": augment, "init": init_info, **asdict(recipe),
                 "blob_kinds": list(recipe.blob_kinds)}

        def info(step: int, history: list) -> dict:
            # data: the last two parts of each path (e.g. emoji/train), provenance without this machine's layout.
            return {**facts, "steps": step, "minutes": round((time.time() - start) / 60, 2),
                    "final_loss": history[-1][1] if history else None, "loss_history": history}

        def checkpoint(step: int, history: list) -> None:
            scorer.info = {**info(step, history), "checkpoint": True}
            scorer.save_pretrained(out_dir)
            log(f"checkpoint at step {step} saved to {out_dir}")

        step, history = _fit(scorer, data, recipe, batch_size, seed, minutes, max_steps, augment, lr, log_every, log,
                             checkpoint if out_dir is not None and save_every else None, save_every)

    scorer.eval().requires_grad_(False)
    scorer.info = info(step, history)
    if out_dir is not None:
        scorer.save_pretrained(out_dir)
        log(f"saved scorer to {out_dir}")
    return scorer


def _start_from(scorer: ContrastiveScorer, init: str | os.PathLike, text_encoder: TextEncoder) -> dict:
    """Load the saved scorer `init` into `scorer` (same architecture, else a ValueError saying what to pass);
    returns its data, steps and minutes for the record."""
    start_from = ContrastiveScorer.from_pretrained(init, text_encoder=text_encoder)
    own = {k: v for k, v in scorer.state_dict().items() if not k.startswith("text_encoder.")}
    theirs = {k: v for k, v in start_from.state_dict().items() if not k.startswith("text_encoder.")}
    if {k: v.shape for k, v in own.items()} != {k: v.shape for k, v in theirs.items()}:
        raise ValueError(f"--init {str(init)!r} has another architecture; pass the same --channels, "
                         "--stem-stride, --embed-dim and --text-hidden as it was trained with.")
    # Part by part: the shared text encoder is not theirs to load (and its fp16-packed layers refuse a partial load).
    for name, child in scorer.named_children():
        if name != "text_encoder":
            child.load_state_dict({k[len(name) + 1:]: v for k, v in theirs.items() if k.startswith(name + ".")})
    with torch.no_grad():
        for k, v in theirs.items():
            if "." not in k:
                getattr(scorer, k).copy_(v)
    return {k: start_from.info.get(k) for k in ("data", "steps", "minutes")}


def _fit(scorer: ContrastiveScorer, data: ScorerData, recipe: Recipe, batch_size: int, seed: int, minutes: float,
         max_steps: int, augment: bool, lr: float, log_every: int, log, checkpoint=None,
         save_every: float = 0.0) -> tuple[int, list]:
    """The training loop of `train_scorer`; returns (steps done, [(step, loss) at each log point]).
    checkpoint(step, history), when given, is called every `save_every` minutes."""
    n = len(data.images)
    name_id, neighbours = nearest_names(data) if recipe.hard_negatives else (None, None)
    blob_text = nn.Parameter(torch.randn(scorer.embed_dim) * scorer.embed_dim**-0.5)  # training only; never saved
    params = [p for name, p in scorer.named_parameters() if not name.startswith("text_encoder.")]
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
         {"params": [p for p in params if p.ndim < 2] + [blob_text], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(seed)
    warmup = 100 if not max_steps else min(100, max(1, max_steps // 10))

    start, step, history, perm, pos = time.time(), 0, [], torch.randperm(n, generator=gen), 0
    last_save = start
    while True:
        # Schedule: warm-up, then cosine decay over the budget that runs out first.
        progress = max(step / max_steps if max_steps else 0.0,
                       (time.time() - start) / (60 * minutes) if minutes else 0.0)
        if progress >= 1.0:
            break
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * scale

        # Batch: walk a per-epoch permutation; hard negatives replace its tail.
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        if recipe.hard_negatives:
            idx = batch_indices(idx, name_id, neighbours, recipe.hard_negatives, gen)
        loss = _loss(scorer, data, recipe, idx, augment, gen, blob_text)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step == 1 or step % log_every == 0:
            history.append((step, round(loss.item(), 4)))
            log(f"step {step} loss {loss.item():.4f} scale {scorer.logit_scale.exp().item():.1f} "
                f"lr {lr * scale:.2e} {time.time() - start:.0f}s")
        if checkpoint is not None and time.time() - last_save > 60 * save_every:
            checkpoint(step, history)
            last_save = time.time()
    return step, history


def _loss(scorer: ContrastiveScorer, data: ScorerData, recipe: Recipe, idx: torch.Tensor, augment: bool,
          gen: torch.Generator, blob_text: torch.Tensor) -> torch.Tensor:
    """One batch's loss: InfoNCE over images idx and one caption form each, plus `blob_loss` when it is on."""
    images = data.images[idx].float().div(127.5).sub(1.0)
    if augment:
        images = shift_and_zoom(images, gen)
    text_idx = data.sample_text(idx, gen, recipe.styled_share) if recipe.variants else data.variants[idx, 0]
    groups = data.groups[idx]
    pooled = data.pooled[text_idx]
    if recipe.recolour_share and data.recolour is not None:
        row = data.recolour[idx]
        chosen = torch.nonzero((torch.rand(len(idx), generator=gen) < recipe.recolour_share) & (row >= 0)).squeeze(1)
        colour = torch.randint(len(COLOURS), (len(chosen),), generator=gen)
        form = torch.randint(2, (len(chosen),), generator=gen)
        images[chosen] = recolor(images[chosen], torch.tensor(list(COLOURS.values()))[colour]).to(images.dtype)
        pooled[chosen] = data.colour_pooled[row[chosen], colour, form]
    image_emb = scorer.encode_images(images)
    text_emb = scorer.encode_pooled(pooled)
    loss = contrastive_loss(scorer.logits(image_emb, text_emb), groups[:, None] == groups[None, :])
    if recipe.blob_weight:
        k = max(1, int(recipe.blob_share * len(idx)))
        blob_emb = scorer.encode_images(random_blobs(images[:k], gen, recipe.blob_kinds))
        loss = loss + recipe.blob_weight * blob_loss(scorer.logit_scale.exp().clamp(max=100.0), blob_emb, image_emb,
                                                     text_emb, blob_text)
    return loss


# Command line: python -m t2i_core.evaluation.scorer_training


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m t2i_core.evaluation.scorer_training",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+",
                        help="training folder(s), all used (a corpus root with train/ uses train/); the shipped "
                             "scorer is trained on both splits, CORPUS/train CORPUS/test")
    parser.add_argument("--out", required=True, help="scorer folder to write")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget (default 10)")
    parser.add_argument("--max-steps", type=int, default=0, help="step budget (0 = none)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--text-hidden", type=int, default=0,
                        help="width of a residual MLP in the text head (0 = a linear head only)")
    parser.add_argument("--variants", action="store_true",
                        help="train on every caption form (name, with/without style, 'emoji of ...', paraphrases)")
    parser.add_argument("--styled-share", type=float, default=0.5,
                        help="with --variants, the share of captions that name the style (default 0.5)")
    parser.add_argument("--hard-negatives", type=float, default=0.0, metavar="F",
                        help="share of each batch drawn as the nearest names of the rest (default 0)")
    parser.add_argument("--blob-weight", type=float, default=0.0,
                        help="weight of the loss that ranks degraded copies (blur, silhouette, pixelated) below the "
                             "real image (default 0: off)")
    parser.add_argument("--blob-kinds", default=",".join(KINDS), help="comma-separated degradations for --blob-weight")
    parser.add_argument("--recolour-share", type=float, default=0.0, metavar="F",
                        help="share of images (whose name names no colour) recoloured and captioned 'a blue <name>' "
                             "(default 0)")
    parser.add_argument("--init", default=None, metavar="DIR",
                        help="start from this scorer folder (same architecture flags); a warm restart")
    parser.add_argument("--save-every", type=float, default=0.0, metavar="MIN",
                        help="also save to --out every MIN minutes (default 0: only at the end)")
    parser.add_argument("--test", default=None,
                        help="folder to measure R@1 on (default: the corpus's test/ beside the first --data; "
                             "reported as NOT held-out when it was trained on)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        data = args.data[0] if len(args.data) == 1 else args.data
        scorer = train_scorer(data, args.out if args.save_every else None, minutes=args.minutes,
                              max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed,
                              channels=tuple(args.channels), embed_dim=args.embed_dim, stem_stride=args.stem_stride,
                              augment=not args.no_augment, lr=args.lr, threads=args.threads,
                              text_hidden=args.text_hidden, variants=args.variants, styled_share=args.styled_share,
                              hard_negatives=args.hard_negatives, blob_weight=args.blob_weight,
                              blob_kinds=tuple(k.strip() for k in args.blob_kinds.split(",") if k.strip()),
                              recolour_share=args.recolour_share,
                              save_every=args.save_every, init=args.init)
        test = Path(args.test) if args.test else training_folder(args.data[0]).parent / "test"
        if (test / "metadata.jsonl").is_file():
            held_out = test.resolve() not in {training_folder(d).resolve() for d in args.data}
            figures = scorer_test_r_precision(scorer, test)
            scorer.info["test"] = {"folder": "/".join(test.parts[-2:]), "held_out": held_out, **figures}
            kind = "held-out" if held_out else "NOT held-out (trained on it)"
            print(f"{kind} R@1 of real images in {test} among {figures['candidates']} captions: "
                  f"{figures['r_precision']:.3f} (chance {1 / figures['candidates']:.3f}); "
                  f"alignment {figures['alignment']:.2f}")
        scorer.save_pretrained(args.out)
        print(f"saved scorer to {args.out}")
    except ValueError as err:
        parser.exit(2, f"error: {' '.join(str(err).split())}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
