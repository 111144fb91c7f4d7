"""Where the node gets its Segmenter from: a factory, resolved when the node activates.

Order: the `segmenter_factory` argument of `SaomNode`, then the module-level hook
`saom_ros.segmenter_factory.SEGMENTER_FACTORY` (set only by test code: `saom_ros.testing.main` runs the node
with a fake model as its own process), then the real loader
`saom_core.infer.segmenter.load_segmenter`, imported only then (so importing the node needs no
torch). Nothing is taken from the environment: whoever sets the node's environment must not be
able to make it import code. A factory takes the validated `NodeParams` and returns a `Segmenter`.
"""
from __future__ import annotations

import gc
import sys
from collections.abc import Callable

from saom_core.errors import ConfigError, SaomError
from saom_core.infer.types import Segmenter

from .params import NodeParams

SegmenterFactory = Callable[[NodeParams], Segmenter]

SEGMENTER_FACTORY: SegmenterFactory | None = None


def resolve_factory(explicit: SegmenterFactory | None = None) -> SegmenterFactory:
    if explicit is not None:
        return explicit
    if SEGMENTER_FACTORY is not None:
        return SEGMENTER_FACTORY
    return load_from_params


def load_from_params(params: NodeParams) -> Segmenter:
    """The real model: saom_core.infer.segmenter.load_segmenter with the node's parameters."""
    try:
        from saom_core.infer.segmenter import load_segmenter
    except ImportError as exc:
        raise SaomError(f"cannot import the SAOM segmenter (saom_core.infer.segmenter): {exc}") from exc
    segmenter = load_segmenter(params.checkpoint, params.segmenter_settings())
    if params.warmup:
        segmenter.warmup()
    return segmenter


def check_device(device: str) -> None:
    """A cuda device must exist (checked at configure, so a CPU-only machine fails early and clearly)."""
    if not device.startswith("cuda"):  # cpu, or auto (cuda when available)
        return
    try:
        from saom_core.device import resolve_device  # imports torch
    except ImportError as exc:
        raise ConfigError(f"parameter device: {device} needs PyTorch, which is not importable ({exc})") from exc
    resolve_device(device, "parameter device")


def validate_segmenter(segmenter: Segmenter) -> list[str]:
    """The class list a Segmenter must carry (index 0 = background); returns it."""
    names = list(getattr(segmenter, "class_names", None) or [])
    if not names or not all(isinstance(n, str) for n in names):
        raise SaomError("the segmenter has no class_names list")
    return names


def release(segmenter: Segmenter | None, device: str) -> None:
    """Close the model and give its GPU memory back to the driver."""
    if segmenter is not None:
        segmenter.close()
    gc.collect()
    if device.startswith("cuda") and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
