"""Dataset format: DatasetWriter -> SaomDataset round trip, scene splits, unfinished collections."""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from saom_core.data.format import ANNOTATIONS, SPLITS, DatasetWriter, Frame, split_for_scene
from saom_core.data.reader import SaomDataset
from saom_core.errors import DatasetError, SaomError


def _write(root, classes, scenes: dict[str, list[Frame]], resume: bool = False):
    writer = DatasetWriter(root, classes, "synthetic", resume=resume)
    for scene, frames in scenes.items():
        writer.write_scene(scene, frames)
    return writer.finalize()


def test_round_trip_images_masks_labels_meta(tmp_path, tiny_classes, make_frames):
    scenes = {"scene_00003": make_frames(4, seed=1), "scene_00001": make_frames(3, seed=2),
              "kitchen": make_frames(2, seed=3, size=(16, 20))}
    _write(tmp_path / "ds", tiny_classes, scenes)
    ds = SaomDataset(tmp_path / "ds")
    assert len(ds) == 9
    seen = set()
    for sample in ds:
        scene, index = sample.meta["scene"], sample.meta["frame_index"]
        original = scenes[scene][index]
        seen.add((scene, index))
        assert sample.image.dtype == np.uint8
        np.testing.assert_array_equal(sample.image, original.image)
        np.testing.assert_array_equal(sample.masks, original.masks)
        assert sample.labels == original.labels
        assert [tiny_classes.name_of(int(c)) for c in sample.class_ids] == original.labels
        for key, value in original.meta.items():
            assert sample.meta[key] == value
        assert sample.meta["simulator"] == "synthetic"
        assert sample.meta["split"] == split_for_scene(scene)
    assert seen == {(s, i) for s, frames in scenes.items() for i in range(len(frames))}
    # image ids follow the scene order, so they are stable for a given set of scenes
    assert [img["saom"]["scene"] for img in ds.images] == sorted(img["saom"]["scene"] for img in ds.images)


def test_frame_without_objects_round_trips(tmp_path, tiny_classes):
    image = np.full((8, 10, 3), 7, dtype=np.uint8)
    _write(tmp_path / "ds", tiny_classes, {"s0": [Frame(image, np.zeros((0, 8, 10), bool), [])]})
    sample = SaomDataset(tmp_path / "ds")[0]
    assert sample.masks.shape == (0, 8, 10) and sample.labels == []
    np.testing.assert_array_equal(sample.image, image)


def test_split_by_scene_never_shares_a_scene(tmp_path, tiny_classes, make_frames):
    scenes = {f"scene_{i:05d}": make_frames(2, seed=i) for i in range(12)}
    _write(tmp_path / "ds", tiny_classes, scenes)
    ds = SaomDataset(tmp_path / "ds")
    splits_of = defaultdict(set)
    for img in ds.images:
        splits_of[img["saom"]["scene"]].add(img["saom"]["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert {next(iter(s)) for s in splits_of.values()} == set(SPLITS)  # 12 scenes reach all three splits
    for split in SPLITS:
        part = SaomDataset(tmp_path / "ds", split=split)
        assert {img["saom"]["split"] for img in part.images} == {split}
    assert sum(len(SaomDataset(tmp_path / "ds", split=s)) for s in SPLITS) == len(ds)


def test_splits_are_stable_when_scenes_are_added(tmp_path, tiny_classes, make_frames):
    root = tmp_path / "ds"
    _write(root, tiny_classes, {f"scene_{i:05d}": make_frames(1, seed=i) for i in range(5)})
    before = {img["saom"]["scene"]: img["saom"]["split"] for img in SaomDataset(root).images}
    _write(root, tiny_classes, {f"scene_{i:05d}": make_frames(1, seed=i) for i in range(5, 40)}, resume=True)
    after = {img["saom"]["scene"]: img["saom"]["split"] for img in SaomDataset(root).images}
    assert len(after) == 40
    assert {s: after[s] for s in before} == before
    counts = Counter(split_for_scene(f"scene_{i:05d}") for i in range(1000))
    assert abs(counts["train"] / 1000 - 0.7) < 0.03 and abs(counts["val"] / 1000 - 0.15) < 0.03


def test_writer_refuses_to_overwrite_without_resume(tmp_path, tiny_classes, make_frames):
    root = tmp_path / "ds"
    _write(root, tiny_classes, {"s0": make_frames(1)})
    with pytest.raises(DatasetError, match="--resume"):
        DatasetWriter(root, tiny_classes, "synthetic")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="--resume"):
        DatasetWriter(tmp_path / "other", tiny_classes, "synthetic")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_unfinished_collection_is_not_a_dataset(tmp_path, tiny_classes, make_frames):
    writer = DatasetWriter(tmp_path / "ds", tiny_classes, "synthetic")
    writer.write_scene("scene_00000", make_frames(2))  # a crash here: shards, no annotations.json
    assert not (tmp_path / "ds" / ANNOTATIONS).exists()
    with pytest.raises(DatasetError, match="unfinished collection"):
        SaomDataset(tmp_path / "ds")
    assert writer.completed_scenes() == {"scene_00000"}


def test_unknown_label_and_bad_frames_are_rejected(tmp_path, tiny_classes):
    writer = DatasetWriter(tmp_path / "ds", tiny_classes, "synthetic")
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(SaomError, match="unknown class 'Sofa'"):
        writer.write_scene("s0", [Frame(image, np.ones((1, 8, 8), bool), ["Sofa"])])
    with pytest.raises(DatasetError, match=r"masks must be \(N, 8, 8\)"):
        writer.write_scene("s0", [Frame(image, np.ones((1, 8, 9), bool), ["Mug"])])
    with pytest.raises(DatasetError, match="1 masks but 2 labels"):
        writer.write_scene("s0", [Frame(image, np.ones((1, 8, 8), bool), ["Mug", "Ball"])])
    with pytest.raises(DatasetError, match="no scenes"):
        writer.finalize()


def test_annotations_are_coco_with_rle(tmp_path, tiny_classes, make_frames):
    path = _write(tmp_path / "ds", tiny_classes, {"s0": make_frames(3, seed=5)})
    coco = json.loads(path.read_text())
    assert [c["name"] for c in coco["categories"]] == tiny_classes.names
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    for ann in coco["annotations"]:
        assert set(ann["segmentation"]) == {"size", "counts"} and isinstance(ann["segmentation"]["counts"], str)
        assert ann["area"] > 0 and ann["iscrowd"] == 0
