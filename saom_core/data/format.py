"""The simulator-agnostic dataset format and its writer.

Per frame, as in the paper: an RGB image, one binary mask and one label per object, and a small
metadata dict (scene, frame index, agent pose, simulator). On disk a dataset is a directory:

    DIR/annotations.json   COCO instances; masks as RLE; categories carry the paper's type/size;
                           each image has an `saom` dict (scene, frame_index, split, agent_pose, ...)
    DIR/images/*.png       the frames
    DIR/depth/*.png        optional aligned depth, 16-bit PNG in millimetres (0 = no depth); the image
                           entry names it in `depth_file_name`, its `saom.intrinsics` holds fx, fy, cx, cy
    DIR/.scenes/*.json     one shard per finished scene (what `--resume` continues from)

`annotations.json` is written last and atomically, so a directory without it is an unfinished
collection, never a dataset. Splits are by scene (all frames of a scene share one split).
"""
from __future__ import annotations

import datetime
import json
import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from saom_core.data import rle as rle_utils
from saom_core.data.classes import ClassList
from saom_core.errors import DatasetError
from saom_core.io import atomic_open, atomic_write_json

FORMAT_VERSION = 1
ANNOTATIONS = "annotations.json"
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class Frame:
    """One simulator frame: RGB image, one mask and one label per object, metadata."""

    image: np.ndarray  # (H, W, 3) uint8, RGB
    masks: np.ndarray  # (N, H, W) bool, one per object
    labels: list[str]  # N class names
    meta: dict[str, Any] = field(default_factory=dict)
    depth: np.ndarray | None = None  # (H, W) float32 metres, aligned with `image`; 0 or NaN = no depth
    objects3d: list[dict[str, Any]] | None = None  # per mask: ground-truth pose/extents (see pybullet.py)

    def validate(self, where: str = "frame") -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise DatasetError(f"{where}: image must be (H, W, 3) uint8 RGB, got {self.image.shape} {self.image.dtype}")
        h, w = self.image.shape[:2]
        if self.masks.ndim != 3 or self.masks.shape[1:] != (h, w):
            raise DatasetError(f"{where}: masks must be (N, {h}, {w}), got {self.masks.shape}")
        if len(self.labels) != len(self.masks):
            raise DatasetError(f"{where}: {len(self.masks)} masks but {len(self.labels)} labels")
        if self.depth is not None:
            if self.depth.shape != (h, w):
                raise DatasetError(f"{where}: depth must be ({h}, {w}), got {self.depth.shape}")
            if "intrinsics" not in self.meta:
                raise DatasetError(f"{where}: depth without meta['intrinsics']")
        if self.objects3d is not None and len(self.objects3d) != len(self.masks):
            raise DatasetError(f"{where}: {len(self.masks)} masks but {len(self.objects3d)} 3D objects")


DEPTH_SCALE = 0.001  # metres per unit of a stored depth PNG (millimetres)
DEPTH_MAX_M = 65.535  # the largest depth a 16-bit millimetre PNG holds


def encode_depth_png(depth_m: np.ndarray) -> bytes:
    """Metres -> 16-bit PNG in millimetres; NaN, <= 0 and beyond 65.535 m become 0 (no depth)."""
    import cv2

    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mm = np.where((depth > 0) & (depth <= DEPTH_MAX_M), np.round(depth / DEPTH_SCALE), 0).astype(np.uint16)
    ok, buffer = cv2.imencode(".png", mm)
    if not ok:
        raise DatasetError("could not encode a depth image as PNG")
    return buffer.tobytes()


