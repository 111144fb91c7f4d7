"""PyBullet collector and `collect_dataset`: frames, masks, determinism, workers, crash + resume."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pybullet
import pybullet_data
import pytest
from pybullet_utils.bullet_client import BulletClient

from saom_core.cli import main
from saom_core.data.classes import ClassList
from saom_core.data.collect import collect_dataset, collector_class
from saom_core.data.collect.base import resolve_min_area
from saom_core.data.collect.catalogue import load_catalogue
from saom_core.data.collect.pybullet import PyBulletCollector, _mesh_is_finite, _SceneBuilder
from saom_core.data.reader import SaomDataset
from saom_core.errors import DatasetError, SimulatorError


@pytest.fixture(scope="module")
def pybullet_classes() -> ClassList:
    return ClassList.from_yaml("pybullet")


@pytest.fixture(scope="module")
def scene0(pybullet_classes):
    with PyBulletCollector(pybullet_classes, size=224, min_area=30) as collector:
        start = time.perf_counter()
        frames = collector.collect_scene(0, seed=0)
        frames += collector.collect_scene(1, seed=0)
        elapsed = time.perf_counter() - start
    return frames, elapsed


def _dataset_bytes(root):
    """Everything a collection produced, minus the creation date: annotations and every image's bytes."""
    coco = json.loads((root / "annotations.json").read_text())
    coco["info"].pop("date_created")
    return coco, {p.name: p.read_bytes() for p in sorted((root / "images").iterdir())}


def _assert_same_dataset(a, b):
    """Byte equality, reported as which annotations and which images differ (not a dump of PNG bytes)."""
    (coco_a, images_a), (coco_b, images_b) = _dataset_bytes(a), _dataset_bytes(b)
    assert images_a.keys() == images_b.keys()
    assert [name for name in images_a if images_a[name] != images_b[name]] == []
    # The common prefix first (which annotations differ), then the lengths.
    pairs = zip(coco_a["annotations"], coco_b["annotations"], strict=False)
    differing = [(x["image_id"], x["category_id"]) for x, y in pairs if x != y]
    assert differing == [] and len(coco_a["annotations"]) == len(coco_b["annotations"])
    assert coco_a == coco_b


def test_class_list_is_the_catalogues(pybullet_classes):
    assert pybullet_classes == load_catalogue("pybullet").class_list
    assert 10 <= len(pybullet_classes.names) <= 14


def test_scene_frames_show_labelled_objects(scene0, pybullet_classes):
    frames, elapsed = scene0
    assert len(frames) == 8
    assert elapsed < 20, f"2 scenes took {elapsed:.1f}s (target well under 1 s per scene)"
    labels = set()
    for frame in frames:
        frame.validate()
        assert frame.image.shape == (224, 224, 3)
        assert 1 <= len(frame.labels) <= 20
        assert all(label in pybullet_classes.names for label in frame.labels)
        assert (frame.masks.sum(axis=(1, 2)) >= 30).all()
        # masks are visible pixels from the segmentation buffer: no pixel belongs to two objects
        assert frame.masks.sum(0).max() <= 1
        assert frame.image.reshape(-1, 3).std(0).mean() > 10  # not a blank render
        assert frame.meta["simulator"] == "pybullet"
        for key in ("agent_pose", "camera", "light", "station"):
            assert key in frame.meta
        labels.update(frame.labels)
    assert len(labels) >= 4


def test_a_scene_prints_nothing_of_pybullet_s_own(pybullet_classes, capfd):
    """pybullet's C code writes to file descriptor 1 (a "?" for every collision shape it has no mesh
    of): a collection's output is its progress, not thousands of such lines."""
    with PyBulletCollector(pybullet_classes, size=224, min_area=30) as collector:
        capfd.readouterr()
        collector.collect_scene(0, seed=0)
    assert capfd.readouterr().out == ""


