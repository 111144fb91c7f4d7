"""Does domain randomisation pay? The demo recipe trained without and with it, scored in-domain and shifted.

Issue 21's measurement, in one run. Two fine-tunings of `config/train_tiny.yaml` from its
`model.checkpoint` (the shipped vanilla tiny SAM) for the same `--steps`, differing only in their
data: `--data` (a `--randomisation none` dataset, e.g. the demo's) and a `--randomisation default`
dataset of the same simulator settings, seed and scene count, collected here. Both are scored on the
in-domain test split (`--data`'s test split) and on a shifted test set (`saom collect --domain
shifted` with its own seed, all of its frames; by default as many scenes as the in-domain test split
has), each with the same prompts for both models:
  * point prompts: one seeded random foreground point per object, mean IoU over objects and the
    share of objects classified right (the prompts do not depend on the model, so both see the same);
  * everything mode (each checkpoint's tuned thresholds): class-agnostic mask AP;
  * 3D: median centroid error (cm) of the objects its masks match (IoU >= 0.5), from the set's depth
    as recorded: clean in the `none` test split, noisy (sigma = k z^2, holes) in the shifted one; the
    same with the ground-truth masks is printed beside it, so depth noise and segmentation separate.
The goal checked (on point-prompt mIoU): the randomised model's drop from in-domain to shifted is at
most half the plain model's, and its in-domain mIoU is at most 2 points below the plain model's.

Datasets and trainings are kept in `--work` and reused when run again (a collection resumes, a
finished training of the same steps is not repeated), so an interrupted run continues.

    python bench/domain_shift.py --data runs/demo/data --work runs/domain_shift --steps 300 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_check import source_revision
from two_runs import FrameHook, score_everything

from saom_core.data.collect import collect_dataset
from saom_core.data.reader import SaomDataset
from saom_core.eval.objects3d_eval import Objects3DEvaluation
from saom_core.eval.point_eval import evaluate_point_prompts
from saom_core.infer.types import Segmentation
from saom_core.model.checkpoint import load_checkpoint
from saom_core.precision import cpu_model
from saom_core.train.config import load_train_config
from saom_core.train.trainer import Trainer

MODELS = ("none", "default")  # the training data's --randomisation
TEST_SETS = ("in-domain", "shifted")
GOAL_IN_DOMAIN_COST = 0.02  # at most 2 points of in-domain mIoU


def collect(data: Path, out: Path, scenes: int, seed: int, randomisation: str, domain: str, workers: int) -> Path:
    """A dataset of `data`'s simulator settings but the given scenes, seed and randomisation (resumes)."""
    settings = json.loads((data / "collect.json").read_text())
    collect_dataset(
        sim=settings["simulator"], scenes=scenes, out=out, seed=seed, size=settings["size"], workers=workers,
        resume=out.exists(), min_area=settings["min_area"], randomisation=randomisation, domain=domain,
        progress=False,
    )
    return out


def train(config: Path, data: Path, out: Path, steps: int, threads: int, seed: int) -> tuple[Path, float]:
    """-> (final checkpoint, training seconds); a finished run of the same steps in `out` is reused."""
    done = out / "domain_shift_done.json"
    if done.exists() and json.loads(done.read_text())["steps"] == steps:
        return out / "checkpoints" / "last.pt", float(json.loads(done.read_text())["seconds"])
    overrides = [
        f"data.root={data}", f"train.max_steps={steps}", "train.max_seconds=null", f"train.threads={threads}",
        f"train.seed={seed}",
        "train.device=cpu", "train.validate_every_epochs=1000000", "train.val_max_frames=8",  # best.pt: unused
    ]
    start = time.perf_counter()
    result = Trainer(load_train_config(config, overrides), out, progress=False).fit()
    seconds = time.perf_counter() - start
    if result.steps != steps:
        raise SystemExit(f"{out}: the training stopped at step {result.steps} of {steps}")
    done.write_text(json.dumps({"steps": steps, "seconds": seconds}))
    return result.last_checkpoint, seconds


