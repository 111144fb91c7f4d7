"""The paper's metrics against hand-computed cases, and COCO metrics on known detections."""
from __future__ import annotations

import numpy as np
import pytest

from saom_core.data import rle as rle_utils
from saom_core.data.classes import ClassList
from saom_core.data.reader import SaomDataset
from saom_core.eval.everything_eval import coco_mask_metrics, run_everything
from saom_core.eval.point_eval import ClassStats, PointEvalResult, evaluate_points
from saom_core.eval.report import _everything_rows
from saom_core.infer.types import Instance, Segmentation
from saom_core.model.architectures import get_config
from saom_core.model.saom import build_model


def test_iou_and_acc_are_sums_over_instances():
    stats = ClassStats()
    stats.add(intersection=10, union=20, gt_area=15, correct=True)
    stats.add(intersection=0, union=30, gt_area=25, correct=False)
    assert stats.occurrences == 2
    assert stats.iou == pytest.approx(10 / 50)  # not the mean of 0.5 and 0
    assert stats.acc == pytest.approx(10 / 40)
    assert stats.class_accuracy == pytest.approx(0.5)


def test_means_skip_absent_classes_but_list_them():
    classes = ClassList.from_dict({"name": "t", "classes": ["A", "B", "C"]})
    result = PointEvalResult(classes, True, {n: ClassStats() for n in classes.names})
    result.per_class["A"].add(10, 10, 10, True)  # IoU 1, Acc 1
    result.per_class["B"].add(5, 20, 10, False)  # IoU 0.25, Acc 0.5
    assert result.miou == pytest.approx((1 + 0.25) / 2)
    assert result.macc == pytest.approx((1 + 0.5) / 2)
    assert result.mean_class_accuracy == pytest.approx(0.5)
    table = result.to_dict()["per_class"]
    assert table["C"] == {"occurrences": 0, "IoU": None, "Acc": None, "class_accuracy": None}


def test_instance_means_weigh_objects_not_classes():
    classes = ClassList.from_dict({"name": "t", "classes": ["A", "B"]})
    result = PointEvalResult(classes, True, {n: ClassStats() for n in classes.names})
    for _ in range(3):
        result.per_class["A"].add(9, 10, 10, True)  # IoU 0.9, right
    result.per_class["B"].add(1, 10, 10, False)  # IoU 0.1, wrong
    result.objects = 4
    assert result.instance_miou == pytest.approx((3 * 0.9 + 0.1) / 4)
    assert result.miou == pytest.approx((0.9 + 0.1) / 2)
    assert result.instance_class_accuracy == pytest.approx(0.75)
    assert result.mean_class_accuracy == pytest.approx(0.5)


def test_random_point_prompts_reach_the_thin_object_the_grid_misses(tmp_path):
    """The floor's benchmark prompts a pixel of every object, so none is unreachable; same seed, same points."""
    from saom_core.data.format import DatasetWriter, Frame

    classes = ClassList.from_dict({"name": "t", "classes": ["Thin"]})
    writer = DatasetWriter(tmp_path / "ds", classes, "synthetic")
    masks = np.zeros((1, 64, 64), dtype=bool)
    masks[0, 9:11, 4:60] = True
    writer.write_scene("scene_00000", [Frame(np.zeros((64, 64, 3), np.uint8), masks, ["Thin"], {})], split="val")
    writer.finalize()
    dataset = SaomDataset(tmp_path / "ds", split="val")
    model = build_model(get_config("test"), classes)
    runs = [
        evaluate_points({"m": model}, dataset, points_per_side=4, progress=False, prompt="random_foreground")["m"]
        for _ in range(2)
    ]
    assert runs[0].unreachable == 0 and runs[0].objects == 1
    assert runs[0].to_dict() == runs[1].to_dict()
    with pytest.raises(ValueError, match="unknown point prompt"):
        evaluate_points({"m": model}, dataset, prompt="centre")


def test_vanilla_sam_has_no_class_accuracy():
    classes = ClassList.from_dict({"name": "t", "classes": ["A"]})
    result = PointEvalResult(classes, False, {"A": ClassStats()})
    result.per_class["A"].add(1, 2, 2, False)
    assert result.mean_class_accuracy is None


def test_point_eval_scores_every_object_and_lists_every_class(rect_dataset):
    dataset = SaomDataset(rect_dataset, split="val")
    model = build_model(get_config("test"), dataset.classes)
    results = evaluate_points(
        {"a": model, "b": build_model(get_config("test"))}, dataset, points_per_side=8, progress=False
    )
    expected_objects = sum(len(dataset.annotations_of(i)) for i in range(len(dataset)))
    for result in results.values():
        assert result.objects == expected_objects
        assert set(result.per_class) == set(dataset.classes.names)
        for stats in result.per_class.values():
            assert stats.occurrences == 0 or 0.0 <= stats.iou <= 1.0
    assert results["b"].mean_class_accuracy is None


