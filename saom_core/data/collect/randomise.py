"""Domain randomisation for the PyBullet collector: appearance, light, camera, sensor and depth model.

A robot sees its household through its own camera, so the training frames should not all look like
one clean renderer. `PRESETS` holds the settings (`saom collect --randomisation none|default|strong`,
and `--domain shifted`, a test domain whose textures, light, noise and object colours no training
preset draws from, see `DISJOINT`):

- appearance: procedural textures (noise, stripes, checks, wood-like; the shifted domain: dots,
  marble) on the floor, walls and objects, object re-tints, light direction, colour, intensity and
  shadows, bare or distractor-only views (frames with no masks: a robot often faces a bare wall);
- camera: height, pitch, field of view, focal lengths, principal point, resolution and aspect ratio;
- sensor: exposure and white balance, defocus and motion blur, shot and read noise (in linear light),
  JPEG compression;
- depth, like a stereo or structured-light RGB-D camera: noise with sigma = k z^2, holes at depth
  edges, on dark surfaces and on saturated highlights (shiny spots), millimetre quantisation.

Everything is drawn from streams of its own, seeded by (seed, scene index[, frame]): the scene's main
stream (objects, placement) is untouched, so `none` renders exactly what the collector rendered
before randomisation existed, and a frame is reproduced by its seed alone. What a frame was rendered
with is recorded in its meta (`randomisation`).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from saom_core.errors import ConfigError

Range = tuple[float, float]
_STREAM = 0x5A0D  # separates the randomisation streams from the scene's own `scene_rng(seed, index)`
TEXTURE_SIZE = 256


@dataclass(frozen=True)
class LightRanges:
    """TinyRenderer light: direction (elevation above the horizon), colour, intensity and terms."""

    elevation_deg: Range = (30.0, 80.0)
    warmth: Range = (-0.12, 0.12)  # + red - blue (warm) ... - red + blue (cool)
    intensity: Range = (0.85, 1.0)
    distance: Range = (2.0, 6.0)
    ambient: Range = (0.45, 0.7)
    diffuse: Range = (0.35, 0.6)
    specular: Range = (0.0, 0.25)
    shadow_p: float = 0.5


@dataclass(frozen=True)
class Randomisation:
    """One preset. Probabilities are per surface, object or frame; ranges are drawn uniformly."""

    name: str
    light: LightRanges = field(default_factory=LightRanges)
    # appearance
    textures: tuple[str, ...] = ()  # procedural texture kinds drawn from
    texture_p: float = 0.0  # chance that the floor, a wall or an object gets a texture
    texture_contrast: Range = (0.0, 0.0)  # brightness difference of a texture's two colours
    object_value: Range = (0.55, 1.0)  # HSV value of object colours (re-tints, object textures)
    surface_value: Range = (0.3, 0.95)  # HSV value of floor and wall textures
    retint_p: float = 0.0  # chance that an object is re-tinted (shifted: also those the catalogue keeps)
    empty_p: float = 0.0  # chance that a station is bare (floor and wall) or distractors only
    # camera
    height_jitter_m: float = 0.0
    pitch_jitter_deg: float = 0.0
    fov_deg: Range | None = None  # None: the scene builder's field of view
    focal_ratio: Range = (1.0, 1.0)  # fx / fy
    principal_offset: float = 0.0  # largest principal point shift, as a fraction of the frame size
    resolution: Range = (1.0, 1.0)  # the frame's width as a factor of --size
    aspect: Range = (1.0, 1.0)  # width / height
    # sensor
    exposure: Range = (1.0, 1.0)  # gain in linear light
    white_balance: float = 0.0  # largest per-channel gain error
    shot_noise: Range = (0.0, 0.0)  # variance per unit of linear intensity
    read_noise: Range = (0.0, 0.0)  # standard deviation in linear intensity
    defocus_p: float = 0.0
    defocus_px: Range = (0.0, 0.0)  # Gaussian sigma
    motion_p: float = 0.0
    motion_px: Range = (0.0, 0.0)  # length of the blur streak
    jpeg_p: float = 0.0
    jpeg_quality: Range = (100.0, 100.0)
    # depth
    depth_noise: Range = (0.0, 0.0)  # k of sigma = k z^2 (1/m)
    depth_edge_px: Range = (0.0, 0.0)  # width of the hole band at depth discontinuities
    dark_level: float = 0.0  # surfaces darker than this (luminance, 0..1) lose depth ...
    dark_hole_p: float = 0.0  # ... with this chance per pixel
    highlight_level: float = 1.01  # saturated highlights (shiny spots) above this lose depth

    @property
    def active(self) -> bool:
        return self.name != "none"


NONE = Randomisation("none")  # the collector's own light ranges, nothing else
DEFAULT = Randomisation(
    "default",
    light=LightRanges(elevation_deg=(20.0, 85.0), warmth=(-0.2, 0.2), intensity=(0.7, 1.0), ambient=(0.35, 0.75),
                      diffuse=(0.3, 0.7), specular=(0.0, 0.35)),
    textures=("noise", "stripes", "checks", "wood"), texture_p=0.3, texture_contrast=(0.1, 0.4),
    object_value=(0.5, 1.0), retint_p=0.2, empty_p=0.08,
    height_jitter_m=0.1, pitch_jitter_deg=4.0, fov_deg=(50.0, 70.0), focal_ratio=(0.97, 1.03), principal_offset=0.03,
    exposure=(0.8, 1.25), white_balance=0.08, shot_noise=(0.0, 0.004), read_noise=(0.0, 0.01),
    defocus_p=0.2, defocus_px=(0.5, 1.2), motion_p=0.2, motion_px=(2.0, 4.0), jpeg_p=0.5, jpeg_quality=(60.0, 95.0),
    depth_noise=(0.0005, 0.003), depth_edge_px=(1.0, 2.0), dark_level=0.06, dark_hole_p=0.5, highlight_level=0.99,
)
STRONG = replace(
    DEFAULT, name="strong",
    light=LightRanges(elevation_deg=(10.0, 89.0), warmth=(-0.3, 0.3), intensity=(0.55, 1.0), ambient=(0.25, 0.85),
                      diffuse=(0.25, 0.75), specular=(0.0, 0.5)),
    texture_p=0.6, texture_contrast=(0.1, 0.7), object_value=(0.45, 1.0), retint_p=0.5, empty_p=0.12,
    height_jitter_m=0.2, pitch_jitter_deg=8.0, fov_deg=(45.0, 75.0), focal_ratio=(0.93, 1.07), principal_offset=0.06,
    resolution=(0.75, 1.25), aspect=(0.75, 1.34), exposure=(0.6, 1.6), white_balance=0.15, shot_noise=(0.0, 0.01),
    read_noise=(0.0, 0.02),
    defocus_p=0.35, defocus_px=(0.5, 2.0), motion_p=0.35, motion_px=(2.0, 7.0), jpeg_p=0.7, jpeg_quality=(40.0, 95.0),
    depth_noise=(0.001, 0.006), depth_edge_px=(1.0, 3.0), dark_level=0.1, dark_hole_p=0.8,
)
SHIFTED = replace(
    DEFAULT, name="shifted",
    light=LightRanges(elevation_deg=(20.0, 85.0), warmth=(0.35, 0.5), intensity=(0.45, 0.53), ambient=(0.14, 0.23),
                      diffuse=(0.8, 0.95), specular=(0.55, 0.8)),
    textures=("dots", "marble"), texture_p=0.7, texture_contrast=(0.3, 0.6), object_value=(0.2, 0.42), retint_p=1.0,
    exposure=(1.2, 1.7),  # the camera's auto exposure makes up for part of the dim light
    shot_noise=(0.012, 0.02), read_noise=(0.022, 0.032), jpeg_p=1.0, jpeg_quality=(20.0, 35.0),
    depth_noise=(0.008, 0.012),
)
PRESETS = {p.name: p for p in (NONE, DEFAULT, STRONG, SHIFTED)}
TRAINING = ("none", "default", "strong")  # what --randomisation offers; `shifted` is --domain shifted
DOMAINS = ("train", "shifted")
# what the shifted domain draws from ranges no training preset reaches (light: LightRanges fields)
DISJOINT = ("textures", "object_value", "shot_noise", "read_noise", "jpeg_quality", "depth_noise",
            "light.warmth", "light.intensity", "light.ambient", "light.diffuse", "light.specular")


def preset(randomisation: str = "none", domain: str = "train") -> Randomisation:
    """The settings of `--randomisation` (training) or of `--domain shifted` (its own, fixed)."""
    if domain not in DOMAINS:
        raise ConfigError(f"--domain must be one of {DOMAINS}, got {domain!r}")
    if randomisation not in TRAINING:
        raise ConfigError(f"--randomisation must be one of {TRAINING}, got {randomisation!r}")
    if domain == "shifted":
        if randomisation != "none":
            raise ConfigError("--domain shifted has randomisation settings of its own: leave out --randomisation")
        return SHIFTED
    return PRESETS[randomisation]


def draw_light(rng: np.random.Generator, ranges: LightRanges) -> dict[str, Any]:
    """TinyRenderer light parameters (the meta's `light`)."""
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = rng.uniform(math.radians(ranges.elevation_deg[0]), math.radians(ranges.elevation_deg[1]))
    direction = [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    warmth = rng.uniform(*ranges.warmth)
    color = np.clip([1.0 + warmth, 1.0, 1.0 - warmth], 0.0, 1.0) * rng.uniform(*ranges.intensity)
    return {
        "direction": [_r(v) for v in direction],
        "color": [_r(v) for v in color],
        "distance": _r(rng.uniform(*ranges.distance)),
        "ambient": _r(rng.uniform(*ranges.ambient)),
        "diffuse": _r(rng.uniform(*ranges.diffuse)),
        "specular": _r(rng.uniform(*ranges.specular)),
        "shadow": bool(rng.random() < ranges.shadow_p),
    }


def _r(x: float) -> float:
    return round(float(x), 5)


def hsv_colour(rng: np.random.Generator, value: Range, saturation: Range = (0.25, 0.85)) -> np.ndarray:
    """A random RGB colour in [0, 1] with its HSV value and saturation drawn from the ranges."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) / 255.0


# -- procedural textures ------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of `cells` x `cells`, upsampled smoothly."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def texture_pattern(kind: str, rng: np.random.Generator, size: int = TEXTURE_SIZE) -> np.ndarray:
    """(size, size) float32 in [0, 1]: where a texture shows its second colour. Periods are short, since a
    box face maps to a small part of its texture."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "noise":
        return 0.6 * _smooth_noise(rng, size, int(rng.integers(24, 64))) + 0.4 * _smooth_noise(rng, size, 128)
    if kind == "stripes":
        angle, freq = rng.uniform(0, math.pi), rng.uniform(20, 60)
        return (np.sin(2 * math.pi * freq * (x * math.cos(angle) + y * math.sin(angle))) > 0).astype(np.float32)
    if kind == "checks":
        cells = int(rng.integers(12, 40))
        return ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float32)
    if kind == "wood":  # growth rings around a far centre, warped by noise
        cx, cy = rng.uniform(-2, 3, 2)
        rings = np.hypot(x - cx, (y - cy) * 0.15) * rng.uniform(60, 120) + 4 * _smooth_noise(rng, size, 16)
        return (0.5 + 0.5 * np.sin(2 * math.pi * rings)) ** 3
    if kind == "dots":
        density = rng.uniform(16, 40)
        fx, fy = (x * density) % 1 - 0.5, (y * density) % 1 - 0.5
        return (np.hypot(fx, fy) < rng.uniform(0.2, 0.4)).astype(np.float32)
    if kind == "marble":  # veins: a sine through turbulence
        turbulence = sum(_smooth_noise(rng, size, c) / (i + 1) for i, c in enumerate((8, 16, 32, 64)))
        return np.abs(np.sin(2 * math.pi * (x * rng.uniform(4, 10) + 3 * turbulence))) ** 0.3
    raise ConfigError(f"unknown texture kind {kind!r}")


def texture_image(kind: str, rng: np.random.Generator, value: Range, contrast: Range) -> np.ndarray:
    """(TEXTURE_SIZE, TEXTURE_SIZE, 3) uint8 RGB: a pattern in two colours of the given brightness range."""
    first = hsv_colour(rng, value)
    gap, v1 = rng.uniform(*contrast), max(first.max(), 1e-3)
    v2 = v1 * (1 - gap) if v1 * (1 - gap) >= value[0] else min(v1 * (1 + gap), value[1])  # stays in range
    second = first * (v2 / v1)
    t = texture_pattern(kind, rng)[..., None]
    return np.round((first * (1 - t) + second * t) * 255).astype(np.uint8)


# -- camera -----------------------------------------------------------------------------------------
def projection(fx: float, fy: float, cx: float, cy: float, width: int, height: int, near: float,
               far: float) -> list[float]:
    """pybullet's column-major OpenGL projection of pinhole intrinsics (the inverse of
    `pybullet.intrinsics_from_projection`, TinyRenderer's pixel convention included)."""
    p = np.zeros((4, 4))
    p[0, 0], p[1, 1] = 2 * fx / width, 2 * fy / height
    p[0, 2], p[1, 2] = 1 - 2 * cx / width, 2 * (cy + 1) / height - 1
    p[2, 2], p[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    p[3, 2] = -1.0
    return p.T.reshape(-1).tolist()


# -- sensor -----------------------------------------------------------------------------------------
def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    return (np.asarray(image, np.float32) / 255.0) ** 2.2


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    return np.round(np.clip(linear, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)


def add_sensor_noise(linear: np.ndarray, shot: float, read: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (variance `shot` x intensity, photon counting) plus read noise (sigma `read`)."""
    sigma = np.sqrt(shot * np.clip(linear, 0, None) + read**2)
    return linear + rng.standard_normal(linear.shape).astype(np.float32) * sigma


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line of `length` pixels at `angle` (radians): a camera moving during the exposure."""
    size = int(math.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = math.cos(angle) * (length - 1) / 2, math.sin(angle) * (length - 1) / 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    return kernel / kernel.sum()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError("OpenCV could not encode a JPEG")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ConfigError("OpenCV could not decode its own JPEG")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def camera_model(image: np.ndarray, settings: Randomisation, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The rendered (clean) RGB as the preset's camera records it, and the drawn parameters."""
    s = settings
    gains = rng.uniform(*s.exposure) * (1 + rng.uniform(-s.white_balance, s.white_balance, 3))
    drawn: dict[str, Any] = {"exposure": [_r(g) for g in gains]}
    linear = srgb_to_linear(image) * gains.astype(np.float32)
    if rng.random() < s.defocus_p:
        drawn["defocus_px"] = _r(rng.uniform(*s.defocus_px))
        linear = cv2.GaussianBlur(linear, (0, 0), drawn["defocus_px"])
    if rng.random() < s.motion_p:
        drawn["motion_px"], angle = _r(rng.uniform(*s.motion_px)), rng.uniform(0, math.pi)
        linear = cv2.filter2D(linear, -1, motion_kernel(drawn["motion_px"], angle), borderType=cv2.BORDER_REFLECT)
    drawn["shot_noise"], drawn["read_noise"] = _r(rng.uniform(*s.shot_noise)), _r(rng.uniform(*s.read_noise))
    out = linear_to_srgb(add_sensor_noise(linear, drawn["shot_noise"], drawn["read_noise"], rng))
    if rng.random() < s.jpeg_p:
        drawn["jpeg_quality"] = int(rng.integers(int(s.jpeg_quality[0]), int(s.jpeg_quality[1]) + 1))
        out = jpeg(out, drawn["jpeg_quality"])
    return out, drawn


# -- depth ------------------------------------------------------------------------------------------
def depth_edges(depth: np.ndarray, width: int, jump: float = 0.05) -> np.ndarray:
    """Pixels within `width` of a depth discontinuity (a neighbour more than `jump` x depth away)."""
    z = depth.astype(np.float32)
    spread = cv2.dilate(z, np.ones((3, 3), np.uint8)) - cv2.erode(z, np.ones((3, 3), np.uint8))
    edges = (spread > jump * z).astype(np.uint8)
    if width > 1:
        return cv2.dilate(edges, np.ones((2 * width - 1, 2 * width - 1), np.uint8)).astype(bool)
    return edges.astype(bool)


def luminance(image: np.ndarray) -> np.ndarray:
    return (np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def depth_hole_candidates(depth: np.ndarray, clean: np.ndarray, settings: Randomisation,
                          edge_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(always lost, lost by chance): depth edges and saturated highlights; dark surfaces."""
    light = luminance(clean)
    always = light > settings.highlight_level
    if edge_px:
        always |= depth_edges(depth, edge_px)
    return always, light < settings.dark_level


def depth_model(depth: np.ndarray, clean: np.ndarray, settings: Randomisation,
                rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Metres as the preset's RGB-D camera measures them (0 = no depth), and the drawn parameters."""
    k = rng.uniform(*settings.depth_noise)
    edge_px = int(round(rng.uniform(*settings.depth_edge_px)))
    always, dark = depth_hole_candidates(depth, clean, settings, edge_px)
    holes = always | (dark & (rng.random(depth.shape) < settings.dark_hole_p))
    noisy = depth + rng.standard_normal(depth.shape).astype(np.float32) * np.float32(k) * depth**2
    noisy = np.where(holes | (noisy <= 0), 0.0, np.round(noisy * 1000) / 1000).astype(np.float32)
    return noisy, {"noise_k": _r(k), "edge_px": edge_px, "holes": _r(holes.mean())}


class SceneRandomiser:
    """The randomisation of one scene: which stations stay empty, light, appearance and camera per
    scene, sensor and depth per frame. Inactive (`none`), every hook leaves the scene as built."""

    def __init__(self, settings: Randomisation, seed: int, scene_index: int) -> None:
        self.settings, self.seed, self.scene_index = settings, seed, scene_index
        self.rng = np.random.default_rng([int(seed), int(scene_index), _STREAM])
        self.record: dict[str, Any] = {"preset": settings.name}

    def views(self, stations: list[str]) -> list[str]:
        """Some stations become `bare` (floor and wall only) or `clutter` (distractors only)."""
        if not self.settings.active:
            return stations
        out = []
        for station in stations:
            empty = self.rng.random() < self.settings.empty_p
            kind = "bare" if self.rng.random() < 0.5 else "clutter"
            out.append(kind if empty else station)
        return out

    def light(self, scene_rng: np.random.Generator) -> dict[str, Any]:
        """The light: from the scene's own stream with the collector's ranges under `none`."""
        return draw_light(self.rng if self.settings.active else scene_rng, self.settings.light)

    def appearance(self, bc: Any, labels: dict[int, str]) -> None:
        """Procedural textures on any body (floor, walls, objects, distractors) and object re-tints."""
        if not self.settings.active:
            return
        changes = {"textured": 0, "retinted": 0}
        with tempfile.TemporaryDirectory(prefix="saom_textures_") as folder:  # pybullet loads textures from files
            for i in range(bc.getNumBodies()):
                uid = bc.getBodyUniqueId(i)
                change = self._dress(bc, uid, uid in labels, f"{folder}/{i}.png")
                if change:
                    changes[change] += 1
        self.record.update(changes)

    def _dress(self, bc: Any, uid: int, is_object: bool, texture_file: str) -> str | None:
        """Texture or re-tint one body (every link); returns which, if either."""
        s = self.settings
        if self.rng.random() < s.texture_p:
            kind = str(self.rng.choice(s.textures))
            pixels = texture_image(kind, self.rng, s.object_value if is_object else s.surface_value,
                                   s.texture_contrast)
            cv2.imwrite(texture_file, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
            texture = bc.loadTexture(texture_file)
            for link in range(-1, bc.getNumJoints(uid)):
                bc.changeVisualShape(uid, link, textureUniqueId=texture, rgbaColor=[1.0, 1.0, 1.0, 1.0])
            return "textured"
        if is_object and self.rng.random() < s.retint_p:
            rgba = [*hsv_colour(self.rng, s.object_value).tolist(), 1.0]
            for link in range(-1, bc.getNumJoints(uid)):
                bc.changeVisualShape(uid, link, rgbaColor=rgba)
            return "retinted"
        return None

    def camera(self, scene: dict[str, Any], size: int, near: float, far: float) -> None:
        """Per scene (a robot's camera is fixed): height, pitch, field of view, intrinsics, resolution and
        aspect ratio; sets `image_size` (width, height) and `projection` in `scene`."""
        s, rng = self.settings, self.rng
        if not s.active:
            return
        scene["height"] += rng.uniform(-s.height_jitter_m, s.height_jitter_m)
        scene["pitch"] += rng.uniform(-s.pitch_jitter_deg, s.pitch_jitter_deg)
        if s.fov_deg is not None:
            scene["fov"] = rng.uniform(*s.fov_deg)
        # a fixed resolution draws nothing, so presets without the range render as before it existed
        width = size if s.resolution[0] == s.resolution[1] else int(round(size * rng.uniform(*s.resolution) / 2)) * 2
        height = int(round(width / rng.uniform(*s.aspect) / 2)) * 2
        fy = height / 2 / math.tan(math.radians(scene["fov"]) / 2)
        fx = fy * rng.uniform(*s.focal_ratio)
        cx = width / 2 + rng.uniform(-1, 1) * s.principal_offset * width
        cy = height / 2 - 1 + rng.uniform(-1, 1) * s.principal_offset * height
        scene["image_size"] = (width, height)
        scene["projection"] = projection(fx, fy, cx, cy, width, height, near, far)

    def sensor(self, image: np.ndarray, depth: np.ndarray, frame_index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """A frame's image and depth as the preset's camera records them, and its meta record; a
        stream per frame, so one frame is reproduced by (seed, scene, frame index) alone."""
        rng = np.random.default_rng([int(self.seed), int(self.scene_index), _STREAM, int(frame_index) + 1])
        noisy_depth, drawn_depth = depth_model(depth, image, self.settings, rng)
        noisy_image, drawn_camera = camera_model(image, self.settings, rng)
        record = self.record | {"camera": drawn_camera, "depth": drawn_depth}
        return noisy_image, noisy_depth, record
