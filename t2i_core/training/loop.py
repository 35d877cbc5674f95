"""One training routine for pretraining and fine-tuning: `train(TrainConfig(...))`.

The loop owns the order (data, D step, G step, EMA, log, sample, checkpoint); `losses.py` owns the maths.
Every random draw of a step comes from a generator seeded by (seed, step) and is drawn for the whole global
batch, so a resumed run and a multi-process run reproduce a single uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..models.discriminator import Discriminator
from ..models.generator import Generator
from .loss import (AugmentParams, color_distribution_loss, d_hinge_loss, diff_augment, g_hinge_loss,
                     mode_seeking_ratio, r1_penalty, reconstruction_loss, spectrum_loss)
from ..pipeline import PRECISIONS, check_model_folder, default_model_path, read_model_index, save_model_folder, to_pil
from ..text import DEFAULT_TEXT_ENCODER, TextEmbedding

CHECKPOINT_PREFIX = "checkpoint-"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # named configs, e.g. --config emoji64_cpu


@dataclass
class TrainConfig:
    """Everything a run needs; written to RUN_DIR/training_options.json as resolved."""

    data: str = ""
    out: str = "runs/train"
    init: str = "default"  # "default" (shipped model), "none" (from scratch) or a model folder
    max_steps: int = 1000
    minutes: float = 0.0  # wall-clock budget; 0 = none
    batch_size: int = 32
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    # Larger than Adam's 1e-8: gradients that cancel to float noise (~1e-9) then move weights by ~0 instead of
    # by ~lr in a random direction, which also keeps runs equal across process counts.
    adam_eps: float = 1e-6
    grad_clip: float = 10.0
    seed: int = 0
    # Losses.
    caption_dropout: float = 0.1  # share of G/D samples trained with the empty prompt (unconditional path)
    mismatch: bool = True  # real images with a wrong caption count as fakes for D
    r1_gamma: float = 0.1
    r1_every: int = 4  # lazy regularisation
    rec_weight: float = 1.0  # mean-image reconstruction; 0 where images of one caption vary a lot
    color_weight: float = 1.0  # position-free colour match of every sample to its caption's image
    shape_weight: float = 0.0  # position-free shape match: Fourier amplitudes of each sample vs its real image
    alt_caption_prob: float = 0.3  # share of samples trained on one of their image's alternative captions
    diversity_weight: float = 1.0  # mode seeking: two z of one caption should give different images
    diversity_cap: float = 0.5  # the image/noise distance ratio stops being rewarded above this
    augment: bool = True
    ema_halflife_images: float = 5000.0
    ema_rampup: float = 0.05
    # Model (used with init="none").
    resolution: int = 64
    text_encoder: str = DEFAULT_TEXT_ENCODER
    g_channels: tuple[int, ...] = ()
    d_channels: tuple[int, ...] = ()
    # Data.
    fit: str = "crop"
    image_column: str = "image"
    caption_column: str = "text"
    # Bookkeeping.
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    sample_every: int = 200
    log_every: int = 10
    sample_prompts: tuple[str, ...] = ()
    device: str = "cpu"
    precision: str = "bf16"  # autocast dtype for the forward passes; weights stay fp32
    threads: int = 0  # torch intra-op threads; 0 = leave as is
    resume: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    def check(self) -> None:
        if self.batch_size < 1 or self.max_steps < 0 or self.minutes < 0:
            raise ValueError("batch_size must be >= 1, max_steps and minutes >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.fit not in ("crop", "pad"):
            raise ValueError(f"fit must be 'crop' or 'pad', got {self.fit!r}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError("caption_dropout must be in [0, 1)")


@dataclass
class Progress:
    """What the progress callback receives after each logged step."""

    step: int
    total: int
    losses: dict[str, float]
    elapsed: float
    sample_path: str | None = None
    message: str = ""


@dataclass
class TrainState:
    step: int = 0
    images_seen: int = 0
    lr_scale: float = 1.0
    skipped_steps: int = 0
    rollbacks: int = 0
    history: list = field(default_factory=list)


# Distributed helpers: gloo on CPU, nccl on GPU; a plain single process when not launched by torchrun.

def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> None:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over processes by hand: DDP mishandles the double-backward of the R1 penalty."""
    _, world = dist_info()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


