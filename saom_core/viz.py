"""Drawing masks, boxes and labels over frames (dataset show, saom segment, eval overlays, ROS overlay)."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def class_color(index: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per class id (golden-angle hue walk)."""
    hue = int((index * 137.508) % 180)
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def draw_instances(
    image: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray],
    texts: Sequence[str],
    color_ids: Sequence[int],
    alpha: float = 0.45,
    scale_to: int | None = 448,
) -> np.ndarray:
    """RGB overlay: each mask filled in its class colour with a contour and a text label.

    Small sim frames are upscaled (nearest) to `scale_to` pixels on the long side so labels stay legible.
    """
    out = image.astype(np.float32).copy()
    h, w = image.shape[:2]
    for mask, cid in zip(masks, color_ids, strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(class_color(cid), dtype=np.float32)
    out = out.clip(0, 255).astype(np.uint8)
    factor = max(1.0, (scale_to or 0) / max(h, w))
    if factor > 1.0:
        size = (int(round(w * factor)), int(round(h * factor)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_NEAREST)
    for mask, cid in zip(masks, color_ids, strict=True):
        m = mask.astype(np.uint8)
        if factor > 1.0:
            m = cv2.resize(m, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, class_color(cid), 2)
    font_scale = 0.4 * max(1.0, max(out.shape[:2]) / 448)
    placed: list[tuple[int, int, int, int]] = []
    for mask, text in zip(masks, texts, strict=True):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0 or not text:
            continue
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        x0, y0, x1, y1 = place_label(
            int(xs.min() * factor), int(ys.min() * factor), tw, th + base, placed, out.shape[1], out.shape[0]
        )
        placed.append((x0, y0, x1, y1))
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 0, 0), -1)
        cv2.putText(out, text, (x0, y1 - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def place_label(
    x: int, y: int, w: int, h: int, placed: Sequence[tuple[int, int, int, int]], width: int, height: int
) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1) of a w x h label anchored at a mask's top-left corner (x, y): kept inside the
    image and moved down, one label height at a time, past labels already drawn, so neighbouring
    objects' labels never cover each other (while there is room below)."""
    x0 = max(0, min(x, width - w - 1))
    y0 = max(0, min(y - h, height - h - 1))
    while y0 + 2 * h < height and any(
        x0 < bx1 and bx0 < x0 + w and y0 < by1 and by0 < y0 + h for bx0, by0, bx1, by1 in placed
    ):
        y0 += h
    return x0, y0, x0 + w, y0 + h


def save_rgb_png(path, image: np.ndarray) -> None:
    """Atomic PNG write of an RGB array."""
    from PIL import Image

    from saom_core.io import atomic_open

    with atomic_open(path) as handle:
        Image.fromarray(image).save(handle, format="PNG")
