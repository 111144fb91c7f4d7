"""The predicted-IoU threshold of a class-agnostic model's everything mode, chosen on its own data.

SAM's 0.88 fits SAM's IoU head; a small model trained for a short time predicts lower IoUs and at
0.88 keeps nothing, so its over-segmentation (the paper's Table 5) could not be seen. The threshold
is chosen as a detector's operating point is: the one with the best F1 (a mask is a true positive
when it matches a ground-truth mask of any granularity at IoU >= 0.5, each at most once, in score
order) on validation frames.

One everything-mode pass at the lowest candidate serves every candidate: without class head and
coarse-to-fine, a higher threshold keeps exactly the masks of the pass whose predicted IoU passes it
(NMS ranks by predicted IoU, so a kept mask is never one that a dropped one suppressed).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from saom_core.data.reader import SaomDataset
from saom_core.eval.matching import MATCH_IOU, iou_matrix
from saom_core.infer.types import Segmentation

CANDIDATES = (0.88, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)  # SAM's first


@dataclass(frozen=True)
class OperatingPoint:
    pred_iou_thresh: float
    masks_per_frame: float
    precision: float
    recall: float

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def true_positives(scores: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """(K,) bool for K predictions (`ious` (K, G) against G ground-truth masks): matched, in
    descending score order, to a ground-truth mask not matched yet at IoU >= MATCH_IOU."""
    matched = np.zeros(ious.shape[1], bool)
    hit = np.zeros(len(scores), bool)
    for k in np.argsort(-scores, kind="stable"):
        free = np.where(~matched & (ious[k] >= MATCH_IOU))[0]
        if len(free):
            best = free[np.argmax(ious[k, free])]
            matched[best] = hit[k] = True
    return hit


def operating_points(
    segment: Callable[[np.ndarray], Segmentation],
    dataset: SaomDataset,
    candidates: Sequence[float] = CANDIDATES,
    max_frames: int | None = None,
    progress: bool = True,
) -> list[OperatingPoint]:
    """Precision, recall and masks per frame of each candidate threshold; `segment` must run at (or
    below) the lowest candidate."""
    frames = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    kept = np.zeros(len(candidates))
    hits = np.zeros(len(candidates))
    objects = 0
    for index in tqdm(range(frames), desc="operating point", unit="frame", disable=not progress, leave=False):
        sample = dataset[index]
        seg = segment(sample.image)
        scores = np.array([inst.predicted_iou for inst in seg.instances])
        masks = np.stack([inst.mask for inst in seg.instances]) if seg.instances else np.zeros((0, 1, 1), bool)
        ious = iou_matrix(masks, sample.masks) if len(sample.masks) else np.zeros((len(scores), 0))
        objects += len(sample.masks)
        for c, threshold in enumerate(candidates):
            keep = scores > threshold  # the generator's rule
            kept[c] += keep.sum()
            hits[c] += true_positives(scores[keep], ious[keep]).sum()
    return [
        OperatingPoint(float(t), kept[c] / max(frames, 1), hits[c] / kept[c] if kept[c] else 0.0,
                       hits[c] / objects if objects else 0.0)
        for c, t in enumerate(candidates)
    ]


def best_operating_point(points: Sequence[OperatingPoint]) -> OperatingPoint:
    """The best F1; of equals, the higher threshold (fewer masks)."""
    return max(points, key=lambda p: (round(p.f1, 4), p.pred_iou_thresh))
