"""One training routine for pretraining and fine-tuning: `train(TrainConfig(...))`.

The loop owns the order (data, D step, G step, EMA, log, samples, checkpoint); `loss.GANLoss` owns the maths.
Every random draw of a step comes from a generator seeded by (seed, step) and is drawn for the whole global
batch, so a resumed run and a multi-process run reproduce a single uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ..data.loading import load_pairs
from ..images import captioned_grid, to_pil
from ..models.discriminator import Discriminator
from ..models.bank import ExemplarBank
from ..models.folder import (check_model_folder, default_model_path, load_bank, model_text_encoder,
                             read_model_index)
from ..models.generator import Generator
from ..text import DEFAULT_TEXT_ENCODER, load_text_encoder
from .checkpoints import TrainState, list_checkpoints, load_checkpoint, remove_partial_writes, save_checkpoint
from .config import TrainConfig, autocast_dtype
from .distributed import all_reduce_grads, dist_info, init_distributed
from .log import Progress, RunLog, hardware_name
from .loss import GANLoss
from .pairs import Batch, PairData, draw_batch


def build_models(cfg: TrainConfig, text_dim: int, pooled_dim: int) -> tuple[Generator, Discriminator, str]:
    """Fresh models (init none) or the ones in a model folder (init default / PATH). Returns G, D, text encoder id."""
    if cfg.init == "none":
        # Default widths: 256 at 4x4, halving at each doubling (min 16), so every stage costs about the same.
        widths = tuple(max(16, 256 >> i) for i in range(int(math.log2(cfg.resolution)) - 1))
        torch.manual_seed(cfg.seed)
        g = Generator(resolution=cfg.resolution, text_dim=text_dim, pooled_dim=pooled_dim,
                      channels=cfg.g_channels or widths, exemplar_resolutions=cfg.exemplar_resolutions,
                      exemplar_text=cfg.exemplar_text)
        d = Discriminator(resolution=cfg.resolution, pooled_dim=pooled_dim, channels=cfg.d_channels or widths[::-1])
        return g, d, cfg.text_encoder
    path = init_path(cfg)
    if cfg.init == "default" and not (path / "model_index.json").is_file():
        raise ValueError("--init default needs the shipped model, which is missing; use --init none or --init PATH")
    check_model_folder(path)
    # Weights may be stored in fp16 (the shipped model is); training always starts from fp32.
    load = dict(use_safetensors=True, low_cpu_mem_usage=False, torch_dtype=torch.float32)
    g = Generator.from_pretrained(path / "generator", **load)
    if (path / "discriminator" / "config.json").is_file():
        check_model_folder(path, ("discriminator",))
        d = Discriminator.from_pretrained(path / "discriminator", **load)
    else:
        torch.manual_seed(cfg.seed)
        d = Discriminator(resolution=g.config.resolution, pooled_dim=g.config.pooled_dim)
    have = set(g.config.exemplar_resolutions)
    if set(cfg.exemplar_resolutions) - have or (cfg.exemplar_text and not g.config.exemplar_text):
        g = g.with_exemplars(tuple(sorted(have | set(cfg.exemplar_resolutions))), seed=cfg.seed,
                             text=bool(g.config.exemplar_text or cfg.exemplar_text))
        if cfg.exemplar_init == "random":
            torch.manual_seed(cfg.seed)
            for r, conv in g.exemplar_in.items():
                if int(r) not in have:
                    conv.reset_parameters()
    for name, want, model in (("g_channels", cfg.g_channels, g), ("d_channels", cfg.d_channels, d)):
        if want and tuple(want) != tuple(model.config.channels):
            raise ValueError(f"--{name.replace('_', '-')} {list(want)} differs from the model in {path} "
                             f"({list(model.config.channels)}); widths apply to --init none only")
    return g, d, model_text_encoder(path, DEFAULT_TEXT_ENCODER)


def init_path(cfg: TrainConfig) -> Path:
    return default_model_path() if cfg.init == "default" else Path(cfg.init)


# Weights this large mean the run diverged even if they are still finite; such weights are rolled back, never saved.
MAX_WEIGHT = 1e4


def all_finite(module: torch.nn.Module) -> bool:
    """Every weight finite and within MAX_WEIGHT."""
    return all(bool(p.detach().abs().max() <= MAX_WEIGHT) for p in module.parameters() if p.numel())


class TrainingDiverged(RuntimeError):
    """The weights exploded before the first checkpoint, or again after `max_rollbacks` rollbacks in a row. Nothing
    exploded is saved: the last good checkpoint and RUN_DIR/model stay as they were."""


class Trainer:
    """Holds G, D, EMA, optimisers and the loss; `run()` trains until max_steps, the time budget or a stop request."""

    def __init__(self, cfg: TrainConfig, pairs=None, text_encoder=None, callback: Callable[[Progress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        cfg.check()
        self.cfg, self.should_stop = cfg, should_stop or (lambda: False)
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
        self.log = RunLog(self.run_dir, self.rank, callback)
        self.device = torch.device(cfg.device)
        self._build_models(text_encoder)
        if pairs is None:
            pairs, self.report = load_pairs(cfg.data, self.resolution, fit=cfg.fit, image_column=cfg.image_column,
                                            caption_column=cfg.caption_column)
            self.log.line(self.report.summary())
        self.data = PairData.build(pairs, self.text_encoder, article=cfg.article_captions)
        self.data.text = self.data.text.to(self.device)
        self.bank = None
        if self.g.uses_exemplars:
            self.data.use_exemplars(tint_grey=cfg.recolour_grey)
            self.bank = self._build_bank()
        self.state = TrainState()
        self.rollbacks_in_row = 0  # rollbacks since the last checkpoint written (not saved: a restart starts at 0)
        self.autocast = autocast_dtype(cfg.precision, self.device)
        self.loss = GANLoss(self.g, self.d, cfg, self._ctx)
        prompts = list(cfg.sample_prompts) or self.data.captions[:: max(1, len(self.data.captions) // 16)][:16]
        self.sample_prompts = prompts  # the same captions in every grid of the run, so progress shows
        self.sample_text = self.text_encoder(prompts).to(self.device)
        self.sample_z = torch.randn(len(prompts), self.g.config.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 7))
        self.sample_exemplars = {}
        if self.bank is not None:
            picked = self.bank.inputs(self.bank.retrieve(self.sample_text.pooled.cpu(), 1))
            self.sample_exemplars = {k: v.to(self.device) for k, v in picked.items()}

    def _build_bank(self) -> ExemplarBank:
        """The bank the trained model draws on: the training pairs, after the initial model's bank if asked."""
        bank = self.data.bank()
        if self.cfg.bank_keeps_init and self.cfg.init != "none":
            init_bank = load_bank(init_path(self.cfg))
            if init_bank is not None:
                bank = init_bank.merged(bank)
        return bank

    def _build_models(self, text_encoder) -> None:
        """G, D and the EMA copy on the device, their optimisers, and the text encoder (the data is resized to the
        model's resolution, so models come first)."""
        cfg = self.cfg
        enc_name, self.init_training = cfg.text_encoder, None
        if cfg.init != "none" and (init_path(cfg) / "model_index.json").is_file():
            check_model_folder(init_path(cfg))
            enc_name = model_text_encoder(init_path(cfg), DEFAULT_TEXT_ENCODER)
            self.init_training = read_model_index(init_path(cfg)).get("training")
        self.text_encoder = text_encoder or load_text_encoder(enc_name)
        self.g, self.d, self.text_encoder_name = build_models(cfg, self.text_encoder.dim, self.text_encoder.pooled_dim)
        self.resolution = self.g.config.resolution
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        for m in (self.g, self.d, self.g_ema):
            # channels_last lets oneDNN convolutions skip a layout copy per layer on CPU.
            m.to(self.device, memory_format=torch.channels_last)
        self.g.train()
        self.d.train()
        # The exemplar path learns image-to-image from a cold start: its own learning rate and Adam momentum.
        exemplar = [p for n, p in self.g.named_parameters() if n.startswith("exemplar_")]
        rest = [p for n, p in self.g.named_parameters() if not n.startswith("exemplar_")]
        groups = [{"params": rest, "lr_mult": 1.0}]
        if exemplar:
            groups.append({"params": exemplar, "lr": cfg.lr_g * cfg.exemplar_lr_mult, "betas": (0.9, 0.99),
                           "lr_mult": cfg.exemplar_lr_mult})
        self.opt_g = torch.optim.Adam(groups, lr=cfg.lr_g, betas=cfg.betas, eps=cfg.adam_eps)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=cfg.betas, eps=cfg.adam_eps)

    def log_line(self, text: str) -> None:
        self.log.line(text)

    def _ctx(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)

    # One step.

    def step_batch(self, step: int) -> Batch:
        return draw_batch(self.data, self.cfg, step, self.g.config.z_dim, self.resolution, self.rank, self.world,
                          self.device)

    def train_step(self, step: int) -> dict[str, float]:
        # Data.
        batch = self.step_batch(step)

        # D step.
        self.d.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        losses = self.loss.accumulate_gradients("D", batch, step)
        ok_d = self._finish(self.d, self.opt_d, losses, "grad_d")

        # G step.
        self.d.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        losses.update(self.loss.accumulate_gradients("G", batch, step))
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
        images = self.g_ema(self.sample_z.to(self.device), t.states, t.mask, t.pooled, **self.sample_exemplars)
        path = self.run_dir / "samples" / f"step-{self.state.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        captioned_grid(to_pil(images), self.sample_prompts).save(path)
        return str(path)

    # Checkpoints, resume and rollback.

    def checkpoint(self) -> None:
        finite = all(all_finite(m) for m in (self.g, self.d, self.g_ema))  # the same on every process
        if self.rank == 0 and finite:
            save_checkpoint(self.run_dir, self.state, self.g, self.d, self.g_ema, self.opt_g, self.opt_d,
                            self.cfg.keep_checkpoints, self.text_encoder_name, self.training_record(), self.bank)
        if finite:
            self.rollbacks_in_row = 0
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
        """Load the latest checkpoint that loads whole (a damaged one, e.g. from a kill mid-write, is skipped).
        Half-written folders that a killed run left (`.tmp-*`, `.old-model`) are never read; they go first."""
        if self.rank == 0:
            remove_partial_writes(self.run_dir)
        for ckpt in reversed(list_checkpoints(self.run_dir)):
            try:
                self.state = load_checkpoint(ckpt, self.g, self.d, self.g_ema, self.opt_g, self.opt_d)
            except Exception as err:  # safetensors, torch.load and json raise several types for damaged files
                self.log_line(f"Skipped {ckpt.name}: it cannot be loaded ({type(err).__name__}: {err}).")
                continue
            self.set_lr_scale(self.state.lr_scale)
            self.log_line(f"Resumed from {ckpt.name} (step {self.state.step}).")
            return True
        return False

    def set_lr_scale(self, scale: float) -> None:
        self.state.lr_scale = scale
        for opt, lr in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale * group.get("lr_mult", 1.0)

    def rollback(self) -> None:
        """Weights went non-finite or over MAX_WEIGHT: reload the last good checkpoint and halve the learning rate.
        After `max_rollbacks` rollbacks in a row, the next divergence ends the run (TrainingDiverged)."""
        rollbacks, scale = self.state.rollbacks + 1, self.state.lr_scale * 0.5
        limit, last = self.cfg.max_rollbacks, list_checkpoints(self.run_dir)[-1:]
        if limit and self.rollbacks_in_row >= limit and last:
            raise TrainingDiverged(
                f"training diverged again after {limit} rollbacks in a row to {last[0].name} (learning rate down "
                f"to x{self.state.lr_scale:g}); stopped. {last[0].name} and {self.run_dir / 'model'} keep the last "
                "good weights: lower --lr-g and --lr-d, then run again with --resume")
        if not self.resume():
            raise TrainingDiverged("training diverged before the first checkpoint; lower --lr and start again")
        self.rollbacks_in_row += 1
        self.state.rollbacks = rollbacks
        self.set_lr_scale(scale)
        self.log_line(f"Non-finite or exploded weights: rolled back to step {self.state.step}, learning rate x{scale:g}.")

    # The loop.

    def run(self) -> Path:
        """Train; returns RUN_DIR/model. A stop request or the time budget ends with a checkpoint."""
        cfg = self.cfg
        self._write_options()
        if cfg.resume:
            self.resume()
        start, last_ckpt, stopped = time.time(), self.state.step, "max steps"
        if self.rank == 0 and self.state.step == 0:
            # A first grid before any update: what the starting model draws for the sample captions.
            self._log({}, start, self.save_samples())
        last_sample = time.time()
        last_ckpt_time = start
        bar = self._progress_bar()
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

            # Update EMA; roll back weights that went non-finite.
            self.update_ema()
            if not all_finite(self.g) or not all_finite(self.d):
                self.rollback()
                continue

            # Log and save samples.
            step = self.state.step
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("d", "g_adv", "rec")})
            sample = None
            by_time = cfg.sample_minutes > 0 and time.time() - last_sample >= cfg.sample_minutes * 60
            if self.rank == 0 and (step % cfg.sample_every == 0 or step == cfg.max_steps or by_time):
                sample, last_sample = self.save_samples(), time.time()
            if step % cfg.log_every == 0 or sample:
                self._log(losses, start, sample)

            # Save checkpoint: every checkpoint_every steps, and every checkpoint_minutes (a slow machine's work).
            due_by_time = cfg.checkpoint_minutes > 0 and time.time() - last_ckpt_time >= cfg.checkpoint_minutes * 60
            if step % cfg.checkpoint_every == 0 or self._agree(due_by_time):
                self.checkpoint()
                last_ckpt, last_ckpt_time = step, time.time()
        if self.rank == 0:
            # The last row says why the run ended: "max steps", "time budget" or "stop requested".
            self._log({}, start, self.save_samples(), stopped)
        if self.state.step != last_ckpt or not list_checkpoints(self.run_dir):
            self.checkpoint()
        if bar is not None:
            bar.close()
        self.log_line(f"Stopped ({stopped}) at step {self.state.step}; model: {self.run_dir / 'model'}")
        return self.run_dir / "model"

    def _write_options(self) -> None:
        """RUN_DIR/training_options.json: the config this run uses, and what it resolved to."""
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"resolution": self.resolution, "text_encoder": self.text_encoder_name,
                    "pairs": len(self.data.images), "captions": len(self.data.captions), "world_size": self.world,
                    "torch": torch.__version__}
        opts = self.cfg.to_dict() | {"resolved": resolved}
        (self.run_dir / "training_options.json").write_text(json.dumps(opts, indent=2))

    def _progress_bar(self):
        if self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True,
                    disable=None)

    def _should_end(self, start: float) -> bool:
        return self._agree(self.should_stop() or (self.cfg.minutes > 0 and time.time() - start >= self.cfg.minutes * 60))

    def _agree(self, flag: bool) -> bool:
        """Rank 0's answer (its clock decides), so every process stops or checkpoints at the same step."""
        if self.world > 1:
            value = torch.tensor([float(flag)])
            dist.broadcast(value, 0)
            flag = bool(value.item())
        return flag

    def _log(self, losses: dict, start: float, sample: str | None, message: str = "") -> None:
        self.log.metrics(self.state.step, self.cfg.max_steps, self.state.images_seen, losses, start, sample, message)


def train(cfg: TrainConfig, pairs=None, callback=None, should_stop=None) -> Path:
    """Train or fine-tune as `cfg` says; returns the model folder RUN_DIR/model."""
    return Trainer(cfg, pairs=pairs, callback=callback, should_stop=should_stop).run()