# Data: images in memory as uint8, captions encoded once.

class PairData:
    """Images (N, 3, R, R) uint8, caption index per image, and the encoded unique captions.

    alt_ids (N, A) holds each image's alternative captions (-1 = none), e.g. the emoji label without its style.
    """

    def __init__(self, images: torch.Tensor, caption_ids: torch.Tensor, captions: list[str], text: TextEmbedding,
                 alt_ids: torch.Tensor | None = None):
        self.images, self.caption_ids, self.captions, self.text = images, caption_ids, captions, text
        self.alt_ids = alt_ids if alt_ids is not None else torch.full((len(images), 1), -1)

    @classmethod
    def build(cls, pairs, text_encoder, batch: int = 256) -> "PairData":
        from ..data.loading import images_to_tensor

        images = ((images_to_tensor(pairs) + 1) * 127.5).round().to(torch.uint8)
        captions = sorted({t for p in pairs for t in (p.text, *p.alt_texts)})
        index = {c: i for i, c in enumerate(captions)}
        caption_ids = torch.tensor([index[p.text] for p in pairs])
        width = max([1] + [len(p.alt_texts) for p in pairs])
        alt_ids = torch.tensor([[index[t] for t in p.alt_texts] + [-1] * (width - len(p.alt_texts)) for p in pairs])
        chunks = [text_encoder(captions[i : i + batch]) for i in range(0, len(captions), batch)]
        return cls(images, caption_ids, captions, TextEmbedding.cat(chunks + [text_encoder([""])]), alt_ids)

    @property
    def null_id(self) -> int:
        return len(self.captions)

    def batch_indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """Global batch for a step: walk a per-epoch permutation, so the order depends only on (seed, step)."""
        n = len(self.images)
        start = step * batch_size
        out = []
        while len(out) < batch_size:
            epoch, offset = divmod(start + len(out), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            out.extend(perm[offset : offset + batch_size - len(out)].tolist())
        return torch.tensor(out)


# Models.

def build_models(cfg: TrainConfig, text_dim: int, pooled_dim: int) -> tuple[Generator, Discriminator, str]:
    """Fresh models (init none) or the ones in a model folder (init default / PATH). Returns G, D, text encoder id."""
    if cfg.init == "none":
        # Default widths: 256 at 4x4, halving at each doubling (min 16), so every stage costs about the same.
        widths = tuple(max(16, 256 >> i) for i in range(int(math.log2(cfg.resolution)) - 1))
        torch.manual_seed(cfg.seed)
        g = Generator(resolution=cfg.resolution, text_dim=text_dim, pooled_dim=pooled_dim,
                      channels=cfg.g_channels or widths)
        d = Discriminator(resolution=cfg.resolution, pooled_dim=pooled_dim, channels=cfg.d_channels or widths[::-1])
        return g, d, cfg.text_encoder
    path = default_model_path() if cfg.init == "default" else Path(cfg.init)
    if cfg.init == "default" and not (path / "model_index.json").is_file():
        raise ValueError("--init default needs the shipped model, which is missing; use --init none or --init PATH")
    check_model_folder(path)
    index = read_model_index(path)
    # Weights may be stored in fp16 (the shipped model is); training always starts from fp32.
    g = Generator.from_pretrained(path / "generator", use_safetensors=True, low_cpu_mem_usage=False,
                                  torch_dtype=torch.float32)
    if (path / "discriminator" / "config.json").is_file():
        check_model_folder(path, ("discriminator",))
        d = Discriminator.from_pretrained(path / "discriminator", use_safetensors=True, low_cpu_mem_usage=False,
                                          torch_dtype=torch.float32)
    else:
        torch.manual_seed(cfg.seed)
        d = Discriminator(resolution=g.config.resolution, pooled_dim=g.config.pooled_dim)
    for name, want, model in (("g_channels", cfg.g_channels, g), ("d_channels", cfg.d_channels, d)):
        if want and tuple(want) != tuple(model.config.channels):
            raise ValueError(f"--{name.replace('_', '-')} {list(want)} differs from the model in {path} "
                             f"({list(model.config.channels)}); widths apply to --init none only")
    return g, d, index.get("text_encoder", DEFAULT_TEXT_ENCODER)


def all_finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


# Checkpoints: checkpoint-<step>/ with weights as safetensors, optimiser state via torch.save (loaded weights_only).

def list_checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def hardware_name(device: str | torch.device = "cpu") -> str:
    """The accelerator's name, or the CPU model and torch's thread count: what a model card says trained it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type}: {cpu_model()}, {threads} torch thread{'' if threads == 1 else 's'}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_checkpoint(run_dir: Path, state: TrainState, g, d, g_ema, opt_g, opt_d, keep: int, text_encoder: str,
                    training: dict | None = None) -> Path:
    """Write atomically (temporary folder, then rename), rotate, and refresh RUN_DIR/model (with `training` in its
    model_index.json)."""
    final = run_dir / f"{CHECKPOINT_PREFIX}{state.step}"
    tmp = run_dir / f".tmp-{CHECKPOINT_PREFIX}{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, m in (("generator", g), ("discriminator", d), ("generator_ema", g_ema)):
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, tmp / f"{name}.safetensors")
    torch.save({"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()}, tmp / "optimizers.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # The model folder holds the EMA generator; swap it in whole so a reader never sees half of it.
    model_tmp = run_dir / ".tmp-model"
    shutil.rmtree(model_tmp, ignore_errors=True)
    save_model_folder(model_tmp, g_ema, text_encoder, d, training=training)
    old = run_dir / ".old-model"
    shutil.rmtree(old, ignore_errors=True)
    if (run_dir / "model").exists():
        os.replace(run_dir / "model", old)
    os.replace(model_tmp, run_dir / "model")
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, g, d, g_ema, opt_g, opt_d) -> TrainState:
    for name, m in (("generator", g), ("discriminator", d), ("generator_ema", g_ema)):
        m.load_state_dict(load_file(ckpt / f"{name}.safetensors"))
    opts = torch.load(ckpt / "optimizers.pt", weights_only=True)
    opt_g.load_state_dict(opts["opt_g"])
    opt_d.load_state_dict(opts["opt_d"])
    return TrainState(**json.loads((ckpt / "trainer_state.json").read_text()))


# The loop.

class Trainer:
    """Holds G, D, EMA and optimisers; `run()` trains until max_steps, the time budget or a stop request."""

    def __init__(self, cfg: TrainConfig, pairs=None, text_encoder=None, callback: Callable[[Progress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        from ..data.loading import load_pairs
        from ..pipeline import load_text_encoder

        cfg.check()
        self.cfg, self.callback, self.should_stop = cfg, callback, should_stop or (lambda: False)
        init_distributed(cfg.device)
        self.rank, self.world = dist_info()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over {self.world} processes")
        if cfg.diversity_weight > 0 and (cfg.batch_size // self.world) % 2:
            raise ValueError("the mode-seeking term pairs samples: batch_size per process must be even "
                             "(or pass --diversity-weight 0)")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.out)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(cfg.device)

        # Models first: the data is resized to the model's resolution.
        enc_name, self.init_training = cfg.text_encoder, None
        if cfg.init != "none":
            path = default_model_path() if cfg.init == "default" else Path(cfg.init)
            if (path / "model_index.json").is_file():
                index = read_model_index(path)
                enc_name, self.init_training = index.get("text_encoder", DEFAULT_TEXT_ENCODER), index.get("training")
        self.text_encoder = text_encoder or load_text_encoder(enc_name)
        self.g, self.d, self.text_encoder_name = build_models(cfg, self.text_encoder.dim, self.text_encoder.pooled_dim)
        self.resolution = self.g.config.resolution
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        for m in (self.g, self.d, self.g_ema):
            # channels_last lets oneDNN convolutions skip a layout copy per layer on CPU.
            m.to(self.device, memory_format=torch.channels_last)
        self.g.train()
        self.d.train()
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=cfg.betas, eps=cfg.adam_eps)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=cfg.betas, eps=cfg.adam_eps)

        if pairs is None:
            pairs, report = load_pairs(cfg.data, self.resolution, fit=cfg.fit, image_column=cfg.image_column,
                                       caption_column=cfg.caption_column)
            self.report = report
            self.log_line(report.summary())
        self.data = PairData.build(pairs, self.text_encoder)
        self.data.text = self.data.text.to(self.device)
        self.state = TrainState()
        self.autocast = PRECISIONS[cfg.precision] if cfg.precision != "fp32" else None
        self.tensorboard = None
        if self.rank == 0:
            try:  # optional: needs the tensorboard package
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                pass
        prompts = list(cfg.sample_prompts) or self.data.captions[:: max(1, len(self.data.captions) // 16)][:16]
        self.sample_text = self.text_encoder(prompts).to(self.device)
        self.sample_z = torch.randn(len(prompts), self.g.config.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 7))

    def log_line(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)
            if self.run_dir.exists():
                with open(self.run_dir / "log.txt", "a") as f:
                    f.write(text + "\n")

    # One step.

    def _ctx(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)

    def step_batch(self, step: int) -> dict:
        """Draw the global batch and every random number of this step, then keep this process's slice."""
        cfg, res = self.cfg, self.resolution
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = self.data.batch_indices(step, cfg.batch_size, cfg.seed)
        b = len(idx)
        part = slice(self.rank * b // self.world, (self.rank + 1) * b // self.world)
        drop = torch.rand(b, generator=gen) < cfg.caption_dropout
        # Some samples train on an alternative caption; only an image's own caption fixes its pixels.
        alts = self.data.alt_ids[idx]
        n_alts = (alts >= 0).sum(1)
        pick = (torch.rand(b, generator=gen) * n_alts).long().clamp(max=alts.shape[1] - 1)
        use_alt = (torch.rand(b, generator=gen) < cfg.alt_caption_prob) & (n_alts > 0)
        cap = torch.where(use_alt, alts.gather(1, pick[:, None]).squeeze(1), self.data.caption_ids[idx])
        g_cap = torch.where(drop, torch.full_like(cap, self.data.null_id), cap)
        mis = cap.roll(1)
        batch = {
            "idx": idx,
            "cap": g_cap,  # caption seen by G and by D's real/fake terms
            "paired": ~drop & ~use_alt,  # the caption determines the image: pixel losses apply
            "mis": mis,
            "mis_ok": (mis != cap) & ~drop,  # a mismatched pair only counts when the captions differ
            "z_d": torch.randn(b, self.g.config.z_dim, generator=gen),
            "z_g": torch.randn(b, self.g.config.z_dim, generator=gen),
            "aug": [AugmentParams.draw(b, res, gen) for _ in range(4)] if cfg.augment else [None] * 4,
            "directions": torch.nn.functional.normalize(torch.randn(16, 3, generator=gen), dim=1),
        }
        real = self.data.images[idx[part]].to(self.device).float() / 127.5 - 1
        out = {"real": real.contiguous(memory_format=torch.channels_last)}
        for k, v in batch.items():
            if k == "aug":
                out[k] = [a[part] if a is not None else None for a in v]
            elif k == "directions":
                out[k] = v.to(self.device)
            else:
                out[k] = v[part].to(self.device) if torch.is_tensor(v) else v
        return out

    def text(self, ids: torch.Tensor) -> TextEmbedding:
        return self.data.text[ids]

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        bt = self.step_batch(step)
        real, t, t_mis = bt["real"], self.text(bt["cap"]), self.text(bt["mis"])
        losses = {}

        # Update D: real-and-matching vs fake vs real-with-a-wrong-caption.
        self.d.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with self._ctx():
            with torch.no_grad():
                fake = self.g(bt["z_d"], t.states, t.mask, t.pooled)
            h_real = self.d.features(diff_augment(real, bt["aug"][0]))
            d_real = self.d.head(h_real, t.pooled).float()
            d_fake = self.d(diff_augment(fake.float(), bt["aug"][1]), t.pooled).float()
            d_mis = self.d.head(h_real, t_mis.pooled).float() if cfg.mismatch else None
            loss_d = d_hinge_loss(d_real, d_fake, d_mis, bt["mis_ok"])
        losses["d"] = loss_d.item()
        losses["d_real"] = d_real.mean().item()
        losses["d_fake"] = d_fake.mean().item()
        do_r1 = cfg.r1_gamma > 0 and cfg.r1_every > 0 and step % cfg.r1_every == 0
        if do_r1:
            # R1 in fp32: the double backward is where low precision overflows first.
            real_r1 = diff_augment(real, bt["aug"][0]).detach().requires_grad_(True)
            r1 = r1_penalty(self.d(real_r1, t.pooled), real_r1)
            loss_d = loss_d + r1 * (cfg.r1_gamma / 2) * cfg.r1_every
            losses["r1"] = r1.item()
        loss_d.backward()
        ok_d = self._finish(self.d, self.opt_d, losses, "grad_d")

        # Update G: fool D on the caption, and (paired data) pull the prompt's mean image to the real one.
        self.d.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        keep = bt["paired"]
        if cfg.diversity_weight > 0:
            # Samples 2j and 2j+1 share caption 2j (and its image) with different z, for the mode-seeking term.
            src = torch.arange(len(real), device=real.device) // 2 * 2
            t, real, keep = t[src], real[src], keep[src]
        with self._ctx():
            fake = self.g(bt["z_g"], t.states, t.mask, t.pooled)
            loss_g = g_hinge_loss(self.d(diff_augment(fake.float(), bt["aug"][2]), t.pooled).float())
            losses["g_adv"] = loss_g.item()
            if cfg.diversity_weight > 0:
                div = mode_seeking_ratio(fake[0::2], fake[1::2], bt["z_g"][0::2], bt["z_g"][1::2])
                loss_g = loss_g - cfg.diversity_weight * div.clamp(max=cfg.diversity_cap).mean()
                losses["diversity"] = div.mean().item()
            if cfg.color_weight > 0:
                color = (color_distribution_loss(fake, real, bt["directions"]) * keep).mean()
                loss_g = loss_g + cfg.color_weight * color
                losses["color"] = color.item()
            if cfg.shape_weight > 0:
                shape = (spectrum_loss(fake, real) * keep).mean()
                loss_g = loss_g + cfg.shape_weight * shape
                losses["shape"] = shape.item()
            if cfg.rec_weight > 0 and keep.any():
                tk = t[keep]
                mean_img = self.g.synthesis(self.g.mean_style(tk.pooled), tk.states, tk.mask)
                # Sum over kept samples / local batch: equal slices over processes average to the global loss.
                rec = reconstruction_loss(mean_img, real[keep]).sum() / len(keep)
                loss_g = loss_g + cfg.rec_weight * rec
                losses["rec"] = rec.item()
        loss_g.backward()
        ok_g = self._finish(self.g, self.opt_g, losses, "grad_g")
        if not (ok_d and ok_g):
            losses["skipped"] = 1.0
        return losses

    def _finish(self, model, opt, losses: dict, key: str) -> bool:
        """All-reduce, clip and step; skip the step when a loss or gradient is not finite (NaN guard)."""
        params = [p for p in model.parameters() if p.requires_grad]
        all_reduce_grads(params)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        losses[key] = norm.item()
        finite = math.isfinite(norm.item()) and all(math.isfinite(v) for v in losses.values())
        if finite:
            opt.step()
        else:
            opt.zero_grad(set_to_none=True)
        return finite

    @torch.no_grad()
    def update_ema(self) -> None:
        cfg = self.cfg
        halflife = cfg.ema_halflife_images
        if cfg.ema_rampup:
            halflife = min(halflife, self.state.images_seen * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch_size / max(halflife, 1e-8))
        for p_ema, p in zip(self.g_ema.parameters(), self.g.parameters()):
            p_ema.lerp_(p.detach(), 1 - beta)

    @torch.no_grad()
    def save_samples(self) -> str:
        t = self.sample_text
        images = self.g_ema(self.sample_z.to(self.device), t.states, t.mask, t.pooled)
        path = self.run_dir / "samples" / f"step-{self.state.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid = image_grid(to_pil(images))
        grid.save(path)
        return str(path)

    # Checkpoints, resume and rollback.

    def checkpoint(self) -> None:
        if self.rank == 0 and all(all_finite(m) for m in (self.g, self.d, self.g_ema)):
            save_checkpoint(self.run_dir, self.state, self.g, self.d, self.g_ema, self.opt_g, self.opt_d,
                            self.cfg.keep_checkpoints, self.text_encoder_name, self.training_record())
        if self.world > 1:
            dist.barrier()

    def training_record(self) -> dict:
        """What the model folder says about its training: this run's steps, images and hardware, and the record of
        the model it started from (so fine-tunes of the shipped model keep its history)."""
        record = {"steps": self.state.step, "images_seen": self.state.images_seen,
                  "hardware": hardware_name(self.device), "world_size": self.world, "torch": torch.__version__}
        if self.init_training is not None:
            record["started_from"] = self.init_training
        return record

    def resume(self) -> bool:
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            return False
        self.state = load_checkpoint(ckpts[-1], self.g, self.d, self.g_ema, self.opt_g, self.opt_d)
        self.set_lr_scale(self.state.lr_scale)
        self.log_line(f"Resumed from {ckpts[-1].name} (step {self.state.step}).")
        return True

    def set_lr_scale(self, scale: float) -> None:
        self.state.lr_scale = scale
        for opt, lr in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

    def rollback(self) -> None:
        """Weights went non-finite: reload the last good checkpoint and halve the learning rate."""
        rollbacks, scale = self.state.rollbacks + 1, self.state.lr_scale * 0.5
        if not self.resume():
            raise RuntimeError("training diverged before the first checkpoint; lower --lr and start again")
        self.state.rollbacks = rollbacks
        self.set_lr_scale(scale)
        self.log_line(f"Non-finite weights: rolled back to step {self.state.step}, learning rate x{scale:g}.")

    def run(self) -> Path:
        """Train; returns RUN_DIR/model. A stop request or the time budget ends with a checkpoint."""
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            opts = asdict(cfg) | {"resolved": {"resolution": self.resolution, "text_encoder": self.text_encoder_name,
                                                "pairs": len(self.data.images), "captions": len(self.data.captions),
                                                "world_size": self.world, "torch": torch.__version__}}
            (self.run_dir / "training_options.json").write_text(json.dumps(opts, indent=2))
        if cfg.resume:
            self.resume()
        start, last_step_ckpt = time.time(), self.state.step
        bar = None
        if self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True,
                       disable=None)
        stopped = "max steps"
        while self.state.step < cfg.max_steps:
            if self._should_end(start):
                stopped = "stop requested" if self.should_stop() else "time budget"
                break
            losses = self.train_step(self.state.step)
            self.state.step += 1
            self.state.images_seen += cfg.batch_size
            if losses.get("skipped"):
                self.state.skipped_steps += 1
                self.log_line(f"step {self.state.step}: non-finite loss or gradient, update skipped")
            self.update_ema()
            if not all_finite(self.g) or not all_finite(self.d):
                self.rollback()
                continue
            step = self.state.step
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("d", "g_adv", "rec")})
            sample = None
            if self.rank == 0 and (step % cfg.sample_every == 0 or step == cfg.max_steps):
                sample = self.save_samples()
            if step % cfg.log_every == 0 or sample:
                self._log(losses, start, sample)
            if step % cfg.checkpoint_every == 0:
                self.checkpoint()
                last_step_ckpt = step
        if self.state.step != last_step_ckpt or not list_checkpoints(self.run_dir):
            if self.rank == 0:
                self._log({}, start, self.save_samples(), f"finished: {stopped}")
            self.checkpoint()
        if bar is not None:
            bar.close()
        self.log_line(f"Stopped ({stopped}) at step {self.state.step}; model: {self.run_dir / 'model'}")
        return self.run_dir / "model"

    def _should_end(self, start: float) -> bool:
        end = self.should_stop() or (self.cfg.minutes > 0 and time.time() - start >= self.cfg.minutes * 60)
        if self.world > 1:
            # Rank 0's clock decides, so every process stops at the same step.
            flag = torch.tensor([float(end)])
            dist.broadcast(flag, 0)
            end = bool(flag.item())
        return end

    def _log(self, losses: dict, start: float, sample: str | None, message: str = "") -> None:
        if self.rank != 0:
            return
        rec = {"step": self.state.step, "time": round(time.time() - start, 2), "images": self.state.images_seen,
               **{k: round(v, 5) for k, v in losses.items()}}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tensorboard is not None:
            for k, v in losses.items():
                self.tensorboard.add_scalar(f"loss/{k}", v, self.state.step)
            if sample:
                import numpy as np
                from PIL import Image

                self.tensorboard.add_image("samples", np.asarray(Image.open(sample)), self.state.step, dataformats="HWC")
            self.tensorboard.flush()
        if self.callback:
            self.callback(Progress(self.state.step, self.cfg.max_steps, losses, time.time() - start, sample, message))


