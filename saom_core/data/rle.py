"""COCO run-length encoding of binary masks (pycocotools), JSON-ready."""
from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> {'size': [H, W], 'counts': str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """{'size', 'counts'} (compressed str/bytes or uncompressed list) -> (H, W) bool."""
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def area(rle: dict[str, Any]) -> int:
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def bbox_xywh(mask: np.ndarray) -> list[float]:
    """Tight COCO box [x, y, w, h] of a non-empty mask (pixel-inclusive, as pycocotools.toBbox)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
