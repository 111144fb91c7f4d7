"""The everything-mode threshold of a class-agnostic model, chosen by F1 on its own frames."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from saom_core.eval.operating_point import best_operating_point, operating_points, true_positives
from saom_core.infer.types import Instance, Segmentation


def _square(x0: int, y0: int, size: int = 8) -> np.ndarray:
    mask = np.zeros((32, 32), bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return mask


def _instance(mask: np.ndarray, predicted_iou: float) -> Instance:
    ys, xs = np.nonzero(mask)
    return Instance(mask, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), 1, "object", 1.0, predicted_iou, 1.0)


def test_each_ground_truth_mask_matches_once_in_score_order():
    ious = np.array([[0.9, 0.0], [0.95, 0.0], [0.0, 0.4]])
    assert true_positives(np.array([0.5, 0.9, 0.8]), ious).tolist() == [False, True, False]


def test_the_threshold_with_the_best_f1_is_chosen():
    whole, part = _square(0, 0), _square(16, 16)
    frame = SimpleNamespace(image=np.zeros((32, 32, 3), np.uint8), masks=np.stack([whole, part]))
    dataset = [frame]
    predictions = [_instance(whole, 0.9), _instance(_square(8, 20), 0.7), _instance(part, 0.6)]
    points = operating_points(lambda image: Segmentation(32, 32, predictions), dataset, (0.8, 0.65, 0.5),
                              progress=False)
    by_threshold = {p.pred_iou_thresh: p for p in points}
    strict = by_threshold[0.8]
    assert strict.masks_per_frame == 1 and strict.precision == 1 and strict.recall == 0.5
    assert by_threshold[0.65].precision == 0.5 and by_threshold[0.65].recall == 0.5
    assert by_threshold[0.5].recall == 1 and abs(by_threshold[0.5].f1 - 0.8) < 1e-9
    assert best_operating_point(points).pred_iou_thresh == 0.5
