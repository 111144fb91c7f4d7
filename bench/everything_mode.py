"""Everything mode: SAOM's generator against segment_anything.SamAutomaticMaskGenerator.

Same model, same frames, same grid and thresholds, one run. Prints ms/frame for each, how well the
masks agree (the stock generator's masks as reference), the machine, and as its last line
`speedup: <stock ms / saom ms>`.

    python bench/everything_mode.py --checkpoint runs/demo/run/checkpoints/best.pt --data runs/demo/data
    python bench/everything_mode.py --random-model vit_b --device cuda      # vit_b shapes, timing only

Both generators run in vanilla mode (all 3 masks per point, no class filtering) so their outputs
are comparable; SAOM's everything-of-interest mode (best mask + class filter) is timed on top.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from saom_core.data.classes import ClassList
from saom_core.data.reader import SaomDataset
from saom_core.eval.matching import agreement
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig, generator_config
from saom_core.model.checkpoint import load_model
from saom_core.model.configs import get_config
from saom_core.model.saom import build_model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_frame(run, frames: list[np.ndarray], device: torch.device, repeats: int) -> tuple[float, list]:
    run(frames[0])  # warm-up
    outputs, times = [], []
    for _ in range(repeats):
        for frame in frames:
            synchronize(device)
            start = time.perf_counter()
            outputs.append(run(frame))
            synchronize(device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), outputs[: len(frames)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/run/checkpoints/best.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"))
    parser.add_argument("--random-model", default=None, help="time a randomly initialised config instead (e.g. vit_b)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true", help="bf16/fp16 autocast for SAOM's generator (GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.random_model:
        torch.manual_seed(0)
        model = build_model(get_config(args.random_model), ClassList.from_yaml("pybullet")).to(device).eval()
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(args.frames)]
        # A random model's masks are noise: accept all of them so both paths do the full work.
        thresholds = dict(pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.3, min_mask_region_area=150)
        source = f"random {args.random_model}"
    else:
        if not args.checkpoint.exists():
            raise SystemExit(f"{args.checkpoint} not found: run `make demo` first or pass --checkpoint/--data")
        model = load_model(args.checkpoint, device=device)
        dataset = SaomDataset(args.data, split="test")
        frames = [dataset.load_image(i) for i in range(min(args.frames, len(dataset)))]
        tuned = generator_config(model)  # the thresholds tuned for this checkpoint (else the paper's)
        thresholds = {k: getattr(tuned, k) for k in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area")}
        source = str(args.checkpoint)

    stock = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **thresholds)
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if args.half and device.type == "cuda" else None
    fast = EverythingGenerator(model, GeneratorConfig(points_per_side=args.points_per_side, multimask="all", keep_background=True, **thresholds), amp_dtype=amp)
    saom_mode = EverythingGenerator(model, GeneratorConfig(points_per_side=args.points_per_side, **thresholds), amp_dtype=amp)
    compiled = EverythingGenerator(model, GeneratorConfig(points_per_side=args.points_per_side, compile=True, **thresholds), amp_dtype=amp)

    with torch.inference_mode():
        stock_ms, stock_out = time_per_frame(stock.generate, frames, device, args.repeats)
        fast_ms, fast_out = time_per_frame(fast.generate, frames, device, args.repeats)
        saom_ms, saom_out = time_per_frame(saom_mode.generate, frames, device, args.repeats)
        compile_start = time.perf_counter()
        compiled.generate(frames[0])  # the one-off compile, reported apart
        compile_s = time.perf_counter() - compile_start
        compiled_ms, _ = time_per_frame(compiled.generate, frames, device, args.repeats)

    shape = frames[0].shape[:2]
    reference = [np.stack([m["segmentation"] for m in out]) if out else np.zeros((0, *shape), bool) for out in stock_out]
    candidate = [np.stack([i.mask for i in seg.instances]) if seg.instances else np.zeros((0, *shape), bool) for seg in fast_out]
    agreements = [agreement(r, c) for r, c in zip(reference, candidate)]
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    print(f"model: {source} (config {model.config.name}); frames: {len(frames)} x {shape[1]}x{shape[0]}; grid {args.points_per_side}x{args.points_per_side}")
    print(f"thresholds (both generators): {thresholds}")
    print(f"machine: {machine}; torch {torch.__version__}; repeats {args.repeats}")
    print(f"{'generator':<44} {'ms/frame':>9} {'masks/frame':>12}")
    print(f"{'SamAutomaticMaskGenerator (stock)':<44} {stock_ms:>9.1f} {np.mean([len(o) for o in stock_out]):>12.1f}")
    print(f"{'SAOM EverythingGenerator, vanilla mode':<44} {fast_ms:>9.1f} {np.mean([len(s.instances) for s in fast_out]):>12.1f}")
    print(f"{'SAOM EverythingGenerator, of-interest mode':<44} {saom_ms:>9.1f} {np.mean([len(s.instances) for s in saom_out]):>12.1f}")
    print(f"{'  same, compiled decoder (compile=True)':<44} {compiled_ms:>9.1f}   (one-off compile {compile_s:.0f} s)")
    print(
        "agreement with stock (vanilla mode): mean matched IoU "
        f"{np.mean([a.mean_matched_iou for a in agreements]):.3f}, stock masks matched at IoU>=0.95 "
        f"{np.mean([a.recall_at_095 for a in agreements]):.3f}, SAOM masks matched at IoU>=0.95 "
        f"{np.mean([a.precision_at_095 for a in agreements]):.3f}"
    )
    print(f"speedup of the compiled of-interest mode over stock: {stock_ms / compiled_ms:.2f}")
    print(f"speedup: {stock_ms / fast_ms:.2f}")


if __name__ == "__main__":
    main()
