"""Images and vision_msgs without ROS: numpy views of message buffers, and output messages from a Segmentation.

Inputs are read duck-typed (any object with the sensor_msgs fields: an rclpy message, a rosbags
dataclass); outputs are built through a `MessageTypes` namespace (see `msgtypes`). No hand-written
codecs: raw images are numpy views, compressed ones go through OpenCV's decoder.

class_id convention: `ObjectHypothesis.class_id` (string) is `str(class index)`, the same number
as `VisionClass.class_id` (uint16) in LabelInfo; `Detection2D.id` is the instance's value in the
mono16 instance mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from saom_core.errors import ImageError
from saom_core.infer.types import Instance, Segmentation

from .msgtypes import MessageTypes

# encoding -> (channels, channel order to RGB)
_RAW_ENCODINGS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_RAW_ENCODINGS)


class UnsupportedEncoding(ImageError):
    """A well-formed image in an encoding the node does not take (skipped with a throttled warning)."""


def _u8_buffer(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB (a fresh, writable, contiguous array).

    Raises UnsupportedEncoding for encodings other than rgb8, bgr8, rgba8, bgra8, mono8 and
    ImageError for inconsistent sizes (a bad frame).
    """
    encoding = str(msg.encoding).strip().lower()
    if encoding not in _RAW_ENCODINGS:
        raise UnsupportedEncoding(
            f"image encoding {msg.encoding!r} is not supported (use one of {', '.join(SUPPORTED_ENCODINGS)})")
    channels, order = _RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image ({width}x{height})")
    if step < width * channels:
        raise ImageError(f"image step {step} is smaller than width {width} x {channels} bytes")
    buf = _u8_buffer(msg.data)
    if buf.size < height * step:
        raise ImageError(f"image data has {buf.size} bytes, {width}x{height} {encoding} with step {step} needs {height * step}")
    pixels = buf[: height * step].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if order is None:
        return np.array(pixels, dtype=np.uint8, order="C")
    return np.ascontiguousarray(pixels[:, :, list(order)])


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ...) -> (H, W, 3) uint8 RGB, decoded by OpenCV."""
    import cv2

    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise UnsupportedEncoding(f"compressed image format {msg.format!r} (depth) is not supported")
    buf = _u8_buffer(msg.data)
    if buf.size == 0:
        raise ImageError("compressed image has no data")
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageError(f"cannot decode compressed image (format {msg.format!r}, {buf.size} bytes)")
    if decoded.dtype != np.uint8:
        raise UnsupportedEncoding(f"compressed image decodes to {decoded.dtype}, only 8-bit images are supported")
    if decoded.ndim == 2:
        return np.ascontiguousarray(np.repeat(decoded[:, :, None], 3, axis=2))
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    if decoded.shape[2] == 3:
        # JPEG/PNG files hold true colours; OpenCV hands them over as BGR (image_transport's
        # "rgb8; jpeg compressed bgr8" is such a file too).
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    raise UnsupportedEncoding(f"compressed image has {decoded.shape[2]} channels")


def message_to_rgb(msg: Any) -> np.ndarray:
    """Image or CompressedImage -> RGB (dispatch on the fields present)."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)


