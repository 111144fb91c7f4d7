"""Shared data fixtures: a tiny class list, synthetic frames, and one small PyBullet dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saom_core.data.classes import ClassList
from saom_core.data.format import Frame


@pytest.fixture
def tiny_classes() -> ClassList:
    return ClassList.from_dict(
        {"name": "tiny", "classes": [
            {"name": "Mug", "type": "pickupable", "size": "small"},
            {"name": "Table", "type": "receptacle", "size": "large"},
            {"name": "Ball", "type": "pickupable", "size": "small"},
        ]}
    )


def synthetic_frames(n: int, seed: int = 0, size: tuple[int, int] = (24, 32)) -> list[Frame]:
    """`n` random frames (H x W = size) with 0..3 rectangular masks each, labels from tiny_classes."""
    rng = np.random.default_rng(seed)
    h, w = size
    frames = []
    for i in range(n):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        count = int(rng.integers(0, 4))
        masks = np.zeros((count, h, w), dtype=bool)
        for k in range(count):
            y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
            masks[k, y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = True
        labels = [str(rng.choice(["Mug", "Table", "Ball"])) for _ in range(count)]
        frames.append(Frame(image=image, masks=masks, labels=labels,
                            meta={"agent_pose": {"yaw": 90.0 * i, "position": [0.5, 0.0, 1.2]}, "note": f"f{i}"}))
    return frames


@pytest.fixture
def make_frames():
    return synthetic_frames


@pytest.fixture(scope="session")
def pybullet_dataset(tmp_path_factory) -> Path:
    """`saom collect --sim pybullet --scenes 2 --seed 0` once per test session (read-only for tests)."""
    from saom_core.data.collect import collect_dataset

    out = tmp_path_factory.mktemp("pybullet") / "ds"
    collect_dataset("pybullet", scenes=2, out=out, seed=0, progress=False)
    return out