def test_agent_rotates_right_by_90_degrees(scene0):
    frames, _ = scene0
    for scene in (frames[:4], frames[4:]):
        yaws = [f.meta["agent_pose"]["yaw"] for f in scene]
        assert [round((yaws[k] - yaws[k + 1]) % 360, 3) for k in range(3)] == [90.0, 90.0, 90.0]
        assert len({(f.meta["agent_pose"]["height"], f.meta["agent_pose"]["pitch"]) for f in scene}) == 1
    assert frames[0].meta["agent_pose"] != frames[4].meta["agent_pose"]  # scenes differ


def test_same_seed_same_scene_in_any_order(pybullet_classes, scene0):
    frames, _ = scene0
    with PyBulletCollector(pybullet_classes, size=224, min_area=30) as collector:
        again = collector.collect_scene(1, seed=0)  # scene 1 alone, without scene 0 before it
        other = collector.collect_scene(1, seed=1)
    for a, b in zip(frames[4:], again, strict=True):
        assert a.image.tobytes() == b.image.tobytes()
        np.testing.assert_array_equal(a.masks, b.masks)
        assert a.labels == b.labels and a.meta == b.meta
    assert any(a.image.tobytes() != b.image.tobytes() for a, b in zip(again, other, strict=True))


def test_min_area_drops_small_masks(pybullet_classes):
    with PyBulletCollector(pybullet_classes, size=96, min_area=1) as collector:
        every = collector.collect_scene(0, seed=0)
    with PyBulletCollector(pybullet_classes, size=96, min_area=150) as collector:
        large = collector.collect_scene(0, seed=0)
    assert all(frame.image.shape == (96, 96, 3) for frame in large)
    assert all((frame.masks.sum(axis=(1, 2)) >= 150).all() for frame in large)
    kept = sum(len(f.labels) for f in large)
    assert 0 < kept < sum(len(f.labels) for f in every)
    assert kept == sum(int((f.masks.sum(axis=(1, 2)) >= 150).sum()) for f in every)
    assert resolve_min_area(None, {"min_area": 30}, 224) == 30
    assert resolve_min_area(None, {"min_area": 30}, 112) == 8  # scaled with the frame area
    assert resolve_min_area(None, {}, 448) == 120
    assert resolve_min_area(5, {"min_area": 30}, 448) == 5  # explicit pixels win


def test_class_subset_labels_only_those(tmp_path):
    yaml_path = tmp_path / "classes_two.yaml"
    yaml_path.write_text(
        "name: two\nclasses:\n  - {name: Table, type: receptacle}\n  - {name: Mug, type: pickupable}\n"
    )
    collect_dataset("pybullet", scenes=2, out=tmp_path / "ds", classes=str(yaml_path), progress=False)
    ds = SaomDataset(tmp_path / "ds")
    assert ds.classes.names == ["Table", "Mug"]
    assert {label for sample in ds for label in sample.labels} <= {"Table", "Mug"}
    bad = tmp_path / "classes_none.yaml"
    bad.write_text("name: none\nclasses: [Sofa]\n")
    with pytest.raises(SimulatorError, match="none of the catalogue's classes"):
        collect_dataset("pybullet", scenes=1, out=tmp_path / "ds2", classes=str(bad), workers=2, progress=False)
    assert not (tmp_path / "ds2").exists()


def test_same_seed_identical_with_one_or_two_workers(tmp_path):
    collect_dataset("pybullet", scenes=3, out=tmp_path / "w1", seed=7, workers=1, progress=False)
    collect_dataset("pybullet", scenes=3, out=tmp_path / "w2", seed=7, workers=2, progress=False)
    collect_dataset("pybullet", scenes=3, out=tmp_path / "s8", seed=8, workers=1, progress=False)
    _assert_same_dataset(tmp_path / "w1", tmp_path / "w2")
    coco1, images1 = _dataset_bytes(tmp_path / "w1")
    coco3, images3 = _dataset_bytes(tmp_path / "s8")
    assert len(images1) == 12
    assert images3.keys() == images1.keys()
    assert all(images3[name] != images1[name] for name in images1)
    assert coco3["annotations"] != coco1["annotations"]
    assert [img["file_name"] for img in coco1["images"]][:4] == [f"images/scene_00000_{k:03d}.png" for k in range(4)]


