"""Everything-of-interest mode: every object of the frame, whole, with its class.

Same outputs as `segment_anything.SamAutomaticMaskGenerator` on the same model, grid and
thresholds (single crop layer), but built for speed: the frame is encoded once, all grid prompts
are decoded in large batches, the cheap filters (predicted IoU, class) run on the decoder's
outputs, and only their survivors are upsampled to the frame (in one bilinear step, not via the
padded 1024x1024 intermediate), where stability, boxes and box NMS are computed exactly as the
stock generator does. Nothing is run-length encoded or deep-copied; everything stays on the
model's device. The networks run in a `saom_core.infer.runtime.Runtime` (PyTorch, with optional
reduced precision and torch.compile of the decoder, or ONNX Runtime): everything else here is the
same for both. (Stability and boxes on the low-resolution logits were tried and
rejected: for small objects they disagree with the stock generator, test test_generator_slow_path.)

SAOM mode (a model with a class head) keeps, per grid point, the best of SAM's 3 masks by
predicted IoU (what it was trained to output) and labels it; masks classed as background, or as
a class not in `keep_classes`, are dropped. Vanilla mode (no head) keeps all 3 masks per point,
as the stock generator does. A model's crop classifier relabels the masks that survive NMS (it
looks at their pixels, so it runs on a few masks per frame, not on every grid prompt) and
`keep_classes` and background apply to its labels; the decoder's label then only screens out
background before NMS.

SAOM mode also prompts fewer points, because its masks are whole objects: points in image-embedding
cells that the class head calls background are skipped (`prompt_min_object_prob`, mask_pool heads),
and with `coarse_to_fine` a coarse half-resolution grid goes first and a fine point inside an object
it found is not prompted again. Vanilla mode prompts every point: what the points inside an object
find there are its parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score, remove_small_regions
from torchvision.ops import batched_nms

from saom_core.errors import ConfigError, ImageError
from saom_core.infer.runtime import Runtime, as_runtime
from saom_core.infer.types import Instance, Segmentation, build_instances
from saom_core.model.grid import grid_points, pixel_of
from saom_core.model.saom import SaomModel
from saom_core.settings import SegmenterSettings, Thresholds

# After small-region removal the stock generator re-runs NMS at max(box_nms_thresh, crop_nms_thresh),
# crop_nms_thresh defaulting to 0.7; kept so both generators return the same masks.
STOCK_CROP_NMS_THRESH = 0.7


@dataclass
class GeneratorConfig:
    """The generator's resolved settings: build them with `generator_config`. The user-facing
    ones, their defaults and ranges are defined in saom_core.settings; the rest are tuning
    knobs of this implementation."""

    points_per_side: int = SegmenterSettings.points_per_side
    points_per_batch: int | None = None  # prompts per decoder call; None: 64 on a CPU (fits the caches), 256 on a GPU
    pred_iou_thresh: float = Thresholds.pred_iou_thresh
    stability_score_thresh: float = Thresholds.stability_score_thresh
    stability_score_offset: float = 1.0
    box_nms_thresh: float = Thresholds.box_nms_thresh
    min_mask_region_area: int = Thresholds.min_mask_region_area
    same_class_overlap_thresh: float = Thresholds.same_class_overlap_thresh
    frame_batch: int = 64  # candidates upsampled to the frame at once (memory: frame_batch x H x W floats)
    compile: bool = SegmenterSettings.compile
    multimask: Literal["auto", "best", "all"] = "auto"  # auto: best for SAOM, all for vanilla SAM
    keep_background: bool = SegmenterSettings.keep_background
    keep_classes: list[str] | None = None  # None: every class of the model
    coarse_to_fine: bool = SegmenterSettings.coarse_to_fine
    prompt_min_object_prob: float = SegmenterSettings.prompt_min_object_prob


def generator_config(settings: SegmenterSettings, tuned: Thresholds | None = None) -> GeneratorConfig:
    """The generator's config for checked settings: thresholds left unset take `tuned` (the values
    tuned for the model, from its checkpoint), else the paper's."""
    thresholds = settings.thresholds(tuned)
    return GeneratorConfig(
        points_per_side=settings.points_per_side,
        coarse_to_fine=settings.coarse_to_fine,
        prompt_min_object_prob=settings.prompt_min_object_prob,
        compile=settings.compile,
        keep_background=settings.keep_background,
        keep_classes=list(settings.keep_classes) or None,
        **thresholds.values(),
    )


