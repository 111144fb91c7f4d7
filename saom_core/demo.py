"""The main job (`make demo` / `saom demo`): collect -> fine-tune -> evaluate -> segment -> 3D and
tracking on a few trajectory scenes -> report.

Each stage reuses what an earlier, interrupted run left in the output directory (the dataset,
the training run via --resume), so re-running the same command continues instead of starting over.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from saom_core.data.format import ANNOTATIONS
from saom_core.errors import SaomError
from saom_core.io import atomic_write_json


@dataclass
class DemoSettings:
    out: Path
    config: Path
    # weights to fine-tune from instead of the recipe's (e.g. official SAM); the baseline is always
    # the model fine-tuning started from (vanilla SAM, the paper's setting)
    checkpoint: Path | None = None
    data: Path | None = None  # an existing dataset instead of collecting one
    scenes: int = 200
    seed: int = 0
    workers: int = 2
    eval_split: str = "test"
    everything_frames: int | None = None  # everything mode on the first N frames of the split; None: all
    # the baseline's: vanilla SAM cuts a frame into many pieces and prompts every grid point doing so (slow)
    baseline_everything_frames: int | None = 16
    segment_frames: int = 4
    trajectory_scenes: int = 3  # scenes of a moving camera for the 3D and tracking figures ...
    trajectory_frames: int = 8  # ... frames each, from another seed than the training data (unseen rooms)
    overrides: tuple[str, ...] = ()
    # The whole run, in seconds (None: no limit): training stops early enough to leave `reserve_s` for
    # the stages after it, and prints the steps it reached (the recipe's own `train.max_seconds` still applies).
    budget_s: float | None = None
    # Seconds kept for the stages after training, on a machine that collects a scene in
    # `reserve_collect_s_per_scene`; a run that collects slower keeps proportionally more (docs/results.md)
    reserve_s: float = 150.0
    reserve_collect_s_per_scene: float = 0.48


def _stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def reserve_seconds(settings: DemoSettings, collect_s_per_scene: float | None) -> float:
    """Seconds to keep for the stages after training: `reserve_s`, scaled up by how much slower than
    the reference this machine collected a scene (evaluation and collection both run the CPU flat out;
    unscaled when nothing was collected in this run)."""
    if collect_s_per_scene is None:
        return settings.reserve_s
    return settings.reserve_s * max(1.0, collect_s_per_scene / settings.reserve_collect_s_per_scene)


def _training_budget(settings: DemoSettings, used: float, recipe_seconds: float | None,
                     collect_s_per_scene: float | None = None) -> float:
    """Seconds of training that keep the run within its budget, at most the recipe's own limit."""
    assert settings.budget_s is not None
    reserve = reserve_seconds(settings, collect_s_per_scene)
    left = settings.budget_s - used - reserve
    if left < 60:
        raise SaomError(
            f"the demo's budget of {settings.budget_s:.0f} s leaves {left:.0f} s for training after {used:.0f} s "
            f"of data collection and {reserve:.0f} s kept for evaluation; raise --budget-minutes "
            "or pass 0 for no budget"
        )
    seconds = left if recipe_seconds is None else min(recipe_seconds, left)
    speed = "" if collect_s_per_scene is None else f" at {collect_s_per_scene:.2f} s per collected scene"
    print(f"training budget: {seconds:.0f} s (the run's {settings.budget_s:.0f} s, {used:.0f} s used, "
          f"{reserve:.0f} s kept for the stages after training{speed})")
    return seconds