def image_grid(images: list, cols: int | None = None):
    """Paste equal-size PIL images into a grid (cols defaults to a near-square layout)."""
    from PIL import Image

    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def train(cfg: TrainConfig, pairs=None, callback=None, should_stop=None) -> Path:
    """Train or fine-tune as `cfg` says; returns the model folder RUN_DIR/model."""
    return Trainer(cfg, pairs=pairs, callback=callback, should_stop=should_stop).run()


# Command line: `python -m t2i_core train`. Precedence: TrainConfig defaults < --config file < flags given.

_HELP = {
    "data": "training pairs: an image folder (metadata.jsonl/csv or .txt captions), a .zip of one, or a saved datasets folder",
    "out": "run folder: checkpoints, samples, logs; RUN_DIR/model is the trained model folder",
    "init": "start from 'default' (the shipped model), 'none' (from scratch) or a model folder",
    "max_steps": "stop after this many steps",
    "minutes": "stop after this many minutes of training (0 = no limit)",
    "batch_size": "images per step (over all processes)",
    "lr_g": "generator learning rate",
    "lr_d": "discriminator learning rate",
    "betas": "Adam betas",
    "adam_eps": "Adam epsilon",
    "grad_clip": "clip gradient norms to this value",
    "seed": "seed for initialisation, data order, noise and augmentation",
    "caption_dropout": "share of samples trained with an empty caption (needed for --guidance)",
    "mismatch": "train D to reject real images with a wrong caption",
    "r1_gamma": "R1 gradient penalty weight",
    "r1_every": "apply the R1 penalty every N steps (lazy regularisation)",
    "rec_weight": "weight of the mean-image reconstruction loss (0 when one caption has very different images)",
    "color_weight": "weight of the position-free colour-distribution loss of each sample against its real image",
    "shape_weight": "weight of the position-free shape loss (Fourier amplitude spectrum of each sample against its real image)",
    "alt_caption_prob": "share of samples trained on an alternative caption (metadata column alt_texts), if any",
    "diversity_weight": "weight of the mode-seeking term (pairs of samples share a caption; 0 = off)",
    "diversity_cap": "the mode-seeking ratio is not rewarded above this value",
    "augment": "differentiable augmentation of D's inputs (helps small data sets)",
    "ema_halflife_images": "half-life of the generator EMA, in images",
    "ema_rampup": "EMA half-life ramp-up as a share of images seen (0 = off)",
    "resolution": "image resolution for --init none (power of two)",
    "text_encoder": "text encoder id, Hugging Face name or local folder, for --init none",
    "g_channels": "generator widths from 4x4 up, for --init none",
    "d_channels": "discriminator widths from full resolution down to 4x4, for --init none",
    "fit": "how images become square: 'crop' (centre crop) or 'pad' (white borders)",
    "image_column": "image column of a datasets folder",
    "caption_column": "caption column of a datasets folder or metadata file",
    "checkpoint_every": "write a checkpoint every N steps",
    "keep_checkpoints": "keep the last K checkpoints",
    "sample_every": "save a sample grid every N steps",
    "log_every": "write metrics every N steps",
    "sample_prompts": "prompts of the sample grid (default: 16 captions of the data)",
    "device": "cpu or cuda",
    "precision": "autocast precision of forward passes: fp32, bf16 or fp16 (weights stay fp32)",
    "threads": "torch threads (0 = default)",
    "resume": "continue from the latest checkpoint in --out",
}


