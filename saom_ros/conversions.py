"""Images and vision_msgs without ROS: numpy views of message buffers, and output messages from a Segmentation.

Inputs are read duck-typed (any object with the sensor_msgs fields: an rclpy message, a rosbags
dataclass); outputs are built through a `MessageTypes` namespace (see `msgtypes`). No hand-written
codecs: raw images are numpy views, compressed ones go through OpenCV's decoder.

class_id convention: `ObjectHypothesis.class_id` (string) is `str(class index)`, the same number
as `VisionClass.class_id` (uint16) in LabelInfo; `Detection2D.id` is the instance's value in the
mono16 instance mask: its track id when tracked (the node), else its number in the frame.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saom_core.errors import ImageError
from saom_core.infer.types import Instance, Segmentation

from .msgtypes import MessageTypes


@dataclass(frozen=True)
class _Encoding:
    channels: int
    dtype: str  # numpy dtype of one channel
    to_rgb: str | None  # the cv2.COLOR_* conversion to RGB (None: already RGB)


# sensor_msgs/image_encodings names. ROS's bayer_<pattern> names the first row pair; OpenCV's
# Bayer<XY> names the second pixel of the second row, so bayer_rggb8 is OpenCV's BayerBG (as in
# cv_bridge). yuv422 is UYVY in ROS (image_encodings.hpp), yuv422_yuy2 and yuyv are YUYV.
_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, "u1", None),
    "bgr8": _Encoding(3, "u1", "COLOR_BGR2RGB"),
    "rgba8": _Encoding(4, "u1", "COLOR_RGBA2RGB"),
    "bgra8": _Encoding(4, "u1", "COLOR_BGRA2RGB"),
    "mono8": _Encoding(1, "u1", "COLOR_GRAY2RGB"),
    "mono16": _Encoding(1, "u2", "COLOR_GRAY2RGB"),  # scaled to 8 bits over the full 16-bit range
    "yuv422": _Encoding(2, "u1", "COLOR_YUV2RGB_UYVY"),
    "uyvy": _Encoding(2, "u1", "COLOR_YUV2RGB_UYVY"),
    "yuv422_yuy2": _Encoding(2, "u1", "COLOR_YUV2RGB_YUY2"),
    "yuyv": _Encoding(2, "u1", "COLOR_YUV2RGB_YUY2"),
    "bayer_rggb8": _Encoding(1, "u1", "COLOR_BayerBG2RGB"),
    "bayer_bggr8": _Encoding(1, "u1", "COLOR_BayerRG2RGB"),
    "bayer_gbrg8": _Encoding(1, "u1", "COLOR_BayerGR2RGB"),
    "bayer_grbg8": _Encoding(1, "u1", "COLOR_BayerGB2RGB"),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)


class UnsupportedEncoding(ImageError):
    """A well-formed image in an encoding the node does not take (skipped with a throttled warning)."""


def _u8_buffer(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _encoding_of(msg: Any) -> tuple[str, _Encoding]:
    name = str(msg.encoding).strip().lower()
    if name not in _ENCODINGS:
        raise UnsupportedEncoding(
            f"image encoding {msg.encoding!r} is not supported (use one of {', '.join(SUPPORTED_ENCODINGS)})")
    return name, _ENCODINGS[name]


def check_layout(msg: Any) -> tuple[str, _Encoding]:
    """The encoding of a sensor_msgs/Image whose size, step and data length agree; ImageError naming the
    mismatch otherwise (a bad frame), UnsupportedEncoding for an encoding not in SUPPORTED_ENCODINGS."""
    name, enc = _encoding_of(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    pixel_bytes = enc.channels * np.dtype(enc.dtype).itemsize
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image ({width}x{height})")
    if step < width * pixel_bytes:
        raise ImageError(f"image step {step} is smaller than width {width} x {pixel_bytes} bytes ({name})")
    if enc.channels == 2 and width % 2:
        raise ImageError(f"{name} needs an even width (two pixels share U and V), got {width}")
    size = len(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.nbytes
    if size < height * step:
        raise ImageError(f"image data has {size} bytes, {width}x{height} {name} with step {step} needs {height * step}")
    return name, enc


def image_pixels(msg: Any) -> np.ndarray:
    """A numpy view of an Image's pixels: (H, W) or (H, W, C) in the encoding's dtype, native byte order."""
    name, enc = check_layout(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(enc.dtype).itemsize
    rows = _u8_buffer(msg.data)[: height * step].reshape(height, step)[:, : width * enc.channels * itemsize]
    if itemsize > 1:
        order = ">" if int(getattr(msg, "is_bigendian", 0)) else "<"
        rows = np.ascontiguousarray(rows).view(np.dtype(order + enc.dtype)).astype(np.dtype(enc.dtype))
    pixels = rows.reshape(height, width, enc.channels)
    return pixels[:, :, 0] if enc.channels == 1 else pixels


def pixels_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W[, C]) pixels in `encoding` -> (H, W, 3) uint8 RGB (fresh, writable, contiguous), with OpenCV."""
    import cv2

    enc = _ENCODINGS[encoding]
    if enc.dtype == "u2":  # 16 -> 8 bits over the full range, as cv_bridge scales mono16 to mono8
        pixels = cv2.convertScaleAbs(pixels, alpha=255.0 / 65535.0)
    pixels = np.ascontiguousarray(pixels)
    if enc.to_rgb is None:
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    return np.ascontiguousarray(cv2.cvtColor(pixels, getattr(cv2, enc.to_rgb)))


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB (a fresh, writable, contiguous array).

    Raises UnsupportedEncoding for an encoding not in SUPPORTED_ENCODINGS and ImageError for
    inconsistent sizes (a bad frame).
    """
    name, _ = _encoding_of(msg)
    return pixels_to_rgb(image_pixels(msg), name)


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


def _probe_images(image_cls: Any) -> list[Any]:
    """One small random image per supported encoding (the cv_bridge self-test)."""
    rng = np.random.default_rng(0)
    probes = []
    for name, enc in _ENCODINGS.items():
        itemsize = np.dtype(enc.dtype).itemsize
        probe = image_cls()
        probe.height, probe.width, probe.encoding, probe.is_bigendian = 2, 4, name, 0
        probe.step = 4 * enc.channels * itemsize
        probe.data = rng.integers(0, 256, size=2 * probe.step, dtype=np.uint8).tobytes()
        probes.append(probe)
    return probes


def select_image_converter(image_cls: Any = None) -> tuple[Callable[[Any], np.ndarray], str]:
    """ROS 2's cv_bridge where it is installed and passes a self-test, else numpy views: (convert, name).

    cv_bridge only turns the message into an array (`passthrough`); the colour conversion is the
    same OpenCV call on both paths, so the choice changes nothing but the code that copies the
    pixels. The PyPI package `cv-bridge` is ROS 1's and fails with numpy 2: the self-test, which
    converts one image of every supported encoding both ways, catches that.
    """
    try:
        from cv_bridge import CvBridge

        bridge = CvBridge()
    except Exception:  # noqa: BLE001 - not installed, or a broken build
        return message_to_rgb, "numpy"

    def convert(msg: Any) -> np.ndarray:
        if hasattr(msg, "format") and not hasattr(msg, "encoding"):
            return compressed_to_rgb(msg)
        name, enc = check_layout(msg)
        try:
            pixels = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
        except Exception as exc:  # noqa: BLE001 - cv_bridge raises its own error types
            raise ImageError(f"cv_bridge cannot convert the frame: {exc}") from exc
        expected = (int(msg.height), int(msg.width)) + ((enc.channels,) if enc.channels > 1 else ())
        if pixels.shape != expected or pixels.dtype != np.dtype(enc.dtype):
            raise ImageError(f"cv_bridge returned a {pixels.shape} {pixels.dtype} array for {name}")
        return pixels_to_rgb(pixels, name)

    if image_cls is not None:
        try:
            for probe in _probe_images(image_cls):
                if not np.array_equal(convert(probe), message_to_rgb(probe)):
                    raise ValueError(f"{probe.encoding} differs")
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


def instance_id(instance: Instance, index: int) -> int:
    """The id an instance is published under: its track id when tracked, else its number (1-based)."""
    return int(instance.track_id) if instance.track_id is not None else int(index)


def label_image(seg: Segmentation) -> np.ndarray:
    """(H, W) uint16, 0 = none, k = the instance published with id k (`instance_id`): keyed by track
    id when the instances are tracked (track.track_label_image), else Segmentation.label_image."""
    from saom_core.track import track_label_image

    tracked = any(inst.track_id is not None for inst in seg.instances)
    labels = track_label_image(seg) if tracked else seg.label_image()
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
                   is_bigendian=0, step=int(width * bpp), data=T.u8(data.data.cast("B")))


def _hypothesis(T: MessageTypes, inst: Instance) -> Any:
    return T.ObjectHypothesisWithPose(
        hypothesis=T.ObjectHypothesis(class_id=str(int(inst.class_id)), score=float(inst.score)),
        pose=T.PoseWithCovariance(
            pose=T.Pose(position=T.Point(x=0.0, y=0.0, z=0.0),
                        orientation=T.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36, dtype=np.float64)),
    )


def make_detection(T: MessageTypes, header: Any, inst: Instance, det_id: str) -> Any:
    x0, y0, x1, y1 = (float(v) for v in inst.box_xyxy)
    return T.Detection2D(
        header=header,
        results=[_hypothesis(T, inst)],
        bbox=T.BoundingBox2D(center=T.Pose2D(position=T.Point2D(x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0), theta=0.0),
                             size_x=max(0.0, x1 - x0), size_y=max(0.0, y1 - y0)),
        id=det_id,
    )


def make_detection_array(T: MessageTypes, header: Any, seg: Segmentation) -> Any:
    """One Detection2D per instance, in instance order; `id` = the instance's value in the label image."""
    return T.Detection2DArray(header=header,
                              detections=[make_detection(T, header, inst, str(instance_id(inst, k)))
                                          for k, inst in enumerate(seg.instances, 1)])


