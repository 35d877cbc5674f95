"""Training the ContrastiveScorer CLIP-style (symmetric InfoNCE) against the frozen TextEncoder.

    python -m t2i_core.evaluation.scorer_training --data CORPUS/train --out assets/scorer [--minutes 10] [--seed 0]
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.loading import images_to_tensor, load_pairs
from ..text import TextEncoder, load_text_encoder
from .report import scorer_test_r_precision
from .scorer import (ContrastiveScorer, ImageEncoder, contrastive_loss, pooled_text_vectors, read_group_keys,
                     shift_and_zoom, torch_threads, training_folder)


@dataclass
class ScorerData:
    """Training tensors: images (N, 3, R, R) uint8, pooled text (N, pooled_dim), group id per image (N,)."""

    images: torch.Tensor
    pooled: torch.Tensor
    groups: torch.Tensor
    captions: list[str]



def build_scorer_data(pairs, text_encoder: TextEncoder, group_keys: dict[str, str] | None = None,
                      resolution: int = 64, cache_text: bool = False) -> ScorerData:
    """Pairs -> ScorerData. Images with the same group key (else the same caption) are never each other's negatives."""
    images = images_to_tensor(pairs)
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    captions = [p.text for p in pairs]
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    pooled = pooled_text_vectors(text_encoder, unique, cache=cache_text)[torch.tensor([index[c] for c in captions])]
    keys = [(group_keys or {}).get(p.source, "text:" + p.text) for p in pairs]
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    groups = torch.tensor([ids[k] for k in keys])
    return ScorerData(images, pooled, groups, captions)



def load_scorer_data(data_dir_or_pairs, text_encoder: TextEncoder, resolution: int = 64,
                     group_keys: dict[str, str] | None = None, cache_text: bool = False, log=print) -> ScorerData:
    """A training folder (a corpus root with train/ uses train/) or a list of `Pair`s -> ScorerData."""
    if isinstance(data_dir_or_pairs, (str, os.PathLike)):
        folder = training_folder(data_dir_or_pairs)
        pairs, report = load_pairs(folder, resolution)
        log(report.summary())
        group_keys = read_group_keys(folder) if group_keys is None else group_keys
    else:
        pairs = list(data_dir_or_pairs)
    start = time.time()
    data = build_scorer_data(pairs, text_encoder, group_keys, resolution, cache_text)
    log(f"encoded {len(set(data.captions))} captions in {time.time() - start:.0f}s; "
        f"{len(pairs)} images in {int(data.groups.max()) + 1} groups")
    return data


def train_scorer(
    data_dir_or_pairs,
    out_dir: str | os.PathLike | None = None,
    minutes: float = 10.0,
    max_steps: int = 0,
    batch_size: int = 128,
    seed: int = 0,
    channels: tuple = (32, 64, 128, 192),
    embed_dim: int = 256,
    resolution: int = 64,
    stem_stride: int = 2,
    augment: bool = True,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    text_encoder: TextEncoder | None = None,
    group_keys: dict[str, str] | None = None,
    log_every: int = 50,
    threads: int = 0,
    cache_text: bool = True,
    log=print,
) -> ContrastiveScorer:
    """Train a ContrastiveScorer with the symmetric InfoNCE loss; save it to `out_dir` when given.

    data_dir_or_pairs: a training folder (a corpus root with train/ uses train/), or a list of `Pair`s (then
    `group_keys` maps pair.source -> group, else pairs group by caption). Stops after `max_steps` (0: no limit) or
    `minutes` of training (0: no limit; text encoding before it is not counted); one of them must be set. The
    learning rate follows a warm-up then a cosine decay over whichever budget runs out first. The returned scorer is
    in eval mode with `info["loss_history"]` holding (step, loss) at each log point. threads > 0 sets torch's CPU
    threads for the call (1 is often fastest on a busy machine); cache_text keeps caption vectors on disk.
    """
    if not minutes and not max_steps:
        raise ValueError("train_scorer needs a budget: pass minutes > 0 or max_steps > 0.")
    text_encoder = text_encoder or load_text_encoder()
    with torch_threads(threads):
        data = load_scorer_data(data_dir_or_pairs, text_encoder, resolution, group_keys, cache_text, log)
        n = len(data.images)
        batch_size = min(batch_size, n)

        torch.manual_seed(seed)
        image_encoder = ImageEncoder(resolution=resolution, channels=tuple(channels), embed_dim=embed_dim,
                                     stem_stride=stem_stride)
        scorer = ContrastiveScorer(image_encoder, text_encoder).train()
        start = time.time()
        step, history = _fit(scorer, data, batch_size, seed, minutes, max_steps, augment, lr, weight_decay,
                             log_every, log)

    scorer.eval().requires_grad_(False)
    scorer.info = {
        # The last two parts of the path (e.g. emoji/train): provenance without this machine's layout.
        "data": "/".join(Path(data_dir_or_pairs).parts[-2:]) if isinstance(data_dir_or_pairs, (str, os.PathLike))
        else "pairs",
        "pairs": n, "seed": seed, "steps": step, "batch_size": batch_size,
        "minutes": round((time.time() - start) / 60, 2), "lr": lr, "augment": augment,
        "final_loss": history[-1][1] if history else None, "loss_history": history,
    }
    if out_dir is not None:
        scorer.save_pretrained(out_dir)
        log(f"saved scorer to {out_dir}")
    return scorer


