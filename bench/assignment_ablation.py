"""The paper's central design choice, measured: nearest neighbour assignment vs random foreground points.

Two trainings of `config/train_tiny.yaml` on the same data for the same CPU seconds
(`train.max_seconds`), only `prompts.mode` differing (nearest_neighbour, the paper's; random_foreground,
one random pixel of each mask, not snapped to the grid). Both are scored on the held-out split:
everything mode (each checkpoint's tuned thresholds, the whole split unless --everything-frames):
class-agnostic mask AP / AR100 and per-class AP, masks per frame beside ground-truth objects per
frame; point prompts: per-class mIoU and mean class accuracy from each object's grid point. Last
line: `nn vs random: AP <a> vs <b>, masks/object <c> vs <d>`.

    python bench/assignment_ablation.py --data runs/demo/data --seconds 570
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from two_runs import run_in_out_dir, score_everything

from saom_core.data.reader import SaomDataset
from saom_core.eval.evaluate import machine_description
from saom_core.eval.everything_eval import EverythingResult
from saom_core.eval.point_eval import PointEvalResult, evaluate_point_prompts
from saom_core.model.checkpoint import load_checkpoint
from saom_core.train.config import load_train_config
from saom_core.train.trainer import Trainer

MODES = ("nearest_neighbour", "random_foreground")


def train(config: Path, data: Path, out: Path, mode: str, seconds: float, threads: int) -> tuple[Path, int]:
    """-> (last checkpoint, steps reached in `seconds`)."""
    overrides = [
        f"data.root={data}", f"prompts.mode={mode}", f"train.max_seconds={seconds}", "train.max_steps=1000000",
        f"train.threads={threads}", "train.device=cpu", "train.validate_every_epochs=1000000",
    ]
    result = Trainer(load_train_config(config, overrides), out).fit()
    return result.last_checkpoint, result.steps


def row(mode: str, steps: int, everything: EverythingResult, points: PointEvalResult) -> str:
    agnostic, per_class = everything.coco_agnostic, everything.coco_per_class or {}
    return (
        f"| {mode} | {steps} | {agnostic['AP'] or 0:.3f} | {agnostic['AR100'] or 0:.3f} "
        f"| {per_class.get('AP') or 0:.3f} | {everything.masks_per_frame:.2f} | {everything.objects_per_frame:.2f} "
        f"| {everything.masks_per_object or 0:.2f} "
        f"| {points.miou:.3f} | {points.mean_class_accuracy:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path("runs/demo/data"), help="a SAOM dataset with train/val/test splits"
    )
    parser.add_argument("--config", type=Path, default=Path("config/train_tiny.yaml"))
    parser.add_argument("--seconds", type=float, default=570.0, help="CPU training seconds per prompt mode")
    parser.add_argument(
        "--out", type=Path, default=None, help="a new folder to keep both runs in (default: a temporary one)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--everything-frames", type=int, default=None, help="frames for everything mode (default: the whole split)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run_in_out_dir(parser, args, run, prefix="saom-assignment-")


def run(args: argparse.Namespace, out: Path) -> None:
    print(f"machine: {machine_description(torch.device('cpu'))}")
    print(
        f"data: {args.data}; recipe {args.config}; {args.seconds:.0f} training seconds per mode; "
        f"scored on '{args.split}'"
    )
    runs = {}
    for mode in MODES:
        start = time.perf_counter()
        checkpoint, steps = train(args.config, args.data, out / mode, mode, args.seconds, args.threads)
        runs[mode] = (checkpoint, steps)
        print(f"{mode}: {steps} steps in {time.perf_counter() - start:.0f} s")
    dataset = SaomDataset(args.data, split=args.split)
    loaded = {mode: load_checkpoint(checkpoint) for mode, (checkpoint, _) in runs.items()}
    models = {mode: model for mode, (model, _) in loaded.items()}
    # the same prompts for both: assigned with the nearest-neighbour model's encoder, as `saom eval` does
    points = evaluate_point_prompts(
        models, dataset, ("nearest_neighbour",), assign_with="nearest_neighbour", progress=False
    )["nearest_neighbour"]
    everything = score_everything(loaded, dataset, args.everything_frames)
    frames = everything[MODES[0]].frames
    print(
        f"\n{frames} of {len(dataset)} frames in everything mode; "
        f"point prompts on all {len(dataset)} frames, {points[MODES[0]].objects} objects\n"
    )
    print(
        "| prompts.mode | steps | AP (agnostic) | AR100 | AP (per class) | masks/frame | GT objects/frame "
        "| masks/object | grid-point mIoU | class acc |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in MODES:
        print(row(mode, runs[mode][1], everything[mode], points[mode]))
    nn, rnd = everything["nearest_neighbour"], everything["random_foreground"]
    print(
        f"nn vs random: AP {nn.coco_agnostic['AP'] or 0:.3f} vs {rnd.coco_agnostic['AP'] or 0:.3f}, "
        f"masks/object {nn.masks_per_object or 0:.2f} vs {rnd.masks_per_object or 0:.2f}"
    )


if __name__ == "__main__":
    main()