def make_label_info(T: MessageTypes, header: Any, class_names: Sequence[str], threshold: float) -> Any:
    """The class map: VisionClass(class_id=i, class_name=class_names[i]) for every class, background (0) included."""
    if len(class_names) >= 65535:
        raise ValueError("too many classes for uint16 class ids (65535 is UNLABELED)")
    return T.LabelInfo(header=header,
                       class_map=[T.VisionClass(class_id=i, class_name=str(name))
                                  for i, name in enumerate(class_names)],
                       threshold=float(threshold))


def overlay_image(rgb: np.ndarray, seg: Segmentation) -> np.ndarray:
    """RGB overlay at input resolution: masks in class colours, contours and `k class score` labels."""
    from saom_core.viz import draw_instances

    if not seg.instances:
        return rgb
    masks = [inst.mask for inst in seg.instances]
    texts = [f"{instance_id(inst, k)} {inst.class_name} {inst.score:.2f}" for k, inst in enumerate(seg.instances, 1)]
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
    """The prompts of one Detection2DArray: valid boxes (N, 4 xyxy px) and centre points (M, 2 xy px),
    and for each input detection, in input order, where it went and its `id`."""

    boxes: np.ndarray
    points: np.ndarray
    order: tuple[tuple[str, int], ...]  # ("box", i), ("point", j) or ("invalid", k) for each input detection
    ids: tuple[str, ...]  # Detection2D.id of each input detection (echoed on its answer)
    problems: tuple[str, ...] = ()  # why each invalid prompt was refused

    def __len__(self) -> int:
        return len(self.order)

    @property
    def n_valid(self) -> int:
        return len(self.boxes) + len(self.points)


