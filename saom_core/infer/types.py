"""What segmentation returns: labelled instances at the input frame's resolution.

Shared by `saom segment`, evaluation, the ROS node and `saom bag`, so every consumer sees the
same fields and the same instance numbering.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from saom_core.geometry3d import Object3D


@dataclass
class Instance:
    mask: np.ndarray  # (H, W) bool, input resolution
    box_xyxy: tuple[float, float, float, float]  # pixels; x1, y1 exclusive (width = x1 - x0)
    class_id: int  # 1..C in the model's class list; 0 = background (only when kept on request)
    class_name: str
    class_score: float  # softmax probability of class_id; 1.0 for a model without a class head
    predicted_iou: float
    stability: float
    point: tuple[float, float] | None = None  # the prompt (x, y) in pixels, if any
    track_id: int | None = None  # persistent id across frames (saom_core.track), when tracked
    object3d: Object3D | None = None  # 3D from aligned depth (saom_core.geometry3d), when computed

    @property
    def score(self) -> float:
        """Ranking score: mask quality times class confidence."""
        return self.predicted_iou * self.class_score


def build_instances(
    masks: np.ndarray,
    boxes: np.ndarray,
    class_ids: np.ndarray,
    class_scores: np.ndarray,
    predicted_ious: np.ndarray,
    stabilities: np.ndarray,
    class_names: Sequence[str],
    points: Sequence[Sequence[float] | np.ndarray | None] | np.ndarray | None = None,
) -> list[Instance]:
    """Instances in the order given, so every producer fills the fields the same way.

    masks: (K, H, W) bool; boxes: (K, 4) the masks' boxes with inclusive max, as segment_anything's
    `batched_mask_to_box` gives them (an Instance's are exclusive; an empty mask gets (0, 0, 0, 0));
    class_ids, class_scores, predicted_ious, stabilities: (K,); points: each mask's prompt (x, y)
    in pixels or None, or None for no prompts at all.
    """
    instances = []
    for k, mask in enumerate(masks):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        box = (x0, y0, x1 + 1, y1 + 1) if mask.any() else (0.0, 0.0, 0.0, 0.0)
        prompt = None if points is None else points[k]
        point = None if prompt is None else (float(prompt[0]), float(prompt[1]))
        class_id = int(class_ids[k])
        instances.append(Instance(
            mask=mask, box_xyxy=box, class_id=class_id, class_name=class_names[class_id],
            class_score=float(class_scores[k]), predicted_iou=float(predicted_ious[k]),
            stability=float(stabilities[k]), point=point,
        ))
    return instances


@dataclass
class Segmentation:
    """All instances of one frame, sorted best first (instance k is `instances[k - 1]`)."""

    height: int
    width: int
    instances: list[Instance] = field(default_factory=list)

    def label_image(self) -> np.ndarray:
        """(H, W) uint16: 0 = no instance, k = instance k; the better instance wins overlaps."""
        labels = np.zeros((self.height, self.width), dtype=np.uint16)
        for k in range(len(self.instances), 0, -1):
            labels[self.instances[k - 1].mask] = k
        return labels


class Segmenter(Protocol):
    """What the ROS node and `saom bag` need from a loaded model (see saom_core.infer.segmenter)."""

    class_names: list[str]  # index = class id; class_names[0] == "background"

    def segment(self, image: np.ndarray) -> Segmentation:
        """Everything-of-interest mode on an (H, W, 3) uint8 RGB frame."""
        ...

    def segment_prompts(
        self, image: np.ndarray, boxes: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> Segmentation:
        """Prompted mode: one instance per box (N, 4 xyxy px) and per point (M, 2 xy px), in that order."""
        ...

    def close(self) -> None:
        """Free the model (and GPU memory); the object is unusable afterwards."""
        ...