def select_image_converter(image_cls: Any = None) -> tuple[Callable[[Any], np.ndarray], str]:
    """ROS 2's cv_bridge where it is installed and passes a self-test, else numpy views: (convert, name).

    Both take Image or CompressedImage and accept the same encodings (others raise
    UnsupportedEncoding), so the choice changes nothing but the code that copies the pixels. The
    PyPI package `cv-bridge` is ROS 1's and fails with numpy 2: the self-test catches that.
    """
    try:
        from cv_bridge import CvBridge

        bridge = CvBridge()
    except Exception:  # noqa: BLE001 - not installed, or a broken build
        return message_to_rgb, "numpy"

    def convert(msg: Any) -> np.ndarray:
        if hasattr(msg, "format") and not hasattr(msg, "encoding"):
            return compressed_to_rgb(msg)
        encoding = str(msg.encoding).strip().lower()
        if encoding not in _RAW_ENCODINGS:
            raise UnsupportedEncoding(
                f"image encoding {msg.encoding!r} is not supported (use one of {', '.join(SUPPORTED_ENCODINGS)})")
        try:
            out = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except Exception as exc:  # noqa: BLE001 - cv_bridge raises its own error types
            raise ImageError(f"cv_bridge cannot convert the frame: {exc}") from exc
        out = np.array(out, dtype=np.uint8, order="C", copy=True)
        if out.ndim != 3 or out.shape[2] != 3:
            raise ImageError(f"cv_bridge returned a {out.shape} array for rgb8")
        return out

    if image_cls is not None:
        try:
            pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
            for encoding, data in (("bgr8", pixels[:, :, ::-1]), ("mono8", pixels[:, :, 0])):
                probe = image_cls()
                probe.height, probe.width, probe.encoding = 2, 3, encoding
                probe.step = 3 * (1 if encoding == "mono8" else 3)
                probe.data = np.ascontiguousarray(data).tobytes()
                if not np.array_equal(convert(probe), message_to_rgb(probe)):
                    raise ValueError(f"{encoding} differs")
        except Exception:  # noqa: BLE001
            return message_to_rgb, "numpy (cv_bridge failed its self-test)"
    return convert, "cv_bridge"


# ---------------------------------------------------------------------------------------------
# outputs


def copy_header(T: MessageTypes, header: Any) -> Any:
    """A new Header with the input's stamp and frame_id."""
    return T.Header(stamp=T.Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec)),
                    frame_id=str(header.frame_id))


