"""What segmentation returns: labelled instances at the input frame's resolution.

Shared by `saom segment`, evaluation, the ROS node and `saom bag`, so every consumer sees the
same fields and the same instance numbering.
"""
from __future__ import annotations

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
    object3d: "Object3D | None" = None  # 3D from aligned depth (saom_core.geometry3d), when computed

    @property
    def score(self) -> float:
        """Ranking score: mask quality times class confidence."""
        return self.predicted_iou * self.class_score


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