def _prompt_problem(cx: float, cy: float, sx: float, sy: float, width: int | None, height: int | None) -> str:
    """Why a prompt cannot be answered ("" when it can)."""
    if not all(np.isfinite([cx, cy, sx, sy])):
        return "a coordinate or size is not finite"
    if sx < 0.0 or sy < 0.0:
        return "negative size"
    if width is None or height is None:
        return ""
    if sx > 0.0 and sy > 0.0:
        if cx + sx / 2.0 <= 0.0 or cy + sy / 2.0 <= 0.0 or cx - sx / 2.0 >= width or cy - sy / 2.0 >= height:
            return f"the box is outside the {width}x{height} frame"
    elif not (0.0 <= cx < width and 0.0 <= cy < height):
        return f"the point is outside the {width}x{height} frame"
    return ""


def prompts_from_detections(msg: Any, width: int | None = None, height: int | None = None) -> Prompts:
    """A detection with a positive bbox size is a box prompt; one with a zero size is a point at its centre.

    A detection that cannot be a prompt (a NaN or infinite value, a negative size, outside the
    frame when its size is given) keeps its place as ("invalid", k), so answer k still belongs to
    prompt k. Boxes are clipped to the frame when its size is given.
    """
    boxes: list[list[float]] = []
    points: list[list[float]] = []
    order: list[tuple[str, int]] = []
    problems: list[str] = []
    for k, det in enumerate(msg.detections):
        cx, cy = float(det.bbox.center.position.x), float(det.bbox.center.position.y)
        sx, sy = float(det.bbox.size_x), float(det.bbox.size_y)
        problem = _prompt_problem(cx, cy, sx, sy, width, height)
        if problem:
            order.append(("invalid", len(problems)))
            problems.append(f"prompt {k} (id {det.id!r}): {problem}")
        elif sx > 0.0 and sy > 0.0:
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
    return Prompts(boxes=b, points=p, order=tuple(order), ids=tuple(str(d.id) for d in msg.detections),
                   problems=tuple(problems))


