"""`saom segment`: image files in, overlay PNG + JSON (COCO RLE, class, scores) out, per image."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from saom_core.data import rle as rle_utils
from saom_core.errors import ConfigError, ImageError, SaomError
from saom_core.geometry3d import CameraIntrinsics, add_objects3d
from saom_core.infer.segmenter import SaomSegmenter
from saom_core.infer.types import Segmentation
from saom_core.io import atomic_write_json
from saom_core.viz import draw_instances, save_rgb_png


def read_image(path: str | Path) -> np.ndarray:
    """Any format Pillow reads, EXIF orientation applied (phone photos), as (H, W, 3) uint8 RGB."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    if image.size == 0:
        raise ImageError(f"{path}: empty image")
    return image


def segmentation_json(seg: Segmentation, source: str) -> dict:
    return {
        "image": source,
        "height": seg.height,
        "width": seg.width,
        "instances": [
            {
                "id": k + 1,
                "class_id": inst.class_id,
                "class_name": inst.class_name,
                "class_score": inst.class_score,
                "predicted_iou": inst.predicted_iou,
                "stability_score": inst.stability,
                "bbox_xyxy": list(inst.box_xyxy),
                "point": list(inst.point) if inst.point else None,
                "area": int(inst.mask.sum()),
                "segmentation": rle_utils.encode(inst.mask),
            }
            | ({"object3d": inst.object3d.to_dict()} if inst.object3d is not None else {})
            for k, inst in enumerate(seg.instances)
        ],
    }


@dataclass
class SegmentOutcome:
    source: Path
    overlay: Path | None = None
    json: Path | None = None
    instances: int = 0
    error: str | None = None


def read_depth(path: str | Path, depth_scale: float | None = None) -> np.ndarray:
    """A depth image file (16-bit PNG in millimetres, or a float TIFF in metres) as float32 metres."""
    import cv2

    from saom_core.geometry3d import depth_in_metres

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageError(f"{path}: no such file or not a readable depth image")
    try:
        return depth_in_metres(raw, depth_scale)
    except SaomError as exc:
        raise ImageError(f"{path}: {exc}") from exc


def segment_files(segmenter: SaomSegmenter, paths: Iterable[str | Path], out_dir: str | Path,
                  depths: list[Path] | None = None, camera: CameraIntrinsics | None = None,
                  depth_scale: float | None = None) -> list[SegmentOutcome]:
    """Segment each image; a bad image is reported and skipped, the batch goes on. With `depths`
    (one aligned depth image per image) and `camera`, each instance's 3D result goes into the JSON."""
    paths = list(paths)
    if depths is not None and (camera is None or len(depths) != len(paths)):
        raise ConfigError(f"--depth needs --intrinsics and one depth image per image ({len(depths)} for {len(paths)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    used: set[str] = set()
    for index, path in enumerate(map(Path, paths)):
        stem = path.stem
        while stem in used:  # same name from two folders: keep both outputs
            stem += "_"
        used.add(stem)
        try:
            image = read_image(path)
            seg = segmenter.segment(image)
            if depths is not None and camera is not None:  # checked above: depths come with a camera
                add_objects3d(seg, read_depth(depths[index], depth_scale), camera)
        except SaomError as exc:
            outcomes.append(SegmentOutcome(path, error=str(exc)))
            continue
        masks = np.stack([i.mask for i in seg.instances]) if seg.instances else np.zeros((0, *image.shape[:2]), bool)
        texts = [f"{i.class_name} {i.class_score:.2f}" for i in seg.instances]
        overlay = draw_instances(image, masks, texts, [i.class_id for i in seg.instances])
        overlay_path, json_path = out_dir / f"{stem}_overlay.png", out_dir / f"{stem}.json"
        save_rgb_png(overlay_path, overlay)
        atomic_write_json(json_path, segmentation_json(seg, str(path)))
        outcomes.append(SegmentOutcome(path, overlay_path, json_path, len(seg.instances)))
    return outcomes
