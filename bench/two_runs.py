"""What the two-training benches (tiny_recipe.py, assignment_ablation.py) share: checking the dataset
and output folder they are given, and keeping both runs in it or in a temporary one."""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


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
