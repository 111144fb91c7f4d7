"""3D objects from an instance mask and an aligned depth image (ROS-free; the node, `saom segment`,
`saom bag` and the evaluation share it).

Depth is in the camera's optical frame (REP 103: x right, y down, z forward), pinhole model without
distortion (a registered depth image is rectified). Only a mask's valid depth pixels count: 0, NaN,
inf and depths outside [min_depth, max_depth] are ignored, then points far from the mask's median
depth (more than `mad_k` robust standard deviations, MAD-based, and at least `min_spread` metres) are
dropped: mask pixels that bleed onto the background or onto a surface behind the object. A mask with
fewer than `min_points` points left gets no 3D result, never a box at the origin or of zero size.

The box is axis-aligned in the camera frame, its extents the `percentiles` of the points (robust to
the last stray pixels, unlike min/max), widened in x and y by half a pixel's footprint (the points
are pixel centres). A camera sees only the front of an object: with
`complete_depth` the box reaches behind the visible surface to a depth equal to the object's mean
visible width (a guess that the object is about as deep as it is wide), so the box and its
centre describe the whole object rather than its visible skin (without it, a flat face towards the
camera has no depth extent); `surface_centroid` is the mean of the seen points either way.

`stride` > 1 back-projects every stride-th pixel of the image grid in each direction (stride^2 fewer
points: a 3D budget for a live stream; `min_points` then counts sampled points); the half-pixel
widening becomes half a sample's footprint.

Uncertainty (`Object3D.covariance`): the covariance of the seen points about the box centre, so the
z variance also holds the distance the centre was extrapolated behind the visible surface.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saom_core.errors import ConfigError
from saom_core.settings import ObjectSettings

DEFAULT_DEPTH_SCALE = {np.dtype(np.uint16): 0.001, np.dtype(np.float32): 1.0, np.dtype(np.float64): 1.0}


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels (pixel (u, v) centred at u, v, as sensor_msgs/CameraInfo's K)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(float(v)) for v in values):
            raise ConfigError(f"camera intrinsics must be finite numbers, got fx, fy, cx, cy = {values}")
        if self.fx <= 0 or self.fy <= 0:
            raise ConfigError(f"camera focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def parse(cls, text: str) -> CameraIntrinsics:
        """'fx,fy,cx,cy' or a camera calibration YAML (ROS camera_info format: camera_matrix.data)."""
        if Path(text).suffix.lower() in (".yaml", ".yml"):
            return cls.from_yaml(text)
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError as exc:
            raise ConfigError(f"--intrinsics must be fx,fy,cx,cy numbers or a camera YAML, got '{text}'") from exc
        if len(values) != 4:
            raise ConfigError(f"--intrinsics needs 4 numbers fx,fy,cx,cy, got {len(values)}: '{text}'")
        return cls(*values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CameraIntrinsics:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read camera YAML {path}: {exc}") from exc
        matrix = (data or {}).get("camera_matrix", {}).get("data") if isinstance(data, dict) else None
        if not isinstance(matrix, list) or len(matrix) != 9:
            raise ConfigError(f"{path}: expected camera_matrix.data with 9 numbers (the ROS camera_info YAML)")
        return cls(float(matrix[0]), float(matrix[4]), float(matrix[2]), float(matrix[5]))

    @classmethod
    def from_k(cls, k: Any) -> CameraIntrinsics:
        """From a row-major 3x3 camera matrix (CameraInfo.k)."""
        k = [float(v) for v in k]
        return cls(k[0], k[4], k[2], k[5])


@dataclass(frozen=True)
class DepthSettings:
    min_points: int = 20  # fewer valid points than this: no 3D result
    min_depth: float = ObjectSettings.depth_min  # metres; nearer depths are invalid
    max_depth: float = ObjectSettings.depth_max  # metres; farther depths are invalid
    mad_k: float = 3.0  # keep points within mad_k robust standard deviations of the median depth ...
    min_spread: float = 0.02  # ... but never closer than this (metres): a flat face has MAD 0
    percentiles: tuple[float, float] = (0.5, 99.5)
    complete_depth: bool = True  # extend the box behind the visible surface (see the module docstring)
    stride: int = 1  # back-project every stride-th pixel in each direction (see the module docstring)

    def __post_init__(self) -> None:
        if self.min_points < 1 or not 0 < self.min_depth < self.max_depth or self.mad_k <= 0 or self.stride < 1:
            raise ConfigError(f"invalid depth settings: {self}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"depth box percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")


@dataclass
class Object3D:
    """One instance in 3D, camera optical frame, metres."""

    box_min: np.ndarray  # (3,)
    box_max: np.ndarray  # (3,)
    surface_centroid: np.ndarray  # (3,) mean of the seen points
    points: np.ndarray = field(repr=False)  # (N, 3) float32, the seen points after outlier rejection
    pixels: np.ndarray = field(repr=False)  # (N, 2) int row, column of each point (its colour)

    @property
    def centre(self) -> np.ndarray:
        return (self.box_min + self.box_max) / 2

    @property
    def covariance(self) -> np.ndarray:
        """(3, 3) covariance of the seen points about the box centre: their spread, plus the offset
        of a centre extrapolated behind the visible surface (`complete_depth`)."""
        offsets = self.points.astype(np.float64) - self.centre
        return offsets.T @ offsets / max(len(offsets), 1)

    @property
    def size(self) -> np.ndarray:
        return self.box_max - self.box_min

    def to_dict(self) -> dict[str, Any]:
        """JSON form (without the points)."""
        return {
            "centre": [round(float(v), 5) for v in self.centre],
            "size": [round(float(v), 5) for v in self.size],
            "surface_centroid": [round(float(v), 5) for v in self.surface_centroid],
            "points": int(len(self.points)),
        }


@dataclass(frozen=True)
class RigidTransform:
    """p_target = R(quaternion) p_source + translation: a transform looked up elsewhere (tf2 in the node),
    applied to 3D results."""

    translation: np.ndarray  # (3,)
    quaternion: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # x, y, z, w

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) rotation matrix of the (normalised) quaternion."""
        x, y, z, w = np.asarray(self.quaternion, dtype=np.float64) / np.linalg.norm(self.quaternion)
        return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) points in the target frame, in their input's float type."""
        points = np.asarray(points)
        out = points @ self.rotation.T.astype(points.dtype) + np.asarray(self.translation, dtype=points.dtype)
        return out.astype(points.dtype)

    def rotate_covariance(self, covariance: np.ndarray) -> np.ndarray:
        r = self.rotation
        return r @ covariance @ r.T


