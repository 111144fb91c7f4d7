"""`saom eval`: SAOM against a baseline (vanilla SAM or any checkpoint) on one dataset split."""
from __future__ import annotations

import datetime
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saom_core.data.reader import SaomDataset
from saom_core.eval.everything_eval import run_everything
from saom_core.eval.objects3d_eval import Objects3DEvaluation
from saom_core.eval.point_eval import POINT_PROMPTS, evaluate_point_prompts
from saom_core.eval.report import write_report
from saom_core.infer.generator import GeneratorConfig, generator_config
from saom_core.infer.segmenter import SaomSegmenter, resolve_device
from saom_core.infer.types import Segmentation
from saom_core.model.checkpoint import CheckpointInfo, load_checkpoint
from saom_core.model.saom import SaomModel
from saom_core.precision import cpu_model
from saom_core.settings import STOCK_SAM, SegmenterSettings
from saom_core.viz import draw_instances, save_rgb_png

# Vanilla SAM is run as released (SamAutomaticMaskGenerator defaults); SAOM with the paper's tuned values.


@dataclass
class EvalSettings:
    split: str = "test"
    points_per_side: int | None = None  # None: the grid the SAOM checkpoint was trained on
    max_frames: int | None = None
    everything_frames: int | None = None  # everything mode is the slow part; cap it separately
    baseline_everything_frames: int | None = None  # the baseline's (an untrained model prompts every point); None: same
    overlays: int = 4
    device: str = "auto"


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    import os

    return (
        f"CPU {cpu_model()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads (torch {torch.__version__})"
    )


def generator_for(model: SaomModel, points_per_side: int, info: CheckpointInfo) -> GeneratorConfig:
    """A model's own tuned settings where its checkpoint has them (SAOM's, or the project's vanilla tiny
    SAM's), else stock SAM's (official SAM weights)."""
    if info.is_saom:
        return generator_config(SegmenterSettings(points_per_side=points_per_side), info.tuned)
    return GeneratorConfig(**{**STOCK_SAM.values(), "points_per_side": points_per_side})


def _describe(model: SaomModel) -> str:
    if model.classifier is None:
        return f"config {model.config.name}, vanilla SAM, no class head"
    crop = " + crop classifier (its labels reported)" if model.crop_classifier is not None else ""
    return (
        f"config {model.config.name}, class head on {model.classifier.head_input}{crop}, "
        f"{len(model.class_names) - 1} classes"
    )


def evaluate(
    saom_checkpoint: str | Path,
    baseline_checkpoint: str | Path,
    dataset_root: str | Path,
    out_dir: str | Path,
    settings: EvalSettings,
    progress: bool = True,
) -> Path:
    """Run both evaluations for both models and write the report; returns report.md."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(settings.device)
    dataset = SaomDataset(dataset_root, split=settings.split)
    saom, saom_info = load_checkpoint(saom_checkpoint, device=device)
    baseline, baseline_info = load_checkpoint(baseline_checkpoint, device=device)
    grid = settings.points_per_side or saom_info.grid
    by_prompt = evaluate_point_prompts(
        {"baseline": baseline, "saom": saom}, dataset, POINT_PROMPTS, grid, assign_with="saom",
        max_frames=settings.max_frames, device=device, progress=progress,
    )
    points, random_points = by_prompt["nearest_neighbour"], by_prompt["random_foreground"]
    overlay_frames: dict[int, dict[str, Any]] = {}

    objects_3d = Objects3DEvaluation(dataset) if dataset.has_depth else None  # SAOM's masks, on datasets with depth

    def keep_overlay(name: str):
        def on_frame(index: int, image: np.ndarray, seg: Segmentation) -> None:
            if index < settings.overlays:
                overlay_frames.setdefault(index, {"image": image})[name] = seg
            if name == "saom" and objects_3d is not None:
                objects_3d.add(index, seg)

        return on_frame

    report: dict[str, Any] = {
        "dataset": str(dataset_root),
        "split": settings.split,
        "saom_checkpoint": str(saom_checkpoint),
        "baseline_checkpoint": str(baseline_checkpoint),
        "saom_model": _describe(saom),
        "baseline_model": _describe(baseline),
        "machine": machine_description(device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {**asdict(settings), "points_per_side": grid},
    }
    for name, model, info in (("baseline", baseline, baseline_info), ("saom", saom, saom_info)):
        config = generator_for(model, grid, info)
        segmenter = SaomSegmenter(model, config)
        frames = settings.baseline_everything_frames if name == "baseline" else None
        everything = run_everything(
            segmenter.segment, dataset, model.classifier is not None, max_frames=frames or settings.everything_frames,
            progress=progress, on_frame=keep_overlay(name),
        )
        report[name] = {
            "points": points[name].to_dict(),
            "random_points": random_points[name].to_dict(),
            "everything": everything.to_dict(),
            "generator": f"pred IoU {config.pred_iou_thresh}, stability {config.stability_score_thresh}, "
            f"box NMS {config.box_nms_thresh}, min region {config.min_mask_region_area}, "
            f"same-class overlap {config.same_class_overlap_thresh}, grid {config.points_per_side}",
        }
    if objects_3d is not None:
        report["objects_3d"] = objects_3d.result()
    report["frames"] = min(len(dataset), settings.max_frames or len(dataset))
    report["objects"] = points["saom"].objects
    overlay_files = _write_overlays(out_dir, dataset, overlay_frames)
    report["seconds"] = time.perf_counter() - start
    return write_report(out_dir, report, dataset.classes, overlay_files)


def _write_overlays(out_dir: Path, dataset: SaomDataset, frames: dict[int, dict[str, Any]]) -> list[str]:
    """One PNG per frame: ground truth | baseline everything mode | SAOM everything-of-interest mode."""
    files = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, entry in sorted(frames.items()):
        sample = dataset[index]
        panels = [draw_instances(sample.image, sample.masks, sample.labels, sample.class_ids.tolist())]
        titles = ["ground truth", "baseline", "SAOM"]
        for name in ("baseline", "saom"):
            if name not in entry:  # beyond the frames this model's everything mode covered
                panels.append(draw_instances(sample.image, np.zeros((0, *sample.image.shape[:2]), bool), [], []))
                titles[len(panels) - 1] += " (frame not run)"
                continue
            seg: Segmentation = entry[name]
            masks = (
                np.stack([i.mask for i in seg.instances])
                if seg.instances
                else np.zeros((0, *sample.image.shape[:2]), bool)
            )
            texts = [i.class_name if name == "saom" else "" for i in seg.instances]
            colors = [i.class_id if name == "saom" else k + 1 for k, i in enumerate(seg.instances)]
            panels.append(draw_instances(sample.image, masks, texts, colors))
        titled = [_title(p, t) for p, t in zip(panels, titles, strict=True)]
        name = f"overlay_{index:03d}.png"
        save_rgb_png(out_dir / name, np.concatenate(titled, axis=1))
        files.append(name)
    return files


def _title(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2

    bar = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)
