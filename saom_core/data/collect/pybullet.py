"""PyBullet collector: small furnished rooms rendered headless on the CPU (TinyRenderer).

A scene copies the paper's AI2-THOR protocol at toy scale: the agent (camera) stands in the middle of
a room and takes 4 frames, rotating right by 90 degrees between them. In each of the 4 directions
stands a "station" (a table, a side table, a tray, a shelf or just the floor) with objects dropped on
or around it and settled by physics, so every frame shows objects of interest. Floor, walls, light,
camera height/pitch/field of view, object scales and tints are random per scene; a few random
`random_urdfs` shapes are rendered as distractors (not of interest: no mask, like walls and floor).

Frame meta: `agent_pose` (position of the camera, z up; `yaw` in degrees counter-clockwise about +z
from +x, so each RotateRight lowers it by 90; `pitch` in degrees, negative looking down; `height`),
`camera` (vertical field of view, clip planes, size), `light` (TinyRenderer light parameters),
`station` (what stands in that direction), `instance_ids` (PyBullet body ids of the masks), `seed`,
`intrinsics` (pinhole fx, fy, cx, cy in pixels, OpenCV/ROS convention: pixel (u, v) is centred at
u, v; derived from the projection matrix) and `trajectory_step` in trajectory mode.

Depth: the z-buffer turned into metres along the optical axis with the projection's near/far planes,
aligned with the image. 3D ground truth per mask (`Frame.objects3d`), in the camera's optical frame
(REP 103: x right, y down, z forward): `position` (the centre of the object's box), `orientation`
(quaternion x, y, z, w of the object's frame), `extents` (edge lengths of its collision shapes'
axis-aligned box in its own frame, Bullet's small AABB margin included), and `aabb_min`/`aabb_max`,
the axis-aligned box of its collision geometry in the optical frame (what a box from depth estimates).

Trajectory mode (`trajectory=N`): N frames of one scene, the camera facing the first station and
moving in small steps (turning and sliding sideways), so tracking can be measured. It draws the same
random numbers as the 4-view mode; only the camera path differs.

Masks come from the segmentation buffer: the visible pixels of one body in one frame. Only bodies
whose class is in the class list get masks; masks under `min_area` pixels are dropped.

The classes and their models come from an object catalogue (`catalogue.py`; by default
`config/objects_pybullet.yaml`, whose models all ship in `pybullet_data`: nothing is downloaded).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from saom_core.data.classes import ClassList
from saom_core.data.collect.base import DEFAULT_MIN_AREA, FRAMES_PER_SCENE, REFERENCE_SIZE, Collector, scene_rng
from saom_core.data.collect.catalogue import DEFAULT_MESH_MASS, Catalogue, CatalogueEntry, Model, load_catalogue
from saom_core.data.collect.randomise import SceneRandomiser, preset
from saom_core.data.format import Frame
from saom_core.errors import SimulatorError

_STATIONS = ("table", "side_table", "tray", "floor", "shelf")
_FLOOR_TEXTURES = ("table/table.png", "checker_blue.png", "tray/tray.jpg")
_NEAR, _FAR = 0.05, 15.0
_SETTLE_STEPS, _SETTLE_CHECK = 360, 30
_TRAJECTORY_TURN_DEG, _TRAJECTORY_SLIDE_M = 1.5, 0.02  # camera motion per trajectory frame


def _r(x: float) -> float:
    return round(float(x), 5)


def _yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return pybullet.getQuaternionFromEuler([0.0, 0.0, yaw])


class PyBulletCollector(Collector):
    name = "pybullet"
    default_classes: str | ClassList = "pybullet"

    supports_trajectory = True
    supports_catalogue = True
    supports_randomisation = True
    # pybullet segmentation-buffer flags and whether frames carry 3D ground truth per mask; the
    # granularity collector (pybullet_granularity.py) renders link indices and has no 3D boxes
    segmentation_flags = -1  # -1: pybullet's default (body ids only)
    ground_truth_3d = True

    def __init__(self, class_list: ClassList, size: int = REFERENCE_SIZE, min_area: int = DEFAULT_MIN_AREA,
                 trajectory: int = 0, objects: str | Path = "pybullet", randomisation: str = "none",
                 domain: str = "train") -> None:
        super().__init__(class_list, size=size, min_area=min_area)
        if trajectory < 0:
            raise SimulatorError(f"trajectory must be 0 (4 views) or a number of frames, got {trajectory}")
        self.trajectory = int(trajectory)
        self.catalogue = load_catalogue(objects)  # validated here: a bad catalogue fails before any rendering
        self.interest = self._classes_of_interest(class_list)
        self.data_path = pybullet_data.getDataPath()
        self.randomisation = preset(randomisation, domain)

    def describe(self) -> dict[str, Any]:
        return {"catalogue": {"name": self.catalogue.name, "digest": self.catalogue.digest},
                "randomisation": self.randomisation.name}

    def _classes_of_interest(self, class_list: ClassList) -> set[str]:
        """The catalogue's classes that get masks: those the class list names (at least one)."""
        models = self.catalogue.class_list.names
        interest = {name for name in models if name in class_list.names}
        if not interest:
            raise SimulatorError(
                f"class list '{class_list.name}' names none of the catalogue's classes {sorted(models)}"
            )
        return interest

    # -- simulator lifecycle ------------------------------------------------------------------------
    def _connect(self) -> BulletClient:
        try:
            with _quiet_stdout():  # pybullet's C code prints "argv[0]=" to stdout on connect
                client = BulletClient(connection_mode=pybullet.DIRECT)
        except Exception as exc:  # pybullet raises bare `error`
            raise SimulatorError(f"pybullet could not start a DIRECT client: {exc}") from exc
        client.setAdditionalSearchPath(self.data_path)
        return client

    # -- one scene ----------------------------------------------------------------------------------
    def collect_scene(self, scene_index: int, seed: int) -> list[Frame]:
        """The frames of one scene, in a pybullet client of its own (connecting takes milliseconds),
        so no state a scene leaves in pybullet can reach the next. A scene depends only on (seed,
        scene index): see `_mesh_is_finite` for the one shipped model that broke this."""
        rng = scene_rng(seed, scene_index)
        randomiser = SceneRandomiser(self.randomisation, seed, scene_index)
        bc = self._connect()
        try:
            scene = _SceneBuilder(bc, rng, self.data_path, self.catalogue, randomiser.views).build()
            light = randomiser.light(rng)
            randomiser.appearance(bc, scene["labels"])
            randomiser.camera(scene, self.size, _NEAR, _FAR)
            rendered = [self._render(bc, scene, eye, yaw, light, k, seed)
                        for k, (eye, yaw) in enumerate(self._camera_path(scene))]
            frames = []
            for k, (frame, _) in enumerate(rendered):
                if self.randomisation.active:
                    assert frame.depth is not None  # this collector always renders depth
                    frame.image, frame.depth, frame.meta["randomisation"] = randomiser.sensor(
                        frame.image, frame.depth, k)
                frames.append(frame)
            if self.ground_truth_3d:
                # after every render: measuring the boxes moves bodies (and puts them back)
                boxes = _local_boxes(bc, sorted({uid for frame in frames for uid in frame.meta["instance_ids"]}))
                for frame, world_to_cam in rendered:
                    frame.objects3d = _objects_in_camera(bc, frame.meta["instance_ids"], boxes, world_to_cam)
        finally:
            bc.disconnect()
        return frames

    def _camera_path(self, scene: dict[str, Any]) -> list[tuple[np.ndarray, float]]:
        """(eye position, yaw in degrees) per frame: the paper's 4 views, or a trajectory of small steps."""
        eye = np.array([0.0, 0.0, scene["height"]])
        if not self.trajectory:
            return [(eye, scene["yaw0"] - 90.0 * k) for k in range(FRAMES_PER_SCENE)]  # RotateRight 90
        path = []
        for k in range(self.trajectory):
            t = k - (self.trajectory - 1) / 2  # centred on the first station's view
            yaw = scene["yaw0"] + _TRAJECTORY_TURN_DEG * t
            side = np.array([-math.sin(math.radians(scene["yaw0"])), math.cos(math.radians(scene["yaw0"])), 0.0])
            path.append((eye + side * _TRAJECTORY_SLIDE_M * t, yaw))
        return path

    def _render(self, bc: BulletClient, scene: dict[str, Any], eye: np.ndarray, yaw: float, light: dict[str, Any],
                k: int, seed: int) -> tuple[Frame, np.ndarray]:
        """The frame and the camera's world-to-optical transform."""
        h, pitch, fov = scene["height"], scene["pitch"], scene["fov"]
        yr, pr = math.radians(yaw), math.radians(pitch)
        forward = np.array([math.cos(pr) * math.cos(yr), math.cos(pr) * math.sin(yr), math.sin(pr)])
        view = bc.computeViewMatrix(eye.tolist(), (eye + forward).tolist(), [0.0, 0.0, 1.0])
        width, height = scene.get("image_size", (self.size, self.size))  # randomised cameras set both
        proj = scene.get("projection") or bc.computeProjectionMatrixFOV(fov, 1.0, _NEAR, _FAR)
        _, _, rgba, zbuffer, seg = bc.getCameraImage(
            width, height, view, proj, renderer=pybullet.ER_TINY_RENDERER,
            lightDirection=light["direction"], lightColor=light["color"], lightDistance=light["distance"],
            shadow=int(light["shadow"]), lightAmbientCoeff=light["ambient"], lightDiffuseCoeff=light["diffuse"],
            lightSpecularCoeff=light["specular"], flags=self.segmentation_flags,
        )
        image = np.ascontiguousarray(np.reshape(np.asarray(rgba, dtype=np.uint8), (height, width, 4))[..., :3])
        seg = np.reshape(np.asarray(seg, dtype=np.int64), (height, width))
        masks, labels, uids = self._frame_masks(scene, seg, image)
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
        meta = {
            "simulator": self.name,
            "seed": int(seed),
            "station": scene["stations"][0 if self.trajectory else k],
            "agent_pose": {"position": [_r(eye[0]), _r(eye[1]), _r(h)], "yaw": _r(yaw % 360.0), "pitch": _r(pitch),
                           "height": _r(h)},
            "camera": {"fov_deg": _r(fov), "near": _NEAR, "far": _FAR, "width": width, "height": height,
                       "renderer": "tiny"},
            "intrinsics": intrinsics_from_projection(proj, width, height),
            "light": light,
            "instance_ids": uids,
        }
        if self.trajectory:
            meta["trajectory_step"] = k
        depth = depth_from_zbuffer(
            np.reshape(np.asarray(zbuffer, dtype=np.float64), (height, width)), _NEAR, _FAR
        )
        return Frame(image=image, masks=stacked, labels=labels, meta=meta, depth=depth), world_to_optical(view)


    def _frame_masks(self, scene: dict[str, Any], seg: np.ndarray,
                     image: np.ndarray) -> tuple[list[np.ndarray], list[str], list[int]]:
        """(masks, labels, body ids) of one frame from its segmentation buffer: one whole-body mask per
        visible object of interest."""
        masks, labels, uids = [], [], []
        for uid, cls in sorted(scene["labels"].items()):
            if cls not in self.interest:
                continue
            mask = seg == uid
            if int(mask.sum()) >= self.min_area:
                masks.append(mask)
                labels.append(cls)
                uids.append(int(uid))
        return masks, labels, uids


