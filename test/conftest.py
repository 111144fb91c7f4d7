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


def write_synthetic_dataset(root: Path, scenes: int = 12, size: tuple[int, int] = (48, 48), seed: int = 0) -> Path:
    """A small dataset of coloured rectangles (classes Mug/Table/Ball) with a train and a val split."""
    from saom_core.data.format import DatasetWriter

    classes = ClassList.from_dict({"name": "tiny", "classes": ["Mug", "Table", "Ball"]})
    colours = {"Mug": (220, 40, 40), "Table": (40, 200, 40), "Ball": (40, 40, 220)}
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root, classes, "synthetic")
    h, w = size
    for s in range(scenes):
        frames = []
        for _ in range(2):
            image = np.full((h, w, 3), 90, dtype=np.uint8)
            labels = list(rng.choice(list(colours), size=2, replace=False))
            masks = np.zeros((2, h, w), dtype=bool)
            for k, label in enumerate(labels):
                y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
                masks[k, y : y + h // 3, x : x + w // 3] = True
                masks[k] &= ~masks[:k].any(0)
                image[masks[k]] = colours[label]
            frames.append(Frame(image=image, masks=masks, labels=[str(name) for name in labels], meta={}))
        writer.write_scene(f"scene_{s:05d}", frames, split="val" if s % 4 == 3 else "train")
    writer.finalize()
    return root


@pytest.fixture(scope="session")
def rect_dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("rects") / "ds")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` skip, with the reason, where no CUDA device exists."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (no CUDA device here; bench/gpu_check.sh runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