IDENTITY = RigidTransform(np.zeros(3))


def depth_in_metres(depth: np.ndarray, depth_scale: float | None = None) -> np.ndarray:
    """Raw depth (16UC1 millimetres, 32FC1 metres, ...) -> float32 metres; invalid values become 0.

    `depth_scale` is metres per raw unit; default 0.001 for uint16 and 1 for float images."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ConfigError(f"depth must be a single-channel (H, W) image, got shape {depth.shape}")
    if depth_scale is None:
        if depth.dtype not in DEFAULT_DEPTH_SCALE:
            raise ConfigError(f"unsupported depth type {depth.dtype} (uint16 millimetres or float metres)")
        depth_scale = DEFAULT_DEPTH_SCALE[depth.dtype]
    if not depth_scale > 0:
        raise ConfigError(f"depth_scale must be positive, got {depth_scale}")
    metres = depth.astype(np.float32) * np.float32(depth_scale)
    metres[~np.isfinite(metres)] = 0.0
    return metres


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), end-exclusive, of a mask's pixels; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def backproject(mask: np.ndarray, depth_m: np.ndarray, camera: CameraIntrinsics,
                settings: DepthSettings) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float32 points of the mask's valid depth pixels (every `settings.stride`-th of the image
    grid) and their (N, 2) row, column."""
    if mask.shape != depth_m.shape:
        raise ConfigError(f"mask {mask.shape} and depth {depth_m.shape} differ in size")
    bounds = mask_bounds(mask)
    if bounds is None:
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 2), dtype=np.int64)
    y0, y1, x0, x1 = bounds
    s = settings.stride
    y0, x0 = -(-y0 // s) * s, -(-x0 // s) * s  # on the image's sampling grid, whatever the mask's box
    vs, us = np.nonzero(mask[y0:y1:s, x0:x1:s])  # within the mask's box: a small object costs little
    vs, us = vs * s + y0, us * s + x0
    z = depth_m[vs, us]
    valid = (z >= settings.min_depth) & (z <= settings.max_depth)  # NaN compares False: dropped
    us, vs, z = us[valid], vs[valid], z[valid]
    x = (us - camera.cx) * z / camera.fx
    y = (vs - camera.cy) * z / camera.fy
    return np.stack([x, y, z], axis=1).astype(np.float32), np.stack([vs, us], axis=1)


def reject_outliers(points: np.ndarray, settings: DepthSettings) -> np.ndarray:
    """Which points have a depth within max(mad_k * 1.4826 * MAD, min_spread) of the median depth."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    z = points[:, 2]
    median = np.median(z)
    spread = max(settings.mad_k * 1.4826 * float(np.median(np.abs(z - median))), settings.min_spread)
    return np.abs(z - median) <= spread


def object_from_mask(mask: np.ndarray, depth_m: np.ndarray, camera: CameraIntrinsics,
                     settings: DepthSettings = DepthSettings()) -> Object3D | None:
    """The instance in 3D, or None when fewer than `settings.min_points` valid points remain."""
    points, pixels = backproject(mask, depth_m, camera, settings)
    keep = reject_outliers(points, settings)
    points, pixels = points[keep], pixels[keep]
    if len(points) < settings.min_points:
        return None
    lo, hi = np.percentile(points, settings.percentiles, axis=0)
    # points are sample centres; the surface reaches half a sample's footprint beyond the outer ones
    footprint = float(np.median(points[:, 2])) * 0.5 * settings.stride / np.array([camera.fx, camera.fy])
    lo[:2] -= footprint
    hi[:2] += footprint
    if settings.complete_depth:
        hi[2] = max(hi[2], lo[2] + (hi[0] - lo[0] + hi[1] - lo[1]) / 2)
    return Object3D(box_min=lo, box_max=hi, surface_centroid=points.mean(0), points=points, pixels=pixels)


@dataclass
class Objects3D:
    """3D results of one frame, aligned with its instances (None: too few valid depth pixels)."""

    objects: list[Object3D | None]

    @property
    def missing(self) -> int:
        return sum(o is None for o in self.objects)


def objects_from_masks(masks: Any, depth_m: np.ndarray, camera: CameraIntrinsics,
                       settings: DepthSettings = DepthSettings()) -> Objects3D:
    """One `object_from_mask` per mask of an (N, H, W) stack or list."""
    return Objects3D([object_from_mask(np.asarray(m, dtype=bool), depth_m, camera, settings) for m in masks])


def box_iou_3d(a_min: np.ndarray, a_max: np.ndarray, b_min: np.ndarray, b_max: np.ndarray) -> float:
    """IoU of two axis-aligned 3D boxes."""
    overlap = np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0, None).prod()
    union = np.prod(a_max - a_min) + np.prod(b_max - b_min) - overlap
    return float(overlap / union) if union > 0 else 0.0


def add_objects3d(segmentation: Any, depth_m: np.ndarray, camera: CameraIntrinsics,
                  settings: DepthSettings = DepthSettings()) -> int:
    """Set `object3d` on every instance of a Segmentation; returns how many got none."""
    if depth_m.shape != (segmentation.height, segmentation.width):
        raise ConfigError(f"depth is {depth_m.shape[1]}x{depth_m.shape[0]} but the colour image is "
                          f"{segmentation.width}x{segmentation.height}: register depth to colour first")
    missing = 0
    for instance in segmentation.instances:
        instance.object3d = object_from_mask(instance.mask, depth_m, camera, settings)
        missing += instance.object3d is None
    return missing
