"""The segmenter's runtimes side by side on the CPU: torch eager, torch compiled, onnxruntime.

Same checkpoint, same 640x480 frames, same settings (the checkpoint's tuned everything-of-interest
defaults), one run; each backend through `load_segmenter`, so what is timed is what the node and
`saom segment` run. Per backend, median ms per frame after a warm-up frame: everything of
interest, prompted mode with 1 and with 16 points (the whole call: preparing, encoding, decoding,
pasting), and the encoder alone. The onnxruntime backend runs the folder `saom export` writes
(exported into a temporary folder unless --onnx names one). Last line: `fastest: <backend> <fps> fps`
(everything of interest).

    python bench/runtime.py --checkpoint runs/demo/run/checkpoints/best.pt
    python bench/runtime.py --random-model tiny --frames 2      # no checkpoint: shapes and plumbing only
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saom_core.data.classes import ClassList  # noqa: E402
from saom_core.infer.export_onnx import export_onnx  # noqa: E402
from saom_core.infer.segmenter import SaomSegmenter, load_segmenter  # noqa: E402
from saom_core.model.architectures import get_config  # noqa: E402
from saom_core.model.checkpoint import save_checkpoint  # noqa: E402
from saom_core.model.saom import build_model  # noqa: E402
from saom_core.precision import cpu_model  # noqa: E402

BACKENDS = {  # name -> load_segmenter settings
    "torch eager": dict(backend="torch"),
    "torch compiled": dict(backend="torch", compile=True),
    "onnxruntime cpu": dict(backend="onnxruntime", onnx_provider="cpu"),
}
COLUMNS = ("everything", "1 point", "16 points", "encoder")


def make_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """Smooth random scenes (blobs of colour), shifted per frame: masks have shapes, not noise."""
    import cv2

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        frames.append(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC))
    return frames


def median_ms(run: Callable[[np.ndarray], object], frames: list[np.ndarray], repeats: int) -> float:
    """Median ms of `run` per frame after one warm-up call (which also pays any compile)."""
    run(frames[0])
    times = []
    for _ in range(repeats):
        for frame in frames:
            start = time.perf_counter()
            run(frame)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def time_backend(segmenter: SaomSegmenter, frames: list[np.ndarray], repeats: int) -> dict[str, float]:
    height, width = frames[0].shape[:2]
    rng = np.random.default_rng(1)
    one = rng.uniform((0, 0), (width, height), (1, 2))
    sixteen = rng.uniform((0, 0), (width, height), (16, 2))
    runtime = segmenter.runtime
    prepared = segmenter.generator.prepare(frames[0])

    def encode(_: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return runtime.encode(prepared)

    return {
        "everything": median_ms(segmenter.segment, frames, repeats),
        "1 point": median_ms(lambda f: segmenter.segment_prompts(f, points=one), frames, repeats),
        "16 points": median_ms(lambda f: segmenter.segment_prompts(f, points=sixteen), frames, repeats),
        "encoder": median_ms(encode, frames, repeats),
    }


def random_checkpoint(config: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(get_config(config), ClassList.from_yaml("pybullet"), head_input="mask_pool",
                        crop_classifier=True)
    return save_checkpoint(folder / f"random_{config}.pt", model.eval())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a SAOM checkpoint (make demo's: "
                        "runs/demo/run/checkpoints/best.pt)")
    source.add_argument("--random-model", metavar="CONFIG", help="a random model of this config (timing only)")
    parser.add_argument("--onnx", type=Path, default=None, help="its `saom export` folder (default: exported now)")
    parser.add_argument("--frames", type=int, default=4, help="distinct frames, each timed --repeats times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="intra-op threads (default: every core; 0: the segmenter's default, every core but one)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="saom-runtime-bench-") as tmp:
        checkpoint = args.checkpoint or random_checkpoint(args.random_model, Path(tmp))
        onnx = args.onnx
        if onnx is None and any(BACKENDS[b]["backend"] == "onnxruntime" for b in args.backends):
            onnx = export_onnx(checkpoint, Path(tmp) / "onnx")["metadata"].parent
        frames = make_frames(args.frames, args.width, args.height)
        import onnxruntime

        results = {}
        for name in args.backends:
            settings = BACKENDS[name]
            source = onnx if settings["backend"] == "onnxruntime" else checkpoint
            segmenter = load_segmenter(source, device="cpu", threads=args.threads, **settings)
            if name == args.backends[0]:
                print(f"machine: CPU {cpu_model()}, {torch.get_num_threads()} threads (of "
                      f"{len(os.sched_getaffinity(0))} cores); torch {torch.__version__}, "
                      f"onnxruntime {onnxruntime.__version__}")
                print(f"model: {segmenter.trained_on}")
                print(f"frames: {args.frames} x {args.repeats} at {args.width}x{args.height}; median ms per frame")
                print("| backend | " + " | ".join(COLUMNS) + " | everything fps |")
                print("|---|" + "---:|" * (len(COLUMNS) + 1))
            row = time_backend(segmenter, frames, args.repeats)
            results[name] = row
            cells = " | ".join(f"{row[c]:.1f}" for c in COLUMNS)
            print(f"| {name} | {cells} | {1000 / row['everything']:.2f} |", flush=True)
            segmenter.close()
    fastest = min(results, key=lambda n: results[n]["everything"])
    print(f"fastest: {fastest.replace(' ', '_')} {1000 / results[fastest]['everything']:.2f} fps")


if __name__ == "__main__":
    main()
