"""Reading a dataset directory: validated on open, frames decoded on access."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from saom_core.data import rle as rle_utils
from saom_core.data.classes import ClassList
from saom_core.data.format import ANNOTATIONS, DEPTH_SCALE, SPLITS
from saom_core.errors import ConfigError, DatasetError


@dataclass
class Sample:
    """One decoded frame. `class_ids` index `classes` (1..C; 0 is background and never stored)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) bool
    class_ids: np.ndarray  # (N,) int64
    labels: list[str]
    meta: dict[str, Any]
    image_id: int
    annotation_ids: list[int]
    depth: np.ndarray | None = None  # (H, W) float32 metres, 0 = no depth; None for datasets without depth
    objects3d: list[dict[str, Any] | None] = field(default_factory=list)  # per mask, ground truth 3D or None

    @property
    def intrinsics(self) -> tuple[float, float, float, float] | None:
        """(fx, fy, cx, cy) in pixels, if the frame records them."""
        k = self.meta.get("intrinsics")
        return None if k is None else (float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]))


class SaomDataset:
    """A dataset directory (see `saom_core.data.format`), optionally restricted to one split."""

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise DatasetError(f"unknown split '{split}', expected one of {SPLITS}")
        self.split = split
        self.coco = _load_annotations(self.root)
        try:
            self.classes = ClassList.from_categories(
                self.coco.get("saom", {}).get("class_list", {}).get("name", self.root.name), self.coco["categories"]
            )
        except ConfigError as exc:
            raise DatasetError(f"{self.root / ANNOTATIONS}: {exc}") from exc
        _validate_structure(self.root / ANNOTATIONS, self.coco)
        self._anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in self.coco["annotations"]:
            self._anns_by_image[ann["image_id"]].append(ann)
        self.images = [
            img for img in self.coco["images"] if split is None or img.get("saom", {}).get("split") == split
        ]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def total_scenes(self) -> int:
        """Distinct scenes over every split of the directory, whatever `split` this reader keeps (a
        provenance counts what was really there)."""
        return len({str(img.get("saom", {}).get("scene")) for img in self.coco["images"]})

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def annotations_of(self, index: int) -> list[dict[str, Any]]:
        return self._anns_by_image[self.images[index]["id"]]

    def load_image(self, index: int) -> np.ndarray:
        info = self.images[index]
        path = self.root / info["file_name"]
        try:
            with Image.open(path) as im:
                image = np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy needs one
        except FileNotFoundError as exc:
            raise DatasetError(f"image {info['id']}: file missing: {path}") from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"image {info['id']}: cannot decode {path} ({exc})") from exc
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"image {info['id']}: {path} is {image.shape[1]}x{image.shape[0]} but annotations.json says "
                f"{info['width']}x{info['height']}"
            )
        return image

    @property
    def has_depth(self) -> bool:
        """True when every frame (of the split) has an aligned depth image."""
        return bool(self.images) and all("depth_file_name" in info for info in self.images)

    def load_depth(self, index: int) -> np.ndarray | None:
        """The frame's depth in metres (float32, 0 = no depth), or None for a frame without depth."""
        import cv2

        info = self.images[index]
        if "depth_file_name" not in info:
            return None
        path = self.root / info["depth_file_name"]
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"image {info['id']}: depth file missing or undecodable: {path}")
        if raw.dtype != np.uint16 or raw.shape != (info["height"], info["width"]):
            raise DatasetError(
                f"image {info['id']}: {path} must be a {info['width']}x{info['height']} 16-bit single-channel PNG, "
                f"got {raw.dtype} {raw.shape}"
            )
        return raw.astype(np.float32) * np.float32(DEPTH_SCALE)

    def __getitem__(self, index: int) -> Sample:
        info = self.images[index]
        image = self.load_image(index)
        anns = self.annotations_of(index)
        h, w = image.shape[:2]
        masks = np.zeros((len(anns), h, w), dtype=bool)
        for k, ann in enumerate(anns):
            masks[k] = rle_utils.decode(ann["segmentation"])
        class_ids = np.array([a["category_id"] for a in anns], dtype=np.int64)
        return Sample(
            image=image,
            masks=masks,
            class_ids=class_ids,
            labels=[self.classes.name_of(int(c)) for c in class_ids],
            meta=dict(info.get("saom", {})),
            image_id=int(info["id"]),
            annotation_ids=[int(a["id"]) for a in anns],
            depth=self.load_depth(index),
            objects3d=[a.get("object3d") for a in anns],
        )


def _load_annotations(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise DatasetError(f"dataset directory not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a directory: {root}")
    path = root / ANNOTATIONS
    if not path.exists():
        hint = " (an unfinished collection: re-run `saom collect ... --resume`)" if (root / ".scenes").is_dir() else ""
        raise DatasetError(f"no {ANNOTATIONS} in {root}{hint}")
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"corrupt {path}: {exc}") from exc
    if not isinstance(coco, dict):
        raise DatasetError(f"corrupt {path}: top level is not a JSON object")
    return coco


def _validate_structure(path: Path, coco: dict[str, Any]) -> None:
    """Cheap consistency checks that make later errors impossible (sizes, ids, categories)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"corrupt {path}: '{key}' missing or not a list")
    images: dict[int, dict[str, Any]] = {}
    for img in coco["images"]:
        missing = {"id", "file_name", "height", "width"} - set(img)
        if missing:
            raise DatasetError(f"corrupt {path}: image entry {img.get('id', '?')} lacks {sorted(missing)}")
        split = img.get("saom", {}).get("split")
        if split not in SPLITS:
            raise DatasetError(f"corrupt {path}: image {img['id']} has split {split!r}, expected one of {SPLITS}")
        images[img["id"]] = img
    category_ids = {c["id"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        where = f"{path}: annotation {ann.get('id', '?')}"
        if ann.get("image_id") not in images:
            raise DatasetError(f"{where} refers to unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in category_ids:
            raise DatasetError(f"{where} has unknown category id {ann.get('category_id')}")
        seg = ann.get("segmentation")
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            raise DatasetError(f"{where}: segmentation is not an RLE dict with 'size' and 'counts'")
        img = images[ann["image_id"]]
        if list(seg["size"]) != [img["height"], img["width"]]:
            raise DatasetError(
                f"{where}: mask size {seg['size'][1]}x{seg['size'][0]} does not match image {img['id']} "
                f"({img['width']}x{img['height']})"
            )
    scenes_per_split: dict[str, set[str]] = defaultdict(set)
    for img in coco["images"]:
        scenes_per_split[img["saom"]["split"]].add(str(img["saom"].get("scene")))
    shared = [
        (a, b, scenes_per_split[a] & scenes_per_split[b])
        for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
    ]
    for a, b, both in shared:
        if both:
            raise DatasetError(f"corrupt {path}: scenes {sorted(both)[:5]} appear in both {a} and {b}")
