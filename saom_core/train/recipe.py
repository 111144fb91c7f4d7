"""The training recipe: the schema of config/train_*.yaml, one dataclass per section."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from saom_core.settings import POINTS_PER_SIDE, Thresholds
from saom_core.train.losses import LossWeights
from saom_core.typed_yaml import apply_overrides, from_dict, load_yaml


@dataclass
class ModelSection:
    config: str = "vit_b"  # vit_b | vit_l | vit_h | tiny | test
    # weights to start from: a file (official SAM or a SAOM checkpoint) or a shipped name such as
    # vanilla_tiny (saom_core/weights); None: random init
    checkpoint: str | None = None
    class_head: bool = True  # False: vanilla SAM (class-agnostic, `saom pretrain`)
    head_input: Literal["iou_token", "mask_token", "mask_pool"] = "iou_token"
    # A second classifier that labels the kept masks from their pixels (saom_core/model/crop_head.py)
    crop_classifier: bool = False
    init_pos_embed: bool = True  # without a checkpoint: random (not zero) encoder position embedding


@dataclass
class DataSection:
    root: str = "data/pybullet"
    train_split: str = "train"
    val_split: str = "val"
    hflip: bool = False  # random horizontal flips; only when the encoder trains (no embedding cache)
    negatives_per_frame: int = 8  # grid points off every object, taught as background
    max_masks_per_frame: int = 32
    preload: bool = True  # decode the split once into memory (sim datasets are small)


@dataclass
class PromptSection:
    mode: Literal["nearest_neighbour", "random_foreground", "mask_centre"] = "nearest_neighbour"
    points_per_side: int = POINTS_PER_SIDE
    # More grid points inside each object, same target (0 = the paper: the assigned point only)
    extra_points_per_mask: int = 0
    # grid: other grid points of the object; pixel: any pixel of it
    extra_points_source: Literal["grid", "pixel"] = "grid"


@dataclass
class OptimSection:
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0


@dataclass
class TrainSection:
    max_steps: int = 10000
    # Stop after this many seconds of training (counted over resumes) even before max_steps; the
    # cosine schedule then decays by this time instead (whichever budget ends first)
    max_seconds: float | None = None
    frames_per_step: int = 4  # per process
    # Parameter-name prefixes that train; ["all"] trains everything. Default: the paper's spirit,
    # image encoder frozen; point prompts, mask decoder and class head trained.
    trainable: list[str] = field(
        default_factory=lambda: [
            "prompt_encoder.point_embeddings", "prompt_encoder.not_a_point_embed", "mask_decoder", "classifier",
        ]
    )
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: on a GPU bf16 where it has it, else fp16; on a CPU bf16 where it computes bf16 natively
    # (AVX512-BF16 or AMX: faster, docs/recipe.md), else off
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    threads: int = 0  # torch CPU threads (0: torch's default)
    # run the frozen part of the encoder (all of it, or all but its trained last blocks and neck)
    # once per frame and keep its output on disk (fp16)
    cache_embeddings: bool = True
    cache_dir: str | None = None  # default: <data.root>/.embedding_cache
    log_every: int = 10
    checkpoint_every: int = 200
    validate_every_epochs: int = 1
    # head_input mask_pool and the crop classifier: classify objects from their true masks in
    # training (the predicted masks at inference), so the class loss learns before masks are good
    class_pool_true_masks: bool = True
    val_max_frames: int = 200  # validation subsample (first N frames of the split) to keep epochs short
    # the prompt of each validation object: its nearest-neighbour grid point (everything mode's) or a
    # random pixel of it (interactive use); best_of_three scores the best of SAM's 3 masks (SAM's
    # oracle metric for a class-agnostic model whose targets come at several granularities)
    val_prompt: Literal["nearest_neighbour", "random_foreground"] = "nearest_neighbour"
    val_best_of_three: bool = False


# Everything-mode thresholds stored in the checkpoint as this model's tuned values (the segmenter
# settings left unset take them); fields, defaults and ranges: saom_core.settings.Thresholds.
InferenceSection = Thresholds


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    prompts: PromptSection = field(default_factory=PromptSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossWeights = field(default_factory=LossWeights)
    inference: InferenceSection = field(default_factory=InferenceSection)


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    data = load_yaml(path) if path is not None else {}
    apply_overrides(data, overrides)
    config = from_dict(TrainConfig, data, str(path or "config"))
    return replace(config, inference=config.inference.validate(f"{path or 'config'}: inference."))
