"""AI2-THOR collector: the paper's simulator (optional extra: `pip install .[ai2thor]`).

Per scene, as in the paper (section 3): reset to an iTHOR floor plan, rearrange the objects
(`InitialRandomSpawn` seeded from the scene), put the agent at a random reachable position, and take
4 frames rotating right by 90 degrees (`RotateRight`, degrees=90) with instance segmentation on.
Each event becomes a `Frame` through `frame_from_event` (a pure function, testable without AI2-THOR):
one mask per object whose objectType is in the class list, masks under `min_area` pixels dropped.

AI2-THOR downloads a Unity build on first use (internet) and renders with an X display, or headless
with Vulkan (CloudRendering, chosen automatically when $DISPLAY is unset on Linux). Its images come
from a GPU renderer, so unlike the PyBullet collector they are not guaranteed byte-identical across
machines; the scene choice, object arrangement and agent pose are deterministic for a seed.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from saom_core.data.classes import ClassList
from saom_core.data.collect.base import DEFAULT_MIN_AREA, FRAMES_PER_SCENE, REFERENCE_SIZE, Collector, scene_rng
from saom_core.data.format import Frame
from saom_core.errors import SimulatorError

# iTHOR: kitchens 1-30, living rooms 201-230, bedrooms 301-330, bathrooms 401-430 (the paper's 120 scenes)
ITHOR_SCENES: tuple[str, ...] = tuple(f"FloorPlan{base + i}" for base in (0, 200, 300, 400) for i in range(1, 31))
HORIZONS = (0.0, 15.0, 30.0)  # camera pitch down, degrees (AI2-THOR's cameraHorizon)
_START_HELP = (
    "it downloads a Unity build on first use (needs internet) and needs an X display ($DISPLAY) "
    "or, headless, Vulkan for CloudRendering; use --sim pybullet on machines without them"
)


def floor_plan_for(scene_index: int, seed: int) -> str:
    """The iTHOR floor plan of scene `scene_index`: each run of 120 scenes visits every floor plan once."""
    order = np.random.default_rng([int(seed), len(ITHOR_SCENES)]).permutation(len(ITHOR_SCENES))
    return ITHOR_SCENES[int(order[scene_index % len(ITHOR_SCENES)])]


def frame_from_event(event: Any, class_list: ClassList, min_area: int, meta: Mapping[str, Any] | None = None) -> Frame:
    """One AI2-THOR event -> Frame: RGB frame, a mask + label per object of interest, agent pose.

    `event` needs `.frame` (H, W, 3 uint8 RGB), `.instance_masks` ({objectId: (H, W) bool}) and
    `.metadata` with 'objects' (objectId -> objectType) and 'agent' (position, rotation, cameraHorizon).
    Objects whose type is not in `class_list`, structure (walls, floor) and masks with fewer than
    `min_area` pixels are left out. Masks are ordered by objectId, so the output is deterministic.
    """
    image = np.ascontiguousarray(np.asarray(event.frame, dtype=np.uint8))
    if image.ndim != 3 or image.shape[2] != 3:
        raise SimulatorError(f"AI2-THOR event frame must be (H, W, 3) RGB, got {image.shape}")
    h, w = image.shape[:2]
    metadata = event.metadata or {}
    types = {obj["objectId"]: obj["objectType"] for obj in metadata.get("objects", [])}
    wanted = set(class_list.names)
    masks, labels, object_ids = [], [], []
    for object_id in sorted(event.instance_masks or {}):
        object_type = types.get(object_id)
        if object_type not in wanted:
            continue
        mask = np.asarray(event.instance_masks[object_id], dtype=bool)
        if mask.shape != (h, w):
            raise SimulatorError(f"AI2-THOR mask of {object_id} is {mask.shape}, frame is {(h, w)}")
        if int(mask.sum()) < min_area:
            continue
        masks.append(mask)
        labels.append(object_type)
        object_ids.append(object_id)
    agent = metadata.get("agent", {})
    position, rotation = agent.get("position", {}), agent.get("rotation", {})
    horizon = float(agent.get("cameraHorizon", 0.0))
    frame_meta: dict[str, Any] = {
        "simulator": "ai2thor",
        "floor_plan": metadata.get("sceneName"),
        "agent_pose": {
            "position": [float(position.get(k, 0.0)) for k in ("x", "y", "z")],  # y is up in Unity
            "yaw": float(rotation.get("y", 0.0)),
            "pitch": -horizon,  # cameraHorizon is positive looking down
            "horizon": horizon,
            "rotation": {k: float(rotation.get(k, 0.0)) for k in ("x", "y", "z")},
            "standing": bool(agent.get("isStanding", True)),
        },
        "object_ids": object_ids,
    }
    if "cameraPosition" in metadata:
        camera = metadata["cameraPosition"]
        frame_meta["agent_pose"]["camera_position"] = [float(camera.get(k, 0.0)) for k in ("x", "y", "z")]
        frame_meta["agent_pose"]["height"] = float(camera.get("y", 0.0))
    if meta:
        frame_meta.update(meta)
    stacked = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
    return Frame(image=image, masks=stacked, labels=labels, meta=frame_meta)


def _import_controller():
    try:
        from ai2thor.controller import Controller
    except ImportError as exc:
        raise SimulatorError(f"ai2thor is not installed: pip install .[ai2thor] ({exc})") from exc
    return Controller


def _headless_platform() -> dict[str, Any]:
    """CloudRendering (Vulkan, no X server) when there is no display on Linux; else AI2-THOR's default."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        try:
            from ai2thor.platform import CloudRendering
        except ImportError:  # old ai2thor without CloudRendering: let the default platform report it
            return {}
        return {"platform": CloudRendering}
    return {}


