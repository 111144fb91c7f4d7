"""Pretraining the vanilla tiny SAM: granularity targets, the collector, seeds, training, the shipped file."""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from saom_core.data.collect import collect_dataset
from saom_core.data.collect.granularity import GRANULARITIES, granularity_targets
from saom_core.data.collect.pybullet_granularity import PyBulletGranularityCollector
from saom_core.demo import DemoSettings
from saom_core.errors import SimulatorError
from saom_core.pretrain import PRETRAIN_SEED, PretrainSettings, run_pretrain
from saom_core.weights import SHIPPED, provenance, shipped_path


def _synthetic_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 64 x 64 frame: floor (body 1, grey), a two-link body (body 2: red link 0 above, red link 1
    below) and a one-link body in two colours (body 3: blue left half, yellow right half)."""
    image = np.full((64, 64, 3), 128, np.uint8)
    bodies = np.full((64, 64), 1)
    parts = np.full((64, 64), -1)
    bodies[4:28, 4:24] = 2
    parts[4:16, 4:24] = 0
    parts[16:28, 4:24] = 1
    image[4:28, 4:24] = (200, 30, 30)
    bodies[36:60, 30:60] = 3
    parts[36:60, 30:60] = -1
    image[36:60, 30:45] = (30, 30, 200)
    image[36:60, 45:60] = (230, 220, 40)
    return image, bodies, parts


def _box(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    mask[rows, cols] = True
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_granularity_targets_of_a_synthetic_scene():
    image, bodies, parts = _synthetic_scene()
    targets = granularity_targets(image, bodies, parts, stuff={1}, min_area=20)
    expected = [
        ("stuff", 1, bodies == 1),
        ("whole", 2, _box(slice(4, 28), slice(4, 24))),
        ("part", 2, _box(slice(4, 16), slice(4, 24))),  # link 0
        ("part", 2, _box(slice(16, 28), slice(4, 24))),  # link 1
        ("whole", 3, _box(slice(36, 60), slice(30, 60))),
        ("region", 3, _box(slice(36, 60), slice(30, 45))),  # the blue half
        ("region", 3, _box(slice(36, 60), slice(45, 60))),  # the yellow half
    ]
    assert sorted((t.granularity, t.body) for t in targets) == sorted((g, b) for g, b, _ in expected)
    for granularity, body, mask in expected:
        best = max(_iou(t.mask, mask) for t in targets if (t.granularity, t.body) == (granularity, body))
        # wholes, parts and stuff are exact; regions may lose a corner pixel to the colour filter
        assert best >= (0.98 if granularity == "region" else 1.0), (granularity, body)


def test_shading_alone_does_not_make_regions():
    """A one-colour body under a light gradient (a lit side and a shaded side) stays one target."""
    image, bodies, parts = _synthetic_scene()
    ramp = np.linspace(150, 210, 30).astype(np.uint8)
    image[36:60, 30:60] = np.stack([ramp, ramp // 4, ramp // 4], -1)[None]
    targets = granularity_targets(image, bodies, parts, stuff={1}, min_area=20)
    assert [t.granularity for t in targets if t.body == 3] == ["whole"]


def test_granularity_collector_labels_every_body_at_each_level():
    with PyBulletGranularityCollector(GRANULARITIES, size=160, min_area=15) as collector:
        frames = collector.collect_scene(0, seed=PRETRAIN_SEED)
    counts = Counter(label for frame in frames for label in frame.labels)
    assert counts["stuff"] >= len(frames)  # the floor, at least, in every frame
    assert counts["whole"] >= len(frames) and counts["region"] > 0
    for frame in frames:
        assert frame.objects3d is None
        assert set(frame.labels) <= set(GRANULARITIES.names)
        wholes = [m for m, label in zip(frame.masks, frame.labels, strict=True) if label in ("whole", "stuff")]
        union = np.any(wholes, axis=0)
        # every part or region lies inside one of the frame's bodies
        for mask, label in zip(frame.masks, frame.labels, strict=True):
            if label in ("part", "region"):
                assert (mask & ~union).sum() == 0
        # whole bodies (and stuff) never overlap one another
        assert int(np.sum(wholes, axis=0).max()) == 1


def test_granularity_collector_refuses_a_class_list(tiny_classes):
    with pytest.raises(SimulatorError, match="granularities"):
        PyBulletGranularityCollector(tiny_classes)


def test_pretraining_seed_is_disjoint_from_the_demo_and_evaluation_data():
    demo_seeds = {DemoSettings.seed, DemoSettings.seed + 1}  # the demo's dataset and its trajectories
    assert PRETRAIN_SEED not in demo_seeds | {0}  # 0: the benches' and `saom collect`'s default
    assert PretrainSettings.seed == PRETRAIN_SEED


def test_pretrain_trains_a_vanilla_model_and_exports_it_with_provenance(tmp_path):
    out = tmp_path / "pretrain"
    collect_dataset("pybullet-granularity", scenes=12, out=out / "data", seed=PRETRAIN_SEED, size=96,
                    progress=False)
    path = run_pretrain(
        PretrainSettings(out=out, overrides=("model.config=test", "train.max_steps=2", "train.amp=off",
                                             "train.val_max_frames=2"), eval_frames=2, everything_frames=2),
        progress=False,
    )
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["steps"] == 2 and record["data"]["seed"] == PRETRAIN_SEED
    assert record["data"]["scenes"] == 12  # the scenes that were there, not the --scenes of a skipped collection
    assert set(record["figures"]["val_point_miou_best_of_three_per_granularity"]) == set(GRANULARITIES.names)
    data = torch.load(path, weights_only=True)
    assert data["class_list"] is None and "train_state" not in data
    assert all(v.dtype == torch.float16 for v in data["state_dict"].values() if v.is_floating_point())
    # best of three is never below the most confident mask
    figures = record["figures"]
    assert figures["val_point_miou_best_of_three"] >= figures["val_point_miou_most_confident"]
    # its everything-mode threshold: the best F1 of the candidates, stored in the file for its segmenters
    everything = figures["everything_mode"]
    best = max(everything["candidates"], key=lambda c: (c["f1"], c["pred_iou_thresh"]))
    assert everything["chosen_pred_iou_thresh"] == best["pred_iou_thresh"] == data["generator"]["pred_iou_thresh"]
    assert everything["frames"] == 2


def test_a_continued_pretraining_records_what_it_started_from(tmp_path):
    out = tmp_path / "pretrain"
    collect_dataset("pybullet-granularity", scenes=8, out=out / "data", seed=PRETRAIN_SEED, size=96, progress=False)
    overrides = ("model.config=test", "train.max_steps=2", "train.amp=off", "train.val_max_frames=2")
    first = run_pretrain(PretrainSettings(out=out, overrides=overrides, eval_frames=2, everything_frames=2),
                         progress=False)
    again = tmp_path / "again"
    shutil.copytree(out / "data", again / "data")
    second = run_pretrain(
        PretrainSettings(out=again, overrides=(*overrides, f"model.checkpoint={first}"), eval_frames=2,
                         everything_frames=2),
        progress=False,
    )
    before, record = (json.loads(p.with_suffix(".json").read_text()) for p in (first, second))
    assert "started_from" not in before and "total_steps" not in before
    assert record["started_from"]["sha256"] == before["sha256"]
    assert record["total_steps"] == before["steps"] + record["steps"] == 4
    assert record["total_training_s"] == pytest.approx(before["training_s"] + record["training_s"], abs=0.1)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_match_their_recorded_hash_and_load(name):
    from saom_core.model.checkpoint import load_checkpoint

    path = shipped_path(name)
    assert path is not None and path.exists(), f"{name} is not shipped: run make pretrain"
    record = provenance(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert path.stat().st_size <= 10 * 2**20
    model, info = load_checkpoint(name)  # by name, weights_only inside
    assert model.class_list is None and model.config.name == "tiny"
    assert record["data"]["seed"] == PRETRAIN_SEED


def test_fine_tuning_starts_from_the_vanilla_weights(pybullet_dataset, tmp_path):
    """The tiny recipe's default start is the shipped vanilla model (every SAM weight equals it), its
    encoder frozen and the class heads trained."""
    from saom_core.model.checkpoint import load_model
    from saom_core.train.recipe import load_train_config
    from saom_core.train.trainer import Trainer

    cfg = load_train_config("config/train_tiny.yaml", [f"data.root={pybullet_dataset}", "train.max_steps=1"])
    assert cfg.model.checkpoint == "vanilla_tiny"
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    vanilla = load_model("vanilla_tiny").state_dict()
    own = trainer.model.state_dict()
    assert all(torch.equal(own[k], vanilla[k].float()) for k in vanilla)
    assert trainer.model.classifier is not None
    split = trainer.encoder_split
    assert split is not None and split.whole, "the recipe trains on cached embeddings of the vanilla encoder"
    assert all(p.requires_grad for p in trainer.model.crop_classifier.parameters())