def stamp_key(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


def filter_instances(seg: Segmentation, score_threshold: float) -> Segmentation:
    """Drop instances scoring below the threshold; order (and so the numbering of the rest) is kept."""
    if score_threshold <= 0.0:
        return seg
    kept = [inst for inst in seg.instances if inst.score >= score_threshold]
    return Segmentation(height=seg.height, width=seg.width, instances=kept)


def label_image(seg: Segmentation) -> np.ndarray:
    """(H, W) uint16, 0 = none, k = instance k (Segmentation.label_image)."""
    labels = seg.label_image()
    if labels.shape != (seg.height, seg.width):
        raise ValueError(f"label image {labels.shape} does not match the frame {seg.height}x{seg.width}")
    return labels


def make_image(T: MessageTypes, header: Any, array: np.ndarray, encoding: str) -> Any:
    """sensor_msgs/Image from a (H, W) uint16 (mono16), (H, W) uint8 (mono8) or (H, W, 3) uint8 (rgb8) array."""
    if encoding == "mono16":
        if array.ndim != 2:
            raise ValueError("mono16 needs an (H, W) array")
        data = np.ascontiguousarray(array, dtype="<u2")
        bpp = 2
    elif encoding == "mono8":
        data, bpp = np.ascontiguousarray(array, dtype=np.uint8), 1
    elif encoding == "rgb8":
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError("rgb8 needs an (H, W, 3) array")
        data, bpp = np.ascontiguousarray(array, dtype=np.uint8), 3
    else:
        raise ValueError(f"cannot encode {encoding}")
    height, width = array.shape[:2]
    return T.Image(header=header, height=int(height), width=int(width), encoding=encoding,
                   is_bigendian=0, step=int(width * bpp), data=T.u8(memoryview(data).cast("B")))


def _hypothesis(T: MessageTypes, inst: Instance) -> Any:
    return T.ObjectHypothesisWithPose(
        hypothesis=T.ObjectHypothesis(class_id=str(int(inst.class_id)), score=float(inst.score)),
        pose=T.PoseWithCovariance(
            pose=T.Pose(position=T.Point(x=0.0, y=0.0, z=0.0),
                        orientation=T.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36, dtype=np.float64)),
    )


def make_detection(T: MessageTypes, header: Any, inst: Instance, index: int) -> Any:
    x0, y0, x1, y1 = (float(v) for v in inst.box_xyxy)
    return T.Detection2D(
        header=header,
        results=[_hypothesis(T, inst)],
        bbox=T.BoundingBox2D(center=T.Pose2D(position=T.Point2D(x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0), theta=0.0),
                             size_x=max(0.0, x1 - x0), size_y=max(0.0, y1 - y0)),
        id=str(index),
    )


def make_detection_array(T: MessageTypes, header: Any, seg: Segmentation) -> Any:
    """One Detection2D per instance, in instance order; `id` = the instance's value in the label image."""
    return T.Detection2DArray(header=header,
                              detections=[make_detection(T, header, inst, k) for k, inst in enumerate(seg.instances, 1)])


def make_label_info(T: MessageTypes, header: Any, class_names: Sequence[str], threshold: float) -> Any:
    """The class map: VisionClass(class_id=i, class_name=class_names[i]) for every class, background (0) included."""
    if len(class_names) >= 65535:
        raise ValueError("too many classes for uint16 class ids (65535 is UNLABELED)")
    return T.LabelInfo(header=header,
                       class_map=[T.VisionClass(class_id=i, class_name=str(name)) for i, name in enumerate(class_names)],
                       threshold=float(threshold))


def overlay_image(rgb: np.ndarray, seg: Segmentation) -> np.ndarray:
    """RGB overlay at input resolution: masks in class colours, contours and `k class score` labels."""
    from saom_core.viz import draw_instances

    if not seg.instances:
        return rgb
    masks = [inst.mask for inst in seg.instances]
    texts = [f"{k} {inst.class_name} {inst.score:.2f}" for k, inst in enumerate(seg.instances, 1)]
    return draw_instances(rgb, masks, texts, [int(inst.class_id) for inst in seg.instances], scale_to=None)


@dataclass
class Outputs:
    """Everything published for one frame (all with the input's header)."""

    detections: Any
    instance_mask: Any  # None when not asked for
    segmentation: Segmentation


def make_outputs(T: MessageTypes, in_header: Any, seg: Segmentation, score_threshold: float = 0.0,
                 mask: bool = True) -> Outputs:
    """Detections and (when `mask`) the mono16 instance mask, both with a copy of the input's header."""
    header = copy_header(T, in_header)
    seg = filter_instances(seg, score_threshold)
    return Outputs(detections=make_detection_array(T, header, seg),
                   instance_mask=make_image(T, header, label_image(seg), "mono16") if mask else None,
                   segmentation=seg)


# ---------------------------------------------------------------------------------------------
# prompts


@dataclass(frozen=True)
class Prompts:
    """Boxes (N, 4 xyxy px) and centre points (M, 2 xy px) from a Detection2DArray, and their input order."""

    boxes: np.ndarray
    points: np.ndarray
    order: tuple[tuple[str, int], ...]  # ("box", i) or ("point", j) for each input detection

    def __len__(self) -> int:
        return len(self.order)


def prompts_from_detections(msg: Any, width: int | None = None, height: int | None = None) -> Prompts:
    """A detection with a positive bbox size is a box prompt; one with a zero size is a point at its centre.

    Coordinates are clipped to the frame when its size is given.
    """
    boxes: list[list[float]] = []
    points: list[list[float]] = []
    order: list[tuple[str, int]] = []
    for det in msg.detections:
        cx, cy = float(det.bbox.center.position.x), float(det.bbox.center.position.y)
        sx, sy = float(det.bbox.size_x), float(det.bbox.size_y)
        if not all(np.isfinite([cx, cy, sx, sy])):
            continue
        if sx > 0.0 and sy > 0.0:
            order.append(("box", len(boxes)))
            boxes.append([cx - sx / 2.0, cy - sy / 2.0, cx + sx / 2.0, cy + sy / 2.0])
        else:
            order.append(("point", len(points)))
            points.append([cx, cy])
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    p = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if width is not None and height is not None:
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
        p[:, 0] = p[:, 0].clip(0, max(width - 1, 0))
        p[:, 1] = p[:, 1].clip(0, max(height - 1, 0))
    return Prompts(boxes=b, points=p, order=tuple(order))


def reorder_prompted(seg: Segmentation, prompts: Prompts) -> Segmentation:
    """segment_prompts returns boxes first, then points; put instance k back on the k-th input prompt.

    When the segmenter returned a different number of instances the order is left as it came.
    """
    if len(seg.instances) != len(prompts):
        return seg
    n_boxes = len(prompts.boxes)
    ordered = [seg.instances[i] if kind == "box" else seg.instances[n_boxes + i] for kind, i in prompts.order]
    return Segmentation(height=seg.height, width=seg.width, instances=ordered)
