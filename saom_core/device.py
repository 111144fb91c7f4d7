"""The one place a device name ("auto", "cpu", "cuda", "cuda:N") becomes a torch.device.

Training, evaluation, the segmenter and the benches all resolve through `resolve_device`, so a
name means the same everywhere and a bad one fails before any model is built. Under `torchrun`
(DDP) a bare "cuda" or "auto" means this process's own GPU, `cuda:$LOCAL_RANK`.
"""
from __future__ import annotations

import os
from typing import cast

import torch

from saom_core.errors import ConfigError


def local_rank() -> int | None:
    """LOCAL_RANK as torchrun sets it (None when not launched by torchrun)."""
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        return None
    try:
        rank = int(value)
    except ValueError as exc:
        raise ConfigError(f"LOCAL_RANK must be an integer, got {value!r}") from exc
    if rank < 0:
        raise ConfigError(f"LOCAL_RANK must be >= 0, got {rank}")
    return rank


def resolve_device(name: str | torch.device, what: str = "device") -> torch.device:
    """A usable torch.device for `name`, or ConfigError naming `what` (e.g. "train.device") and why.

    "auto" is CUDA when available, else the CPU. "cuda" / "auto" under torchrun take the rank's
    `cuda:$LOCAL_RANK`; an explicit "cuda:N" is kept as given.
    """
    text = str(name).strip()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{what} '{name}' is not a device name (auto, cpu, cuda, cuda:N)") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} '{name}': only auto, cpu, cuda and cuda:N are supported")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{what} is '{name}' but CUDA is not available on this machine (use cpu)")
    index = cast("int | None", device.index)  # torch's stub says int; a bare "cuda" has None
    if index is None:
        device = torch.device("cuda", local_rank() or 0)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ConfigError(f"{what} '{name}' ({device}) does not exist: this machine has {count} CUDA device(s)")
    return device
