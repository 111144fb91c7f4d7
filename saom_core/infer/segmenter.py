"""A loaded SAOM model ready for frames: everything-of-interest and prompted segmentation.

This is what the ROS node, `saom segment` and `saom bag` hold: one model on one device, loaded
and warmed up once, frames of any size (large ones are processed at `max_input_size` and their
masks scaled back to the input resolution).
"""
from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

from saom_core.device import resolve_device
from saom_core.errors import ImageError
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig, generator_config
from saom_core.infer.runtime import Runtime, TorchRuntime, as_runtime, resolve_threads
from saom_core.infer.types import Instance, Segmentation, build_instances
from saom_core.model.checkpoint import load_checkpoint
from saom_core.model.saom import KeptMasks, SaomModel
from saom_core.precision import reduced_precision
from saom_core.settings import SegmenterSettings, Thresholds


def check_frame(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB frame, or ImageError saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) RGB frame, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"expected uint8 pixels, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError("empty frame (zero width or height)")
    return image


class SaomSegmenter:
    """Implements `saom_core.infer.types.Segmenter` over a Runtime (a bare SaomModel runs in PyTorch)."""

    def __init__(self, model: Runtime | SaomModel, config: GeneratorConfig, half: bool = False,
                 max_input_size: int | None = None, tuned: Thresholds | None = None) -> None:
        self.runtime = as_runtime(model, half=half, compile=config.compile)
        self.max_input_size = max_input_size
        self.tuned = tuned or Thresholds()  # the checkpoint's: what apply() gives unset thresholds
        self.generator = EverythingGenerator(self.runtime, config)
        self.class_names = self.runtime.class_names
        self.trained_on = self.runtime.description  # one line for users to log at load

    def apply(self, settings: SegmenterSettings) -> None:
        """Use new per-frame settings (grid, thresholds, classes) without reloading the model; the
        settings fixed at load (backend, device, half, compile, threads, max_input_size) are not changed."""
        checked = settings.validate()
        config = replace(generator_config(checked, self.tuned), compile=self.generator.config.compile)
        self.generator = EverythingGenerator(self.runtime, config)

    # ---- frames ------------------------------------------------------------------------------
    def _shrink(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        limit = self.max_input_size
        if limit is None or max(height, width) <= limit:
            return image
        scale = limit / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    @staticmethod
    def _grow(result: Segmentation, height: int, width: int) -> Segmentation:
        """Scale a segmentation of a shrunk frame back to the input resolution."""
        if (result.height, result.width) == (height, width):
            return result
        sx, sy = width / result.width, height / result.height
        instances = []
        for inst in result.instances:
            mask = cv2.resize(inst.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
            x0, y0, x1, y1 = inst.box_xyxy
            point = None if inst.point is None else (inst.point[0] * sx, inst.point[1] * sy)
            instances.append(replace(inst, mask=mask, box_xyxy=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), point=point))
        return Segmentation(height, width, instances)

    # ---- the Segmenter protocol --------------------------------------------------------------
    def segment(self, image: np.ndarray) -> Segmentation:
        image = check_frame(image)
        small = self._shrink(image)
        return self._grow(self.generator.generate(small), *image.shape[:2])

    @torch.inference_mode()
    def segment_prompts(
        self, image: np.ndarray, boxes: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> Segmentation:
        """One instance per box (N, 4 xyxy pixels), then one per point (M, 2 xy pixels); none dropped."""
        image = check_frame(image)
        height, width = image.shape[:2]
        small = self._shrink(image)
        sh, sw = small.shape[:2]
        scale = np.array([sw / width, sh / height], dtype=np.float32)
        prepared, embedding = self.generator.embed_prepared(small)
        instances: list[Instance] = []
        model_input, device = self.runtime.model_input, self.runtime.device
        if boxes is not None and len(boxes):
            box_px = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.tile(scale, 2)
            box_t = torch.as_tensor(box_px, device=device)
            box_in = model_input.points_to_input(box_t.view(-1, 2, 2), sh, sw).view(-1, 4)
            out = self.runtime.decode_boxes(embedding, box_in)
            instances += self._instances(out.keep_best(), prepared, sh, sw, [None] * len(box_t))
        if points is not None and len(points):
            pts = np.asarray(points, dtype=np.float32).reshape(-1, 2) * scale
            coords = model_input.points_to_input(torch.as_tensor(pts, device=device), sh, sw)
            out = self.runtime.decode_points(embedding, coords)
            instances += self._instances(out.keep_best(), prepared, sh, sw, list(pts))
        return self._grow(Segmentation(sh, sw, instances), height, width)

    def _instances(self, kept: KeptMasks, prepared: torch.Tensor, height: int, width: int,
                   points: list[np.ndarray | None]) -> list[Instance]:
        """The kept mask of each prompt at frame resolution, in prompt order, empty ones included;
        labelled by the crop classifier where the model has one (as SaomModel.kept_class_logits)."""
        logits = kept.logits.float()
        masks = self.runtime.model_input.logits_to_frame(logits[:, None], height, width)[:, 0] > 0
        stability = calculate_stability_score(logits, 0.0, self.generator.config.stability_score_offset)
        class_logits = (self.runtime.classify_masks(prepared, logits.sigmoid()) if self.runtime.has_crop_classifier
                        else kept.class_logits)
        if class_logits is not None:
            score, class_id = class_logits.float().softmax(-1).max(-1)
        else:
            class_id = torch.ones_like(kept.index)
            score = torch.ones_like(kept.index, dtype=torch.float)
        return build_instances(
            masks.cpu().numpy(), batched_mask_to_box(masks).cpu().numpy(), class_id.cpu().numpy(), score.cpu().numpy(),
            kept.iou_pred.float().cpu().numpy(), stability.cpu().numpy(), self.class_names, points,
        )

    def warmup(self, height: int = 480, width: int = 640) -> None:
        """Run once on a blank frame so the first real frame pays no allocation or kernel set-up."""
        self.segment(np.zeros((height, width, 3), dtype=np.uint8))

    def close(self) -> None:
        self.runtime.close()
        del self.generator, self.runtime
        gc.collect()


def load_segmenter(
    checkpoint: str | Path, settings: SegmenterSettings | None = None, **overrides: Any
) -> SaomSegmenter:
    """Load a SAOM (or official SAM) checkpoint, or with `backend="onnxruntime"` the folder
    `saom export` wrote, for inference; errors name the bad file or value (or the package to install).

    `settings` and/or keyword `overrides` by name (the fields of saom_core.settings.SegmenterSettings:
    backend, device, half, threads, points_per_side, pred_iou_thresh, keep_classes, ...). Thresholds
    left unset take the values tuned for this model (stored in its checkpoint or export), else the paper's.
    """
    values = {**(settings or SegmenterSettings()).values(), **overrides}
    checked = SegmenterSettings.from_values(values)
    threads = resolve_threads(checked.threads)
    torch.set_num_threads(threads)  # the PyTorch model, or the pre- and post-processing around ONNX Runtime
    device = resolve_device(checked.device)
    runtime: Runtime
    if checked.backend == "onnxruntime":
        from saom_core.infer.onnx_runtime import OnnxRuntime

        runtime = OnnxRuntime(checkpoint, checked.onnx_provider, threads, device, half=checked.half)
        tuned = runtime.tuned
    else:
        model, info = load_checkpoint(checkpoint, checked.model_config or None, device)
        amp_dtype = reduced_precision(model.device, "infer") if checked.half else None
        runtime, tuned = TorchRuntime(model, amp_dtype, checked.compile, info.trained_on), info.tuned
    return SaomSegmenter(runtime, generator_config(checked, tuned), max_input_size=checked.max_input_size or None,
                         tuned=tuned)
