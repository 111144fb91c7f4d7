"""Everything mode: SAOM's generator against segment_anything.SamAutomaticMaskGenerator, fairly.

Same model, same frames, same grid and thresholds, one run. Both generators are timed eager and
with their mask decoder torch.compile'd (the stock predictor's `mask_decoder` too), and the ratios
are taken eager vs eager and compiled vs compiled. SAOM's everything-of-interest mode (best mask,
class filter: what the robot runs) is timed with the full grid and with its two prompt reductions, alone and together
(`coarse_to_fine`, `prompt_min_object_prob`: settings of saom_core.settings). Quality is checked in the same run: mask
AP (class-agnostic and per class, pycocotools) of each SAOM setting on the test split; a setting
is kept only if both are within `--ap-tolerance` of the full grid's. Vanilla mode (all 3 masks
per point, no class filter) is checked against the stock generator's masks. Last line:
`speedup: <x>`, the smaller of the two fair ratios for the fastest kept setting.

    python bench/everything_mode.py --checkpoint runs/demo/run/checkpoints/best.pt --data runs/demo/data
    python bench/everything_mode.py --random-model vit_b --device cuda --ap-frames 0   # vit_b shapes, timing only
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from saom_core.data.classes import ClassList
from saom_core.data.reader import SaomDataset
from saom_core.device import resolve_device
from saom_core.eval.everything_eval import run_everything
from saom_core.eval.matching import agreement
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig
from saom_core.model.architectures import get_config
from saom_core.model.checkpoint import load_checkpoint
from saom_core.model.saom import SaomModel, build_model
from saom_core.precision import cpu_model
from saom_core.settings import SegmenterSettings

# SAOM everything-of-interest settings compared (name -> GeneratorConfig fields); the last is the default.
SAOM_SETTINGS = {
    "full grid": dict(coarse_to_fine=False, prompt_min_object_prob=0.0),
    "coarse-to-fine": dict(coarse_to_fine=True, prompt_min_object_prob=0.0),
    "object prior": dict(coarse_to_fine=False, prompt_min_object_prob=SegmenterSettings.prompt_min_object_prob),
    "object prior + coarse-to-fine (default)": dict(
        coarse_to_fine=True, prompt_min_object_prob=SegmenterSettings.prompt_min_object_prob
    ),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_per_frame(
    run: Callable, frames: list[np.ndarray], device: torch.device, repeats: int, clock: str = "wall"
) -> tuple[float, list]:
    """Median ms per frame after a warm-up frame (which also pays any one-off compile)."""
    now = CLOCKS[clock]
    run(frames[0])
    outputs, times = [], []
    for _ in range(repeats):
        for frame in frames:
            synchronize(device)
            start = now()
            outputs.append(run(frame))
            synchronize(device)
            times.append(now() - start)
    return 1000 * statistics.median(times), outputs[: len(frames)]


@contextlib.contextmanager
def compiled_stock_decoder(model: SaomModel) -> Iterator[None]:
    """The stock predictor calls `model.mask_decoder(...)`: compile that module for the duration."""
    eager = model.mask_decoder
    model.mask_decoder = torch.compile(eager)
    try:
        yield
    finally:
        model.mask_decoder = eager


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/run/checkpoints/best.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"))
    parser.add_argument("--random-model", default=None, help="time a randomly initialised config instead (e.g. vit_b)")
    parser.add_argument("--frames", type=int, default=4, help="test frames timed")
    parser.add_argument(
        "--ap-frames", type=int, default=None, help="test frames for the AP check (default: the whole split; 0: skip)"
    )
    parser.add_argument(
        "--ap-tolerance",
        type=float,
        default=0.01,
        help="largest AP drop (class-agnostic and per class) a kept setting may show",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile pair (no C++ compiler)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, summed over its threads "
        "(for a machine shared with other work)",
    )
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")

    dataset = None
    if args.random_model:
        torch.manual_seed(0)
        model = build_model(get_config(args.random_model), ClassList.from_yaml("pybullet")).to(device).eval()
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(args.frames)]
        # A random model's masks are noise: accept all of them so both paths do the full work.
        thresholds = dict(
            pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.3, min_mask_region_area=150
        )
        source = f"random {args.random_model}"
    else:
        if not args.checkpoint.exists():
            raise SystemExit(f"{args.checkpoint} not found: run `make demo` first or pass --checkpoint/--data")
        model, info = load_checkpoint(args.checkpoint, device=device)
        dataset = SaomDataset(args.data, split="test")
        frames = [dataset.load_image(i) for i in range(min(args.frames, len(dataset)))]
        thresholds = info.tuned.values()  # the thresholds tuned for this checkpoint (else the paper's)
        source = str(args.checkpoint)

    modes = [("eager", False)] + ([] if args.no_compile else [("compiled", True)])
    shape = frames[0].shape[:2]
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads"
    )
    print(
        f"model: {source} (config {model.config.name}); frames: {len(frames)} x {shape[1]}x{shape[0]}; "
        f"grid {args.points_per_side}x{args.points_per_side}"
    )
    print(f"thresholds (all generators): {thresholds}")
    print(f"machine: {machine}; torch {torch.__version__}; repeats {args.repeats}; fp32; {args.clock} clock")

    stock = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **thresholds)
    common = dict(points_per_side=args.points_per_side, **thresholds)
    ms: dict[tuple[str, str], float] = {}
    print(
        f"{'generator':<58} {'ms/frame':>9} {'masks/frame':>12} {'matched IoU':>12} {'stock@.95':>10} {'ours@.95':>9}"
    )
    with torch.inference_mode():
        reference = None
        for mode, compile_decoder in modes:
            with compiled_stock_decoder(model) if compile_decoder else contextlib.nullcontext():
                ms[("stock", mode)], stock_out = time_per_frame(
                    stock.generate, frames, device, args.repeats, args.clock
                )
            print(
                f"{'SamAutomaticMaskGenerator (stock), ' + mode:<58} {ms[('stock', mode)]:>9.1f} "
                f"{np.mean([len(o) for o in stock_out]):>12.1f}"
            )
            if reference is None:
                reference = [
                    np.stack([m["segmentation"] for m in out]) if out else np.zeros((0, *shape), bool)
                    for out in stock_out
                ]
            vanilla = EverythingGenerator(
                model, GeneratorConfig(multimask="all", keep_background=True, compile=compile_decoder, **common)
            )
            ms[("vanilla", mode)], vanilla_out = time_per_frame(
                vanilla.generate, frames, device, args.repeats, args.clock
            )
            candidate = [
                np.stack([i.mask for i in seg.instances]) if seg.instances else np.zeros((0, *shape), bool)
                for seg in vanilla_out
            ]
            found = [agreement(r, c) for r, c in zip(reference, candidate, strict=True)]
            matched, recall, precision = (
                float(np.mean([getattr(a, k) for a in found]))
                for k in ("mean_matched_iou", "recall_at_095", "precision_at_095")
            )
            print(
                f"{'SAOM, vanilla mode (all 3 masks, no class filter), ' + mode:<58} {ms[('vanilla', mode)]:>9.1f} "
                f"{np.mean([len(s.instances) for s in vanilla_out]):>12.1f} "
                f"{matched:>12.3f} {recall:>10.3f} {precision:>9.3f}"
            )
            if model.classifier is None:
                continue
            for name, fields in SAOM_SETTINGS.items():
                generator = EverythingGenerator(model, GeneratorConfig(compile=compile_decoder, **common, **fields))
                ms[(name, mode)], out = time_per_frame(generator.generate, frames, device, args.repeats, args.clock)
                print(
                    f"{'SAOM, of-interest mode, ' + name + ', ' + mode:<58} {ms[(name, mode)]:>9.1f} "
                    f"{np.mean([len(s.instances) for s in out]):>12.1f}"
                )

        if model.classifier is None or dataset is None or args.ap_frames == 0:
            candidates = ["vanilla"]
            print("no AP check (no class head or no dataset): the vanilla mode is the headline")
        else:
            n_frames = len(dataset) if args.ap_frames is None else min(args.ap_frames, len(dataset))
            print(f"AP check: everything-of-interest mode on {n_frames} of {len(dataset)} test frames")
            ap: dict[str, tuple[float, float]] = {}
            for name, fields in SAOM_SETTINGS.items():
                generator = EverythingGenerator(model, GeneratorConfig(**common, **fields))
                result = run_everything(
                    generator.generate, dataset, has_classes=True, max_frames=n_frames, progress=False
                )
                ap[name] = (result.coco_agnostic["AP"] or 0.0, (result.coco_per_class or {}).get("AP") or 0.0)
                print(f"  {name:<40} AP class-agnostic {ap[name][0]:.3f}  per class {ap[name][1]:.3f}  "
                      f"masks/frame {result.masks_per_frame:.2f} (ground truth {result.objects_per_frame:.2f})")
            full = ap["full grid"]
            candidates = [n for n in SAOM_SETTINGS if all(full[i] - ap[n][i] <= args.ap_tolerance for i in range(2))]
            print(f"kept (AP within {args.ap_tolerance} of the full grid's): {', '.join(candidates)}")

    best = min(candidates, key=lambda n: ms[(n, "eager")])
    ratios = {mode: ms[("stock", mode)] / ms[(best, mode)] for mode, _ in modes}
    for mode, ratio in ratios.items():
        print(f"{best} vs stock, {mode} vs {mode}: {ratio:.2f}x")
    if len(modes) == 2:
        print(
            f"(unfair pair, for reference: {best} compiled vs stock eager "
            f"{ms[('stock', 'eager')] / ms[(best, 'compiled')]:.2f}x)"
        )
    print(f"speedup: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