def nms_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """The stock generator's inclusive pixel boxes (x0, y0, x1, y1) for NMS, except that a zero
    width or height (a mask one pixel wide or high) becomes one pixel: a box without area overlaps
    nothing, so NMS would keep every copy of such a mask."""
    widened = boxes.clone()
    widened[:, 2] = torch.where(boxes[:, 2] > boxes[:, 0], boxes[:, 2], boxes[:, 0] + 1)
    widened[:, 3] = torch.where(boxes[:, 3] > boxes[:, 1], boxes[:, 3], boxes[:, 1] + 1)
    return widened


def suppress_same_class_overlaps(instances: list[Instance], thresh: float) -> list[Instance]:
    """Instances (best first) without those of which more than `thresh` of the smaller mask of
    the pair lies in a better one of the same class: a part of an object, or the object around a
    better part, labelled as that object again. Box NMS keeps them, as a part's box overlaps its
    object's little. `thresh` 1 keeps every instance."""
    kept: list[Instance] = []
    for inst in instances:
        area = int(inst.mask.sum())
        if not any(
            other.class_id == inst.class_id
            and np.logical_and(other.mask, inst.mask).sum() > thresh * min(area, int(other.mask.sum()))
            for other in kept
        ):
            kept.append(inst)
    return kept


@dataclass
class _Candidates:
    logits: torch.Tensor  # (K, h, w) low-res logits, cropped to the frame's region (+ the row/column upsampling reads)
    iou: torch.Tensor  # (K,)
    stability: torch.Tensor  # (K,)
    class_id: torch.Tensor  # (K,)
    class_score: torch.Tensor  # (K,)
    point: torch.Tensor  # (K, 2) frame pixels

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates:
        return _Candidates(*(torch.cat([getattr(p, f) for p in parts]) for f in _Candidates.__dataclass_fields__))

    @staticmethod
    def none(device: torch.device, h: int, w: int) -> _Candidates:
        empty = torch.zeros(0, device=device)
        return _Candidates(
            torch.zeros(0, h, w, device=device), empty, empty, empty.long(), empty, torch.zeros(0, 2, device=device)
        )

    def select(self, keep: torch.Tensor) -> _Candidates:
        return _Candidates(*(getattr(self, f)[keep] for f in _Candidates.__dataclass_fields__))


