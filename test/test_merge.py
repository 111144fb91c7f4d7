"""Shards: `saom collect --first-scene K --scenes M` on several machines, `saom dataset merge` into one."""
from __future__ import annotations

import json

import pytest

from saom_core.cli import main
from saom_core.data.collect import collect_dataset
from saom_core.data.merge import merge_datasets
from saom_core.errors import DatasetError


def _annotations(root):
    coco = json.loads((root / "annotations.json").read_text())
    coco["info"].pop("date_created")
    return json.dumps(coco, indent=None, sort_keys=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    common = {"seed": 5, "size": 48, "min_area": 5, "progress": False}
    collect_dataset("pybullet", scenes=2, out=root / "a", first_scene=0, **common)
    collect_dataset("pybullet", scenes=1, out=root / "b", first_scene=2, **common)
    collect_dataset("pybullet", scenes=3, out=root / "one", **common)
    return root


def test_two_shards_merge_into_the_one_run_byte_for_byte(shards, capsys):
    out = shards / "merged"
    assert main(["dataset", "merge", str(shards / "b"), str(shards / "a"), "--out", str(out)]) == 0
    assert "annotations.json" in capsys.readouterr().out
    assert _annotations(out) == _annotations(shards / "one")
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert files == sorted(p.relative_to(shards / "one") for p in (shards / "one").rglob("*.png"))
    assert all((out / f).read_bytes() == (shards / "one" / f).read_bytes() for f in files)
    settings = json.loads((out / "collect.json").read_text())
    assert (settings["first_scene"], settings["scenes"]) == (0, 3)


def test_merge_refuses_overlapping_scenes(shards, tmp_path):
    with pytest.raises(DatasetError, match="scene scene_00002 is in both"):
        merge_datasets([shards / "b", shards / "one"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_refuses_shards_of_other_settings(shards, tmp_path):
    collect_dataset("pybullet", scenes=1, out=tmp_path / "big", first_scene=3, seed=5, size=64, min_area=5,
                    progress=False)
    with pytest.raises(DatasetError, match="size=64"):
        merge_datasets([shards / "a", tmp_path / "big"], tmp_path / "out")
    with pytest.raises(DatasetError, match="not a finished collection"):
        merge_datasets([shards / "a", tmp_path / "nowhere"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