class Ai2ThorCollector(Collector):
    name = "ai2thor"
    default_classes = "ai2thor"

    def __init__(self, class_list: ClassList, size: int = REFERENCE_SIZE, min_area: int = DEFAULT_MIN_AREA,
                 randomize: bool = True, field_of_view: float = 90.0) -> None:
        super().__init__(class_list, size=size, min_area=min_area)
        self.randomize = randomize
        self.field_of_view = field_of_view
        self._controller: Any = None

    @classmethod
    def check_available(cls) -> None:
        _import_controller()

    def _start(self, floor_plan: str) -> Any:
        controller_cls = _import_controller()
        kwargs = dict(
            agentMode="default", scene=floor_plan, width=self.size, height=self.size,
            renderInstanceSegmentation=True, renderDepthImage=False, gridSize=0.25, snapToGrid=True,
            rotateStepDegrees=90, visibilityDistance=1.5, fieldOfView=self.field_of_view,
        )
        kwargs.update(_headless_platform())
        try:
            self._controller = controller_cls(**kwargs)
        except Exception as exc:  # download failure, no display, no Vulkan, Unity crash ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SimulatorError(f"AI2-THOR could not start: {reason}; {_START_HELP}") from exc
        return self._controller

    def _step(self, action: str, required: bool = True, **kwargs: Any) -> Any:
        event = self._controller.step(action=action, **kwargs)
        if required and not event.metadata.get("lastActionSuccess", True):
            raise SimulatorError(f"AI2-THOR action {action} failed: {event.metadata.get('errorMessage', '')}")
        return event

    def collect_scene(self, scene_index: int, seed: int) -> list[Frame]:
        rng = scene_rng(seed, scene_index)
        floor_plan = floor_plan_for(scene_index, seed)
        if self._controller is None:
            self._start(floor_plan)
        self._controller.reset(scene=floor_plan)  # keeps the initialization parameters (size, segmentation)
        spawn_seed = int(rng.integers(0, 2**31 - 1))
        if self.randomize:  # a failed rearrangement keeps the floor plan's default layout
            self._step("InitialRandomSpawn", required=False, randomSeed=spawn_seed, forceVisible=True,
                       numPlacementAttempts=5, placeStationary=True)
        positions = self._step("GetReachablePositions", required=False).metadata.get("actionReturn") or []
        yaw = float(90 * int(rng.integers(0, 4)))
        horizon = float(rng.choice(HORIZONS))
        event = self._controller.last_event
        for _ in range(5 if positions else 0):
            position = positions[int(rng.integers(0, len(positions)))]
            event = self._step("Teleport", required=False, position=position, rotation={"x": 0.0, "y": yaw, "z": 0.0},
                               horizon=horizon, standing=True)
            if event.metadata.get("lastActionSuccess", True):
                break
        meta = {"floor_plan": floor_plan, "seed": int(seed), "spawn_seed": spawn_seed if self.randomize else None}
        frames = [frame_from_event(event, self.class_list, self.min_area, meta)]
        for _ in range(FRAMES_PER_SCENE - 1):
            event = self._step("RotateRight", degrees=90)
            frames.append(frame_from_event(event, self.class_list, self.min_area, meta))
        return frames

    def close(self) -> None:
        if self._controller is not None:
            try:
                self._controller.stop()
            except Exception:  # Unity already gone
                pass
            self._controller = None
