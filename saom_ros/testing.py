"""Fake Segmenters for tests, the benchmark and launch tests (deterministic, no model, no torch).

`FakeSegmenter` returns a fixed, frame-size-relative set of rectangular instances; `delay` makes it
a slow model (sleeps per call) and `work` a busy one (burns CPU per call, for the benchmark). A
frame whose top-left pixel is (13, 13, 13) makes `segment` raise, to test that a bad frame does
not stop the node. `python -m saom_ros.testing --ros-args ...` runs saom_node with the fake as
its own process (delay from `SAOM_FAKE_DELAY` seconds): subprocess tests and the benchmark.
`encoded_test_image` builds a frame in any supported encoding together with the RGB it must
become, from each encoding's definition rather than from the converter under test.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from saom_core.errors import ConfigError
from saom_core.infer.types import Instance, Segmentation

FAIL_PIXEL = (13, 13, 13)
CLASS_NAMES = ["background", "mug", "bottle", "box"]


def _box_mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _float_box(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return float(x0), float(y0), float(x1), float(y1)


class FakeSegmenter:
    """Deterministic stand-in for the SAOM Segmenter protocol."""

    def __init__(self, delay: float = 0.0, n_instances: int = 3, work: float = 0.0) -> None:
        self.class_names = list(CLASS_NAMES)
        self.delay = delay
        self.work = work
        self.n_instances = n_instances
        self.closed = False
        self.last_image: np.ndarray | None = None  # the RGB frame of the latest call
        self.applied: list = []  # settings given to apply(), in order
        self.calls = 0
        self.prompt_calls = 0
        self.max_concurrent = 0
        self._active = 0
        self._lock = threading.Lock()

    def _enter(self, image: np.ndarray) -> None:
        if self.closed:
            raise RuntimeError("FakeSegmenter used after close()")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        self.last_image = image.copy()
        with self._lock:
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
        if self.delay:
            time.sleep(self.delay)
        if self.work:
            end = time.perf_counter() + self.work
            while time.perf_counter() < end:
                pass

    def _exit(self) -> None:
        with self._lock:
            self._active -= 1

    def segment(self, image: np.ndarray) -> Segmentation:
        self._enter(image)
        try:
            self.calls += 1
            if tuple(int(v) for v in image[0, 0]) == FAIL_PIXEL:
                raise RuntimeError("fake model failure on a marked frame")
            h, w = image.shape[:2]
            instances = []
            for k in range(1, self.n_instances + 1):
                box = (w * (k - 1) // 8, h * (k - 1) // 8, w * (k + 3) // 8, h * (k + 3) // 8)
                cid = (k - 1) % (len(self.class_names) - 1) + 1
                instances.append(Instance(
                    mask=_box_mask(h, w, box), box_xyxy=_float_box(box), class_id=cid,
                    class_name=self.class_names[cid], class_score=0.9, predicted_iou=0.95 - 0.1 * (k - 1),
                    stability=0.9))
            return Segmentation(height=h, width=w, instances=instances)
        finally:
            self._exit()

    def segment_prompts(self, image: np.ndarray, boxes: np.ndarray | None = None,
                        points: np.ndarray | None = None) -> Segmentation:
        self._enter(image)
        try:
            self.prompt_calls += 1
            h, w = image.shape[:2]
            instances = []
            for box in (np.zeros((0, 4)) if boxes is None else np.asarray(boxes)):
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                instances.append(Instance(
                    mask=_box_mask(h, w, (x0, y0, x1, y1)), box_xyxy=_float_box((x0, y0, x1, y1)),
                    class_id=1, class_name=self.class_names[1], class_score=0.8, predicted_iou=0.9, stability=0.9))
            for point in (np.zeros((0, 2)) if points is None else np.asarray(points)):
                x, y = int(round(point[0])), int(round(point[1]))
                box = (max(x - 4, 0), max(y - 4, 0), min(x + 5, w), min(y + 5, h))
                instances.append(Instance(
                    mask=_box_mask(h, w, box), box_xyxy=_float_box(box), class_id=2,
                    class_name=self.class_names[2], class_score=0.7, predicted_iou=0.85, stability=0.9,
                    point=(float(point[0]), float(point[1]))))
            return Segmentation(height=h, width=w, instances=instances)
        finally:
            self._exit()

    def apply(self, settings) -> None:
        """Take new runtime settings (as SaomSegmenter.apply); recorded, the fake's output stays the same."""
        unknown = [c for c in settings.keep_classes if c not in self.class_names]
        if unknown:
            raise ConfigError(f"keep_classes: unknown classes {unknown}; the model knows {self.class_names[1:]}")
        self.applied.append(settings)

    def close(self) -> None:
        self.closed = True


