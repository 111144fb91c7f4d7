"""Everything mode: SAOM's generator against segment_anything.SamAutomaticMaskGenerator.

Same model, same frames, same grid and thresholds, one run. Prints the machine, ms/frame for the
stock generator and for SAOM's generator in several settings (eager fp32; torch.compile'd decoder;
compiled with reduced precision: bf16 on a CPU, bf16/fp16 on a GPU), how well each one's masks agree
with the stock generator's (vanilla mode: all 3 masks per point, no class filter, so outputs are
comparable), and as its last line `speedup: <stock ms / ms>` of the fastest setting whose masks
still agree (>= 95% of masks matched at IoU >= 0.95 both ways). SAOM's everything-of-interest mode
(best mask + class filter, what the robot runs) is timed on top.

    python bench/everything_mode.py --checkpoint runs/demo/run/checkpoints/best.pt --data runs/demo/data
    python bench/everything_mode.py --random-model vit_b --device cuda      # vit_b shapes, timing only
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
from saom_core.device import resolve_device
from saom_core.eval.matching import agreement
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig
from saom_core.model.checkpoint import load_checkpoint
from saom_core.model.configs import get_config
from saom_core.model.saom import build_model
from saom_core.precision import reduced_precision


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
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings (no C++ compiler)")
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")

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
        model, info = load_checkpoint(args.checkpoint, device=device)
        dataset = SaomDataset(args.data, split="test")
        frames = [dataset.load_image(i) for i in range(min(args.frames, len(dataset)))]
        thresholds = info.tuned.values()  # the thresholds tuned for this checkpoint (else the paper's)
        source = str(args.checkpoint)

    stock = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **thresholds)
    low = reduced_precision(device)
    settings = [("eager fp32", False, None)]
    if not args.no_compile:
        settings += [("compiled fp32", True, None), (f"compiled {str(low).removeprefix('torch.')}", True, low)]
    shape = frames[0].shape[:2]
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    print(f"model: {source} (config {model.config.name}); frames: {len(frames)} x {shape[1]}x{shape[0]}; grid {args.points_per_side}x{args.points_per_side}")
    print(f"thresholds (all generators): {thresholds}")
    print(f"machine: {machine}; torch {torch.__version__}; repeats {args.repeats}")

    with torch.inference_mode():
        stock_ms, stock_out = time_per_frame(stock.generate, frames, device, args.repeats)
        reference = [np.stack([m["segmentation"] for m in out]) if out else np.zeros((0, *shape), bool) for out in stock_out]
        print(f"{'generator':<48} {'ms/frame':>9} {'masks/frame':>12} {'matched IoU':>12} {'stock@.95':>10} {'ours@.95':>9}")
        print(f"{'SamAutomaticMaskGenerator (stock)':<48} {stock_ms:>9.1f} {np.mean([len(o) for o in stock_out]):>12.1f}")
        agreeing: dict[str, float] = {}
        for name, compile_decoder, amp in settings:
            common = dict(points_per_side=args.points_per_side, compile=compile_decoder, **thresholds)
            vanilla = EverythingGenerator(model, GeneratorConfig(multimask="all", keep_background=True, **common), amp_dtype=amp)
            of_interest = EverythingGenerator(model, GeneratorConfig(**common), amp_dtype=amp)
            compile_start = time.perf_counter()
            vanilla.generate(frames[0])  # the one-off compile (if any), reported apart from the timings
            compile_s = time.perf_counter() - compile_start
            vanilla_ms, vanilla_out = time_per_frame(vanilla.generate, frames, device, args.repeats)
            saom_ms, saom_out = time_per_frame(of_interest.generate, frames, device, args.repeats)
            candidate = [np.stack([i.mask for i in seg.instances]) if seg.instances else np.zeros((0, *shape), bool) for seg in vanilla_out]
            found = [agreement(r, c) for r, c in zip(reference, candidate)]
            matched, recall, precision = (float(np.mean([getattr(a, k) for a in found])) for k in ("mean_matched_iou", "recall_at_095", "precision_at_095"))
            if recall >= 0.95 and precision >= 0.95:
                agreeing[name] = vanilla_ms
            note = f"   (first frame incl. compile {compile_s:.0f} s)" if compile_decoder else ""
            print(f"{'SAOM, vanilla mode, ' + name:<48} {vanilla_ms:>9.1f} {np.mean([len(s.instances) for s in vanilla_out]):>12.1f} {matched:>12.3f} {recall:>10.3f} {precision:>9.3f}{note}")
            print(f"{'SAOM, of-interest mode, ' + name:<48} {saom_ms:>9.1f} {np.mean([len(s.instances) for s in saom_out]):>12.1f}")
    if not agreeing:
        print("no setting agrees with the stock generator (>= 0.95 of masks matched at IoU >= 0.95)")
        print("speedup: 0.00")
        return
    best = min(agreeing, key=agreeing.get)
    print(f"fastest setting that agrees with stock: {best}")
    print(f"speedup: {stock_ms / agreeing[best]:.2f}")


if __name__ == "__main__":
    main()
