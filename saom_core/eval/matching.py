"""Matching two sets of masks by IoU (pycocotools), e.g. the fast generator against the stock one."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

MATCH_IOU = 0.5  # a mask matches a ground-truth mask at this IoU or more (3D, tracking, operating points)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, H, W) and (B, H, W) bool -> (A, B) mask IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    encode = lambda masks: mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # noqa: E731
    return np.asarray(mask_utils.iou(encode(a), encode(b), [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))


@dataclass
class Agreement:
    reference_masks: int
    candidate_masks: int
    mean_matched_iou: float  # mean over reference masks of the best IoU with any candidate mask
    recall_at_095: float  # fraction of reference masks matched with IoU >= 0.95
    precision_at_095: float  # fraction of candidate masks matched with IoU >= 0.95


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    ious = iou_matrix(reference, candidate)
    best_ref = ious.max(1) if ious.size else np.zeros(len(reference))
    best_cand = ious.max(0) if ious.size else np.zeros(len(candidate))
    return Agreement(
        reference_masks=len(reference),
        candidate_masks=len(candidate),
        mean_matched_iou=float(best_ref.mean()) if len(best_ref) else 1.0,
        recall_at_095=float((best_ref >= 0.95).mean()) if len(best_ref) else 1.0,
        precision_at_095=float((best_cand >= 0.95).mean()) if len(best_cand) else 1.0,
    )
