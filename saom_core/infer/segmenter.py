"""A loaded SAOM model ready for frames: everything-of-interest and prompted segmentation.

This is what the ROS node, `saom segment` and `saom bag` hold: one model on one device, loaded
and warmed up once, frames of any size (large ones are processed at `max_input_size` and their
masks scaled back to the input resolution).
"""
from __future__ import annotations

import gc
from dataclasses import replace

import cv2
import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

from saom_core.errors import ConfigError, ImageError
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig, generator_config
from saom_core.infer.types import Instance, Segmentation
from saom_core.model.checkpoint import describe_training, load_model
from saom_core.model.saom import DecoderOutput, SaomModel
from saom_core.precision import reduced_precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device '{name}' ({exc})") from exc


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
    """Implements `saom_core.infer.types.Segmenter`."""

    def __init__(self, model: SaomModel, config: GeneratorConfig, half: bool = False, max_input_size: int | None = None) -> None:
        self.model = model.eval()
        self.max_input_size = max_input_size
        self.generator = EverythingGenerator(model, config, amp_dtype=reduced_precision(model.device, "infer") if half else None)
        self.class_names = model.class_names
        self.trained_on = describe_training(model)  # one line for users to log at load

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
    def segment_prompts(self, image: np.ndarray, boxes: np.ndarray | None = None, points: np.ndarray | None = None) -> Segmentation:
        """One instance per box (N, 4 xyxy pixels), then one per point (M, 2 xy pixels); none dropped."""
        image = check_frame(image)
        height, width = image.shape[:2]
        small = self._shrink(image)
        sh, sw = small.shape[:2]
        scale = np.array([sw / width, sh / height], dtype=np.float32)
        prepared, embedding = self.generator.embed_prepared(small)
        instances: list[Instance] = []
        model = self.model
        device = model.device
        if boxes is not None and len(boxes):
            box_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.tile(scale, 2), device=device)
            box_in = model.points_to_input(box_t.view(-1, 2, 2), sh, sw).view(-1, 4)
            with self.generator.autocast():
                out = model.decode(embedding, boxes=box_in, multimask_output=False)
            instances += self._instances(out, prepared, sh, sw, [None] * len(box_t))
        if points is not None and len(points):
            pts = np.asarray(points, dtype=np.float32).reshape(-1, 2) * scale
            pt_t = torch.as_tensor(pts, device=device)
            labels = torch.ones(len(pts), 1, dtype=torch.int, device=device)
            with self.generator.autocast():
                out = model.decode(embedding, model.points_to_input(pt_t, sh, sw)[:, None, :], labels)
            instances += self._instances(out, prepared, sh, sw, [tuple(map(float, p)) for p in pts])
        return self._grow(Segmentation(sh, sw, instances), height, width)

    def _instances(self, out: DecoderOutput, prepared: torch.Tensor, height: int, width: int, points: list) -> list[Instance]:
        best = out.iou_pred.float().argmax(1)
        rows = torch.arange(len(best), device=best.device)
        logits = out.low_res_logits[rows, best].float()
        masks = self.model.logits_to_frame(logits[:, None], height, width)[:, 0] > 0
        stability = calculate_stability_score(logits, 0.0, self.generator.config.stability_score_offset)
        boxes = batched_mask_to_box(masks).float().cpu().numpy() + np.array([0, 0, 1, 1])
        class_logits = self.model.kept_class_logits(prepared, logits, out.class_logits[rows, best] if out.class_logits is not None else None)
        if class_logits is not None:
            score, cid = class_logits.float().softmax(-1).max(-1)
        else:
            cid = torch.ones_like(best)
            score = torch.ones_like(best, dtype=torch.float)
        masks_np = masks.cpu().numpy()
        return [
            Instance(
                mask=masks_np[k],
                box_xyxy=tuple(float(v) for v in boxes[k]) if masks_np[k].any() else (0.0, 0.0, 0.0, 0.0),
                class_id=int(cid[k]),
                class_name=self.class_names[int(cid[k])],
                class_score=float(score[k]),
                predicted_iou=float(out.iou_pred[rows[k], best[k]]),
                stability=float(stability[k]),
                point=points[k],
            )
            for k in range(len(masks_np))
        ]

    def warmup(self, height: int = 480, width: int = 640) -> None:
        """Run once on a blank frame so the first real frame pays no allocation or kernel set-up."""
        self.segment(np.zeros((height, width, 3), dtype=np.uint8))

    def close(self) -> None:
        device = self.model.device
        self.model.to("cpu")
        del self.generator, self.model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def load_segmenter(
    checkpoint: str,
    device: str = "cpu",
    half: bool = False,
    points_per_side: int = 32,
    pred_iou_thresh: float | None = None,
    box_nms_thresh: float | None = None,
    min_mask_region_area: int | None = None,
    keep_classes: list[str] | None = None,
    keep_background: bool = False,
    max_input_size: int | None = None,
    stability_score_thresh: float | None = None,
    model_config: str | None = None,
    compile: bool = False,
) -> SaomSegmenter:
    """Load a SAOM (or official SAM) checkpoint for inference; errors name the bad file or value.

    Thresholds left at None take the values tuned for this model (stored in its checkpoint), else
    the paper's (pred IoU 0.3, box NMS 0.3, min region area 150, stability 0.95).
    """
    if points_per_side < 1:
        raise ConfigError(f"points_per_side must be >= 1, got {points_per_side}")
    for name, value in (("pred_iou_thresh", pred_iou_thresh), ("box_nms_thresh", box_nms_thresh), ("stability_score_thresh", stability_score_thresh)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be within [0, 1], got {value}")
    if min_mask_region_area is not None and min_mask_region_area < 0:
        raise ConfigError(f"min_mask_region_area must be >= 0, got {min_mask_region_area}")
    if max_input_size is not None and max_input_size < 16:
        raise ConfigError(f"max_input_size must be >= 16 pixels, got {max_input_size}")
    model = load_model(checkpoint, model_config, resolve_device(device))
    config = generator_config(
        model,
        points_per_side=points_per_side,
        pred_iou_thresh=pred_iou_thresh,
        box_nms_thresh=box_nms_thresh,
        min_mask_region_area=min_mask_region_area,
        stability_score_thresh=stability_score_thresh,
        keep_classes=list(keep_classes) if keep_classes else None,
        keep_background=keep_background,
        compile=compile,
    )
    return SaomSegmenter(model, config, half=half, max_input_size=max_input_size)
