"""The object catalogue: the built-in classes reproduce the scenes of before, a user's own mesh gets
masks, depth and 3D ground truth, and bad catalogues fail before anything is rendered."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from saom_core.cli import main
from saom_core.data.classes import ClassList
from saom_core.data.collect import collect_dataset
from saom_core.data.collect.catalogue import load_catalogue
from saom_core.data.reader import SaomDataset
from saom_core.errors import ConfigError

# Digests of datasets collected by the code before the catalogue existed (classes in pybullet.py):
# the shipped catalogue without randomisation must render the very same bytes.
BUILT_IN_DIGESTS = {
    "4 views": "7c7f7d7442aff14a899876c6f1ce9e2ea57cb12c14fb6f18b13825324d3584f9",
    "trajectory": "038932f2cd8949a8883c88a05396af34487a9ef252bfe76ad208044a3a2a1775",
}


def dataset_digest(root: Path) -> str:
    """sha256 over every frame's image and depth bytes, meta, and every annotation (not the date)."""
    coco = json.loads((root / "annotations.json").read_text())
    digest = hashlib.sha256()
    for image in coco["images"]:
        digest.update(json.dumps([image["file_name"], image.get("depth_file_name"), image["saom"]],
                                 sort_keys=True).encode())
        for name in (image["file_name"], image.get("depth_file_name")):
            digest.update((root / name).read_bytes())
    for ann in coco["annotations"]:
        digest.update(json.dumps(ann, sort_keys=True).encode())
    digest.update(json.dumps(coco["categories"], sort_keys=True).encode())
    return digest.hexdigest()


def test_shipped_catalogue_renders_the_scenes_of_before(tmp_path):
    collect_dataset("pybullet", scenes=2, out=tmp_path / "a", seed=0, size=64, progress=False)
    collect_dataset("pybullet", scenes=1, out=tmp_path / "b", seed=3, size=64, trajectory=3, progress=False)
    assert dataset_digest(tmp_path / "a") == BUILT_IN_DIGESTS["4 views"]
    assert dataset_digest(tmp_path / "b") == BUILT_IN_DIGESTS["trajectory"]
    settings = json.loads((tmp_path / "a" / "collect.json").read_text())
    assert settings["catalogue"] == {"name": "pybullet_14", "digest": load_catalogue("pybullet").digest}


def test_class_list_comes_from_the_catalogue():
    catalogue = load_catalogue("pybullet")
    assert ClassList.from_yaml("pybullet") == catalogue.class_list
    assert len(catalogue.entries) == 14
    assert [c.type for c in catalogue.class_list.classes].count("receptacle") == 4


def box_and_handle_mug() -> trimesh.Trimesh:
    """A mug of about 10 cm: a hollow-looking body (a box) with a handle (a thin box) on one side."""
    body = trimesh.creation.box(extents=[0.08, 0.08, 0.1])
    handle = trimesh.creation.box(extents=[0.03, 0.012, 0.06])
    handle.apply_translation([0.055, 0.0, 0.0])
    return trimesh.util.concatenate([body, handle])


def write_catalogue(folder: Path, mug_entry: str, name: str = "my_mugs") -> Path:
    path = folder / "objects.yaml"
    path.write_text(
        f"name: {name}\nmin_area: 10\nfloor_frequency: 0.5\nclasses:\n"
        "  - {name: Table, role: receptacle, size: large, layout: table, surface: [0.6, 0.36],\n"
        "     models: [pybullet_data:table/table.urdf], scale: [0.72, 0.9], fixed: true}\n"
        f"  - {mug_entry}\n"
    )
    return path


def test_own_mesh_collects_masks_depth_and_3d_ground_truth(tmp_path, capsys):
    box_and_handle_mug().export(tmp_path / "mug.ply")  # not a pybullet format: converted with trimesh
    catalogue = write_catalogue(tmp_path, "{name: MyMug, role: pickupable, size: small, models: [mug.ply], "
                                          "target_size: [0.1, 0.12], mass: 0.3, tint: any}")
    out = tmp_path / "ds"
    assert main(["collect", "--objects", str(catalogue), "--scenes", "2", "--size", "96", "--out", str(out)]) == 0
    ds = SaomDataset(out)
    assert ds.classes.names == ["Table", "MyMug"]
    mugs = [(sample, k) for sample in ds for k, label in enumerate(sample.labels) if label == "MyMug"]
    assert len(mugs) >= 3
    for sample, k in mugs:
        assert sample.masks[k].sum() >= 10
        depth = sample.depth[sample.masks[k]]
        assert (depth > 0.3).all() and (depth < 4.0).all()
        obj = sample.objects3d[k]
        # the box around the mug at its target size: 10 to 12 cm across, handle included
        assert 0.09 < max(obj["extents"]) < 0.135
        assert abs(np.median(depth) - obj["position"][2]) < 0.1
    capsys.readouterr()
    assert main(["dataset", "check", str(out), "--quiet"]) == 0
    assert "MyMug" in capsys.readouterr().out