def depth_from_zbuffer(zbuffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """OpenGL z-buffer values in [0, 1] -> metres along the optical axis (float32)."""
    return (far * near / (far - (far - near) * zbuffer)).astype(np.float32)


def _gl_matrix(values) -> np.ndarray:
    """pybullet's column-major 16-list -> a (4, 4) row-major matrix."""
    return np.asarray(values, dtype=np.float64).reshape(4, 4).T


def intrinsics_from_projection(proj, width: int, height: int) -> dict[str, float]:
    """Pinhole intrinsics of an OpenGL projection matrix for a width x height image.

    OpenGL's eye frame is x right, y up, z backward; the optical frame is x right, y down, z forward
    with pixel (u, v) centred at u, v (OpenCV, sensor_msgs/CameraInfo). TinyRenderer samples pixel i
    at window coordinate i (not i + 0.5 as GPU rasterisers do) and counts rows from the bottom, so
    row v is sampled at height - 1 - v: cx = width / 2 and cy = height / 2 - 1 for a centred
    projection (the sphere test checks both to a quarter pixel)."""
    p = _gl_matrix(proj)
    return {"fx": _r(p[0, 0] * width / 2), "fy": _r(p[1, 1] * height / 2),
            "cx": _r((1.0 - p[0, 2]) * width / 2), "cy": _r((1.0 + p[1, 2]) * height / 2 - 1.0)}


def world_to_optical(view) -> np.ndarray:
    """(4, 4) transform from world to the camera's optical frame, from an OpenGL view matrix."""
    return np.diag([1.0, -1.0, -1.0, 1.0]) @ _gl_matrix(view)


def _local_boxes(bc: BulletClient, uids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per body: (centre, edge lengths) of its collision shapes' box in the body's own (base) frame.

    Measured by placing the body at the origin unrotated and reading its AABB, then putting it back."""
    boxes = {}
    for uid in uids:
        pos, orn = bc.getBasePositionAndOrientation(uid)
        bc.resetBasePositionAndOrientation(uid, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])
        lo, hi = _body_aabb(bc, uid)
        bc.resetBasePositionAndOrientation(uid, pos, orn)
        boxes[uid] = ((lo + hi) / 2, hi - lo)
    return boxes


def _objects_in_camera(bc: BulletClient, uids: list[int], boxes: dict[int, tuple[np.ndarray, np.ndarray]],
                       world_to_cam: np.ndarray) -> list[dict[str, list[float]]]:
    """Each body's box centre, orientation and extents in the optical frame, and the axis-aligned box
    of its collision geometry in the optical frame (`aabb_min`, `aabb_max`: Bullet's AABB of the body
    turned as the camera sees it; exact for spheres and convex shapes, unlike the box around the
    turned local box). Bodies are moved to measure it and put back."""
    from scipy.spatial.transform import Rotation

    to_cam = Rotation.from_matrix(world_to_cam[:3, :3])
    out = []
    for uid in uids:
        pos, orn = bc.getBasePositionAndOrientation(uid)
        body = Rotation.from_quat(orn)
        centre_world = body.apply(boxes[uid][0]) + np.asarray(pos)
        centre = world_to_cam[:3, :3] @ centre_world + world_to_cam[:3, 3]
        orientation = to_cam * body
        bc.resetBasePositionAndOrientation(uid, [0.0, 0.0, 0.0], orientation.as_quat().tolist())
        lo, hi = _body_aabb(bc, uid, tight=True)
        bc.resetBasePositionAndOrientation(uid, pos, orn)
        origin = world_to_cam[:3, :3] @ np.asarray(pos) + world_to_cam[:3, 3]
        out.append({"position": [_r(v) for v in centre], "orientation": [_r(v) for v in orientation.as_quat()],
                    "extents": [_r(v) for v in boxes[uid][1]], "aabb_min": [_r(v) for v in origin + lo],
                    "aabb_max": [_r(v) for v in origin + hi]})
    return out


def _body_aabb(bc: BulletClient, uid: int, tight: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """World AABB of a body over all its links. Bullet's AABB of a compound shape (the vhacd duck and
    teddy, the mug) is the union of its parts' turned boxes, far larger than the object; with `tight`,
    links whose collision mesh pybullet returns are bounded by their vertices instead."""
    from scipy.spatial.transform import Rotation

    los, his = [], []
    for link in range(-1, bc.getNumJoints(uid)):
        vertices = np.zeros((0, 3))
        if tight:
            with _quiet_stdout():  # its C code prints a line "?" for each shape it has no mesh of
                vertices = np.asarray(bc.getMeshData(uid, link)[1], dtype=np.float64)
        if len(vertices):
            pos, orn = bc.getBasePositionAndOrientation(uid) if link == -1 else bc.getLinkState(uid, link)[:2]
            world = Rotation.from_quat(orn).apply(vertices) + np.asarray(pos)
            los.append(world.min(0))
            his.append(world.max(0))
        else:
            a, b = bc.getAABB(uid, link)
            los.append(np.array(a))
            his.append(np.array(b))
    lo, hi = np.min(los, axis=0), np.max(his, axis=0)
    return lo, hi


@functools.cache
def _mesh_is_finite(obj_path: str) -> bool:
    """False for an OBJ file with a NaN/inf vertex. pybullet_data's random_urdfs/168 has only NaN
    vertices; Bullet's convex hull of it reads memory before the point array (valgrind: invalid read
    in btConvexHullShape::batchedUnitVectorGetSupportingVertexWithoutMargin), so the scene's physics
    depended on the heap's contents: the same seed gave other frames in another process history."""
    with open(obj_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("v ") and not all(math.isfinite(float(v)) for v in line.split()[1:4]):
                return False
    return True


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level writes to file descriptor 1 (Python's own stdout is flushed first)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable stdout: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class _SceneBuilder:
    """Builds one random room in a freshly reset simulation; `build()` returns its description."""

    def __init__(self, bc: BulletClient, rng: np.random.Generator, data_path: str, catalogue: Catalogue,
                 views: Callable[[list[str]], list[str]] | None = None) -> None:
        self.bc, self.rng, self.data_path, self.catalogue = bc, rng, data_path, catalogue
        self.views = views  # may turn stations into views with nothing of interest (randomisation)
        self.labels: dict[int, str] = {}
        self.stuff: list[int] = []  # floor and walls: rendered, never of interest
        self.scales: dict[int, float] = {}
        self.dynamic: list[int] = []
        self.receptacles: dict[int, CatalogueEntry] = {}
        # sorted by name: a catalogue's order (the class ids) does not change its scenes
        self.pickupables = sorted(catalogue.of_role("pickupable"), key=lambda e: e.name)
        self.others = sorted(catalogue.of_role("other"), key=lambda e: e.name)
        self.drop_level = 0  # staggers drop heights so dropped objects never start interpenetrating

    def build(self) -> dict[str, Any]:
        bc, rng = self.bc, self.rng
        bc.resetSimulation()
        # No file caching: a mesh loaded from pybullet's in-process cache can differ (vertex order,
        # convex hulls) from a fresh load, which made a scene depend on what the process loaded before.
        bc.setPhysicsEngineParameter(deterministicOverlappingPairs=1, numSolverIterations=30, enableFileCaching=0)
        bc.setGravity(0, 0, -9.81)
        self._room()
        height = rng.uniform(0.95, 1.35)
        pitch = -rng.uniform(24.0, 38.0)
        fov = rng.uniform(55.0, 66.0)
        yaw0 = rng.uniform(0.0, 360.0)
        stations = [str(s) for s in rng.choice(_STATIONS, size=FRAMES_PER_SCENE, p=self._station_weights())]
        if self.views is not None:
            stations = self.views(stations)
        for k, station in enumerate(stations):
            self._station(station, math.radians(yaw0 - 90.0 * k), height, pitch)
        self._settle()
        return {"labels": dict(self.labels), "stuff": list(self.stuff), "stations": stations, "height": height,
                "pitch": pitch, "fov": fov, "yaw0": yaw0}

    # -- room ----------------------------------------------------------------------------------------
    def _room(self) -> None:
        bc, rng = self.bc, self.rng
        floor_rgb = self._colour(rng.uniform(0.35, 0.85))
        col = bc.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[8, 8, 0.05])
        vis = bc.createVisualShape(pybullet.GEOM_BOX, halfExtents=[8, 8, 0.05], rgbaColor=[*floor_rgb, 1])
        floor = bc.createMultiBody(0, col, vis, [0, 0, -0.05])
        self.stuff.append(floor)
        if rng.random() < 0.45:  # textured floor (wood, tiles, metal), tinted
            texture = bc.loadTexture(os.path.join(self.data_path, str(rng.choice(_FLOOR_TEXTURES))))
            bc.changeVisualShape(floor, -1, textureUniqueId=texture, rgbaColor=[*self._light_tint(0.35), 1])
        bc.changeDynamics(floor, -1, lateralFriction=0.9)
        wall_rgb = self._colour(rng.uniform(0.55, 0.95), saturation=rng.uniform(0.05, 0.4))
        half = rng.uniform(2.3, 3.3, size=2)
        for axis in (0, 1):
            for sign in (-1.0, 1.0):
                extents = [0.05, half[1 - axis] + 0.1, 1.3] if axis == 0 else [half[1 - axis] + 0.1, 0.05, 1.3]
                pos = [0.0, 0.0, 1.3]
                pos[axis] = sign * half[axis]
                jitter = np.clip(wall_rgb + rng.uniform(-0.05, 0.05, 3), 0, 1)
                vis = bc.createVisualShape(pybullet.GEOM_BOX, halfExtents=extents, rgbaColor=[*jitter, 1])
                col = bc.createCollisionShape(pybullet.GEOM_BOX, halfExtents=extents)
                self.stuff.append(bc.createMultiBody(0, col, vis, pos))

    # -- stations ------------------------------------------------------------------------------------
    def _station(self, kind: str, direction: float, height: float, pitch: float) -> None:
        rng = self.rng
        if kind == "bare":  # a bare wall and floor: a view with nothing of interest
            return
        ahead = np.array([math.cos(direction), math.sin(direction)])
        side = np.array([-ahead[1], ahead[0]])
        surface = {"table": 0.55, "side_table": 0.6, "shelf": 0.3}.get(kind, 0.0)
        # distance at which the station's surface appears near the image centre, a little jittered
        angle = math.radians(-pitch + rng.uniform(-7.0, 5.0))
        near, far = (1.0, 1.6) if kind in ("table", "shelf") else (0.8, 1.35)
        dist = float(np.clip((height - surface) / math.tan(angle), near, far))
        centre = ahead * dist + side * rng.uniform(-0.12, 0.12) * dist
        facing = direction + math.pi / 2 + rng.uniform(-0.35, 0.35)  # long side towards the camera
        if kind == "table":
            table = self._furniture(self._receptacle("table"), centre, facing)
            self._drop_on(table, facing, int(rng.integers(3, 7)))
            self._floor_objects(centre - ahead * 0.55, int(rng.integers(0, 2)), spread=0.35, side=side)
        elif kind == "side_table":
            offset = side * rng.choice([-1.0, 1.0]) * 0.38
            table = self._furniture(self._receptacle("side_table"), centre + offset, facing)
            self._drop_on(table, facing, int(rng.integers(1, 4)))
            self._floor_objects(centre - offset * 0.9, int(rng.integers(2, 4)), spread=0.22, side=side)
        elif kind == "tray":
            tray = self._furniture(self._receptacle("tray"), centre, facing)
            self._drop_on(tray, facing, int(rng.integers(2, 5)))
            self._floor_objects(centre - ahead * 0.35, int(rng.integers(1, 3)), spread=0.45, side=side)
        elif kind == "shelf":
            offset = side * rng.choice([-1.0, 1.0]) * 0.35
            self._furniture(self._receptacle("shelf"), centre + offset + ahead * 0.3, facing + math.pi)
            if rng.random() < 0.3 and self.others:
                self._furniture(self._pick(self.others), centre - offset * 0.4 + ahead * 0.35, facing + math.pi / 2)
            self._floor_objects(centre - offset * 0.6, int(rng.integers(2, 5)), spread=0.3, side=side)
        elif kind == "clutter":  # a corner of distractors only
            for _ in range(int(rng.integers(3, 7))):
                self._distractor(centre + ahead * rng.uniform(-0.2, 0.3) + side * rng.uniform(-0.4, 0.4))
        else:  # floor
            if rng.random() < 0.8 and self.others:
                self._furniture(self._pick(self.others), centre + ahead * 0.25 + side * rng.uniform(-0.3, 0.3),
                                facing + math.pi / 2)
            self._floor_objects(centre, int(rng.integers(3, 7)), spread=0.45, side=side)
        for _ in range(int(rng.integers(0, 2))):  # distractors: rendered, never labelled
            self._distractor(centre + ahead * rng.uniform(-0.3, 0.4) + side * rng.uniform(-0.6, 0.6))

    def _furniture(self, entry: CatalogueEntry, xy: np.ndarray, yaw: float) -> int:
        model = self._model(entry)
        uid = self._load(model, [float(xy[0]), float(xy[1]), 0.0], _yaw_quat(yaw))
        if model.ground:
            lo, hi = self._aabb(uid)
            pos, orn = self.bc.getBasePositionAndOrientation(uid)
            centre = (np.array(lo[:2]) + np.array(hi[:2])) / 2
            target = [pos[0] + xy[0] - centre[0], pos[1] + xy[1] - centre[1], pos[2] - lo[2]]
            self.bc.resetBasePositionAndOrientation(uid, target, orn)
        self.receptacles[uid] = entry
        return uid

    def _drop_on(self, uid: int, yaw: float, count: int) -> None:
        lo, hi = self._aabb(uid)
        pos, _ = self.bc.getBasePositionAndOrientation(uid)
        scale = self.scales[uid]
        entry = self.receptacles[uid]
        half = np.array(entry.surface) * scale
        base_z = hi[2] if entry.layout != "tray" else lo[2] + 0.03  # on a table's top, inside a tray
        c, s = math.cos(yaw), math.sin(yaw)
        for _ in range(count):
            u, v = self.rng.uniform(-1, 1, 2) * half
            xy = np.array(pos[:2]) + [c * u - s * v, s * u + c * v]
            self._drop_object(xy, base_z)

    def _floor_objects(self, centre: np.ndarray, count: int, spread: float, side: np.ndarray) -> None:
        for _ in range(count):
            xy = centre + side * self.rng.uniform(-1, 1) * spread * 1.4 + self.rng.normal(0, spread * 0.25, 2)
            self._drop_object(xy, 0.0)

    def _drop_object(self, xy: np.ndarray, base_z: float) -> None:
        rng = self.rng
        model = self._model(self._pick(self.pickupables))
        z = base_z + 0.12 + 0.16 * self.drop_level
        self.drop_level = (self.drop_level + 1) % 4
        if model.upright:
            orn = _yaw_quat(rng.uniform(0, 2 * math.pi))
        else:
            orn = pybullet.getQuaternionFromEuler(rng.uniform(0, 2 * math.pi, 3).tolist())
        uid = self._load(model, [float(xy[0]), float(xy[1]), z], orn)
        self.bc.changeDynamics(uid, -1, lateralFriction=0.9, rollingFriction=0.01, spinningFriction=0.01,
                               linearDamping=0.2, angularDamping=0.3)
        self.dynamic.append(uid)

    def _distractor(self, xy: np.ndarray) -> None:
        number = int(self.rng.integers(0, 1000))
        stem = f"random_urdfs/{number:03d}/{number:03d}"
        if not _mesh_is_finite(os.path.join(self.data_path, f"{stem}.obj")):
            return  # drawn numbers stay drawn, so the other scenes of a seed are unchanged
        scale = self.rng.uniform(1.5, 2.5)
        orn = pybullet.getQuaternionFromEuler(self.rng.uniform(0, 2 * math.pi, 3).tolist())
        z = 0.12 + 0.16 * self.drop_level
        self.drop_level = (self.drop_level + 1) % 4
        try:
            uid = self.bc.loadURDF(f"{stem}.urdf", [float(xy[0]), float(xy[1]), z], orn, globalScaling=scale)
        except Exception:  # all shipped ones load today; a missing distractor is harmless anyway
            return
        self.bc.changeDynamics(
            uid, -1, rollingFriction=0.01, spinningFriction=0.01, linearDamping=0.2, angularDamping=0.3
        )
        self.dynamic.append(uid)

    # -- helpers -------------------------------------------------------------------------------------
    def _station_weights(self) -> list[float]:
        """Per station kind: the frequencies of the catalogue's receptacles of that layout (floor: its own)."""
        weights = [self.catalogue.floor_frequency if kind == "floor"
                   else sum(e.frequency for e in self.catalogue.with_layout(kind)) for kind in _STATIONS]
        return [w / sum(weights) for w in weights]

    def _receptacle(self, layout: str) -> CatalogueEntry:
        return self._pick(self.catalogue.with_layout(layout))

    def _pick(self, entries: list[CatalogueEntry]) -> CatalogueEntry:
        """One entry by frequency. A single entry draws nothing and equal frequencies draw one integer,
        so catalogues without frequencies keep the random stream (and scenes) of the built-in classes."""
        freq = np.array([e.frequency for e in entries])
        if len(entries) == 1:
            return entries[0]
        if (freq == freq[0]).all():
            return entries[int(self.rng.choice(len(entries)))]
        return entries[int(self.rng.choice(len(entries), p=freq / freq.sum()))]

    def _model(self, entry: CatalogueEntry) -> Model:
        return entry.models[0] if len(entry.models) == 1 else entry.models[int(self.rng.integers(len(entry.models)))]

    def _load(self, model: Model, pos: list[float], orn) -> int:
        bc, rng = self.bc, self.rng
        scale = float(rng.uniform(*model.scale))
        try:
            suffix = os.path.splitext(model.file)[1].lower()
            if suffix == ".sdf":
                uid = bc.loadSDF(model.file, globalScaling=scale)[0]
                bc.resetBasePositionAndOrientation(uid, pos, orn)
            elif suffix in (".obj", ".stl"):
                vis = bc.createVisualShape(pybullet.GEOM_MESH, fileName=model.file, meshScale=[scale] * 3)
                col = bc.createCollisionShape(pybullet.GEOM_MESH, fileName=model.file, meshScale=[scale] * 3)
                mass = 0.0 if model.fixed else (model.mass or DEFAULT_MESH_MASS)
                uid = bc.createMultiBody(mass, col, vis, pos, orn)
            else:
                uid = bc.loadURDF(model.file, pos, orn, useFixedBase=model.fixed, globalScaling=scale)
                if model.mass is not None and not model.fixed:
                    bc.changeDynamics(uid, -1, mass=model.mass)
        except Exception as exc:
            raise SimulatorError(f"pybullet could not load {model.file}: {exc}") from exc
        self._tint(uid, model.tint)
        self.labels[uid] = model.cls
        self.scales[uid] = scale
        return uid

    def _tint(self, uid: int, mode: str) -> None:
        if mode == "keep":
            return
        rgb = self._colour(self.rng.uniform(0.55, 1.0)) if mode == "any" else self._light_tint(0.25)
        for link in range(-1, self.bc.getNumJoints(uid)):
            self.bc.changeVisualShape(uid, link, rgbaColor=[*rgb, 1.0])

    def _colour(self, value: float, saturation: float | None = None) -> np.ndarray:
        """A random RGB colour of the given brightness (HSV value)."""
        hue = self.rng.uniform(0, 1)
        sat = self.rng.uniform(0.25, 0.85) if saturation is None else saturation
        i = int(hue * 6) % 6
        f = hue * 6 - int(hue * 6)
        p_, q, t = value * (1 - sat), value * (1 - f * sat), value * (1 - (1 - f) * sat)
        return np.array(
            [(value, t, p_), (q, value, p_), (p_, value, t), (p_, q, value), (t, p_, value), (value, p_, q)][i]
        )

    def _light_tint(self, amount: float) -> np.ndarray:
        return np.clip(1.0 - self.rng.uniform(0, amount, 3), 0, 1)

    def _aabb(self, uid: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = (np.array(v) for v in self.bc.getAABB(uid, -1))
        for link in range(self.bc.getNumJoints(uid)):
            a, b = self.bc.getAABB(uid, link)
            lo, hi = np.minimum(lo, a), np.maximum(hi, b)
        return lo, hi

    def _settle(self) -> None:
        bc = self.bc
        for step in range(1, _SETTLE_STEPS + 1):
            bc.stepSimulation()
            if step % _SETTLE_CHECK == 0 and step >= 4 * _SETTLE_CHECK:
                moving = False
                for uid in self.dynamic:
                    lin, ang = bc.getBaseVelocity(uid)
                    if max(abs(v) for v in lin) > 0.03 or max(abs(v) for v in ang) > 0.3:
                        moving = True
                        break
                if not moving:
                    return
