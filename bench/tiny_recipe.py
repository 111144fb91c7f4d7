"""SAOM's tiny CPU recipe against a plain training: same data, same start, same CPU time, one seed a run.

The plain recipe is the floor of issue 4, run by the same trainer: the tiny SAM, all masks of 2
frames per step, one random foreground point per mask, AdamW at a constant lr 6e-4, the
authors' class head (IoU token), focal (alpha 0.25) + dice on the best-fitting of SAM's 3 masks
+ cross-entropy + IoU MSE (without it the predicted IoU that picks the mask is never taught), no
background points, no flips. SAOM's recipe is `config/train_tiny.yaml`, as `make demo` trains it.
Both start from the recipe's `model.checkpoint` (the shipped vanilla tiny SAM, as the paper
fine-tunes SAM; `model.checkpoint=null` on the command line's config for the from-scratch pair)
and train the same parameters (the recipe's `train.trainable`).
Both use the trainer's mixed precision (`train.amp: auto`: bf16 on CPUs that compute it natively),
so the comparison is of recipes, not of number formats.

SAOM's recipe trains first, for its configured steps and seconds (`--seconds` sets its time
budget); the plain one then gets exactly the seconds that took (`train.max_seconds`). Both are
scored on the held-out split with the same prompts:
  * the floor's metric: one random foreground point per object (seeded), mean IoU over objects
    and the share of objects classified right;
  * the paper's: each object's nearest-neighbour grid point, IoU and class accuracy per class;
  * the paper's Table 5 as a ratio: everything mode (each checkpoint's tuned thresholds) on the
    whole split, masks per frame over ground-truth objects per frame, with mask AP / AP50.
Prints two tables and, last, `recipe vs plain: ...`.

    python bench/tiny_recipe.py --data runs/demo/data          # the demo's dataset
    python bench/tiny_recipe.py --data runs/demo/data --seed 1 # the spread: another seed
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from two_runs import run_in_out_dir, score_everything

from saom_core.data.reader import SaomDataset
from saom_core.eval.evaluate import machine_description
from saom_core.eval.point_eval import POINT_PROMPTS, PointEvalResult, evaluate_point_prompts
from saom_core.model.checkpoint import load_checkpoint
from saom_core.train.recipe import load_train_config
from saom_core.train.trainer import Trainer

PLAIN = [
    "model.head_input=iou_token", "model.crop_classifier=false", "prompts.mode=random_foreground",
    "prompts.extra_points_per_mask=0", "data.negatives_per_frame=0", "data.hflip=false",
    "train.class_pool_true_masks=false", "train.frames_per_step=2", "train.max_steps=1000000",
    "optim.lr=6e-4", "optim.warmup_steps=1", "optim.min_lr_ratio=1.0",
    "loss.focal_alpha=0.25", "loss.mask_selection=min_loss",
]


def train(config: Path, data: Path, out: Path, overrides: list[str]) -> tuple[Path, int, float]:
    """-> (last checkpoint, steps, seconds)."""
    cfg = load_train_config(config, [f"data.root={data}", "train.validate_every_epochs=1000000", *overrides])
    start = time.perf_counter()
    result = Trainer(cfg, out).fit()
    return result.last_checkpoint, result.steps, time.perf_counter() - start


def row(name: str, random_point: PointEvalResult, grid_point: PointEvalResult, steps: int, seconds: float) -> str:
    return (
        f"| {name} | {steps} | {seconds:.0f} | {random_point.instance_miou:.3f} "
        f"| {random_point.instance_class_accuracy:.3f} | {grid_point.miou:.3f} | {grid_point.mean_class_accuracy:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path("runs/demo/data"), help="a SAOM dataset with train/val/test splits"
    )
    parser.add_argument("--config", type=Path, default=Path("config/train_tiny.yaml"))
    parser.add_argument(
        "--out", type=Path, default=None, help="a new folder to keep both runs in (default: a temporary one)"
    )
    parser.add_argument("--split", default="test", help="held-out split to score on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="train.seed of both runs (another seed: the spread)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="the recipe's training seconds (default: the config's budget)"
    )
    args = parser.parse_args()
    run_in_out_dir(parser, args, run, prefix="saom-tiny-recipe-")


def run(args: argparse.Namespace, out: Path) -> None:
    print(f"machine: {machine_description(torch.device('cpu'))}")
    print(f"data: {args.data}, scored on split '{args.split}'; train.seed {args.seed}")
    overrides = [f"train.threads={args.threads}", "train.device=cpu", f"train.seed={args.seed}"]
    budget = [] if args.seconds is None else [f"train.max_seconds={args.seconds}"]
    recipe_ckpt, recipe_steps, recipe_s = train(args.config, args.data, out / "recipe", [*overrides, *budget])
    # the recipe's trainable parameters, less the crop classifier that the plain model has not got
    trainable = [p for p in load_train_config(args.config).train.trainable if not p.startswith("crop_classifier")]
    plain_ckpt, plain_steps, plain_s = train(
        args.config, args.data, out / "plain",
        [*overrides, *PLAIN, f"train.trainable=[{','.join(trainable)}]", f"train.max_seconds={recipe_s:.0f}"],
    )
    dataset = SaomDataset(args.data, split=args.split)
    loaded = {"recipe": load_checkpoint(recipe_ckpt), "plain": load_checkpoint(plain_ckpt)}
    models = {name: model for name, (model, _) in loaded.items()}
    by_prompt = evaluate_point_prompts(models, dataset, POINT_PROMPTS)
    random_point, grid_point = by_prompt["random_foreground"], by_prompt["nearest_neighbour"]
    print(f"\n{len(dataset)} frames, {random_point['recipe'].objects} objects\n")
    print("| recipe | steps | train s | random point: mIoU (objects) | class acc (objects) "
          "| grid point: mIoU (classes) | class acc (classes) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        row("SAOM tiny (config/train_tiny.yaml)", random_point["recipe"], grid_point["recipe"], recipe_steps, recipe_s)
    )
    print(row("plain (issue 4's floor)", random_point["plain"], grid_point["plain"], plain_steps, plain_s))
    everything = score_everything(loaded, dataset, None)
    print(f"\neverything mode on all {len(dataset)} frames "
          f"({everything['recipe'].objects_per_frame:.2f} ground-truth objects a frame)\n")
    print("| recipe | masks/frame | masks/object | mask AP | AP50 | AR100 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result in everything.items():
        coco = result.coco_agnostic
        print(f"| {name} | {result.masks_per_frame:.2f} | {result.masks_per_object or 0:.2f} | {coco['AP'] or 0:.3f} "
              f"| {coco['AP50'] or 0:.3f} | {coco['AR100'] or 0:.3f} |")
    r, p = random_point["recipe"], random_point["plain"]
    er, ep = everything["recipe"], everything["plain"]
    print(
        f"recipe vs plain: random-point mIoU {r.instance_miou:.3f} vs {p.instance_miou:.3f}, "
        f"class accuracy {r.instance_class_accuracy:.3f} vs {p.instance_class_accuracy:.3f}, "
        f"masks/object {er.masks_per_object or 0:.2f} vs {ep.masks_per_object or 0:.2f}, "
        f"AP50 {er.coco_agnostic['AP50'] or 0:.3f} vs {ep.coco_agnostic['AP50'] or 0:.3f}"
    )


if __name__ == "__main__":
    main()
