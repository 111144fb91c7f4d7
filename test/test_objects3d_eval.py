"""3D and tracking evaluation on a tiny trajectory dataset with depth."""
from __future__ import annotations

import numpy as np
import pytest

from saom_core.data.collect import collect_dataset
from saom_core.data.reader import SaomDataset
from saom_core.eval.objects3d_eval import Objects3DEvaluation, format_markdown, ground_truth_box, match_masks
from saom_core.infer.types import Instance, Segmentation


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory):
    out = tmp_path_factory.mktemp("traj") / "data"
    collect_dataset("pybullet", scenes=2, out=out, size=96, min_area=15, trajectory=4, progress=False)
    return SaomDataset(out)


def _perfect(sample) -> Segmentation:
    h, w = sample.image.shape[:2]
    return Segmentation(h, w, [Instance(m, (0, 0, 1, 1), int(c), n, 1.0, 1.0, 1.0)
                               for m, c, n in zip(sample.masks, sample.class_ids, sample.labels, strict=True)])


def test_perfect_masks_score_as_ground_truth_masks_and_track_well(trajectory):
    evaluation = Objects3DEvaluation(trajectory)
    for i in range(len(trajectory)):
        evaluation.add(i, _perfect(trajectory[i]))
    result = evaluation.result()
    pred, gt = result["predicted_masks"], result["ground_truth_masks"]
    assert pred["objects"] == sum(len(trajectory[i].masks) for i in range(len(trajectory))) > 0
    assert pred["matched"] == pred["objects"] and pred == gt
    assert pred["fraction_with_3d"] > 0.9 and 0 < pred["median_centroid_error_cm"] < 10 and pred["mean_box_iou"] > 0.3
    track = result["tracking"]
    assert track["scenes"] == 2 and track["frames"] == 8 and track["id_switches"] == 0
    assert track["IDF1"] > 0.9 and track["MOTA"] > 0.9
    text = "\n".join(format_markdown(result, len(trajectory)))
    assert "| IDF1 |" in text and "median 3D centroid error (cm)" in text


def test_no_masks_match_nothing(trajectory):
    evaluation = Objects3DEvaluation(trajectory)
    sample = trajectory[0]
    evaluation.add(0, Segmentation(*sample.image.shape[:2], []))
    result = evaluation.result()
    assert result["predicted_masks"]["matched"] == 0 and result["predicted_masks"]["median_centroid_error_cm"] is None
    assert result["ground_truth_masks"]["matched"] == len(sample.masks)
    assert result["tracking"]["MOTA"] < 0.5  # every object missed


def test_match_masks_is_one_to_one_at_iou_half():
    a = np.zeros((3, 10, 10), bool)
    a[0, :5], a[1, 5:], a[2, :, :2] = True, True, True
    b = np.stack([a[1], a[0]])
    assert sorted(match_masks(a, b)) == [(0, 1), (1, 0)]


def test_ground_truth_box_of_a_turned_box_without_recorded_aabb():
    quarter_turn_about_z = [0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)]
    centre, lo, hi = ground_truth_box(
        {"position": [0, 0, 2], "orientation": quarter_turn_about_z, "extents": [0.4, 0.2, 0.1]}
    )
    assert np.allclose(hi - lo, [0.2, 0.4, 0.1]) and np.allclose(centre, [0, 0, 2])
