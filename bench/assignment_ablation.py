"""The paper's central design choice, measured: nearest neighbour assignment vs random foreground points.

Trainings of `config/train_tiny.yaml` (which fine-tunes the shipped vanilla tiny SAM, as the paper
fine-tunes SAM) on the same data, only `prompts.mode` differing (nearest_neighbour, the paper's;
random_foreground, one random pixel of each mask, not snapped to the grid), for each budget given:
`--steps N` (the same steps, the whole schedule: the method) and/or `--seconds S` (the same CPU
seconds: the method and its cost), and for each `--seeds` value (`train.seed`), so the spread is
visible. Each is scored on the held-out split: everything mode (each checkpoint's tuned thresholds,
the whole split unless --everything-frames): class-agnostic mask AP / AR100 and per-class AP, masks
per frame beside ground-truth objects per frame; point prompts: per-class mIoU and mean class
accuracy from each object's grid point. One line a budget: `nn vs random (<budget>): AP <a> vs <b>,
masks/object <c> vs <d>` (means over the seeds, each seed's value in brackets).

    python bench/assignment_ablation.py --data runs/demo/data --steps 900 --seconds 570 --seeds 0 1
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
from saom_core.train.recipe import load_train_config
from saom_core.train.trainer import Trainer

MODES = ("nearest_neighbour", "random_foreground")


def train(config: Path, data: Path, out: Path, mode: str, budget: tuple[str, float], seed: int,
          threads: int) -> tuple[Path, int]:
    """-> (last checkpoint, steps reached). budget: ("steps", N) or ("seconds", S)."""
    kind, amount = budget
    limit = (
        [f"train.max_steps={int(amount)}", "train.max_seconds=null"] if kind == "steps"
        else [f"train.max_seconds={amount}", "train.max_steps=1000000"]
    )
    overrides = [
        f"data.root={data}", f"prompts.mode={mode}", *limit, f"train.seed={seed}",
        f"train.threads={threads}", "train.device=cpu", "train.validate_every_epochs=1000000",
    ]
    result = Trainer(load_train_config(config, overrides), out).fit()
    return result.last_checkpoint, result.steps


def row(mode: str, seed: int, steps: int, everything: EverythingResult, points: PointEvalResult) -> str:
    agnostic, per_class = everything.coco_agnostic, everything.coco_per_class or {}
    return (
        f"| {mode} | {seed} | {steps} | {agnostic['AP'] or 0:.3f} | {agnostic['AR100'] or 0:.3f} "
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
    parser.add_argument("--steps", type=int, default=None, help="a budget of training steps per run")
    parser.add_argument("--seconds", type=float, default=None, help="a budget of CPU training seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values (one run each)")
    parser.add_argument(
        "--out", type=Path, default=None, help="a new folder to keep both runs in (default: a temporary one)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--everything-frames", type=int, default=None, help="frames for everything mode (default: the whole split)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps is None and args.seconds is None:
        args.seconds = 570.0
    run_in_out_dir(parser, args, run, prefix="saom-assignment-")


def run(args: argparse.Namespace, out: Path) -> None:
    print(f"machine: {machine_description(torch.device('cpu'))}")
    budgets = [(kind, amount) for kind, amount in (("steps", args.steps), ("seconds", args.seconds)) if amount]
    print(f"data: {args.data}; recipe {args.config}; budgets {budgets}; seeds {args.seeds}; scored on '{args.split}'")
    dataset = SaomDataset(args.data, split=args.split)
    for kind, amount in budgets:
        label = f"{amount:g} {kind}"
        results: dict[str, list[tuple[int, int, EverythingResult, PointEvalResult]]] = {m: [] for m in MODES}
        for seed in args.seeds:
            runs = {}
            for mode in MODES:
                start = time.perf_counter()
                checkpoint, steps = train(args.config, args.data, out / f"{kind}-{seed}-{mode}", mode,
                                          (kind, amount), seed, args.threads)
                runs[mode] = (checkpoint, steps)
                print(f"{label}, seed {seed}, {mode}: {steps} steps in {time.perf_counter() - start:.0f} s")
            loaded = {mode: load_checkpoint(checkpoint) for mode, (checkpoint, _) in runs.items()}
            models = {mode: model for mode, (model, _) in loaded.items()}
            # the same prompts for both: assigned with the nearest-neighbour model's encoder, as `saom eval` does
            points = evaluate_point_prompts(
                models, dataset, ("nearest_neighbour",), assign_with="nearest_neighbour", progress=False
            )["nearest_neighbour"]
            everything = score_everything(loaded, dataset, args.everything_frames)
            for mode in MODES:
                results[mode].append((seed, runs[mode][1], everything[mode], points[mode]))
        frames = results[MODES[0]][0][2].frames
        print(f"\n{label}: {frames} of {len(dataset)} frames in everything mode; point prompts on all "
              f"{len(dataset)} frames, {results[MODES[0]][0][3].objects} objects\n")
        print(
            "| prompts.mode | seed | steps | AP (agnostic) | AR100 | AP (per class) | masks/frame | GT objects/frame "
            "| masks/object | grid-point mIoU | class acc |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in MODES:
            for seed, steps, everything_result, point_result in results[mode]:
                print(row(mode, seed, steps, everything_result, point_result))
        print(f"nn vs random ({label}): AP {_mean(results, 'nearest_neighbour', 'AP')} vs "
              f"{_mean(results, 'random_foreground', 'AP')}, masks/object "
              f"{_mean(results, 'nearest_neighbour', 'masks')} vs {_mean(results, 'random_foreground', 'masks')}")


def _mean(results: dict[str, list[tuple[int, int, EverythingResult, PointEvalResult]]], mode: str, what: str) -> str:
    """The mean over seeds of AP or masks per object, each seed's value in brackets."""
    values = [
        (e.coco_agnostic["AP"] or 0.0) if what == "AP" else (e.masks_per_object or 0.0) for _, _, e, _ in results[mode]
    ]
    digits = 3 if what == "AP" else 2
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{sum(values) / len(values):.{digits}f} ({each})"


if __name__ == "__main__":
    main()
