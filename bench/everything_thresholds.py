"""Everything-mode thresholds of one SAOM checkpoint, swept: masks per object against mask AP.

A training config's `inference:` section fixes the thresholds its checkpoint is segmented with; a
model that trains more of itself (say, the encoder's last block) may predict IoUs and stabilities
on another scale, so the same thresholds keep more masks per object. This scores each
(predicted IoU, stability, same-class overlap) triple of the grid on a held-out split (val by
default, so that the test split stays unseen by the choice), one everything-mode pass each, with
the segmenter's default settings otherwise (the same-class overlap: the checkpoint's tuned value
unless `--same-class-overlap` lists values). Last line: `chosen: ...`, the triple with the best
class-agnostic AP among those that keep at most `--max-masks-per-object` masks per ground-truth
object (none: the fewest masks).

    python bench/everything_thresholds.py --checkpoint runs/demo/run/checkpoints/best.pt --data runs/demo/data
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from saom_core.data.reader import SaomDataset
from saom_core.eval.evaluate import machine_description
from saom_core.eval.everything_eval import EverythingResult, run_everything
from saom_core.infer.generator import EverythingGenerator, generator_config
from saom_core.model.checkpoint import load_checkpoint
from saom_core.settings import SegmenterSettings

SweptThresholds = tuple[float, float, float]  # predicted IoU, stability, same-class overlap


def sweep(checkpoint: Path, dataset: SaomDataset, pred_ious: list[float], stabilities: list[float],
          overlaps: list[float | None], max_frames: int | None) -> dict[SweptThresholds, EverythingResult]:
    """Everything mode on `dataset` at each (predicted IoU, stability, same-class overlap) triple; an
    overlap of None is the checkpoint's tuned one, keyed by its value."""
    model, info = load_checkpoint(checkpoint)
    results = {}
    for pred_iou, stability, overlap in itertools.product(pred_ious, stabilities, overlaps):
        settings = SegmenterSettings(
            pred_iou_thresh=pred_iou, stability_score_thresh=stability, same_class_overlap_thresh=overlap
        )
        config = generator_config(settings, info.tuned)
        generator = EverythingGenerator(model, config)
        results[pred_iou, stability, config.same_class_overlap_thresh] = run_everything(
            generator.generate, dataset, has_classes=True, max_frames=max_frames, progress=False
        )
    return results


def choose(results: dict[SweptThresholds, EverythingResult], max_masks_per_object: float) -> SweptThresholds:
    """The best AP within the mask budget; when no triple keeps to it, the one with the fewest masks."""
    within = [key for key, r in results.items() if (r.masks_per_object or 0) <= max_masks_per_object]
    if not within:
        return min(results, key=lambda key: results[key].masks_per_object or 0)
    return max(within, key=lambda key: results[key].coco_agnostic["AP"] or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a SAOM dataset")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-frames", type=int, default=None, help="first N frames of the split (default: all)")
    parser.add_argument("--pred-iou", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--stability", type=float, nargs="+", default=[0.8, 0.85, 0.9])
    parser.add_argument(
        "--same-class-overlap", type=float, nargs="+", default=[None],
        help="same_class_overlap_thresh values (1: off; default: the checkpoint's tuned value)",
    )
    parser.add_argument("--max-masks-per-object", type=float, default=1.3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.checkpoint.exists():
        parser.error(f"no checkpoint at {args.checkpoint}")
    torch.set_num_threads(args.threads)
    dataset = SaomDataset(args.data, split=args.split)
    results = sweep(args.checkpoint, dataset, args.pred_iou, args.stability, args.same_class_overlap, args.max_frames)
    frames = next(iter(results.values())).frames
    print(f"machine: {machine_description(torch.device('cpu'))}")
    print(f"checkpoint {args.checkpoint}; split '{args.split}', {frames} frames\n")
    print("| pred IoU | stability | same-class overlap | masks/frame | masks/object | AP | AP50 | AR100 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (pred_iou, stability, overlap), result in results.items():
        coco = result.coco_agnostic
        print(f"| {pred_iou:.2f} | {stability:.2f} | {overlap:.2f} | {result.masks_per_frame:.2f} "
              f"| {result.masks_per_object or 0:.2f} "
              f"| {coco['AP'] or 0:.3f} | {coco['AP50'] or 0:.3f} | {coco['AR100'] or 0:.3f} |")
    pred_iou, stability, overlap = choose(results, args.max_masks_per_object)
    best = results[pred_iou, stability, overlap]
    print(f"chosen: pred_iou_thresh {pred_iou}, stability_score_thresh {stability}, "
          f"same_class_overlap_thresh {overlap}: "
          f"AP {best.coco_agnostic['AP'] or 0:.3f}, {best.masks_per_object or 0:.2f} masks per object "
          f"(budget {args.max_masks_per_object})")


if __name__ == "__main__":
    main()
