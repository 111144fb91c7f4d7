"""AI2-THOR adapter without AI2-THOR: event -> Frame conversion, missing install, failed start, and a
fake Controller that speaks the real API (reset, step(action=...), last_event, stop)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from saom_core.cli import main
from saom_core.data.check import check_dataset
from saom_core.data.classes import ClassList
from saom_core.data.collect import collect_dataset
from saom_core.data.collect.ai2thor import ITHOR_SCENES, Ai2ThorCollector, floor_plan_for, frame_from_event
from saom_core.errors import SimulatorError


class FakeEvent:
    def __init__(self, frame, instance_masks, metadata):
        self.frame, self.instance_masks, self.metadata = frame, instance_masks, metadata


def _event(size=(12, 16), yaw=90.0, horizon=30.0, success=True, action_return=None, scene="FloorPlan1"):
    h, w = size
    frame = np.random.default_rng(int(yaw)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = {k: np.zeros((h, w), bool) for k in ("Mug|1|2|3", "DiningTable|4", "Apple|5", "Wall|6", "Cup|7")}
    masks["Mug|1|2|3"][2:6, 3:8] = True  # 20 px
    masks["DiningTable|4"][6:, :] = True  # 96 px
    masks["Apple|5"][0:3, 0:3] = True  # not in the class list
    masks["Wall|6"][0:2, 10:] = True  # structure: not in metadata['objects']
    masks["Cup|7"][0, 0] = True  # 1 px: below min_area
    metadata = {
        "sceneName": scene,
        "lastActionSuccess": success,
        "errorMessage": "" if success else "blocked",
        "actionReturn": action_return,
        "objects": [
            {"objectId": "Mug|1|2|3", "objectType": "Mug"},
            {"objectId": "DiningTable|4", "objectType": "DiningTable"},
            {"objectId": "Apple|5", "objectType": "Apple"},
            {"objectId": "Cup|7", "objectType": "Cup"},
        ],
        "agent": {"position": {"x": 1.25, "y": 0.9, "z": -0.5}, "rotation": {"x": 0.0, "y": yaw, "z": 0.0},
                  "cameraHorizon": horizon, "isStanding": True},
        "cameraPosition": {"x": 1.25, "y": 1.58, "z": -0.5},
    }
    return FakeEvent(frame, masks, metadata)


@pytest.fixture(scope="module")
def ai2thor_classes() -> ClassList:
    return ClassList.from_yaml("ai2thor")


def test_event_to_frame_keeps_only_classes_of_interest(ai2thor_classes):
    event = _event()
    frame = frame_from_event(event, ai2thor_classes, min_area=5, meta={"floor_plan": "FloorPlan7"})
    frame.validate()
    assert frame.labels == ["DiningTable", "Mug"]  # sorted by objectId; Apple, Wall, 1-px Cup dropped
    np.testing.assert_array_equal(frame.masks[0], event.instance_masks["DiningTable|4"])
    np.testing.assert_array_equal(frame.masks[1], event.instance_masks["Mug|1|2|3"])
    np.testing.assert_array_equal(frame.image, event.frame)
    pose = frame.meta["agent_pose"]
    assert pose["position"] == [1.25, 0.9, -0.5]
    assert pose["yaw"] == 90.0 and pose["horizon"] == 30.0 and pose["pitch"] == -30.0
    assert pose["height"] == 1.58
    assert frame.meta["simulator"] == "ai2thor"
    assert frame.meta["floor_plan"] == "FloorPlan7"
    assert frame.meta["object_ids"] == ["DiningTable|4", "Mug|1|2|3"]
    assert frame_from_event(event, ai2thor_classes, min_area=21).labels == ["DiningTable"]
    assert frame_from_event(event, ai2thor_classes, min_area=1).labels == ["Cup", "DiningTable", "Mug"]


def test_event_with_no_objects_and_bad_masks(ai2thor_classes):
    empty = FakeEvent(np.zeros((8, 8, 3), np.uint8), {}, {"objects": [], "agent": {}})
    frame = frame_from_event(empty, ai2thor_classes, min_area=1)
    assert frame.masks.shape == (0, 8, 8) and frame.labels == []
    bad = _event()
    bad.instance_masks["Mug|1|2|3"] = np.ones((5, 5), bool)
    with pytest.raises(SimulatorError, match="mask of Mug"):
        frame_from_event(bad, ai2thor_classes, min_area=1)


def test_floor_plans_cover_the_120_ithor_scenes_deterministically():
    plans = [floor_plan_for(i, seed=0) for i in range(120)]
    assert sorted(plans) == sorted(ITHOR_SCENES) and len(set(plans)) == 120
    assert "FloorPlan1" in plans and "FloorPlan430" in plans and "FloorPlan31" not in plans
    assert plans == [floor_plan_for(i, seed=0) for i in range(120)]
    assert floor_plan_for(120, seed=0) == plans[0]
    assert plans != [floor_plan_for(i, seed=1) for i in range(120)]


def _install_fake_ai2thor(monkeypatch, controller_cls):
    package = types.ModuleType("ai2thor")
    controller = types.ModuleType("ai2thor.controller")
    controller.Controller = controller_cls
    platform = types.ModuleType("ai2thor.platform")
    platform.CloudRendering = type("CloudRendering", (), {})
    package.controller, package.platform = controller, platform
    for name, module in (("ai2thor", package), ("ai2thor.controller", controller), ("ai2thor.platform", platform)):
        monkeypatch.setitem(sys.modules, name, module)


def test_not_installed_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ai2thor", None)  # makes `import ai2thor...` raise ImportError
    monkeypatch.setitem(sys.modules, "ai2thor.controller", None)
    with pytest.raises(SimulatorError, match=r"ai2thor is not installed: pip install \.\[ai2thor\]"):
        collect_dataset("ai2thor", scenes=1, out=tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()  # nothing written before the check
    assert main(["collect", "--sim", "ai2thor", "--scenes", "1", "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("saom: error: ai2thor is not installed")


def test_controller_that_cannot_start_is_a_clear_error(tmp_path, monkeypatch, ai2thor_classes):
    class BrokenController:
        def __init__(self, **kwargs):
            raise RuntimeError("Unable to open display :0\nmore detail")

    _install_fake_ai2thor(monkeypatch, BrokenController)
    with pytest.raises(
        SimulatorError, match="AI2-THOR could not start: Unable to open display :0; .*X display"
    ) as info:
        with Ai2ThorCollector(ai2thor_classes, size=16) as collector:
            collector.collect_scene(0, seed=0)
    assert "\n" not in str(info.value)
    with pytest.raises(SimulatorError, match="AI2-THOR could not start"):
        collect_dataset("ai2thor", scenes=1, out=tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds" / "annotations.json").exists()


class FakeController:
    """Records what the adapter asks for and answers with FakeEvents of the requested size."""

    instances: list[FakeController] = []

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.calls: list[tuple[str, dict]] = []
        self.size = (kwargs["height"], kwargs["width"])
        self.yaw, self.scene, self.stopped = 0.0, kwargs["scene"], False
        self.last_event = _event(self.size, self.yaw, scene=self.scene)
        FakeController.instances.append(self)

    def reset(self, scene, **kwargs):
        self.calls.append(("reset", {"scene": scene, **kwargs}))
        self.scene, self.yaw = scene, 0.0
        self.last_event = _event(self.size, self.yaw, scene=scene)
        return self.last_event

    def step(self, action, **kwargs):
        self.calls.append((action, kwargs))
        result = None
        if action == "GetReachablePositions":
            result = [{"x": 0.25 * i, "y": 0.9, "z": 1.0} for i in range(6)]
        elif action == "Teleport":
            self.yaw = kwargs["rotation"]["y"]
        elif action == "RotateRight":
            self.yaw = (self.yaw + kwargs["degrees"]) % 360
        self.last_event = _event(self.size, self.yaw, action_return=result, scene=self.scene)
        return self.last_event

    def stop(self):
        self.stopped = True


def test_fake_controller_end_to_end(tmp_path, monkeypatch):
    FakeController.instances.clear()
    _install_fake_ai2thor(monkeypatch, FakeController)
    monkeypatch.delenv("DISPLAY", raising=False)
    collect_dataset("ai2thor", scenes=2, out=tmp_path / "ds", seed=5, size=32, min_area=10, progress=False)
    (controller,) = FakeController.instances
    assert controller.stopped
    kwargs = controller.init_kwargs
    assert kwargs["renderInstanceSegmentation"] is True and kwargs["width"] == kwargs["height"] == 32
    if sys.platform.startswith("linux"):
        assert kwargs["platform"].__name__ == "CloudRendering"
    actions = [name for name, _ in controller.calls]
    assert actions == ["reset", "InitialRandomSpawn", "GetReachablePositions", "Teleport",
                       "RotateRight", "RotateRight", "RotateRight"] * 2
    resets = [kw for name, kw in controller.calls if name == "reset"]
    assert [kw["scene"] for kw in resets] == [floor_plan_for(0, 5), floor_plan_for(1, 5)]
    assert all(kw == {"degrees": 90} for name, kw in controller.calls if name == "RotateRight")
    spawn_seeds = [kw["randomSeed"] for name, kw in controller.calls if name == "InitialRandomSpawn"]
    assert len(set(spawn_seeds)) == 2

    report, dataset = check_dataset(tmp_path / "ds", progress=False)
    assert report.total_images == 8
    assert sorted(report.classes_present) == ["DiningTable", "Mug"]
    sample = dataset[1]
    assert sample.meta["simulator"] == "ai2thor" and sample.meta["floor_plan"] == floor_plan_for(0, 5)
    yaws = [dataset[i].meta["agent_pose"]["yaw"] for i in range(4)]
    assert [(yaws[k + 1] - yaws[k]) % 360 for k in range(3)] == [90.0, 90.0, 90.0]  # AI2-THOR yaw grows clockwise
