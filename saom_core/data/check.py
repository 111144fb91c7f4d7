"""`saom dataset check`: validate every entry and count frames/masks per split and class.

The printed tables follow the paper's Table 1 (size per split) and Table 2 (masks per class,
grouped by type and size).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from saom_core.data import rle as rle_utils
from saom_core.data.format import SPLITS
from saom_core.data.reader import SaomDataset
from saom_core.errors import DatasetError


@dataclass
class DatasetReport:
    root: Path
    images: Counter = field(default_factory=Counter)  # split -> frames
    masks: Counter = field(default_factory=Counter)  # split -> masks
    scenes: Counter = field(default_factory=Counter)  # split -> scenes
    per_class: dict[str, Counter] = field(default_factory=dict)  # class -> split -> masks
    frame_sizes: Counter = field(default_factory=Counter)  # (w, h) -> frames
    depth_frames: int = 0  # frames with an aligned depth image
    objects3d: int = 0  # annotations with a ground-truth 3D pose
    renderings: Counter = field(default_factory=Counter)  # randomisation preset (meta) -> frames
    empty_frames: int = 0  # frames with no mask (views with nothing of interest)

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    @property
    def classes_present(self) -> list[str]:
        return [name for name, counts in self.per_class.items() if sum(counts.values()) > 0]

    def format(self, dataset: SaomDataset) -> str:
        lines = [f"dataset {self.root}: OK", "", "Size (paper Table 1)", ""]
        lines.append(f"| {'':<16} | " + " | ".join(f"{s:>7}" for s in SPLITS) + " |   Total |")
        lines.append("|" + "-" * 18 + "|" + "|".join("-" * 9 for _ in SPLITS) + "|---------|")
        for title, counter in (("scenes", self.scenes), ("images", self.images), ("object masks", self.masks)):
            cells = " | ".join(f"{counter[s]:>7}" for s in SPLITS)
            lines.append(f"| {title:<16} | {cells} | {sum(counter.values()):>7} |")
        lines += ["", "Masks per class (paper Table 2)", ""]
        lines.append(
            f"| {'type':<11} | {'size':<12} | {'class':<20} | " + " | ".join(f"{s:>6}" for s in SPLITS) + " |  Total |"
        )
        lines.append(
            "|" + "-" * 13 + "|" + "-" * 14 + "|" + "-" * 22 + "|" + "|".join("-" * 8 for _ in SPLITS) + "|--------|"
        )
        for cls in sorted(dataset.classes.classes, key=lambda c: (c.type, c.size, c.name)):
            counts = self.per_class[cls.name]
            cells = " | ".join(f"{counts[s]:>6}" for s in SPLITS)
            lines.append(f"| {cls.type:<11} | {cls.size:<12} | {cls.name:<20} | {cells} | {sum(counts.values()):>6} |")
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(self.frame_sizes.items()))
        lines += [
            "",
            f"frame sizes: {sizes}",
            f"classes present: {len(self.classes_present)} of {len(dataset.classes.classes)}",
            f"depth: {self.depth_frames} of {self.total_images} frames; 3D ground truth: {self.objects3d} of "
            f"{sum(self.masks.values())} masks",
            f"frames with no masks: {self.empty_frames} of {self.total_images}",
            "rendered with randomisation: "
            + ", ".join(f"{name} ({n} frames)" for name, n in sorted(self.renderings.items())),
        ]
        return "\n".join(lines)


def check_dataset(root: str | Path, progress: bool = True) -> tuple[DatasetReport, SaomDataset]:
    """Decode every image and mask; raise DatasetError on the first bad entry."""
    dataset = SaomDataset(root)
    report = DatasetReport(root=Path(root), per_class={c: Counter() for c in dataset.classes.names})
    scenes: dict[str, set[str]] = {s: set() for s in SPLITS}
    for index in tqdm(range(len(dataset)), desc="checking", disable=not progress, unit="frame"):
        info = dataset.images[index]
        split = info["saom"]["split"]
        image = dataset.load_image(index)
        report.images[split] += 1
        report.frame_sizes[(image.shape[1], image.shape[0])] += 1
        scenes[split].add(str(info["saom"].get("scene")))
        report.renderings[info["saom"].get("randomisation", {}).get("preset", "none")] += 1
        report.empty_frames += not dataset.annotations_of(index)
        if dataset.load_depth(index) is not None:  # decodes and checks size and type
            _check_intrinsics(info)
            report.depth_frames += 1
        for ann in dataset.annotations_of(index):
            try:
                mask = rle_utils.decode(ann["segmentation"])
            except Exception as exc:  # pycocotools raises bare TypeError/ValueError on garbage counts
                raise DatasetError(f"annotation {ann['id']} (image {info['id']}): undecodable RLE ({exc})") from exc
            if mask.shape != image.shape[:2]:
                raise DatasetError(f"annotation {ann['id']}: mask {mask.shape} is not the frame size {image.shape[:2]}")
            if not mask.any():
                raise DatasetError(f"annotation {ann['id']} (image {info['id']}): empty mask")
            if "object3d" in ann:
                _check_object3d(ann)
                report.objects3d += 1
            report.masks[split] += 1
            report.per_class[dataset.classes.name_of(ann["category_id"])][split] += 1
    for split, names in scenes.items():
        report.scenes[split] = len(names)
    return report, dataset


def _check_intrinsics(info: dict) -> None:
    k = info["saom"].get("intrinsics")
    if not isinstance(k, dict) or not all(isinstance(k.get(n), (int, float)) for n in ("fx", "fy", "cx", "cy")):
        raise DatasetError(f"image {info['id']}: depth without saom.intrinsics {{fx, fy, cx, cy}}")
    if k["fx"] <= 0 or k["fy"] <= 0:
        raise DatasetError(f"image {info['id']}: focal lengths must be positive, got fx={k['fx']} fy={k['fy']}")


def _check_object3d(ann: dict) -> None:
    obj = ann["object3d"]
    where = f"annotation {ann['id']} (image {ann['image_id']}): object3d"
    lengths = {"position": 3, "orientation": 4, "extents": 3}
    if not isinstance(obj, dict) or any(
        not isinstance(obj.get(key), list)
        or len(obj[key]) != n
        or not all(isinstance(v, (int, float)) for v in obj[key])
        for key, n in lengths.items()
    ):
        raise DatasetError(f"{where} needs position [3], orientation [4] (x, y, z, w) and extents [3] numbers")
    if not all(math.isfinite(v) for key in lengths for v in obj[key]) or min(obj["extents"]) <= 0:
        raise DatasetError(f"{where} has a non-finite value or a non-positive extent: {obj}")
    lo, hi = obj.get("aabb_min"), obj.get("aabb_max")
    if (lo is None) != (hi is None) or (
        lo is not None
        and hi is not None
        and (
            len(lo) != 3
            or len(hi) != 3
            or not all(
                isinstance(a, (int, float)) and isinstance(b, (int, float)) and a < b
                for a, b in zip(lo, hi, strict=True)
            )
        )
    ):
        raise DatasetError(f"{where}: aabb_min/aabb_max must both be 3 numbers with min < max, got {lo}, {hi}")
    if abs(math.sqrt(sum(v * v for v in obj["orientation"])) - 1.0) > 1e-3:
        raise DatasetError(f"{where}: orientation is not a unit quaternion: {obj['orientation']}")
