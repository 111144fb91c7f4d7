"""Loading official SAM weights and saving/loading SAOM checkpoints.

A SAOM checkpoint is one torch file: {"format": "saom", "version", "model_config", "head_input",
"crop_classifier" (bool), "class_list", "generator" (its tuned everything-mode thresholds),
"trained_on" (simulator, dataset, frames), "state_dict"} plus, for training runs, "train_state"
(optimizer, scheduler, step, RNG). An official SAM checkpoint (e.g. sam_vit_b_01ec64.pth) is a bare
state_dict; `load_model` accepts both, so vanilla SAM is a valid baseline anywhere a SAOM checkpoint is.

Checkpoints are data, not code: they hold only tensors and plain Python values (dicts, lists,
strings, numbers), and are read with `torch.load(weights_only=True)`, so a file from anywhere
cannot run code when it is opened; one that needs more is refused with a CheckpointError.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from saom_core import __version__
from saom_core.data.classes import ClassList
from saom_core.device import resolve_device
from saom_core.errors import CheckpointError, ConfigError
from saom_core.io import atomic_torch_save
from saom_core.model.architectures import MODEL_CONFIGS, SamConfig, get_config
from saom_core.model.saom import SaomModel, build_model
from saom_core.settings import POINTS_PER_SIDE, THRESHOLD_NAMES, Thresholds
from saom_core.weights import resolve_weights

FORMAT = "saom"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, unpickled as data only; errors name the file. A shipped name
    (`saom_core.weights`, e.g. vanilla_tiny) reads the file that ships under it."""
    path = resolve_weights(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_unpickling_problem(exc)}") from exc
    except Exception as exc:  # a torn or foreign file fails in many ways inside the unpickler
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a SAM or SAOM checkpoint (top level is {type(data).__name__})")
    return data


def _unpickling_problem(exc: pickle.UnpicklingError) -> str:
    """torch's weights-only refusal in one line: which Python object the file wanted to build."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand \S+|Trying to \w+ [^.]+", str(exc))
    if "Weights only load failed" not in str(exc):
        return str(exc)
    what = found.group(1) or found.group(0) if found else "an object that is not a tensor or plain data"
    return (f"it holds Python objects, not only tensors and plain data ({what}); refused, because unpickling "
            f"them could run code. Re-save the weights from a trusted copy with torch.save(state_dict)")


class CheckpointInfo(NamedTuple):
    """What a checkpoint says about itself besides the network: the settings tuned for it."""

    tuned: Thresholds  # its tuned everything-mode thresholds (the paper's where it stores none)
    is_saom: bool  # a SAOM checkpoint (False: official SAM weights)
    # simulator(s), dataset, split, frames, grid (empty: not recorded); read-only, as the default is shared
    trained_on: Mapping[str, Any] = MappingProxyType({})

    @property
    def grid(self) -> int:
        """The everything-mode grid (points per side) the model was trained on; SAM's for files that
        do not record one (official weights, older checkpoints)."""
        return int(self.trained_on.get("points_per_side") or POINTS_PER_SIDE)


class LoadedCheckpoint(NamedTuple):
    model: SaomModel
    info: CheckpointInfo


def checkpoint_info(data: dict[str, Any], path: str | Path) -> CheckpointInfo:
    """The metadata of a checkpoint dict (as read_checkpoint returns it)."""
    if data.get("format") != FORMAT:
        return CheckpointInfo(Thresholds(), is_saom=False)
    stored = data.get("generator") or {}
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: its tuned thresholds are not a mapping ({type(stored).__name__})")
    try:
        tuned = Thresholds.from_values({k: v for k, v in stored.items() if k in THRESHOLD_NAMES}, "tuned ")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    trained_on = data.get("trained_on") or {}
    if not isinstance(trained_on, dict):
        raise CheckpointError(f"{path}: its training record is not a mapping ({type(trained_on).__name__})")
    return CheckpointInfo(tuned, is_saom=True, trained_on=MappingProxyType(dict(trained_on)))


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


def _load_state(
    model: SaomModel, state_dict: dict[str, Any], path: str | Path, allow_missing_prefixes: tuple[str, ...] = ()
) -> None:
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


def checkpoint_dict(model: SaomModel, train_state: dict[str, Any] | None = None, tuned: Thresholds | None = None,
                    trained_on: dict[str, Any] | None = None) -> dict[str, Any]:
    """The saved form of a model; `tuned` (default: the paper's) is what its segmenters use for unset
    thresholds, `trained_on` what it was trained on (told to users at load)."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": __version__,
        "model_config": model.config.to_dict(),
        "head_input": model.classifier.head_input if model.classifier is not None else None,
        "crop_classifier": model.crop_classifier is not None,
        "class_list": model.class_list.to_dict() if model.class_list is not None else None,
        "generator": (tuned or Thresholds()).values(),
        "trained_on": dict(trained_on or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if train_state is not None:
        data["train_state"] = train_state
    return data


def save_checkpoint(path: str | Path, model: SaomModel, train_state: dict[str, Any] | None = None,
                    tuned: Thresholds | None = None, trained_on: dict[str, Any] | None = None) -> Path:
    """Atomic save: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    atomic_torch_save(path, checkpoint_dict(model, train_state, tuned, trained_on))
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


def load_checkpoint(
    path: str | Path, config: str | SamConfig | None = None, device: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """A SAOM checkpoint, or an official SAM checkpoint as vanilla SAM (no class head), in eval mode
    on `device` (any name `saom_core.device.resolve_device` takes), with its metadata (the thresholds
    tuned for it). The file is read to the CPU first, so a checkpoint written on a GPU loads anywhere."""
    target = resolve_device(device)
    data = read_checkpoint(path)
    info = checkpoint_info(data, path)
    return LoadedCheckpoint(model_from_checkpoint(data, path, config).to(target).eval(), info)


def load_model(
    path: str | Path, config: str | SamConfig | None = None, device: str | torch.device = "cpu"
) -> SaomModel:
    """The network of `load_checkpoint` alone (for uses that need no tuned settings)."""
    return load_checkpoint(path, config, device).model


def describe_training(model: SaomModel, trained_on: Mapping[str, Any] | None = None) -> str:
    """One line saying what a loaded model was trained on (`CheckpointInfo.trained_on`), so nobody
    mistakes a simulator-trained demo model for a general one on real photos."""
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    size = f"model config {model.config.name} ({parameters:.1f}M parameters)"
    if model.class_list is None:
        return f"{size}, no class head: vanilla SAM everything mode, no labels"
    record = trained_on or {}
    if record:
        simulators = ", ".join(record.get("simulator") or []) or "an unnamed source"
        data = f"trained on {simulators} frames ({record.get('frames', '?')} frames of {record.get('dataset', '?')})"
        if record.get("points_per_side"):
            data += f", prompt grid {record['points_per_side']}x{record['points_per_side']}"
    else:
        data = "training data not recorded in this checkpoint"
    names = model.class_names[1:]
    return (
        f"{size}, {data}; {len(names)} classes: {', '.join(names)}. "
        "It labels only these classes, and only as well as its training images resemble the input."
    )