def score(checkpoints: dict[str, Path], dataset: SaomDataset, point_frames: int | None,
          everything_frames: int | None) -> dict[str, dict[str, Any]]:
    """Each model's figures on `dataset`: point prompts on its first `point_frames` frames (the same
    prompts for all models), everything mode and 3D on the first `everything_frames` (the slow part)."""
    loaded = {name: load_checkpoint(path) for name, path in checkpoints.items()}
    points = evaluate_point_prompts(
        {name: model for name, (model, _) in loaded.items()}, dataset, ("random_foreground",),
        max_frames=point_frames, progress=False,
    )["random_foreground"]
    objects_3d = {name: Objects3DEvaluation(dataset) for name in loaded}

    def on_frame(name: str) -> FrameHook:
        def add(index: int, image: np.ndarray, seg: Segmentation) -> None:
            objects_3d[name].add(index, seg)

        return add

    everything = score_everything(loaded, dataset, everything_frames, on_frame=on_frame)
    figures = {}
    for name in loaded:
        found = objects_3d[name].result()
        figures[name] = {
            "miou": points[name].instance_miou,
            "class_accuracy": points[name].instance_class_accuracy,
            "ap": everything[name].coco_agnostic["AP"],
            "centroid_error_cm": found["predicted_masks"]["median_centroid_error_cm"],
            "centroid_error_cm_ground_truth_masks": found["ground_truth_masks"]["median_centroid_error_cm"],
            "point_frames": min(len(dataset), point_frames or len(dataset)),
            "everything_frames": everything[name].frames,
            "objects": points[name].objects,
            "points": points[name].to_dict(),
            "everything": everything[name].to_dict() | {"detections": None},
            "objects_3d": found,
        }
    return figures


def verdict(figures: dict[str, dict[str, dict[str, Any]]]) -> tuple[bool | None, str]:
    """The issue's goal on point-prompt mIoU: (met, one line why); None where there is no drop to halve."""
    def drop(model: str) -> float:
        return figures[model]["in-domain"]["miou"] - figures[model]["shifted"]["miou"]

    cost = figures["none"]["in-domain"]["miou"] - figures["default"]["in-domain"]["miou"]
    plain, randomised = drop("none"), drop("default")
    facts = (f"mIoU drop in-domain -> shifted {plain:+.3f} without randomisation, {randomised:+.3f} with; "
             f"in-domain cost of randomisation {cost:+.3f}")
    if plain <= 0:
        return None, f"goal undecided: no drop to halve ({facts})"
    met = randomised <= plain / 2 and cost <= GOAL_IN_DOMAIN_COST
    return met, f"goal {'met' if met else 'not met'}: {facts} (goal: drop at most half, cost at most 0.020)"