def answers_in_prompt_order(seg: Segmentation, prompts: Prompts) -> list[Instance | None]:
    """Answer k for prompt k: segment_prompts returns boxes first, then points; invalid prompts get None.

    Raises ValueError when the segmenter did not return one instance per valid prompt (then no
    answer can be trusted to belong to its prompt).
    """
    if len(seg.instances) != prompts.n_valid:
        raise ValueError(f"the model returned {len(seg.instances)} instances for {prompts.n_valid} valid prompts")
    n_boxes = len(prompts.boxes)
    lookup = {"box": lambda i: seg.instances[i], "point": lambda i: seg.instances[n_boxes + i],
              "invalid": lambda i: None}
    return [lookup[kind](i) for kind, i in prompts.order]


def make_prompted_outputs(T: MessageTypes, in_header: Any, answers: Sequence[Instance | None], ids: Sequence[str],
                          height: int, width: int, masks: bool = True) -> tuple[Any, Any]:
    """(Detection2DArray, stacked masks Image or None) for prompted answers.

    Detection k answers prompt k and carries its `id`; an unanswerable prompt gets a detection with
    no results and an empty box. The masks are one mono8 Image of height N*H: rows [k*H, (k+1)*H)
    are answer k's mask (255 inside, 0 outside; all 0 for an empty answer), so overlapping answers
    keep their own masks: `np.frombuffer(msg.data, np.uint8).reshape(N, H, W)` (step = W).
    """
    if len(answers) != len(ids):
        raise ValueError(f"{len(answers)} answers for {len(ids)} prompt ids")
    header = copy_header(T, in_header)
    empty_box = T.BoundingBox2D(center=T.Pose2D(position=T.Point2D(x=0.0, y=0.0), theta=0.0), size_x=0.0, size_y=0.0)
    detections = [make_detection(T, header, inst, det_id) if inst is not None
                  else T.Detection2D(header=header, results=[], bbox=empty_box, id=det_id)
                  for inst, det_id in zip(answers, ids, strict=True)]
    stacked = None
    if masks:
        planes = np.zeros((len(answers), height, width), dtype=np.uint8)
        for k, inst in enumerate(answers):
            if inst is not None:
                if inst.mask.shape != (height, width):
                    raise ValueError(f"answer {k} has a {inst.mask.shape} mask for a {height}x{width} frame")
                planes[k][inst.mask] = 255
        stacked = make_image(T, header, planes.reshape(len(answers) * height, width), "mono8")
    return T.Detection2DArray(header=header, detections=detections), stacked
