"""The nearest neighbour assignment's last step, measured: which grid point a location prior snaps to.

`argmin`: the first of the nearest grid points (the rule before 2026-11-28; on the tiny config every
feature-cell centre is equidistant from 4 grid points, so it always takes the top-left one and 3 of
4 grid points can never be a prompt). `tie-free`: today's `snap_to_grid`, the grid point of the
prior's cell deepest inside the mask. Scored on val and test from each object's assigned grid
point (one foreground point per object: per-class mIoU, mAcc, mean class accuracy).

    python bench/snapping_rule.py --data runs/demo/data --checkpoint runs/demo/run/checkpoints/best.pt
    python bench/snapping_rule.py --data runs/demo/data --seconds 570     # + train the recipe with each rule

With --checkpoint, that one model is scored with both rules (the evaluation side). With --seconds,
the tiny recipe is also trained that long with each rule (the training side) and both models are
scored with both rules. Last line: `tie-free vs argmin: test mIoU <a> vs <b>` (the --seconds run:
each model scored with the rule it was trained with).
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from two_runs import run_in_out_dir

import saom_core.prompting.assignment as assignment
from saom_core.data.reader import SaomDataset
from saom_core.eval.evaluate import machine_description
from saom_core.eval.point_eval import PointEvalResult, evaluate_point_prompts
from saom_core.model.checkpoint import load_model
from saom_core.model.saom import SaomModel
from saom_core.train.recipe import load_train_config
from saom_core.train.trainer import Trainer


def argmin_snap(
    prior: np.ndarray, prior_cell: np.ndarray, grid: np.ndarray, grid_cell: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """The old rule: the first nearest grid point of each prior."""
    return np.linalg.norm(prior[:, None, :] - grid[None], axis=2).argmin(1)


RULES = {"argmin": argmin_snap, "tie-free": assignment.snap_to_grid}


@contextlib.contextmanager
def snapping(rule: str) -> Iterator[None]:
    """Training and evaluation take their prompts from `rule` for the duration."""
    today = assignment.snap_to_grid
    assignment.snap_to_grid = RULES[rule]
    try:
        yield
    finally:
        assignment.snap_to_grid = today


def score(models: dict[str, SaomModel], data: Path) -> dict[tuple[str, str, str], PointEvalResult]:
    """{(split, model, rule): result}, each model scored from each rule's grid points."""
    results = {}
    for split in ("val", "test"):
        dataset = SaomDataset(data, split=split)
        for rule in RULES:
            with snapping(rule):
                by_model = evaluate_point_prompts(models, dataset, ("nearest_neighbour",), progress=False)
            for name, result in by_model["nearest_neighbour"].items():
                results[(split, name, rule)] = result
    return results


def report(results: dict[tuple[str, str, str], PointEvalResult], new: str, old: str) -> None:
    """The table, then the last line: test mIoU of model `new` with the tie-free rule vs `old` with argmin."""
    print("| split | model | prompts snapped by | mIoU | mAcc | class acc |")
    print("|---|---|---|---:|---:|---:|")
    for (split, name, rule), r in results.items():
        print(f"| {split} | {name} | {rule} | {r.miou:.3f} | {r.macc:.3f} | {r.mean_class_accuracy:.3f} |")
    tie_free, argmin = results[("test", new, "tie-free")], results[("test", old, "argmin")]
    print(f"tie-free vs argmin: test mIoU {tie_free.miou:.3f} vs {argmin.miou:.3f}")


def train(args: argparse.Namespace, out: Path) -> None:
    models = {}
    for rule in RULES:
        overrides = [
            f"data.root={args.data}", f"train.max_seconds={args.seconds}", f"train.threads={args.threads}",
            "train.device=cpu", "train.validate_every_epochs=1000000",
        ]
        with snapping(rule):
            result = Trainer(load_train_config(args.config, overrides), out / rule).fit()
        print(f"trained with {rule}: {result.steps} steps")
        models[f"trained with {rule}"] = load_model(result.last_checkpoint)
    report(score(models, args.data), "trained with tie-free", "trained with argmin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"), help="a SAOM dataset with val/test")
    parser.add_argument("--checkpoint", type=Path, default=None, help="score this model with both rules")
    parser.add_argument("--seconds", type=float, default=None, help="train the recipe this long with each rule")
    parser.add_argument("--config", type=Path, default=Path("config/train_tiny.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="a new folder for the two runs (default: temporary)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (args.checkpoint is None) == (args.seconds is None):
        parser.error("pass --checkpoint (score one model) or --seconds (train with each rule)")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description(torch.device('cpu'))}; data {args.data}")
    if args.seconds is not None:
        run_in_out_dir(parser, args, train, prefix="saom-snapping-")
        return
    report(score({"checkpoint": load_model(args.checkpoint)}, args.data), "checkpoint", "checkpoint")


if __name__ == "__main__":
    main()
