"""Loading official SAM weights and saving/loading SAOM checkpoints.

A SAOM checkpoint is one torch file: {"format": "saom", "version", "model_config", "head_input",
"crop_classifier" (bool), "class_list", "generator" (its tuned everything-mode thresholds),
"trained_on" (simulator, dataset, frames), "state_dict"} plus, for training runs, "train_state"
(optimizer, scheduler, step, RNG). An official SAM checkpoint (e.g. sam_vit_b_01ec64.pth) is a bare state_dict; `load_model`
accepts both, so vanilla SAM is a valid baseline anywhere a SAOM checkpoint is.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from saom_core import __version__
from saom_core.data.classes import ClassList
from saom_core.data.reader import SaomDataset
from saom_core.errors import CheckpointError
from saom_core.io import atomic_torch_save
from saom_core.model.configs import MODEL_CONFIGS, SamConfig, get_config
from saom_core.model.saom import SaomModel, build_model

FORMAT = "saom"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a SAM or SAOM checkpoint (top level is {type(data).__name__})")
    return data


def guess_sam_config(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Name of the official config whose shapes match a bare SAM state_dict, if any."""
    embed = state_dict.get("image_encoder.patch_embed.proj.weight")
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, cfg in MODEL_CONFIGS.items():
        if embed is not None and embed.shape[0] == cfg.encoder_embed_dim and depth == cfg.encoder_depth:
            return name
    return None


def load_sam_weights(model: SaomModel, path: str | Path) -> None:
    """Load an official SAM state_dict into a SAOM model; everything but the class head must fit."""
    state_dict = read_checkpoint(path)
    if state_dict.get("format") == FORMAT:
        state_dict = state_dict["state_dict"]
    _load_state(model, state_dict, path, allow_missing_prefixes=("classifier.", "crop_classifier."))


def _load_state(model: SaomModel, state_dict: dict[str, Any], path: str | Path, allow_missing_prefixes: tuple[str, ...] = ()) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(allow_missing_prefixes)]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        guess = guess_sam_config(state_dict)
        hint = f"; its shapes match config '{guess}'" if guess and guess != model.config.name else ""
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} keys (e.g. {keys[0]})")
        raise CheckpointError(
            f"{path} does not fit model config '{model.config.name}': {', '.join(parts)}{hint}"
        )
    model.load_state_dict(state_dict, strict=not allow_missing_prefixes)


def checkpoint_dict(model: SaomModel, train_state: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": __version__,
        "model_config": model.config.to_dict(),
        "head_input": model.classifier.head_input if model.classifier is not None else None,
        "crop_classifier": model.crop_classifier is not None,
        "class_list": model.class_list.to_dict() if model.class_list is not None else None,
        "generator": dict(model.generator_defaults),
        "trained_on": dict(model.trained_on),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if train_state is not None:
        data["train_state"] = train_state
    return data


def save_checkpoint(path: str | Path, model: SaomModel, train_state: dict[str, Any] | None = None) -> Path:
    """Atomic save: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    atomic_torch_save(path, checkpoint_dict(model, train_state))
    return path


def model_from_checkpoint(data: dict[str, Any], path: str | Path, config: str | SamConfig | None = None) -> SaomModel:
    """Build the model a checkpoint dict describes and load its weights."""
    if data.get("format") == FORMAT:
        try:
            cfg = get_config(data["model_config"])
            classes = ClassList.from_dict(data["class_list"], str(path)) if data.get("class_list") else None
            model = build_model(cfg, classes, data.get("head_input") or "iou_token", bool(data.get("crop_classifier")))
        except KeyError as exc:
            raise CheckpointError(f"{path}: SAOM checkpoint lacks {exc}") from exc
        _load_state(model, data["state_dict"], path)
        model.generator_defaults = dict(data.get("generator") or {})
        model.trained_on = dict(data.get("trained_on") or {})
        return model
    name = config if config is not None else guess_sam_config(data)
    if name is None:
        raise CheckpointError(
            f"{path}: neither a SAOM checkpoint nor an official SAM state_dict of a known config "
            f"({sorted(MODEL_CONFIGS)}); pass the model config explicitly"
        )
    model = build_model(get_config(name), None)
    _load_state(model, data, path)
    return model


def load_model(path: str | Path, config: str | SamConfig | None = None, device: str | torch.device = "cpu") -> SaomModel:
    """A SAOM checkpoint, or an official SAM checkpoint as vanilla SAM (no class head), in eval mode."""
    model = model_from_checkpoint(read_checkpoint(path), path, config)
    return model.to(device).eval()


def training_record(dataset: SaomDataset) -> dict[str, Any]:
    """What a model is trained on, for its checkpoint: simulator(s), dataset directory, frames."""
    simulators = sorted({str(img.get("saom", {}).get("simulator", "")) for img in dataset.images} - {""})
    if not simulators and dataset.coco.get("saom", {}).get("simulator"):
        simulators = [str(dataset.coco["saom"]["simulator"])]
    return {"simulator": simulators, "dataset": str(dataset.root), "split": dataset.split, "frames": len(dataset)}


def describe_training(model: SaomModel) -> str:
    """One line saying what a loaded model was trained on, so nobody mistakes a simulator-trained
    demo model for a general one on real photos."""
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    size = f"model config {model.config.name} ({parameters:.1f}M parameters)"
    if model.class_list is None:
        return f"{size}, no class head: vanilla SAM everything mode, no labels"
    record = model.trained_on
    if record:
        simulators = ", ".join(record.get("simulator") or []) or "an unnamed source"
        data = f"trained on {simulators} frames ({record.get('frames', '?')} frames of {record.get('dataset', '?')})"
    else:
        data = "training data not recorded in this checkpoint"
    names = model.class_names[1:]
    return (
        f"{size}, {data}; {len(names)} classes: {', '.join(names)}. "
        "It labels only these classes, and only as well as its training images resemble the input."
    )