class EverythingGenerator:
    """Fast everything-of-interest mode on one loaded model (a Runtime; a bare SaomModel runs in
    PyTorch, `config.compile` compiling its decoder). Not thread-safe."""

    def __init__(self, model: Runtime | SaomModel, config: GeneratorConfig | None = None) -> None:
        self.config = config or GeneratorConfig()
        self.runtime = runtime = as_runtime(model, compile=self.config.compile)
        self._grids: dict[tuple[int, int], tuple[np.ndarray, torch.Tensor]] = {}
        names = runtime.class_names
        self.has_classes = runtime.head_input is not None
        keep = self.config.keep_classes
        if keep is not None:
            unknown = sorted(set(keep) - set(names[1:]))
            if unknown:
                raise ConfigError(f"keep_classes: unknown classes {unknown}; the model knows {names[1:]}")
        allowed = torch.zeros(len(names), dtype=torch.bool)
        for i, name in enumerate(names):
            allowed[i] = (i > 0 or self.config.keep_background) and (keep is None or i == 0 or name in keep)
        self.allowed = allowed.to(runtime.device)
        # With a crop classifier the decoder's label only screens out background before NMS; the
        # classes to keep are chosen on the crop classifier's (better) labels after it.
        self.allowed_before_nms = (
            torch.tensor([self.config.keep_background] + [True] * (len(names) - 1)).to(runtime.device)
            if runtime.has_crop_classifier
            else self.allowed
        )
        multimask = self.config.multimask
        self.keep_all_masks = multimask == "all" or (multimask == "auto" and not self.has_classes)
        # Only where each prompt yields one whole object (SAOM mode): vanilla SAM's parts and
        # sub-parts are what the points inside an object find, so it prompts every point.
        self.coarse_to_fine = self.config.coarse_to_fine and self.has_classes and not self.keep_all_masks
        # A per-cell class map exists only for the mask_pool head (see _on_objects).
        self.use_object_prior = (
            self.config.prompt_min_object_prob > 0 and runtime.head_input == "mask_pool" and not self.keep_all_masks
        )

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def _grid(self, height: int, width: int) -> tuple[np.ndarray, torch.Tensor]:
        """Grid in frame pixels and in model input coordinates, computed once per frame size."""
        key = (height, width)
        if key not in self._grids:
            points = grid_points(self.config.points_per_side, height, width)
            coords = self.runtime.model_input.points_to_input(
                torch.as_tensor(points, dtype=torch.float32, device=self.device), height, width
            )
            self._grids[key] = (points, coords)
        return self._grids[key]

    @torch.inference_mode()
    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 frame -> (1, 3, S, S) model input."""
        frame = torch.as_tensor(image if image.flags.writeable else image.copy(), device=self.device)
        return self.runtime.model_input.prepare_images(frame[None])

    @torch.inference_mode()
    def embed_prepared(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, image embedding) of a frame."""
        prepared = self.prepare(image)
        return prepared, self.runtime.encode(prepared)

    def embed(self, image: np.ndarray) -> torch.Tensor:
        return self.embed_prepared(image)[1]

    @torch.inference_mode()
    def generate(self, image: np.ndarray, embedding: torch.Tensor | None = None) -> Segmentation:
        """(H, W, 3) uint8 RGB -> labelled instances at frame resolution, best first."""
        height, width = image.shape[:2]
        side = self.config.points_per_side
        if min(height, width) < side:
            raise ImageError(
                f"frame {width}x{height} is smaller than the {side}x{side} point grid: several grid points would "
                "prompt the same pixels; use a larger frame or fewer points per side"
            )
        prepared = None  # the model input, kept for the crop classifier
        if embedding is None:
            prepared, embedding = self.embed_prepared(image)
        points, coords = self._grid(height, width)
        point_tensor = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        model_input = self.runtime.model_input
        new_h, new_w = model_input.input_size(height, width)
        scale = model_input.low_res_size / model_input.image_size
        valid_h, valid_w = int(np.ceil(new_h * scale)), int(np.ceil(new_w * scale))
        # Kept: the low-res rows/columns the frame covers and the one beyond them that bilinear
        # upsampling of the last covered one reads (padding it with 0 instead changed the masks'
        # bottom rows wherever the frame ends on a low-res row boundary, e.g. 640x480).
        side = model_input.low_res_size
        kept_h, kept_w = min(valid_h + 1, side), min(valid_w + 1, side)
        batch = self.config.points_per_batch or (64 if self.device.type == "cpu" else 256)

        def decode(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _Candidates]:
            """Decode the grid points `index`: (masks, boxes, candidates) at frame resolution."""
            parts = [
                self._decode_chunk(embedding, coords[chunk], point_tensor[chunk], kept_h, kept_w)
                for chunk in index.split(batch)
                if len(chunk)
            ]
            candidates = _Candidates.cat(parts) if parts else _Candidates.none(self.device, kept_h, kept_w)
            return self._to_frame(candidates, height, width)

        every = torch.arange(len(coords), device=self.device)
        if self.use_object_prior:
            every = every[self._on_objects(embedding, coords)]
        if not self.coarse_to_fine:
            masks, boxes, candidates = decode(every)
        else:
            masks, boxes, candidates = self._coarse_to_fine(decode, every, points, height, width)
        keep = batched_nms(
            nms_boxes(boxes), candidates.iou, torch.zeros_like(candidates.iou), self.config.box_nms_thresh
        )
        candidates, masks = candidates.select(keep), masks[keep]
        if self.runtime.has_crop_classifier:
            candidates = self._classify(
                candidates, self.prepare(image) if prepared is None else prepared, valid_h, valid_w
            )
            allowed = self.allowed[candidates.class_id]
            candidates, masks = candidates.select(allowed), masks[allowed]
        return self._finish(candidates, masks, height, width)

    def _coarse_to_fine(
        self, decode, every: torch.Tensor, points: np.ndarray, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, _Candidates]:
        """Decode every second grid point (of `every`) of every second row first; then of the other
        points only those not inside an object already found (SAOM's masks are whole objects: such a
        point finds that object again, and NMS drops it)."""
        n = self.config.points_per_side
        row, col = every // n, every % n
        coarse = (row % 2 == 0) & (col % 2 == 0)
        masks, boxes, candidates = decode(every[coarse])
        fine = ~coarse
        if len(masks):
            kept = batched_nms(
                nms_boxes(boxes), candidates.iou, torch.zeros_like(candidates.iou), self.config.box_nms_thresh
            )
            found = masks[kept].any(0)
            rows, cols = pixel_of(points[every.cpu().numpy()], height, width)
            fine &= ~found[torch.as_tensor(rows, device=self.device), torch.as_tensor(cols, device=self.device)]
        if not fine.any():
            return masks, boxes, candidates
        fine_masks, fine_boxes, fine_candidates = decode(every[fine])
        return (
            torch.cat([masks, fine_masks]),
            torch.cat([boxes, fine_boxes]),
            _Candidates.cat([candidates, fine_candidates]),
        )

    def _on_objects(self, embedding: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """(P,) bool: the class head gives the point's image-embedding cell at least
        `prompt_min_object_prob` of being an object of interest (or background, where that is kept).

        The mask_pool head is linear in the features it averages under a mask, so applied to each
        cell of the embedding it gives a per-cell class map for the cost of one small matmul; the
        grid points in cells it calls background would find background (or an object that a point
        in one of its own cells finds too)."""
        probs = self.runtime.cell_class_logits(embedding).float().softmax(-1)  # (g, g, C + 1)
        of_interest = probs[..., self.allowed_before_nms].sum(-1) >= self.config.prompt_min_object_prob
        side = of_interest.shape[0]
        cell = (coords / (self.runtime.model_input.image_size / side)).long().clamp(0, side - 1)
        return of_interest[cell[:, 1], cell[:, 0]]

    def _classify(self, candidates: _Candidates, prepared: torch.Tensor, valid_h: int, valid_w: int) -> _Candidates:
        """Labels from the crop classifier for the candidates' masks (their low-res logits over the frame's region)."""
        side = self.runtime.model_input.low_res_size
        low = candidates.logits[..., :valid_h, :valid_w].float()
        padded = torch.nn.functional.pad(low, (0, side - low.shape[-1], 0, side - low.shape[-2]), value=-1e4)
        logits = self.runtime.classify_masks(prepared, padded.sigmoid())
        candidates.class_score, candidates.class_id = logits.float().softmax(-1).max(-1)
        return candidates

    def _decode_chunk(
        self, embedding: torch.Tensor, coords: torch.Tensor, points: torch.Tensor, kept_h: int, kept_w: int
    ) -> _Candidates:
        """Decode a batch of grid prompts; keep the masks that pass predicted IoU and class (their
        low-res logits cropped to kept_h x kept_w)."""
        out = self.runtime.decode_points(embedding, coords)
        logits = out.low_res_logits[..., :kept_h, :kept_w]
        iou = out.iou_pred.float()
        if out.class_logits is not None:
            class_score, class_id = out.class_logits.float().softmax(-1).max(-1)
        else:
            class_id = torch.ones_like(iou, dtype=torch.long)
            class_score = torch.ones_like(iou)
        point = points[:, None, :].expand(-1, iou.shape[1], -1)
        if self.keep_all_masks:
            flat = (logits.flatten(0, 1), iou.flatten(), class_id.flatten(), class_score.flatten(), point.flatten(0, 1))
        else:
            best = iou.argmax(1)
            rows = torch.arange(len(best), device=self.device)
            flat = (
                logits[rows, best],
                iou[rows, best],
                class_id[rows, best],
                class_score[rows, best],
                point[rows, best],
            )
        logits, iou, class_id, class_score, point = flat
        keep = iou > self.config.pred_iou_thresh
        if out.class_logits is not None:
            keep &= self.allowed_before_nms[class_id]
        return _Candidates(
            logits[keep], iou[keep], torch.zeros_like(iou[keep]), class_id[keep], class_score[keep], point[keep]
        )

    def _to_frame(
        self, candidates: _Candidates, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, _Candidates]:
        """Frame-resolution masks, boxes and stability of the candidates, in batches; unstable or
        empty masks are dropped. Returns (masks (K, H, W) bool, boxes (K, 4) float xyxy, candidates)."""
        threshold, offset = self.runtime.mask_threshold, self.config.stability_score_offset
        model_input = self.runtime.model_input
        masks, boxes, kept, stability = [], [], [], []
        for start in range(0, len(candidates.iou), self.config.frame_batch):
            low = candidates.logits[start : start + self.config.frame_batch].float()
            side = model_input.low_res_size
            padded = torch.nn.functional.pad(low, (0, side - low.shape[-1], 0, side - low.shape[-2]))
            logits = model_input.logits_to_frame(padded[:, None], height, width)[:, 0]
            score = calculate_stability_score(logits, threshold, offset)
            binary = logits > threshold
            keep = (score >= self.config.stability_score_thresh) & binary.flatten(1).any(1)
            masks.append(binary[keep])
            boxes.append(batched_mask_to_box(binary[keep]).float())
            stability.append(score[keep])
            kept.append(torch.nonzero(keep).flatten() + start)
        if not kept:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            no_masks = torch.zeros(0, height, width, dtype=torch.bool, device=self.device)
            return no_masks, torch.zeros(0, 4, device=self.device), candidates.select(empty)
        selected = candidates.select(torch.cat(kept))
        selected.stability = torch.cat(stability)
        return torch.cat(masks), torch.cat(boxes), selected

    def _finish(self, candidates: _Candidates, masks: torch.Tensor, height: int, width: int) -> Segmentation:
        masks_np = masks.cpu().numpy()
        boxes = batched_mask_to_box(masks).float().cpu()
        if self.config.min_mask_region_area > 0 and len(masks_np):
            masks_np, boxes, keep = self._remove_small_regions(masks_np, boxes)
            candidates = candidates.select(keep.to(self.device))
        instances = build_instances(
            masks_np, boxes.numpy(), candidates.class_id.cpu().numpy(), candidates.class_score.cpu().numpy(),
            candidates.iou.cpu().numpy(), candidates.stability.cpu().numpy(), self.runtime.class_names,
            candidates.point.cpu().numpy(),
        )
        instances = [inst for inst in instances if inst.mask.any()]  # small-region removal can empty a mask
        instances.sort(key=lambda inst: inst.score, reverse=True)
        instances = suppress_same_class_overlaps(instances, self.config.same_class_overlap_thresh)
        return Segmentation(height, width, instances)

    def _remove_small_regions(
        self, masks: np.ndarray, boxes: torch.Tensor
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Fill small holes, drop small islands, re-run NMS preferring unchanged masks (as the stock generator)."""
        area = self.config.min_mask_region_area
        scores = []
        cleaned = np.empty_like(masks)
        for k, mask in enumerate(masks):
            mask, changed_holes = remove_small_regions(mask, area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, area, mode="islands")
            cleaned[k] = mask
            scores.append(float(not (changed_holes or changed_islands)))
        cleaned_t = torch.from_numpy(cleaned)
        new_boxes = batched_mask_to_box(cleaned_t).float()
        score_t = torch.tensor(scores)
        threshold = max(self.config.box_nms_thresh, STOCK_CROP_NMS_THRESH)
        keep = batched_nms(nms_boxes(new_boxes), score_t, torch.zeros_like(score_t), threshold).sort().values
        return cleaned[keep.numpy()], new_boxes[keep], keep