def table(figures: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown rows: one per training, in-domain | shifted | change for each metric."""
    metrics = (("miou", "mIoU", 3), ("class_accuracy", "class acc", 3), ("ap", "AP", 3),
               ("centroid_error_cm", "3D err cm", 1))
    head = " | ".join(f"{label} in / shifted / change" for _, label, _ in metrics)
    lines = [f"| trained on | {head} |", "|---|" + "---:|" * len(metrics)]
    for model in MODELS:
        cells = []
        for key, _, digits in metrics:
            a, b = figures[model]["in-domain"][key], figures[model]["shifted"][key]
            if a is None or b is None:
                cells.append("n/a")
                continue
            cells.append(f"{a:.{digits}f} / {b:.{digits}f} / {b - a:+.{digits}f}")
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"),
                        help="a --randomisation none dataset with train/val/test splits (read only)")
    parser.add_argument("--work", type=Path, default=Path("runs/domain_shift"),
                        help="folder for the collected datasets and the trainings (reused when run again)")
    parser.add_argument("--config", type=Path, default=Path("config/train_tiny.yaml"))
    parser.add_argument("--steps", type=int, default=300, help="training steps of each model")
    parser.add_argument("--shifted-seed", type=int, default=100, help="the shifted set's seed (not the training's)")
    parser.add_argument("--shifted-scenes", type=int, default=None,
                        help="scenes of the shifted test set (default: as many as --data's test split)")
    parser.add_argument("--eval-frames", type=int, default=None,
                        help="point prompts on the first N frames of each test set (default: all)")
    parser.add_argument("--everything-frames", type=int, default=None,
                        help="everything mode and 3D on the first N frames of each set (default: as --eval-frames)")
    parser.add_argument("--train-seed", type=int, default=0,
                        help="train.seed of both trainings (run several to see the spread)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="collector processes")
    parser.add_argument("--json", type=Path, default=None, help="the figures' JSON (default: WORK/result.json)")
    args = parser.parse_args()
    if not (args.data / "collect.json").exists():
        parser.error(f"{args.data} is not a collected SAOM dataset (run make demo)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    run(args)


def run(args: argparse.Namespace) -> None:
    settings = json.loads((args.data / "collect.json").read_text())
    if settings["randomisation"] != "none":
        raise SystemExit(f"{args.data} was collected with --randomisation {settings['randomisation']}, not none")
    in_domain = SaomDataset(args.data, split="test")
    test_scenes = len({img["saom"]["scene"] for img in in_domain.images})
    machine = f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"machine: {machine}; torch {torch.__version__}; commit {source_revision()}")
    wall: dict[str, float] = {}
    start = time.perf_counter()
    data = {"none": args.data, "default": collect(args.data, args.work / "data_default", settings["scenes"],
                                                  settings["seed"], "default", "train", args.workers)}
    wall["collect default"] = time.perf_counter() - start
    start = time.perf_counter()
    shifted_scenes = args.shifted_scenes or test_scenes
    shifted_root = collect(args.data, args.work / f"shifted_seed{args.shifted_seed}", shifted_scenes,
                           args.shifted_seed, "none", "shifted", args.workers)
    wall["collect shifted"] = time.perf_counter() - start
    checkpoints, train_seconds = {}, {}
    seed_suffix = f"_seed{args.train_seed}" if args.train_seed else ""  # seed 0 keeps the first runs' folders
    for model in MODELS:
        checkpoints[model], train_seconds[model] = train(
            args.config, data[model], args.work / f"train_{model}_{args.steps}steps{seed_suffix}", args.steps,
            args.threads, args.train_seed,
        )
        wall[f"train {model}"] = train_seconds[model]
        print(f"trained on {model}: {args.steps} steps in {train_seconds[model]:.0f} s")
    tests = {"in-domain": in_domain, "shifted": SaomDataset(shifted_root)}
    by_test = {}
    for test, dataset in tests.items():
        start = time.perf_counter()
        by_test[test] = score(checkpoints, dataset, args.eval_frames, args.everything_frames or args.eval_frames)
        wall[f"eval {test}"] = time.perf_counter() - start
    figures = {model: {test: by_test[test][model] for test in TEST_SETS} for model in MODELS}
    met, line = verdict(figures)
    frames = {test: {key: by_test[test]["none"][key] for key in ("point_frames", "everything_frames", "objects")}
              for test in TEST_SETS}
    print(f"\n{args.steps} steps each from {args.config} (train.seed {args.train_seed}); in-domain: {args.data} "
          f"test split; shifted: {shifted_root} (seed {args.shifted_seed}, {shifted_scenes} scenes)")
    for test in TEST_SETS:
        f = frames[test]
        print(f"{test}: point prompts on {f['point_frames']} of {len(tests[test])} frames ({f['objects']} objects), "
              f"everything mode and 3D on the first {f['everything_frames']}")
    print()
    print("\n".join(table(figures)))
    print("\n3D median centroid error with the ground-truth masks (depth alone): " + ", ".join(
        f"{test} {by_test[test]['none']['centroid_error_cm_ground_truth_masks'] or float('nan'):.1f} cm"
        for test in TEST_SETS))
    print("wall seconds: " + ", ".join(f"{stage} {s:.0f}" for stage, s in wall.items()))
    print(line)
    out = args.json or args.work / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine, "torch": torch.__version__, "commit": source_revision(), "steps": args.steps,
        "train_seed": args.train_seed,
        "config": str(args.config), "data": str(args.data), "shifted": str(shifted_root),
        "shifted_seed": args.shifted_seed, "frames": frames, "goal_met": met,
        "verdict": line, "wall_seconds": wall, "figures": figures,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