BAD = {
    "missing file": ("{name: M, role: pickupable, models: [nowhere.obj], scale: 1}", "not found"),
    "mesh that will not load": ("{name: M, role: pickupable, models: [garbage.ply], scale: 1}", "will not load"),
    "urdf that will not load": ("{name: M, role: pickupable, models: [garbage.urdf], scale: 1}", "could not load"),
    "NaN vertex": ("{name: M, role: pickupable, models: [nan.obj], scale: 1}", "NaN"),
    "empty mesh": ("{name: M, role: pickupable, models: [empty.stl], scale: 1}", "no geometry"),
    "duplicate class": ("{name: Table, role: pickupable, models: [mug.obj], scale: 1}", "appears twice"),
    "absurd scale": ("{name: M, role: pickupable, models: [mug.obj], scale: 500}", "sane"),
    "unit mistake": ("{name: M, role: pickupable, models: [mug.obj], scale: 0.001}", "sane"),
    "unknown key": ("{name: M, role: pickupable, models: [mug.obj], scale: 1, colour: red}", "unknown keys"),
    "bad role": ("{name: M, role: food, models: [mug.obj], scale: 1}", "role must be"),
    "scale and size": ("{name: M, role: pickupable, models: [mug.obj], scale: 1, target_size: 0.1}", "exactly one"),
    "receptacle without layout": ("{name: M, role: receptacle, models: [mug.obj], scale: 1}", "layout"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_catalogue_fails_before_rendering(tmp_path, case):
    entry, message = BAD[case]
    box_and_handle_mug().export(tmp_path / "mug.obj")
    (tmp_path / "garbage.ply").write_bytes(b"ply\nformat nonsense\n\x00\x01")
    (tmp_path / "garbage.urdf").write_text("<robot name='x'><link name='a'>")
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "empty.stl").write_text("solid empty\nendsolid empty\n")
    catalogue = write_catalogue(tmp_path, entry, name=f"bad_{case.replace(' ', '_')}")
    with pytest.raises(ConfigError, match=message):
        collect_dataset("pybullet", scenes=1, out=tmp_path / "ds", objects=catalogue, progress=False)
    assert not (tmp_path / "ds").exists()


def test_a_urdf_s_meshes_are_part_of_the_catalogue_digest(tmp_path):
    """Shards rendered with different versions of a URDF's mesh must not merge: the digest covers it."""
    box_and_handle_mug().export(tmp_path / "mug.obj")
    (tmp_path / "mug.urdf").write_text(
        "<robot name='mug'><link name='body'><inertial><mass value='0.3'/>"
        "<inertia ixx='1e-4' ixy='0' ixz='0' iyy='1e-4' iyz='0' izz='1e-4'/></inertial>"
        "<visual><geometry><mesh filename='mug.obj'/></geometry></visual>"
        "<collision><geometry><mesh filename='mug.obj'/></geometry></collision></link></robot>"
    )
    catalogue = write_catalogue(tmp_path, "{name: MyMug, role: pickupable, models: [mug.urdf], target_size: 0.1}")
    before = load_catalogue(catalogue).digest
    mesh = box_and_handle_mug()
    mesh.apply_scale(1.1)
    mesh.export(tmp_path / "mug.obj")
    catalogue.write_text(catalogue.read_text() + "\n")  # a new modification time: read again
    assert load_catalogue(catalogue).digest != before
    (tmp_path / "mug.obj").unlink()
    catalogue.write_text(catalogue.read_text() + "\n")
    with pytest.raises(ConfigError, match="mug.urdf names mug.obj, which is not found"):
        load_catalogue(catalogue)