# ROS bayer_<pattern>: the colour of each pixel of a 2x2 tile, row by row
_BAYER_TILES = {"bayer_rggb8": "RGGB", "bayer_bggr8": "BGGR", "bayer_gbrg8": "GBRG", "bayer_grbg8": "GRBG"}


def encoded_test_image(encoding: str, height: int, width: int, seed: int = 0,
                       pad: int = 0) -> tuple[bytes, int, np.ndarray]:
    """(data, step, expected RGB) of a `height` x `width` frame in `encoding` (rows padded by `pad` bytes).

    Colour encodings get random pixels; mono16 is an 8-bit grey times 257 (scaled back exactly);
    the YUV 4:2:2 ones are grey (U = V = 128), whose RGB is OpenCV's BT.601 video range
    1.164 (Y - 16); bayer ones a flat colour, which demosaicing must return everywhere.
    """
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    alpha = np.full((height, width, 1), 77, np.uint8)
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
                  "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], 2)}[encoding]
        expected = rgb
    elif encoding == "mono8":
        pixels, expected = grey, np.repeat(grey[:, :, None], 3, 2)
    elif encoding == "mono16":
        pixels, expected = (grey.astype("<u2") * 257).view(np.uint8), np.repeat(grey[:, :, None], 3, 2)
    elif encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        chroma = np.full((height, width), 128, np.uint8)
        pair = (chroma, grey) if encoding in ("yuv422", "uyvy") else (grey, chroma)  # UYVY / YUYV byte order
        pixels = np.stack(pair, axis=2)
        level = np.clip(np.rint((grey.astype(np.float64) - 16.0) * 1.164), 0, 255).astype(np.uint8)
        expected = np.repeat(level[:, :, None], 3, 2)
    elif encoding in _BAYER_TILES:
        colour = rng.integers(0, 256, size=3, dtype=np.uint8)
        tile = _BAYER_TILES[encoding]
        pixels = np.zeros((height, width), np.uint8)
        for k, channel in enumerate(tile):
            pixels[k // 2::2, k % 2::2] = colour["RGB".index(channel)]
        expected = np.broadcast_to(colour, (height, width, 3)).copy()
    else:
        raise ValueError(f"no test image for encoding {encoding!r}")
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    step = rows.shape[1] + pad
    data = np.zeros((height, step), np.uint8)
    data[:, : rows.shape[1]] = rows
    return data.tobytes(), step, expected


def fake_factory(params=None) -> FakeSegmenter:
    """The fake as the node's segmenter factory (`main`)."""
    return FakeSegmenter(delay=float(os.environ.get("SAOM_FAKE_DELAY", "0") or 0))


def main(argv: list[str] | None = None) -> int:
    """saom_node with `fake_factory` through the test-only hook `saom_ros.segmenter_factory.SEGMENTER_FACTORY`."""
    from . import segmenter_factory
    from .node import main as node_main

    segmenter_factory.SEGMENTER_FACTORY = fake_factory
    return node_main(argv)


def isolate_ros_env() -> int:
    """Loopback-only discovery and a domain id of this test session, set before rclpy.init.

    The id comes from SAOM_TEST_DOMAIN_ID or the process id (1..100), so concurrent test runs on
    one machine do not see each other. Returns the domain id.
    """
    domain = int(os.environ.get("SAOM_TEST_DOMAIN_ID") or (os.getpid() % 100) + 1)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_STATIC_PEERS", None)
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    return domain


if __name__ == "__main__":
    sys.exit(main())