def run_demo(settings: DemoSettings) -> Path:
    from saom_core.data.check import check_dataset
    from saom_core.data.collect import collect_dataset
    from saom_core.data.reader import SaomDataset
    from saom_core.eval.evaluate import EvalSettings, evaluate
    from saom_core.eval.objects3d_eval import Objects3DEvaluation
    from saom_core.eval.objects3d_eval import format_markdown as format_objects_3d
    from saom_core.infer.files import segment_files
    from saom_core.infer.segmenter import load_segmenter
    from saom_core.train.recipe import load_train_config
    from saom_core.train.trainer import Trainer

    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    data = settings.data or out / "data"
    collect_s_per_scene = None
    if settings.data is None:
        t = _stage(f"1/6 collect {settings.scenes} PyBullet scenes -> {data}")
        if not (data / ANNOTATIONS).exists():
            collect_dataset(
                sim="pybullet",
                scenes=settings.scenes,
                out=data,
                seed=settings.seed,
                workers=settings.workers,
                resume=data.exists(),
            )
            collect_s_per_scene = (time.perf_counter() - t) / settings.scenes
        report, dataset = check_dataset(data, progress=False)
        print(report.format(dataset).split("\n\nMasks per class")[0])
        print(f"({time.perf_counter() - t:.0f} s)")

    overrides = [f"data.root={data}", *settings.overrides]
    if settings.checkpoint is not None:
        overrides.append(f"model.checkpoint={settings.checkpoint}")
    cfg = load_train_config(settings.config, overrides)
    if settings.budget_s is not None:
        seconds = _training_budget(settings, time.perf_counter() - started, cfg.train.max_seconds, collect_s_per_scene)
        cfg = load_train_config(settings.config, [*overrides, f"train.max_seconds={seconds:.0f}"])
    run_dir = out / "run"
    t = _stage(f"2/6 fine-tune ({cfg.model.config}, {cfg.train.max_steps} steps) -> {run_dir}")
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    result = Trainer(cfg, run_dir, resume=resume).fit()
    best = "n/a" if result.best_score is None else f"{result.best_score:.3f}"
    print(f"{result.steps} steps, {result.masks_per_second:.0f} masks/s, best val score {best} "
          f"({time.perf_counter() - t:.0f} s)")
    saom_ckpt = result.best_checkpoint or result.last_checkpoint
    # the paper's comparison: SAOM against the pretrained SAM it was fine-tuned from (from scratch: untrained)
    baseline = cfg.model.checkpoint or run_dir / "checkpoints" / "init.pt"

    t = _stage(
        f"3/6 evaluate {saom_ckpt.name} against "
        f"{f'vanilla SAM ({baseline})' if cfg.model.checkpoint else 'the untrained model'} on '{settings.eval_split}'"
    )
    report_dir = out / "report"
    report_md = evaluate(
        saom_ckpt, baseline, data, report_dir,
        EvalSettings(split=settings.eval_split, points_per_side=cfg.prompts.points_per_side,
                     everything_frames=settings.everything_frames,
                     baseline_everything_frames=settings.baseline_everything_frames, device=cfg.train.device),
    )
    print(report_md.read_text().split("## Per-class")[0].rstrip())
    print(f"({time.perf_counter() - t:.0f} s)")

    t = _stage(f"4/6 segment {settings.segment_frames} held-out frames")
    held_out = SaomDataset(data, split=settings.eval_split)
    if len(held_out) == 0:
        raise SaomError(f"{data}: split '{settings.eval_split}' is empty; collect more scenes")
    frames = [data / held_out.images[i]["file_name"] for i in range(min(settings.segment_frames, len(held_out)))]
    segmenter = load_segmenter(str(saom_ckpt), device=cfg.train.device, points_per_side=cfg.prompts.points_per_side)
    for outcome in segment_files(segmenter, frames, report_dir / "segment"):
        print(f"{outcome.source.name}: {outcome.instances} objects -> {outcome.overlay}")
    print(f"({time.perf_counter() - t:.0f} s)")

    t = _stage(
        f"5/6 3D objects and tracking: "
        f"{settings.trajectory_scenes} trajectory scenes x {settings.trajectory_frames} frames"
    )
    trajectory = out / "trajectory"
    if not (trajectory / ANNOTATIONS).exists():
        collect_dataset(sim="pybullet", scenes=settings.trajectory_scenes, out=trajectory, seed=settings.seed + 1,
                        workers=settings.workers, resume=trajectory.exists(), trajectory=settings.trajectory_frames,
                        progress=False)
    sequences = SaomDataset(trajectory)
    evaluation = Objects3DEvaluation(sequences)
    for i in range(len(sequences)):
        evaluation.add(i, segmenter.segment(sequences.load_image(i)))
    atomic_write_json(report_dir / "objects_3d_trajectory.json", evaluation.result(), indent=1)
    print("\n".join(format_objects_3d(evaluation.result(), len(sequences))))
    print(f"({time.perf_counter() - t:.0f} s)")

    _stage("6/6 done")
    print(f"total {time.perf_counter() - started:.0f} s; report: {report_md}")
    return report_md
