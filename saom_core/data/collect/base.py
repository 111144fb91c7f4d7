"""The one interface every simulator module implements, and the registry that picks one.

A collector renders one scene at a time: `collect_scene(scene_index, seed)` returns the scene's
frames (the paper's 4 views, the agent rotating right by 90 degrees between them). Everything random
in a scene comes from `scene_rng(seed, scene_index)`, so a scene is the same whichever process
renders it and whichever scenes were rendered before it.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from saom_core.data.classes import ClassList, class_list_path
from saom_core.data.format import Frame
from saom_core.errors import ConfigError, SimulatorError

FRAMES_PER_SCENE = 4  # the paper: RotateRight by 90 degrees, 4 frames per scene
REFERENCE_SIZE = 224  # min_area in a class-list YAML is given for 224 x 224 frames
DEFAULT_MIN_AREA = 30

# simulator name -> "module:class" (imported only when chosen: ai2thor is an optional extra)
SIMULATORS: dict[str, str] = {
    "pybullet": "saom_core.data.collect.pybullet:PyBulletCollector",
    "pybullet-granularity": "saom_core.data.collect.pybullet_granularity:PyBulletGranularityCollector",
    "ai2thor": "saom_core.data.collect.ai2thor:Ai2ThorCollector",
}


def scene_id(scene_index: int) -> str:
    return f"scene_{scene_index:05d}"


def scene_rng(seed: int, scene_index: int) -> np.random.Generator:
    """The random stream of one scene: depends on (seed, scene index) only."""
    return np.random.default_rng([int(seed), int(scene_index)])


class Collector(ABC):
    """Renders scenes of one simulator into `Frame`s (image, one mask + label per visible object, meta).

    Only objects whose class is in `class_list` get a mask; masks smaller than `min_area` pixels are
    dropped. The simulator is started lazily on the first scene, so constructing a collector is cheap
    and `close()` is always safe.
    """

    name: str = ""
    # a ClassList, or a shipped class-list name: "pybullet" -> config/classes_pybullet.yaml
    default_classes: str | ClassList = ""

    def __init__(self, class_list: ClassList, size: int = REFERENCE_SIZE, min_area: int = DEFAULT_MIN_AREA) -> None:
        self.class_list = class_list
        self.size = int(size)
        self.min_area = int(min_area)

    # Optional hooks, not abstract: by default a simulator is always available and has no client to stop.
    @classmethod  # noqa: B027
    def check_available(cls) -> None:
        """Raise SimulatorError if the simulator cannot be used here (cheap: no simulator start)."""

    @abstractmethod
    def collect_scene(self, scene_index: int, seed: int) -> list[Frame]:
        """The frames of scene `scene_index`, deterministic for (seed, scene_index)."""

    def describe(self) -> dict[str, Any]:
        """What else the frames depend on, for collect.json (a resume or a merge must match it)."""
        return {}

    def close(self) -> None:  # noqa: B027
        """Stop the simulator client, if one was started."""

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def collector_class(sim: str) -> type[Collector]:
    """The collector class registered for `sim`; unknown names list the known ones."""
    key = str(sim).strip().lower()
    if key not in SIMULATORS:
        raise SimulatorError(f"unknown simulator '{sim}' (known: {', '.join(sorted(SIMULATORS))})")
    module_name, class_name = SIMULATORS[key].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_class_list(classes: str | Path | ClassList) -> tuple[ClassList, dict[str, Any]]:
    """A class list (name like 'pybullet', YAML path, or ClassList) and its YAML's extra top-level keys."""
    if isinstance(classes, ClassList):
        return classes, {}
    class_list = ClassList.from_yaml(classes)
    path = class_list_path(classes)
    data = yaml.safe_load(path.read_text()) or {}
    extras = {k: v for k, v in data.items() if k not in ("name", "classes")} if isinstance(data, dict) else {}
    return class_list, extras


def resolve_min_area(min_area: int | None, yaml_extras: dict[str, Any], size: int) -> int:
    """Explicit --min-area (pixels) wins; else the YAML's `min_area` (at 224 x 224) scaled to the frame area."""
    if min_area is not None:
        if int(min_area) < 1:
            raise ConfigError(f"--min-area must be at least 1 pixel, got {min_area}")
        return int(min_area)
    reference = yaml_extras.get("min_area", DEFAULT_MIN_AREA)
    if not isinstance(reference, (int, float)) or reference < 1:
        raise ConfigError(f"class list: min_area must be a positive number of pixels, got {reference!r}")
    return max(1, int(round(reference * size * size / REFERENCE_SIZE**2)))
