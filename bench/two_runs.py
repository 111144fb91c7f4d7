"""What the two-training benches (tiny_recipe.py, assignment_ablation.py) share: checking the dataset
and output folder they are given, and keeping both runs in it or in a temporary one."""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from saom_core.data.reader import SaomDataset
from saom_core.eval.everything_eval import EverythingResult, run_everything
from saom_core.infer.generator import EverythingGenerator, generator_config
from saom_core.model.checkpoint import CheckpointInfo
from saom_core.model.saom import SaomModel
from saom_core.settings import SegmenterSettings


def run_in_out_dir(
    parser: argparse.ArgumentParser, args: argparse.Namespace, run: Callable[[argparse.Namespace, Path], None],
    prefix: str,
) -> None:
    """Call `run(args, folder)` with `args.out` (which must not exist yet) or a temporary folder."""
    torch.set_num_threads(args.threads)
    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists; pass a new --out")
    if not (args.data / "annotations.json").exists():
        parser.error(
            f"{args.data} is not a SAOM dataset (run make demo, or saom collect --scenes 400 --out {args.data})"
        )
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            run(args, Path(tmp))
    else:
        run(args, args.out)


def score_everything(
    loaded: dict[str, tuple[SaomModel, CheckpointInfo]], dataset: SaomDataset, max_frames: int | None
) -> dict[str, EverythingResult]:
    """Everything mode of each run's checkpoint (its tuned thresholds, default settings) on `dataset`."""
    return {
        name: run_everything(
            EverythingGenerator(model, generator_config(SegmenterSettings(), info.tuned)).generate, dataset,
            has_classes=True, max_frames=max_frames, progress=False,
        )
        for name, (model, info) in loaded.items()
    }