def test_unreachable_object_counts_as_an_empty_mask(tmp_path):
    """An object between grid points cannot be prompted in everything mode: IoU 0, union = its area."""
    from saom_core.data.format import DatasetWriter, Frame

    classes = ClassList.from_dict({"name": "t", "classes": ["Thin"]})
    writer = DatasetWriter(tmp_path / "ds", classes, "synthetic")
    masks = np.zeros((1, 64, 64), dtype=bool)
    masks[0, 9:11, 4:60] = True  # rows 9-10; a 4x4 grid samples rows 8.5->8 and 24.5->24: none inside
    writer.write_scene("scene_00000", [Frame(np.zeros((64, 64, 3), np.uint8), masks, ["Thin"], {})], split="val")
    writer.finalize()
    dataset = SaomDataset(tmp_path / "ds", split="val")
    result = evaluate_points(
        {"m": build_model(get_config("test"), classes)}, dataset, points_per_side=4, progress=False
    )["m"]
    stats = result.per_class["Thin"]
    assert result.unreachable == 1
    assert stats.intersection == 0 and stats.union == masks.sum() and stats.iou == 0.0


def test_coco_metrics_perfect_and_empty(rect_dataset):
    dataset = SaomDataset(rect_dataset, split="val")
    ids = [img["id"] for img in dataset.images]
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in dataset.coco["annotations"] if a["image_id"] in ids
    ]
    assert coco_mask_metrics(dataset, ids, perfect, use_categories=True)["AP"] == pytest.approx(1.0)
    wrong_class = [dict(d, category_id=d["category_id"] % 3 + 1) for d in perfect]
    assert coco_mask_metrics(dataset, ids, wrong_class, use_categories=True)["AP"] == pytest.approx(0.0)
    assert coco_mask_metrics(dataset, ids, wrong_class, use_categories=False)["AP"] == pytest.approx(1.0)
    empty_mask = rle_utils.encode(np.zeros((48, 48), bool))
    assert (
        coco_mask_metrics(dataset, ids, [dict(d, segmentation=empty_mask) for d in perfect], use_categories=False)["AP"]
        == 0.0
    )


def test_everything_mode_counts_ground_truth_over_the_frames_it_scores(rect_dataset):
    """Masks per frame are only comparable with ground-truth objects per frame over the same frames."""
    dataset = SaomDataset(rect_dataset, split="val")
    frame_ids = [img["id"] for img in dataset.images]

    def ground_truth_as_output(image: np.ndarray) -> Segmentation:
        index = next(i for i in range(len(dataset)) if np.array_equal(dataset.load_image(i), image))
        sample = dataset[index]
        instances = [
            Instance(
                mask=m,
                box_xyxy=(0, 0, 1, 1),
                class_id=int(c),
                class_name=name,
                class_score=1.0,
                predicted_iou=1.0,
                stability=1.0,
            )
            for m, c, name in zip(sample.masks, sample.class_ids, sample.labels, strict=True)
        ]
        return Segmentation(*image.shape[:2], instances)

    per_frame = [sum(a["image_id"] == i for a in dataset.coco["annotations"]) for i in frame_ids]
    for frames in (1, 2, None):
        result = run_everything(ground_truth_as_output, dataset, has_classes=True, max_frames=frames, progress=False)
        expected = sum(per_frame[: frames or len(per_frame)])
        assert result.objects == result.masks == expected
        assert result.masks_per_object == 1.0 and result.coco_agnostic["AP"] == pytest.approx(1.0)


def test_everything_rows_name_the_frames_they_cover():
    everything = {
        "frames": 16,
        "masks_per_frame": 6.5,
        "ground_truth_objects_per_frame": 5.0,
        "coco_mask_class_agnostic": {"AP": 0.3, "AP50": 0.6, "AR100": 0.4},
        "coco_mask_per_class": {"AP": 0.2},
    }
    partial = _everything_rows(everything, everything, split_frames=244)
    assert all("first 16 of 244 frames" in row for row in partial if "ground-truth" not in row)
    assert "| ground-truth objects per frame (same frames) | 5.0 | 5.0 |" in partial
    whole = _everything_rows(dict(everything, frames=244), dict(everything, frames=244), split_frames=244)
    assert not any(" of 244" in row for row in whole)


def test_everything_mode_counts_claims_on_frames_with_nothing_of_interest(tmp_path, tiny_classes, make_frames):
    """A bare wall or an empty floor has no ground truth: every mask output there is a false claim."""
    from saom_core.data.format import DatasetWriter

    frames = make_frames(12, seed=3)
    writer = DatasetWriter(tmp_path / "ds", tiny_classes, "synthetic")
    writer.write_scene("scene_00000", frames, split="test")
    writer.finalize()
    dataset = SaomDataset(tmp_path / "ds")
    empty = sum(1 for f in frames if not f.labels)
    assert 0 < empty < len(frames)

    def two_blobs(image: np.ndarray) -> Segmentation:
        mask = np.zeros(image.shape[:2], bool)
        mask[:4, :4] = True
        blob = Instance(mask=mask, box_xyxy=(0, 0, 4, 4), class_id=1, class_name="Mug", class_score=1.0,
                        predicted_iou=1.0, stability=1.0)
        return Segmentation(*image.shape[:2], [blob, blob])

    result = run_everything(two_blobs, dataset, has_classes=True, progress=False)
    assert (result.empty_frames, result.empty_claims, result.claims_per_empty_frame) == (empty, 2 * empty, 2.0)
    assert result.to_dict()["claims_per_frame_without_objects"] == 2.0
