"""What differs between the segmenter's backends: running the networks.

Everything mode and prompted mode (saom_core.infer.generator, saom_core.infer.segmenter) are one
implementation of the grid, thresholds, NMS, class filtering, crop classifier and mask pasting over
a `Runtime`, which only encodes a frame and decodes a batch of prompts (plus the class head's
per-cell map and the crop classifier, which are networks too). `TorchRuntime` runs a `SaomModel`
in PyTorch; `saom_core.infer.onnx_runtime.OnnxRuntime` runs the folder `saom export` writes in
ONNX Runtime (TensorRT, CUDA or CPU).
"""
from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from saom_core.model.checkpoint import describe_training
from saom_core.model.model_input import ModelInput
from saom_core.model.saom import DecoderOutput, SaomModel
from saom_core.precision import reduced_precision


class Runtime(Protocol):
    """The networks of a loaded model, whatever runs them. Tensors in and out live on `device`."""

    class_names: list[str]  # index = class id; 0 = background
    head_input: str | None  # the class head's input (ClassifierHead.head_input); None: vanilla SAM
    has_crop_classifier: bool
    mask_threshold: float
    description: str  # one line on what the model was trained on, for users to log at load

    @property
    def device(self) -> torch.device: ...

    @property
    def model_input(self) -> ModelInput:
        """Frames to model input and logits to frame masks, on `device`."""
        ...

    def encode(self, prepared: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) model input -> (1, D, g, g) image embedding."""
        ...

    def decode_points(self, embedding: torch.Tensor, coords: torch.Tensor) -> DecoderOutput:
        """(P, 2) foreground points in model input coordinates -> SAM's 3 multimask outputs per point."""
        ...

    def decode_boxes(self, embedding: torch.Tensor, boxes: torch.Tensor) -> DecoderOutput:
        """(P, 4) xyxy boxes in model input coordinates -> SAM's single-mask output per box."""
        ...

    def cell_class_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """(g, g, C + 1) the mask_pool class head applied to each embedding cell (see EverythingGenerator)."""
        ...

    def classify_masks(self, prepared: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) model input, (P, s, s) mask probabilities -> (P, C + 1) crop classifier logits."""
        ...

    def close(self) -> None: ...


def resolve_threads(threads: int) -> int:
    """The model's intra-op threads: `threads`, or for 0 every core this process may use but one
    (at least one), so the ROS executor, DDS and the frame's conversions keep a core on a small
    machine instead of preempting the model's workers (and being preempted) every frame."""
    if threads > 0:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


class TorchRuntime:
    """A SaomModel in PyTorch: bf16/fp16 autocast when `amp_dtype` is set, torch.compile of the decoder."""

    def __init__(self, model: SaomModel, amp_dtype: torch.dtype | None = None, compile: bool = False,
                 trained_on: Mapping[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.amp_dtype = amp_dtype
        self.class_names = model.class_names
        self.head_input: str | None = model.classifier.head_input if model.classifier is not None else None
        self.has_crop_classifier = model.crop_classifier is not None
        self.mask_threshold = float(model.mask_threshold)
        self.description = describe_training(model, trained_on)
        self._compiled = torch.compile(model.decode) if compile else None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def model_input(self) -> ModelInput:
        return self.model.model_input

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def encode(self, prepared: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.encode(prepared)

    def decode_points(self, embedding: torch.Tensor, coords: torch.Tensor) -> DecoderOutput:
        labels = torch.ones(len(coords), 1, dtype=torch.int, device=coords.device)
        decode = self._compiled or self.model.decode  # looked up per call: tests stub model.decode
        with self.autocast():
            return decode(embedding, coords[:, None, :], labels)

    def decode_boxes(self, embedding: torch.Tensor, boxes: torch.Tensor) -> DecoderOutput:
        with self.autocast():
            return self.model.decode(embedding, boxes=boxes, multimask_output=False)

    def cell_class_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        head = self.model.classifier
        assert head is not None, "only models with a class head have a per-cell class map"
        with self.autocast():
            return head.linear(embedding[0].permute(1, 2, 0))

    def classify_masks(self, prepared: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.classify_masks(prepared, masks)

    def close(self) -> None:
        device = self.device
        self.model.to("cpu")
        del self.model, self._compiled
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def as_runtime(model: Runtime | SaomModel, half: bool = False, compile: bool = False) -> Runtime:
    """A runtime as is; a bare SaomModel in PyTorch (`half`: the device's faster reduced precision)."""
    if isinstance(model, SaomModel):
        return TorchRuntime(model, reduced_precision(model.device, "infer") if half else None, compile)
    return model