def _fit(scorer: ContrastiveScorer, data: ScorerData, batch_size: int, seed: int, minutes: float, max_steps: int,
         augment: bool, lr: float, weight_decay: float, log_every: int, log) -> tuple[int, list]:
    """The training loop of `train_scorer`; returns (steps done, [(step, loss) at each log point])."""
    n = len(data.images)
    params = [p for name, p in scorer.named_parameters() if not name.startswith("text_encoder.")]
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(seed)
    warmup = 100 if not max_steps else min(100, max(1, max_steps // 10))

    start, step, history, perm, pos = time.time(), 0, [], torch.randperm(n, generator=gen), 0
    while True:
        # Schedule: warm-up, then cosine decay over the budget that runs out first.
        progress = max(step / max_steps if max_steps else 0.0,
                       (time.time() - start) / (60 * minutes) if minutes else 0.0)
        if progress >= 1.0:
            break
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * scale

        # Batch: walk a per-epoch permutation.
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        images = data.images[idx].float().div(127.5).sub(1.0)
        if augment:
            images = shift_and_zoom(images, gen)

        # Update.
        groups = data.groups[idx]
        logits = scorer.logits(scorer.encode_images(images), scorer.encode_pooled(data.pooled[idx]))
        loss = contrastive_loss(logits, groups[:, None] == groups[None, :])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step == 1 or step % log_every == 0:
            history.append((step, round(loss.item(), 4)))
            log(f"step {step} loss {loss.item():.4f} scale {scorer.logit_scale.exp().item():.1f} "
                f"lr {lr * scale:.2e} {time.time() - start:.0f}s")
    return step, history


# Command line: python -m t2i_core.evaluation.scorer_training


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m t2i_core.evaluation.scorer_training",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", required=True, help="training folder (a corpus root with train/ uses train/)")
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
    parser.add_argument("--test", default=None,
                        help="held-out folder to measure R@1 on (default: the corpus's test/ beside train/)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        scorer = train_scorer(args.data, None, minutes=args.minutes, max_steps=args.max_steps,
                              batch_size=args.batch_size, seed=args.seed, channels=tuple(args.channels),
                              embed_dim=args.embed_dim, stem_stride=args.stem_stride, augment=not args.no_augment,
                              lr=args.lr, threads=args.threads)
        test = Path(args.test) if args.test else training_folder(args.data).parent / "test"
        if (test / "metadata.jsonl").is_file():
            figures = scorer_test_r_precision(scorer, test)
            scorer.info["test"] = {"folder": "/".join(test.parts[-2:]), **figures}
            print(f"held-out R@1 of real images among {figures['candidates']} captions: {figures['r_precision']:.3f} "
                  f"(chance {1 / figures['candidates']:.3f}); alignment {figures['alignment']:.2f}")
        scorer.save_pretrained(args.out)
        print(f"saved scorer to {args.out}")
    except ValueError as err:
        parser.exit(2, f"error: {' '.join(str(err).split())}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
