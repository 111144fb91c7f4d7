"""`saom pretrain` (make pretrain): the project's own vanilla tiny SAM, what SAOM fine-tunes from.

No pretrained SAM weights exist for the tiny config, yet the paper fine-tunes a pretrained SAM and
compares against it. So: collect PyBullet rooms labelled at every granularity (seeds disjoint from
every split the demo and the evaluation use), train SAM's own class-agnostic task on them
(config/train_pretrain_tiny.yaml), and export the weights as a small fp16 file with its
provenance beside it. Each stage continues what an interrupted run left (the collection, then the
training from its last checkpoint), so a run of hours can stop and go on.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saom_core.io import atomic_write_json

if TYPE_CHECKING:  # imported where used: `saom --help` stays torch-free
    from saom_core.data.reader import SaomDataset
    from saom_core.model.saom import SaomModel
    from saom_core.settings import Thresholds

# The pretraining rooms' seed: the demo collects with seeds 0 (train/val/test) and 1 (trajectories),
# the benches with 0; test/test_pretrain.py checks that none of them is this one.
PRETRAIN_SEED = 2024
SIMULATOR = "pybullet-granularity"
EXPORT_NAME = "vanilla_tiny"


@dataclass
class PretrainSettings:
    out: Path = Path("runs/pretrain")
    config: Path = Path("config/train_pretrain_tiny.yaml")
    scenes: int = 700
    seed: int = PRETRAIN_SEED
    workers: int = 2
    overrides: tuple[str, ...] = ()
    eval_frames: int | None = None  # val frames for the exported file's figures (None: the whole split)
    everything_frames: int = 60  # val frames that choose its everything-mode threshold (eval/operating_point.py)


def run_pretrain(settings: PretrainSettings, progress: bool = True) -> Path:
    """Collect (or continue collecting), train (or resume), export; returns the exported file."""
    from saom_core.data.collect import collect_dataset
    from saom_core.data.format import ANNOTATIONS
    from saom_core.train.recipe import load_train_config
    from saom_core.train.trainer import Trainer

    data = settings.out / "data"
    started = time.perf_counter()
    # a finished collection is used as it is (its own size and scenes); extend it with `saom collect --resume`
    if not (data / ANNOTATIONS).exists():
        collect_dataset(sim=SIMULATOR, scenes=settings.scenes, out=data, seed=settings.seed,
                        workers=settings.workers, resume=data.exists(), progress=progress)
    collect_s = time.perf_counter() - started
    cfg = load_train_config(settings.config, [f"data.root={data}", *settings.overrides])
    run_dir = settings.out / "run"
    trainer = Trainer(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists(), progress=progress)
    result = trainer.fit()
    source = result.best_checkpoint or result.last_checkpoint
    record = {
        "command": " ".join(["saom", *sys.argv[1:]]) if Path(sys.argv[0]).name == "saom" else " ".join(sys.argv),
        "commit": _commit(),
        "data": {"simulator": SIMULATOR, "seed": settings.seed, "scenes": trainer.train_set.total_scenes,
                 "train_frames": len(trainer.train_set), "dataset": str(data)},
        "steps": result.steps,
        "planned_steps": cfg.train.max_steps,
        "source_checkpoint": str(source),
        "collect_s": round(collect_s, 1),  # of this invocation (0 when the data was there already)
        "machine": machine(),
    }
    if cfg.model.checkpoint:  # a continuation: its steps and seconds come on top of the start's
        record["started_from"] = started_from(cfg.model.checkpoint)
    return export_vanilla(source, settings.out / f"{EXPORT_NAME}.pt", record, data, settings.eval_frames,
                          settings.everything_frames)


def export_vanilla(source: Path, target: Path, record: dict[str, Any], data: Path,
                   eval_frames: int | None = None, everything_frames: int = 60) -> Path:
    """Write `source`'s weights as fp16 to `target` (weights only, no training state) with the
    everything-mode threshold chosen on the val split, and its provenance (`record` + training time,
    figures on the val split, sha256) to `target`.json."""
    import torch

    from saom_core.data.reader import SaomDataset
    from saom_core.eval.point_eval import evaluate_points
    from saom_core.io import atomic_torch_save
    from saom_core.model.checkpoint import checkpoint_info, model_from_checkpoint, read_checkpoint

    checkpoint = read_checkpoint(source)
    train_state = read_checkpoint(source.parent / "last.pt").get("train_state") or {}
    checkpoint.pop("train_state", None)
    checkpoint["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
    }
    model = model_from_checkpoint(checkpoint, source).eval()  # the fp16 weights, as the file will hold them
    figures: dict[str, Any] = {}
    val = SaomDataset(data, split="val")
    with torch.inference_mode():
        tuned = checkpoint_info(checkpoint, source).tuned
        chosen, figures["everything_mode"] = _everything_threshold(model, tuned, val, everything_frames)
        for name, best_of_three in (("best_of_three", True), ("most_confident", False)):
            result = evaluate_points({"vanilla": model}, val, prompt="random_foreground", max_frames=eval_frames,
                                     best_of_three=best_of_three, progress=False)["vanilla"]
            figures[f"val_point_miou_{name}"] = _round(result.miou)
            figures[f"val_point_miou_{name}_per_granularity"] = {
                level: _round(stats.iou) for level, stats in result.per_class.items()
            }
    figures["val_frames"] = len(val) if eval_frames is None else min(eval_frames, len(val))
    checkpoint["generator"] = {**checkpoint["generator"], "pred_iou_thresh": chosen}
    atomic_torch_save(target, checkpoint)
    training_s = round(float(train_state.get("elapsed_s", 0.0)), 1)
    record = {**record, "training_s": training_s}
    start = record.get("started_from", {})
    if "total_steps" in start:
        record["total_steps"] = start["total_steps"] + record["steps"]
        record["total_training_s"] = round(start["total_training_s"] + training_s, 1)
    record = {**record, "format": "fp16 state_dict, SAOM checkpoint layout, no class head", "figures": figures,
              "bytes": target.stat().st_size, "sha256": sha256(target)}
    atomic_write_json(target.with_suffix(".json"), record, indent=2)
    return target


def _everything_threshold(model: SaomModel, tuned: Thresholds, val: SaomDataset,
                          frames: int) -> tuple[float, dict[str, Any]]:
    """The predicted-IoU threshold with the best F1 on `frames` val frames, and the table it was chosen from."""
    from dataclasses import replace

    from saom_core.eval.matching import MATCH_IOU
    from saom_core.eval.operating_point import CANDIDATES, best_operating_point, operating_points
    from saom_core.infer.generator import generator_config
    from saom_core.infer.segmenter import SaomSegmenter
    from saom_core.settings import SegmenterSettings

    lowest = replace(tuned, pred_iou_thresh=min(CANDIDATES))
    segmenter = SaomSegmenter(model, generator_config(SegmenterSettings(), lowest))
    points = operating_points(segmenter.segment, val, max_frames=frames, progress=False)
    best = best_operating_point(points)
    table = [{"pred_iou_thresh": p.pred_iou_thresh, "masks_per_frame": _round(p.masks_per_frame),
              "precision": _round(p.precision), "recall": _round(p.recall), "f1": _round(p.f1)} for p in points]
    return best.pred_iou_thresh, {"chosen_pred_iou_thresh": best.pred_iou_thresh, "frames": min(frames, len(val)),
                                  "match_iou": MATCH_IOU, "candidates": table}


def started_from(checkpoint: str | Path) -> dict[str, Any]:
    """What a pretraining run continued from: the file, its sha256 and, where its provenance lies
    beside it (an exported or shipped file), the steps and training seconds behind it."""
    import json

    from saom_core.weights import resolve_weights

    path = resolve_weights(checkpoint)
    record: dict[str, Any] = {"checkpoint": str(checkpoint), "sha256": sha256(path)}
    beside = path.with_suffix(".json")
    earlier = json.loads(beside.read_text()) if beside.exists() else {}
    if earlier.get("sha256") == record["sha256"]:  # the provenance of this very file
        record["total_steps"] = earlier.get("total_steps", earlier["steps"])
        record["total_training_s"] = earlier.get("total_training_s", earlier["training_s"])
    return record


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def machine() -> dict[str, Any]:
    """The CPU a figure came from (the same training ran 2.2x slower on one 2-core kind than another)."""
    import torch

    from saom_core.precision import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def _commit() -> str:
    """The source checkout's commit (+ "-dirty" with uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