def add_train_arguments(parser) -> None:
    import argparse

    parser.add_argument("--config", help="JSON file of training options, or a recipe name in t2i_core/recipes "
                        "(e.g. emoji64_cpu); flags given here override it")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{_HELP[f.name]} (default: {default!r})"}
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, tuple):
            elem = str if f.name == "sample_prompts" else (float if f.name == "betas" else int)
            parser.add_argument(flag, nargs="+", type=elem, **kw)
        else:
            parser.add_argument(flag, type=type(default), **kw)


def config_from_args(args) -> TrainConfig:
    values = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file() and (RECIPES / f"{args.config}.json").is_file():
            path = RECIPES / f"{args.config}.json"
        try:
            values.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--config {args.config!r} cannot be read as JSON: {err}") from err
        values.pop("resolved", None)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(given)
    out = values.get("out", TrainConfig.out)
    if values.get("resume") and (Path(out) / "training_options.json").is_file():
        # A resumed run keeps the options it started with (not today's defaults or --config); flags given on this
        # command line still win, and the log says which ones changed. The run folder is always the one passed.
        saved = json.loads((Path(out) / "training_options.json").read_text())
        saved.pop("resolved", None)
        quiet = {"out", "data", "resume", "max_steps", "minutes", "checkpoint_every", "sample_every", "log_every",
                 "threads"}
        changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in given.items()
                   if k not in quiet and k in saved and saved[k] != (list(v) if isinstance(v, tuple) else v)]
        if changed:
            print("Resuming with changed options: " + ", ".join(changed), flush=True)
        values = saved | given | {"out": out, "resume": True}
    cfg = TrainConfig.from_dict(values)
    if not cfg.data:
        raise ValueError("--data is required: a folder or .zip of image-caption pairs")
    return cfg


def run_train_command(args) -> int:
    cfg = config_from_args(args)
    stop = {"flag": False}

    def request_stop(signum, frame):
        stop["flag"] = True
        print("stop requested: finishing the step and writing a checkpoint", flush=True)

    old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        model = train(cfg, should_stop=lambda: stop["flag"])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(f"model folder: {model}")
    return 0