def split_for_scene(scene: str, fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Deterministic split of a scene, stable when more scenes are added later.

    Scene ids ending in a number use the golden-ratio sequence frac(n * 0.618...), which spreads any
    run of consecutive scenes evenly over the splits; other ids use a CRC32 hash.
    """
    trailing = re.search(r"(\d+)$", scene)
    u = (int(trailing.group(1)) * _GOLDEN) % 1.0 if trailing else zlib.crc32(scene.encode()) / 2**32
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


class DatasetWriter:
    """Writes a dataset scene by scene; `finalize()` assembles annotations.json atomically.

    Each scene's images are written first, then its shard (atomically), so a crash loses at most
    the scene in progress, and `resume=True` skips every scene whose shard exists.
    """

    def __init__(self, root: str | Path, class_list: ClassList, simulator: str, resume: bool = False) -> None:
        self.root = Path(root)
        self.class_list = class_list
        self.simulator = simulator
        self.shard_dir = self.root / ".scenes"
        if self.root.exists() and any(self.root.iterdir()) and not resume:
            state = "a finished dataset" if (self.root / ANNOTATIONS).exists() else "an unfinished collection"
            raise DatasetError(
                f"{self.root} already holds {state}; pass --resume to continue it or choose another --out"
            )
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self.shard_dir.mkdir(exist_ok=True)

    def completed_scenes(self) -> set[str]:
        return {p.stem for p in self.shard_dir.glob("*.json")}

    def write_scene(self, scene: str, frames: Iterable[Frame], split: str | None = None) -> int:
        """Write one scene's frames; returns the number of frames written."""
        split = split or split_for_scene(scene)
        records = []
        for index, frame in enumerate(frames):
            frame.validate(f"scene {scene} frame {index}")
            file_name = f"images/{scene}_{index:03d}.png"
            with atomic_open(self.root / file_name) as handle:
                Image.fromarray(frame.image).save(handle, format="PNG")
            record_extra: dict[str, Any] = {}
            if frame.depth is not None:
                depth_name = f"depth/{scene}_{index:03d}.png"
                with atomic_open(self.root / depth_name) as handle:
                    handle.write(encode_depth_png(frame.depth))
                record_extra["depth_file_name"] = depth_name
            annotations = []
            for k, (mask, label) in enumerate(zip(frame.masks, frame.labels, strict=True)):
                self.class_list.index(label)  # unknown class -> clear error now, not at training time
                rle = rle_utils.encode(mask)
                annotations.append(
                    {"category": label, "segmentation": rle, "area": int(mask.sum()), "bbox": rle_utils.bbox_xywh(mask)}
                    | ({"object3d": frame.objects3d[k]} if frame.objects3d is not None else {})
                )
            meta = dict(frame.meta, scene=scene, frame_index=index, split=split)
            meta.setdefault("simulator", self.simulator)
            records.append(
                {
                    "file_name": file_name,
                    "height": int(frame.image.shape[0]),
                    "width": int(frame.image.shape[1]),
                    "saom": meta,
                    "annotations": annotations,
                    **record_extra,
                }
            )
        atomic_write_json(self.shard_dir / f"{scene}.json", {"scene": scene, "split": split, "frames": records})
        return len(records)

    def finalize(self) -> Path:
        """Assemble every scene shard into annotations.json (sorted by scene, so ids are stable)."""
        shards = sorted(self.shard_dir.glob("*.json"))
        if not shards:
            raise DatasetError(f"{self.root}: no scenes were written, nothing to finalize")
        coco = empty_coco(self.class_list, self.simulator)
        splits: dict[str, list[str]] = {s: [] for s in SPLITS}
        for shard_path in shards:
            shard = json.loads(shard_path.read_text())
            splits[shard["split"]].append(shard["scene"])
            for record in shard["frames"]:
                image_id = len(coco["images"]) + 1
                coco["images"].append(
                    {k: record[k] for k in ("file_name", "depth_file_name", "height", "width", "saom") if k in record}
                    | {"id": image_id}
                )
                for ann in record["annotations"]:
                    coco["annotations"].append(
                        {
                            "id": len(coco["annotations"]) + 1,
                            "image_id": image_id,
                            "category_id": self.class_list.index(ann["category"]),
                            "segmentation": ann["segmentation"],
                            "area": ann["area"],
                            "bbox": ann["bbox"],
                            "iscrowd": 0,
                        }
                        | ({"object3d": ann["object3d"]} if "object3d" in ann else {})
                    )
        coco["saom"]["splits"] = splits
        path = self.root / ANNOTATIONS
        atomic_write_json(path, coco)
        return path


def empty_coco(class_list: ClassList, simulator: str) -> dict[str, Any]:
    return {
        "info": {
            "description": "SAOM simulator dataset",
            "version": str(FORMAT_VERSION),
            "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "licenses": [],
        "saom": {"format_version": FORMAT_VERSION, "simulator": simulator, "class_list": class_list.to_dict()},
        "categories": class_list.to_categories(),
        "images": [],
        "annotations": [],
    }
