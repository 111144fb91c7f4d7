"""SAOM fine-tuning: the training loop, checkpoints, exact resume, validation.

One command for every scale: a single CPU process, or many GPUs/nodes under `torchrun` (DDP).
The model runs through one `TrainForward.forward` call per step (saom_core.train.forward), so DDP
sees the forward pass and all-reduces every gradient (calling `ddp.module` directly, as the
authors' code does, skips that and lets the replicas drift apart). The run's records (CSV,
TensorBoard, validation history) are saom_core.train.run_log's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from saom_core.data.reader import SaomDataset
from saom_core.device import resolve_device
from saom_core.errors import CheckpointError, ConfigError, DatasetError, SaomError
from saom_core.eval.point_eval import evaluate_points
from saom_core.io import atomic_write_text
from saom_core.model.architectures import get_config
from saom_core.model.checkpoint import read_checkpoint, save_checkpoint
from saom_core.model.grid import grid_points
from saom_core.model.saom import SaomModel, build_model
from saom_core.precision import reduced_precision
from saom_core.train.distributed import init_distributed, shutdown_distributed
from saom_core.train.embedding_cache import EmbeddingCache, EncoderSplit
from saom_core.train.forward import TrainForward
from saom_core.train.frames import FrameStore, TrainFrame, epoch_batches
from saom_core.train.losses import saom_loss
from saom_core.train.prompts import FramePrompts, Geometry, build_frame_prompts
from saom_core.train.recipe import TrainConfig
from saom_core.train.run_log import RunLog
from saom_core.typed_yaml import to_dict


class TrainingError(SaomError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_score: float | None  # the validation score best.pt was chosen by (`validation_score`)
    last_checkpoint: Path
    best_checkpoint: Path | None
    masks_per_second: float


@dataclass(frozen=True)
class LearningRateSchedule:
    """Linear warm-up, then cosine decay to `min_ratio` of the base rate by the end of the budget.

    The budget ends at `max_steps` or after `max_seconds` of training, whichever comes first, so a
    run stopped by its time budget (the demo, equal-time comparisons) has annealed instead of
    stopping at its peak rate. The rate is a function of (step, seconds), both restored on resume.
    """

    warmup: int
    max_steps: int
    max_seconds: float | None
    min_ratio: float

    def factor(self, step: int, seconds: float) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.max_steps - self.warmup)
        if self.max_seconds:
            progress = max(progress, seconds / self.max_seconds)
        progress = min(1.0, progress)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def validation_score(metrics: dict[str, float | None]) -> float | None:
    """The figure `best.pt` is chosen by: val mIoU, times the mean class accuracy for a model with
    classes. Why: a whole mask with the wrong label is of no use to SAOM, and on a frozen encoder
    the mIoU stays flat while the classes are learnt, so by mIoU alone the demo kept its first
    validation (step 278 of 1679, class accuracy 0.48 against the last one's 0.74)."""
    miou, accuracy = metrics["mIoU"], metrics["class_accuracy"]
    if miou is None:
        return None
    return miou if accuracy is None else miou * accuracy


def set_trainable(model: SaomModel, prefixes: list[str]) -> int:
    """requires_grad by parameter-name prefix ('all' = everything); returns the trainable count."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if prefix != "all" and not any(n.startswith(prefix) for n in names):
            raise ConfigError(f"train.trainable: no parameter starts with '{prefix}'")
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_("all" in prefixes or any(name.startswith(p) for p in prefixes))
        count += param.numel() if param.requires_grad else 0
    if count == 0:
        raise ConfigError("train.trainable selects no parameters")
    return count


def training_record(dataset: SaomDataset, points_per_side: int) -> dict[str, Any]:
    """What a model is trained on, for its checkpoint: simulator(s), dataset directory, split, frames,
    and the everything-mode grid its prompts were snapped to (evaluation prompts on the same grid)."""
    simulators = sorted({str(img.get("saom", {}).get("simulator", "")) for img in dataset.images} - {""})
    if not simulators and dataset.coco.get("saom", {}).get("simulator"):
        simulators = [str(dataset.coco["saom"]["simulator"])]
    return {"simulator": simulators, "dataset": str(dataset.root), "split": dataset.split, "frames": len(dataset),
            "points_per_side": points_per_side}


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.run_log = RunLog(self.run_dir)
        self.progress = progress
        self.device = resolve_device(cfg.train.device, "train.device")  # cuda:$LOCAL_RANK under torchrun
        self.ctx = init_distributed(self.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if not resume and (self.ckpt_dir / "last.pt").exists():
            raise SaomError(
                f"{self.run_dir} already holds a training run; pass --resume to continue it or choose another --out"
            )
        if resume and not (self.ckpt_dir / "last.pt").exists():
            raise CheckpointError(f"nothing to resume: {self.ckpt_dir / 'last.pt'} does not exist")

        torch.manual_seed(cfg.train.seed)
        self.train_set = SaomDataset(cfg.data.root, split=cfg.data.train_split)
        self.val_set = SaomDataset(cfg.data.root, split=cfg.data.val_split)
        if len(self.train_set) == 0:
            raise DatasetError(f"{cfg.data.root}: split '{cfg.data.train_split}' has no frames")
        if cfg.model.crop_classifier and not cfg.model.class_head:
            raise ConfigError("model.crop_classifier needs model.class_head (a vanilla SAM has no classes)")
        self.model = build_model(
            get_config(cfg.model.config), self.train_set.classes if cfg.model.class_head else None,
            cfg.model.head_input, cfg.model.crop_classifier,
        )
        if cfg.model.checkpoint:
            from saom_core.model.checkpoint import load_sam_weights

            load_sam_weights(self.model, cfg.model.checkpoint)
        elif cfg.model.init_pos_embed:
            self.model.init_from_scratch()
        self.trained_on = training_record(self.train_set, cfg.prompts.points_per_side)
        self.num_trainable = set_trainable(self.model, cfg.train.trainable)
        self.model.to(self.device)
        # the frozen part of the encoder (all of it, or all but its last blocks) runs once per frame
        self.encoder_split = EncoderSplit.of(self.model.image_encoder) if cfg.train.cache_embeddings else None
        self.hflip = cfg.data.hflip and self.encoder_split is None

        self.frames = FrameStore(self.train_set, cfg.data.preload, progress=progress and self.ctx.is_main)
        cache_dir = cfg.train.cache_dir or Path(cfg.data.root) / ".embedding_cache"
        self.cache = EmbeddingCache(cache_dir, self.model, self.encoder_split) if self.encoder_split else None
        self.forward_module: nn.Module = TrainForward(self.model, cfg.train.class_pool_true_masks, self.encoder_split)
        if self.ctx.enabled:
            self.forward_module = DistributedDataParallel(
                self.forward_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.schedule = LearningRateSchedule(
            cfg.optim.warmup_steps, cfg.train.max_steps, cfg.train.max_seconds, cfg.optim.min_lr_ratio
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.rng = np.random.default_rng([cfg.train.seed, self.ctx.rank])
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_score: float | None = None
        self.elapsed_before = 0.0  # seconds of training in earlier runs of a resumed run
        self._fit_started = time.perf_counter()
        self._grids: dict[tuple[int, int], np.ndarray] = {}
        self._throughput = (0, 0.0)  # masks, seconds
        if resume:
            self._load_state()
        else:
            self._start_run()

    # ---- set-up --------------------------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        mode = self.cfg.train.amp
        if mode == "off":
            return None
        if mode == "fp16":
            if self.device.type != "cuda":
                raise ConfigError("train.amp fp16 needs a CUDA device; on a CPU use bf16, auto or off")
            return torch.float16
        if mode == "bf16":
            return torch.bfloat16
        return reduced_precision(self.device, "train")  # None where bf16 would not be faster

    def _start_run(self) -> None:
        if self.ctx.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            save_checkpoint(self.ckpt_dir / "init.pt", self.model, tuned=self.cfg.inference, trained_on=self.trained_on)
            self.run_log.start()
        self.ctx.barrier()

    def _train_state(self) -> dict[str, Any]:
        rng_states = self.ctx.gather_objects(self.rng.bit_generator.state)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_score": self.best_score,
            "elapsed_s": self._elapsed(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "numpy_rng": rng_states,
            "torch_rng": torch.get_rng_state(),
            # each rank's CUDA generator (the crop classifier's true/predicted mask draw runs on it)
            "cuda_rng": (
                self.ctx.gather_objects(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None
            ),
            "world_size": self.ctx.world_size,
            "config": to_dict(self.cfg),
        }

    def _load_state(self) -> None:
        path = self.ckpt_dir / "last.pt"
        data = read_checkpoint(path)
        state = data.get("train_state")
        if state is None:
            raise CheckpointError(f"{path} has no training state to resume from")
        if state["world_size"] != self.ctx.world_size:
            raise CheckpointError(f"{path} was written by {state['world_size']} processes; resume with the same number")
        self.model.load_state_dict(data["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["numpy_rng"][self.ctx.rank]
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.ctx.rank], self.device)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_score = state.get("best_score")  # None in a run saved before the score: chosen anew
        self.elapsed_before = state.get("elapsed_s", 0.0)
        if self.ctx.is_main:
            self.run_log.resume_at(self.step)

    # ---- one step ------------------------------------------------------------------------------
    def _grid(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._grids:
            self._grids[key] = grid_points(self.cfg.prompts.points_per_side, height, width)
        return self._grids[key]

    def _cached(self, cache: EmbeddingCache, frame: TrainFrame) -> torch.Tensor:
        cached = cache.get(frame.key)
        if cached is None:
            cached = cache.put(frame.key, frame.image, self.device)
        return cached

    def train_step(self, frames: list[TrainFrame]) -> dict[str, float]:
        if self.hflip:
            frames = [f.flipped() if self.rng.random() < 0.5 else f for f in frames]
        sizes = [f.image.shape[:2] for f in frames]
        prepared = cached = None
        if self.cache is not None:
            cached = torch.stack([self._cached(self.cache, f) for f in frames]).to(self.device).float()
        if self.cache is None or self.model.crop_classifier is not None:
            prepared = torch.cat(
                [self.model.prepare_images(torch.from_numpy(f.image)[None].to(self.device)) for f in frames]
            )

        model = self.model
        low_res = model.config.low_res_size

        def make_prompts(i: int, features: torch.Tensor) -> FramePrompts:
            h, w = sizes[i]
            geo = Geometry(model.input_size(h, w), model.config.image_size, low_res)
            return build_frame_prompts(
                features.float(), frames[i].masks.to(self.device), frames[i].class_ids, self._grid(h, w), geo,
                self.cfg.prompts.mode, self.cfg.data.negatives_per_frame, self.cfg.data.max_masks_per_frame, self.rng,
                self.cfg.prompts.extra_points_per_mask, self.cfg.prompts.extra_points_source,
            )

        start = time.perf_counter()
        self.forward_module.train()
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out, prompts, crop_targets = self.forward_module(prepared, cached, sizes, make_prompts)
            terms = saom_loss(
                out,
                torch.cat([p.mask_targets for p in prompts]).to(self.device),
                torch.cat([p.class_ids for p in prompts]).to(self.device),
                torch.cat([p.positive for p in prompts]).to(self.device),
                self.cfg.loss,
                crop_targets,
            )
        if self.ctx.any_true(not bool(torch.isfinite(terms.total))):
            values = ", ".join(f"{k}={v:.4g}" for k, v in terms.as_floats().items())
            raise TrainingError(
                f"non-finite loss at step {self.step + 1} ({values}); training stopped, the last good checkpoint "
                f"{self.ckpt_dir / 'last.pt'} is kept (lower optim.lr or check the data)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.grad_clip > 0:
            trained = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trained, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        elapsed = time.perf_counter() - start
        masks = sum(int(p.positive.sum()) for p in prompts)
        done_masks, done_s = self._throughput
        self._throughput = (done_masks + masks, done_s + elapsed)
        metrics = terms.as_floats()
        metrics["loss"] = metrics["total"]
        metrics["masks_per_s"] = masks / elapsed if elapsed > 0 else 0.0
        metrics["unreachable"] = sum(p.num_unreachable for p in prompts)
        metrics["fallback"] = sum(p.num_fallback for p in prompts)
        return metrics

    # ---- the loop ------------------------------------------------------------------------------
    def validate(self) -> dict[str, float | None]:
        if len(self.val_set) == 0:
            return {"mIoU": None, "mAcc": None, "class_accuracy": None}
        result = evaluate_points(
            {"model": self.model}, self.val_set, self.cfg.prompts.points_per_side,
            max_frames=self.cfg.train.val_max_frames, device=self.device, progress=False,
            prompt=self.cfg.train.val_prompt, best_of_three=self.cfg.train.val_best_of_three,
        )["model"]
        return {"mIoU": result.miou, "mAcc": result.macc, "class_accuracy": result.mean_class_accuracy}

    def _save_last(self) -> None:
        state = self._train_state()  # collective: every rank takes part
        if self.ctx.is_main:
            save_checkpoint(
                self.ckpt_dir / "last.pt", self.model, state, tuned=self.cfg.inference, trained_on=self.trained_on
            )
        self.ctx.barrier()

    def _end_epoch(self, final: bool = False) -> None:
        if self.ctx.is_main and (final or self.epoch % self.cfg.train.validate_every_epochs == 0):
            metrics = self.validate()
            self.run_log.validation(self.step, self.epoch, metrics)
            score = validation_score(metrics)
            if score is not None and (self.best_score is None or score > self.best_score):
                self.best_score = score
                save_checkpoint(
                    self.ckpt_dir / "best.pt", self.model, tuned=self.cfg.inference, trained_on=self.trained_on
                )

    def _agreed_seconds(self) -> float:
        """Seconds of training so far (over resumes); the slowest rank's, so every rank agrees."""
        return self.ctx.max_value(self._elapsed())

    def _out_of_time(self, seconds: float) -> bool:
        limit = self.cfg.train.max_seconds
        return limit is not None and seconds >= limit

    def _apply_learning_rate(self, seconds: float) -> None:
        rate = self.cfg.optim.lr * self.schedule.factor(self.step, seconds)
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._fit_started

    def fit(self) -> TrainResult:
        cfg = self.cfg.train
        if self.ctx.is_main:
            self.run_log.open()
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, desc="training", unit="step",
            disable=not (self.progress and self.ctx.is_main),
        )
        self._fit_started = time.perf_counter()
        seconds = self._agreed_seconds()
        done = self.step >= cfg.max_steps or self._out_of_time(seconds)
        try:
            while not done:
                batches = epoch_batches(
                    len(self.frames), cfg.frames_per_step, self.epoch, cfg.seed, self.ctx.rank, self.ctx.world_size
                )
                while self.batch_in_epoch < len(batches) and not done:
                    self._apply_learning_rate(seconds)
                    metrics = self.train_step([self.frames[i] for i in batches[self.batch_in_epoch]])
                    self.step += 1
                    self.batch_in_epoch += 1
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.3f}", iou=f"{metrics['mask_iou']:.2f}",
                        acc=f"{metrics['class_accuracy']:.2f}",
                    )
                    seconds = self._agreed_seconds()
                    done = self.step >= cfg.max_steps or self._out_of_time(seconds)
                    if self.ctx.is_main and (self.step % cfg.log_every == 0 or done):
                        self.run_log.train_step(self.step, self.epoch, self.optimizer.param_groups[0]["lr"], metrics)
                    if self.step % cfg.checkpoint_every == 0:
                        self._save_last()
                if self.batch_in_epoch >= len(batches):
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self._end_epoch(final=done)
            if self.batch_in_epoch > 0 or self.best_score is None:
                self._end_epoch(final=True)  # always validate the final weights
            self._save_last()
        finally:
            bar.close()
            self.run_log.close()
            shutdown_distributed(self.ctx)
        masks, seconds = self._throughput
        best = self.ckpt_dir / "best.pt"
        return TrainResult(
            self.run_dir, self.step, self.best_score, self.ckpt_dir / "last.pt", best if best.exists() else None,
            masks / seconds if seconds else 0.0,
        )

