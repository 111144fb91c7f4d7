"""Importing the raw per-frame layout (image.png + masks/*.png + meta.json) into the dataset format."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saom_core.data.importer import import_raw
from saom_core.data.reader import SaomDataset
from saom_core.errors import DatasetError


def _write_raw_frame(folder, frame, scene: str, index: int, extra_meta=None) -> None:
    (folder / "masks").mkdir(parents=True)
    Image.fromarray(frame.image).save(folder / "image.png")
    objects = []
    for k, (mask, label) in enumerate(zip(frame.masks, frame.labels, strict=True)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{k}.png")
        objects.append({"mask": f"masks/{k}.png", "label": label})
    meta = {"scene": scene, "frame_index": index, "objects": objects, **(extra_meta or {})}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def raw(tmp_path, make_frames):
    """Two scenes; folder names deliberately not in frame order."""
    frames = {("kitchen_1", i): f for i, f in enumerate(make_frames(3, seed=11))}
    frames |= {("bedroom_2", i): f for i, f in enumerate(make_frames(2, seed=12))}
    root = tmp_path / "raw"
    for n, ((scene, index), frame) in enumerate(sorted(frames.items(), key=lambda kv: -kv[0][1])):
        _write_raw_frame(root / f"dump_{n:02d}", frame, scene, index, {"agent_pose": {"yaw": index * 90.0}})
    return root, frames


def test_import_round_trip(tmp_path, tiny_classes, raw):
    root, frames = raw
    path = import_raw(root, tmp_path / "ds", tiny_classes, simulator="mysim")
    assert path == tmp_path / "ds" / "annotations.json"
    ds = SaomDataset(tmp_path / "ds")
    assert len(ds) == len(frames)
    for sample in ds:
        original = frames[(sample.meta["scene"], sample.meta["frame_index"])]
        np.testing.assert_array_equal(sample.image, original.image)
        np.testing.assert_array_equal(sample.masks, original.masks)
        assert sample.labels == original.labels
        assert sample.meta["agent_pose"] == {"yaw": sample.meta["frame_index"] * 90.0}
        assert sample.meta["simulator"] == "mysim"
    # frames of a scene are stored in frame_index order, whatever the folder names
    kitchen = [img["saom"]["frame_index"] for img in ds.images if img["saom"]["scene"] == "kitchen_1"]
    assert kitchen == [0, 1, 2]


def test_empty_masks_are_dropped(tmp_path, tiny_classes, raw):
    root, _ = raw
    folder = next(root.iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(folder / "masks" / "empty.png")
    meta["objects"].append({"mask": "masks/empty.png", "label": "Mug"})
    (folder / "meta.json").write_text(json.dumps(meta))
    import_raw(root, tmp_path / "ds", tiny_classes)
    ds = SaomDataset(tmp_path / "ds")
    index = next(i for i, img in enumerate(ds.images)
                 if (img["saom"]["scene"], img["saom"]["frame_index"]) == (meta["scene"], meta["frame_index"]))
    assert len(ds[index].labels) == len(meta["objects"]) - 1


def _first_with_objects(root):
    for folder in sorted(root.iterdir()):
        meta = json.loads((folder / "meta.json").read_text())
        if meta["objects"]:
            return folder, meta
    raise AssertionError("fixture has no frame with objects")


def test_unknown_label_names_the_file(tmp_path, tiny_classes, raw):
    root, _ = raw
    folder, meta = _first_with_objects(root)
    meta["objects"][0]["label"] = "Sofa"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="unknown class 'Sofa'") as info:
        import_raw(root, tmp_path / "ds", tiny_classes)
    assert str(folder / "meta.json") in str(info.value)
    assert not (tmp_path / "ds" / "annotations.json").exists()


def test_mask_of_wrong_size_names_the_file(tmp_path, tiny_classes, raw):
    root, _ = raw
    folder, meta = _first_with_objects(root)
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(folder / meta["objects"][0]["mask"])
    with pytest.raises(DatasetError, match="mask is 10x10, image is 32x24") as info:
        import_raw(root, tmp_path / "ds", tiny_classes)
    assert str(folder / meta["objects"][0]["mask"]) in str(info.value)


def test_corrupt_meta_json_names_the_file(tmp_path, tiny_classes, raw):
    root, _ = raw
    folder = sorted(root.iterdir())[1]
    (folder / "meta.json").write_text('{"scene": "kitchen_1", "objects": [')
    with pytest.raises(DatasetError, match="corrupt") as info:
        import_raw(root, tmp_path / "ds", tiny_classes)
    assert str(folder / "meta.json") in str(info.value)


def test_missing_image_and_key_name_the_file(tmp_path, tiny_classes, raw):
    root, _ = raw
    folder = sorted(root.iterdir())[0]
    (folder / "image.png").unlink()
    with pytest.raises(DatasetError, match="file missing") as info:
        import_raw(root, tmp_path / "ds", tiny_classes)
    assert str(folder / "image.png") in str(info.value)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["scene"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="missing key 'scene'"):
        import_raw(root, tmp_path / "ds2", tiny_classes)


def test_empty_or_missing_raw_directory(tmp_path, tiny_classes):
    with pytest.raises(DatasetError, match="raw directory not found"):
        import_raw(tmp_path / "nope", tmp_path / "ds", tiny_classes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no frame folders"):
        import_raw(tmp_path / "empty", tmp_path / "ds", tiny_classes)


def test_malformed_meta_json_names_the_file(tmp_path, tiny_classes, raw):
    root, _ = raw
    folder = sorted(root.iterdir())[0]
    meta = json.loads((folder / "meta.json").read_text())
    for bad, message in (([1, 2], "not a JSON object"), ({**meta, "frame_index": "first"}, "'frame_index' must be"),
                         ({**meta, "objects": {"a": 1}}, "'objects' must be a list"),
                         ({**meta, "objects": ["masks/0.png"]}, r"objects\[0\] needs 'mask' and 'label'")):
        (folder / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match=message) as info:
            import_raw(root, tmp_path / "ds", tiny_classes)
        assert str(folder / "meta.json") in str(info.value)


def test_duplicate_frame_index_is_an_error(tmp_path, tiny_classes, raw):
    root, _ = raw
    first, second = sorted(root.iterdir())[:2]
    meta1 = json.loads((first / "meta.json").read_text())
    meta2 = json.loads((second / "meta.json").read_text())
    meta2.update(scene=meta1["scene"], frame_index=meta1["frame_index"])
    (second / "meta.json").write_text(json.dumps(meta2))
    with pytest.raises(DatasetError, match="is also in") as info:
        import_raw(root, tmp_path / "ds", tiny_classes)
    assert str(first / "meta.json") in str(info.value) and str(second / "meta.json") in str(info.value)
