"""What the two-training benches (tiny_recipe.py, assignment_ablation.py, domain_shift.py) share:
checking the dataset and output folder they are given, keeping both runs in it or in a temporary one,
and scoring both checkpoints' everything mode."""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from saom_core.data.reader import SaomDataset
from saom_core.eval.everything_eval import EverythingResult, run_everything
from saom_core.infer.generator import EverythingGenerator, generator_config
from saom_core.infer.types import Segmentation
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


FrameHook = Callable[[int, np.ndarray, Segmentation], None]


def score_everything(
    loaded: Mapping[str, tuple[SaomModel, CheckpointInfo]], dataset: SaomDataset, max_frames: int | None,
    on_frame: Callable[[str], FrameHook] | None = None,
) -> dict[str, EverythingResult]:
    """Everything mode of each run's checkpoint (its tuned thresholds, default settings) on `dataset`.
    `on_frame(name)`: a hook that sees each frame's segmentation by that run (e.g. for 3D figures)."""
    return {
        name: run_everything(
            EverythingGenerator(model, generator_config(SegmenterSettings(), info.tuned)).generate, dataset,
            has_classes=True, max_frames=max_frames, progress=False,
            on_frame=on_frame(name) if on_frame is not None else None,
        )
        for name, (model, info) in loaded.items()
    }
