"""The PyBullet rooms labelled for pretraining a class-agnostic SAM (`saom pretrain`).

The same scenes as `PyBulletCollector` (same random draws: a seed gives the same rooms), rendered
with link indices in the segmentation buffer, and labelled with every body's masks at each
granularity (`granularity.py`): whole bodies (objects of interest, furniture and distractors alike),
their links, their colour regions, and floor and walls. No classes and no 3D ground truth.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pybullet

from saom_core.data.classes import ClassList
from saom_core.data.collect.granularity import GRANULARITIES, granularity_targets
from saom_core.data.collect.pybullet import PyBulletCollector
from saom_core.errors import SimulatorError

_BODY_BITS = 24  # pybullet: segmentation value = body id + ((link index + 1) << 24)


class PyBulletGranularityCollector(PyBulletCollector):
    name = "pybullet-granularity"
    default_classes = GRANULARITIES
    supports_trajectory = False
    segmentation_flags = pybullet.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX
    ground_truth_3d = False

    def _classes_of_interest(self, class_list: ClassList) -> set[str]:
        """None by class: every body is labelled, at each granularity."""
        if class_list.names != GRANULARITIES.names:
            raise SimulatorError(
                f"the pybullet-granularity collector labels granularities {GRANULARITIES.names}, not the "
                f"classes of class list '{class_list.name}'"
            )
        return set()

    def _frame_masks(self, scene: dict[str, Any], seg: np.ndarray,
                     image: np.ndarray) -> tuple[list[np.ndarray], list[str], list[int]]:
        bodies = np.where(seg >= 0, seg & ((1 << _BODY_BITS) - 1), -1)
        parts = np.where(seg >= 0, (seg >> _BODY_BITS) - 1, -2)
        targets = granularity_targets(image, bodies, parts, set(scene["stuff"]), self.min_area)
        return [t.mask for t in targets], [t.granularity for t in targets], [t.body for t in targets]