def test_crash_then_resume_finishes_and_skips_done_scenes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ds"
    calls: list[int] = []
    original = PyBulletCollector.collect_scene

    def crashing(self, scene_index, seed):
        calls.append(scene_index)
        if scene_index == 2:
            raise RuntimeError("simulated crash")
        return original(self, scene_index, seed)

    monkeypatch.setattr(PyBulletCollector, "collect_scene", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        collect_dataset("pybullet", scenes=4, out=out, seed=3, progress=False)
    assert not (out / "annotations.json").exists()
    assert sorted(p.stem for p in (out / ".scenes").glob("*.json")) == ["scene_00000", "scene_00001"]

    capsys.readouterr()
    assert main(["dataset", "check", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saom: error: no annotations.json") and "--resume" in err and "\n" not in err

    with pytest.raises(DatasetError, match="--resume"):  # never silently overwrites
        collect_dataset("pybullet", scenes=4, out=out, seed=3, progress=False)
    with pytest.raises(DatasetError, match="seed=3"):  # resuming with other settings would mix scenes
        collect_dataset("pybullet", scenes=4, out=out, seed=4, resume=True, progress=False)

    monkeypatch.setattr(PyBulletCollector, "collect_scene", original)
    calls.clear()
    counting = lambda self, i, s: (calls.append(i), original(self, i, s))[1]  # noqa: E731
    monkeypatch.setattr(PyBulletCollector, "collect_scene", counting)
    assert main(["collect", "--sim", "pybullet", "--scenes", "4", "--out", str(out), "--seed", "3", "--resume"]) == 0
    assert calls == [2, 3]
    assert main(["dataset", "check", str(out), "--quiet"]) == 0
    assert re.search(r"\| images\s+\|[^\n]*\|\s+16 \|", capsys.readouterr().out)

    # the resumed dataset equals one collected in a single run
    monkeypatch.setattr(PyBulletCollector, "collect_scene", original)
    collect_dataset("pybullet", scenes=4, out=tmp_path / "fresh", seed=3, progress=False)
    _assert_same_dataset(out, tmp_path / "fresh")


class _Draws168:
    """An rng stand-in whose integer draw picks random_urdfs/168."""

    def integers(self, low, high):
        return 168


def test_distractor_with_a_nan_mesh_is_never_loaded():
    """random_urdfs/168's OBJ has only NaN vertices; Bullet's convex hull of it reads memory before
    its point array (valgrind), so a scene holding it could differ between processes (CI saw a resumed
    dataset differ from a one-go collection three times)."""
    data = pybullet_data.getDataPath()
    assert not _mesh_is_finite(f"{data}/random_urdfs/168/168.obj")
    assert _mesh_is_finite(f"{data}/random_urdfs/167/167.obj")
    bc = BulletClient(connection_mode=pybullet.DIRECT)
    try:
        bc.setAdditionalSearchPath(data)
        builder = _SceneBuilder(bc, _Draws168(), data, load_catalogue("pybullet"))
        builder._distractor(np.zeros(2))
        assert bc.getNumBodies() == 0 and builder.dynamic == []
    finally:
        bc.disconnect()


def test_unknown_simulator_names_the_known_ones(tmp_path):
    with pytest.raises(SimulatorError, match="unknown simulator 'gazebo'.*ai2thor.*pybullet"):
        collect_dataset("gazebo", scenes=1, out=tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert collector_class("PyBullet") is PyBulletCollector


def test_resume_extends_a_finished_dataset(tmp_path):
    out = tmp_path / "ds"
    collect_dataset("pybullet", scenes=1, out=out, seed=2, progress=False)
    before = _dataset_bytes(out)[1]
    collect_dataset("pybullet", scenes=2, out=out, seed=2, resume=True, progress=False)
    coco, after = _dataset_bytes(out)
    assert len(coco["images"]) == 8
    assert {name: after[name] for name in before} == before
