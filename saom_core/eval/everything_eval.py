"""Everything-mode evaluation: how many masks a model outputs (the paper's Table 5) and the
standard instance metrics of the field on those outputs (pycocotools mask AP/AR).

Class-agnostic AP/AR is reported for every model, so vanilla SAM (no classes) and SAOM compare
on whole-object quality alone; per-class AP is reported for models with a class head.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from saom_core.data import rle as rle_utils
from saom_core.data.reader import SaomDataset
from saom_core.infer.types import Segmentation

STAT_NAMES = [
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
]


@dataclass
class EverythingResult:
    frames: int = 0
    masks: int = 0
    objects: int = 0  # ground-truth objects in the same frames
    empty_frames: int = 0  # frames with nothing of interest (no ground truth: a bare wall, an empty floor)
    empty_claims: int = 0  # masks output on those frames: each one a false claim
    coco_agnostic: dict[str, float | None] = field(default_factory=dict)
    coco_per_class: dict[str, float | None] | None = None
    detections: list[dict[str, Any]] = field(default_factory=list)

    @property
    def masks_per_frame(self) -> float:
        return self.masks / self.frames if self.frames else 0.0

    @property
    def objects_per_frame(self) -> float:
        return self.objects / self.frames if self.frames else 0.0

    @property
    def claims_per_empty_frame(self) -> float | None:
        """Objects claimed per frame with nothing of interest (goal: <= 0.1); None without such frames."""
        return self.empty_claims / self.empty_frames if self.empty_frames else None

    @property
    def masks_per_object(self) -> float | None:
        """The paper's Table 5 as a ratio: 1 = one mask per object; None without ground truth."""
        return self.masks / self.objects if self.objects else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "output_masks": self.masks,
            "masks_per_frame": self.masks_per_frame,
            "ground_truth_objects": self.objects,
            "ground_truth_objects_per_frame": self.objects_per_frame,
            "masks_per_object": self.masks_per_object,
            "frames_without_objects": self.empty_frames,
            "claims_per_frame_without_objects": self.claims_per_empty_frame,
            "coco_mask_class_agnostic": self.coco_agnostic,
            "coco_mask_per_class": self.coco_per_class,
        }


def run_everything(
    segment: Callable[[np.ndarray], Segmentation],
    dataset: SaomDataset,
    has_classes: bool,
    max_frames: int | None = None,
    progress: bool = True,
    on_frame: Callable[[int, np.ndarray, Segmentation], None] | None = None,
) -> EverythingResult:
    """Segment the split's frames (the first `max_frames`, default all); count masks and the ground
    truth's objects in the same frames; COCO-evaluate the detections against that ground truth."""
    result = EverythingResult()
    n_frames = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    name_to_id = {name: i + 1 for i, name in enumerate(dataset.classes.names)}
    for index in tqdm(range(n_frames), desc="everything mode", unit="frame", disable=not progress, leave=False):
        image = dataset.load_image(index)
        seg = segment(image)
        result.frames += 1
        result.masks += len(seg.instances)
        if not dataset.annotations_of(index):
            result.empty_frames += 1
            result.empty_claims += len(seg.instances)
        image_id = dataset.images[index]["id"]
        for inst in seg.instances:
            result.detections.append(
                {
                    "image_id": image_id,
                    "category_id": name_to_id.get(inst.class_name, 0) if has_classes else 1,
                    "segmentation": rle_utils.encode(inst.mask),
                    "score": inst.score,
                }
            )
        if on_frame is not None:
            on_frame(index, image, seg)
    image_ids = [dataset.images[i]["id"] for i in range(n_frames)]
    wanted = set(image_ids)
    result.objects = sum(1 for a in dataset.coco["annotations"] if a["image_id"] in wanted)
    result.coco_agnostic = coco_mask_metrics(dataset, image_ids, result.detections, use_categories=False)
    if has_classes:
        result.coco_per_class = coco_mask_metrics(dataset, image_ids, result.detections, use_categories=True)
    return result


def coco_mask_metrics(
    dataset: SaomDataset, image_ids: list[int], detections: list[dict[str, Any]], use_categories: bool
) -> dict[str, float | None]:
    """pycocotools segm evaluation restricted to `image_ids`; returns the 12 standard numbers."""
    wanted = set(image_ids)
    gt = {
        "images": [img for img in dataset.coco["images"] if img["id"] in wanted],
        "annotations": [dict(a, iscrowd=0) for a in dataset.coco["annotations"] if a["image_id"] in wanted],
        "categories": dataset.coco["categories"],
    }
    dets = [
        d if use_categories else dict(d, category_id=1)
        for d in detections
        if d["image_id"] in wanted and (not use_categories or d["category_id"] > 0)
    ]
    if not gt["annotations"] or not dets:
        return {name: 0.0 for name in STAT_NAMES} if gt["annotations"] else {name: None for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.imgIds = sorted(wanted)
        evaluator.params.useCats = int(use_categories)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools reports -1 where an area range has no ground truth: that is "n/a", not 0.
    return {name: (float(v) if v >= 0 else None) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
