"""Import the raw per-frame layout that any simulator can dump, into the dataset format.

Raw layout (one folder per frame, any folder names; frames are grouped into scenes by meta.json):

    RAW/<frame>/image.png                 RGB frame (any format Pillow reads)
    RAW/<frame>/meta.json                 {"scene": "kitchen_3", "frame_index": 0,
                                           "objects": [{"mask": "masks/0.png", "label": "Mug"}, ...],
                                           ...any other metadata, e.g. "agent_pose": {...}}
    RAW/<frame>/masks/0.png ...           one binary mask per object (non-zero = object)
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from saom_core.data.classes import ClassList
from saom_core.data.format import DatasetWriter, Frame
from saom_core.errors import ConfigError, DatasetError


def read_raw_frame(folder: Path, class_list: ClassList) -> tuple[str, int, Frame]:
    """One raw frame folder -> (scene, frame_index, Frame); every problem names the file."""
    meta_path = folder / "meta.json"
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise DatasetError(f"{folder}: no meta.json") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"corrupt {meta_path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"corrupt {meta_path}: top level is not a JSON object")
    for key in ("scene", "objects"):
        if key not in meta:
            raise DatasetError(f"{meta_path}: missing key '{key}'")
    if not isinstance(meta["objects"], list):
        raise DatasetError(f"{meta_path}: 'objects' must be a list")
    try:
        index = int(meta.pop("frame_index", 0))
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{meta_path}: 'frame_index' must be an integer") from exc
    image = _read_png(folder / meta.get("image", "image.png"), mode="RGB")
    masks, labels = [], []
    for k, obj in enumerate(meta.pop("objects")):
        if not isinstance(obj, dict) or "mask" not in obj or "label" not in obj:
            raise DatasetError(f"{meta_path}: objects[{k}] needs 'mask' and 'label'")
        try:
            class_list.index(obj["label"])
        except ConfigError as exc:
            raise DatasetError(f"{meta_path}: objects[{k}]: {exc}") from exc
        mask = _read_png(folder / obj["mask"], mode="L") > 0
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{folder / obj['mask']}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                f"image is {image.shape[1]}x{image.shape[0]}"
            )
        if mask.any():
            masks.append(mask)
            labels.append(obj["label"])
    h, w = image.shape[:2]
    stacked = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
    scene = str(meta.pop("scene"))
    meta.pop("image", None)
    return scene, index, Frame(image=image, masks=stacked, labels=labels, meta=meta)


def import_raw(raw_root: str | Path, out: str | Path, class_list: ClassList, simulator: str = "imported") -> Path:
    """Convert every frame folder under `raw_root`; returns the written annotations.json."""
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        raise DatasetError(f"raw directory not found: {raw_root}")
    folders = sorted(p.parent for p in raw_root.rglob("meta.json"))
    if not folders:
        raise DatasetError(f"{raw_root}: no frame folders with a meta.json")
    scenes: dict[str, list[tuple[int, Frame]]] = defaultdict(list)
    seen: dict[tuple[str, int], Path] = {}
    for folder in folders:
        scene, index, frame = read_raw_frame(folder, class_list)
        if (scene, index) in seen:
            raise DatasetError(
                f"{folder / 'meta.json'}: scene '{scene}' frame_index {index} is also in "
                f"{seen[scene, index] / 'meta.json'}"
            )
        seen[scene, index] = folder
        scenes[scene].append((index, frame))
    writer = DatasetWriter(out, class_list, simulator)
    for scene, frames in sorted(scenes.items()):
        writer.write_scene(scene, [f for _, f in sorted(frames, key=lambda item: item[0])])
    return writer.finalize()


def _read_png(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except FileNotFoundError as exc:
        raise DatasetError(f"file missing: {path}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot decode image {path} ({exc})") from exc
