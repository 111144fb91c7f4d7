"""3D and tracking figures on a dataset with depth (`saom eval`, `make demo`).

Per frame, predicted masks are matched one-to-one to ground-truth objects (Hungarian on mask IoU,
pairs at IoU >= 0.5). For each matched object with a 3D result (saom_core.geometry3d): the distance
between the predicted box centre and the ground-truth box centre, and the IoU of the predicted
axis-aligned box with the ground-truth box made axis-aligned in the camera frame (the box around
the rotated object box). The same with the ground-truth masks in place of predicted ones separates
3D estimation error from segmentation error. The fraction of matched objects with a 3D result
counts the ones that had too few valid depth pixels. Objects cut by the image border are reported
also apart (their hidden part cannot be measured from this view).

On trajectory data (frames with `trajectory_step`) the predicted instances of each scene go through
the Tracker in frame order and motmetrics scores the track ids against the simulator's body ids
(a hypothesis matches a ground-truth object at mask IoU >= 0.5): MOTA, IDF1, id switches. Tentative
tracks (no id yet) are not hypotheses, so the min_hits delay counts as misses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.transform import Rotation

from saom_core.data.reader import SaomDataset
from saom_core.eval.matching import MATCH_IOU, iou_matrix
from saom_core.geometry3d import CameraIntrinsics, DepthSettings, Object3D, box_iou_3d, object_from_mask
from saom_core.infer.types import Instance, Segmentation
from saom_core.track import Tracker, TrackerSettings


def ground_truth_box(obj: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, min, max) of a ground-truth object's camera-axis-aligned box: the recorded box of its
    geometry (`aabb_min`/`aabb_max`), else the box around its turned local box (an over-estimate)."""
    if "aabb_min" in obj:
        lo, hi = np.asarray(obj["aabb_min"], dtype=np.float64), np.asarray(obj["aabb_max"], dtype=np.float64)
        return (lo + hi) / 2, lo, hi
    centre = np.asarray(obj["position"], dtype=np.float64)
    rotation = Rotation.from_quat(obj["orientation"]).as_matrix()
    half = np.abs(rotation) @ (np.asarray(obj["extents"], dtype=np.float64) / 2)
    return centre, centre - half, centre + half


def match_masks(predicted: np.ndarray, truth: np.ndarray, threshold: float = MATCH_IOU) -> list[tuple[int, int]]:
    """One-to-one (predicted index, truth index) pairs at mask IoU >= threshold."""
    if len(predicted) == 0 or len(truth) == 0:
        return []
    iou = iou_matrix(predicted, truth)
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= threshold]


@dataclass
class Figures3D:
    """Accumulated 3D errors of matched objects."""

    objects: int = 0  # ground-truth objects with 3D ground truth
    matched: int = 0
    centroid_errors: list[float] = field(default_factory=list)  # metres
    box_ious: list[float] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)  # the ground-truth mask touches the image border

    def add(self, obj: Object3D | None, truth: dict[str, Any], truth_mask: np.ndarray) -> None:
        self.matched += 1
        if obj is None:
            return
        centre, lo, hi = ground_truth_box(truth)
        self.centroid_errors.append(float(np.linalg.norm(obj.centre - centre)))
        self.box_ious.append(box_iou_3d(obj.box_min, obj.box_max, lo, hi))
        self.truncated.append(bool(truth_mask[0].any() or truth_mask[-1].any() or truth_mask[:, 0].any()
                                   or truth_mask[:, -1].any()))

    def to_dict(self) -> dict[str, Any]:
        errors = np.asarray(self.centroid_errors)
        whole = ~np.asarray(self.truncated, dtype=bool)
        return {
            "objects": self.objects,
            "matched": self.matched,
            "with_3d": len(errors),
            "fraction_with_3d": len(errors) / self.matched if self.matched else None,
            "median_centroid_error_cm": float(np.median(errors) * 100) if len(errors) else None,
            "p90_centroid_error_cm": float(np.percentile(errors, 90) * 100) if len(errors) else None,
            "mean_box_iou": float(np.mean(self.box_ious)) if self.box_ious else None,
            # objects wholly in view: the part of an object cut off by the image border cannot be measured
            "not_truncated": int(whole.sum()),
            "median_centroid_error_cm_not_truncated": float(np.median(errors[whole]) * 100) if whole.any() else None,
            "mean_box_iou_not_truncated": float(np.mean(np.asarray(self.box_ious)[whole])) if whole.any() else None,
        }


class _TrackingScore:
    """motmetrics accumulators, one per trajectory scene."""

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        self.accumulators: dict[str, Any] = {}
        self.trackers: dict[str, Tracker] = {}

    def add(self, scene: str, seg: Segmentation, truth_masks: np.ndarray, truth_ids: list[int]) -> None:
        import motmetrics as mm

        if scene not in self.accumulators:
            self.accumulators[scene] = mm.MOTAccumulator(auto_id=True)
            self.trackers[scene] = Tracker(self.settings)
        self.trackers[scene].update(seg)
        tracked = [inst for inst in seg.instances if inst.track_id is not None]
        masks = np.stack([i.mask for i in tracked]) if tracked else np.zeros((0, *truth_masks.shape[1:]), bool)
        iou = iou_matrix(truth_masks, masks)
        distances = np.where(iou >= MATCH_IOU, 1.0 - iou, np.nan)
        self.accumulators[scene].update(list(truth_ids), [i.track_id for i in tracked], distances)

    def to_dict(self) -> dict[str, Any] | None:
        import motmetrics as mm

        if not self.accumulators:
            return None
        names = list(self.accumulators)
        summary = mm.metrics.create().compute_many(
            [self.accumulators[n] for n in names], names=names, metrics=["mota", "idf1", "num_switches", "num_frames"],
            generate_overall=True)
        overall = summary.loc["OVERALL"]
        return {"scenes": len(names), "frames": int(overall["num_frames"]), "MOTA": float(overall["mota"]),
                "IDF1": float(overall["idf1"]), "id_switches": int(overall["num_switches"])}


class Objects3DEvaluation:
    """Feed it every evaluated frame (`add`), read the figures (`result`)."""

    def __init__(self, dataset: SaomDataset, depth: DepthSettings = DepthSettings(),
                 tracker: TrackerSettings = TrackerSettings()) -> None:
        self.dataset, self.depth = dataset, depth
        self.predicted, self.ground_truth_masks = Figures3D(), Figures3D()
        self.tracking, self.tracking_gt = _TrackingScore(tracker), _TrackingScore(tracker)

    def add(self, index: int, seg: Segmentation) -> None:
        sample = self.dataset[index]
        camera = CameraIntrinsics(*sample.intrinsics) if sample.intrinsics else None
        if sample.depth is None or camera is None:
            return
        known = {k: obj for k, obj in enumerate(sample.objects3d) if obj is not None}
        truth = list(known)
        self.predicted.objects += len(truth)
        self.ground_truth_masks.objects += len(truth)
        for k in truth:
            mask_obj = object_from_mask(sample.masks[k], sample.depth, camera, self.depth)
            self.ground_truth_masks.add(mask_obj, known[k], sample.masks[k])
        predicted_masks = (
            np.stack([i.mask for i in seg.instances]) if seg.instances else np.zeros((0, *sample.masks.shape[1:]), bool)
        )
        objects = [object_from_mask(m, sample.depth, camera, self.depth) for m in predicted_masks]
        for p, t in match_masks(predicted_masks, sample.masks[truth] if truth else sample.masks[:0]):
            self.predicted.add(objects[p], known[truth[t]], sample.masks[truth[t]])
        if "trajectory_step" in sample.meta and "instance_ids" in sample.meta:
            scene = str(sample.meta.get("scene"))
            for inst, obj in zip(seg.instances, objects, strict=True):
                inst.object3d = obj
            self.tracking.add(scene, seg, sample.masks, sample.meta["instance_ids"])
            gt_seg = Segmentation(sample.masks.shape[1], sample.masks.shape[2], [
                Instance(mask, (0, 0, 0, 0), int(cls), name, 1.0, 1.0, 1.0,
                         object3d=object_from_mask(mask, sample.depth, camera, self.depth))
                for mask, cls, name in zip(sample.masks, sample.class_ids, sample.labels, strict=True)])
            self.tracking_gt.add(scene, gt_seg, sample.masks, sample.meta["instance_ids"])

    def result(self) -> dict[str, Any]:
        return {"predicted_masks": self.predicted.to_dict(), "ground_truth_masks": self.ground_truth_masks.to_dict(),
                "tracking": self.tracking.to_dict(), "tracking_ground_truth_masks": self.tracking_gt.to_dict()}


def format_markdown(result: dict[str, Any], frames: int) -> list[str]:
    """The report's section on 3D and tracking (`frames`: how many frames were evaluated)."""

    def num(v: Any, digits: int = 2) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    pred, gt = result["predicted_masks"], result["ground_truth_masks"]
    lines = [
        "## 3D objects from depth (SAOM masks and ground-truth masks)",
        "",
        f"On the {frames} everything-mode frames; errors against the simulator's boxes, camera frame.",
        "",
        "| metric | SAOM masks | ground-truth masks |",
        "|---|---:|---:|",
        f"| objects matched at mask IoU >= 0.5 (of {pred['objects']}) | {pred['matched']} | {gt['matched']} |",
        f"| fraction of matched objects with a 3D result | {num(pred['fraction_with_3d'], 3)} | "
        f"{num(gt['fraction_with_3d'], 3)} |",
        f"| median 3D centroid error (cm) | {num(pred['median_centroid_error_cm'])} | "
        f"{num(gt['median_centroid_error_cm'])} |",
        f"| 90th percentile 3D centroid error (cm) | {num(pred['p90_centroid_error_cm'])} | "
        f"{num(gt['p90_centroid_error_cm'])} |",
        f"| mean 3D box IoU | {num(pred['mean_box_iou'], 3)} | {num(gt['mean_box_iou'], 3)} |",
        f"| objects wholly in view (not cut by the image border) | {pred['not_truncated']} | {gt['not_truncated']} |",
        f"| median 3D centroid error, wholly in view (cm) | {num(pred['median_centroid_error_cm_not_truncated'])} | "
        f"{num(gt['median_centroid_error_cm_not_truncated'])} |",
        f"| mean 3D box IoU, wholly in view | {num(pred['mean_box_iou_not_truncated'], 3)} | "
        f"{num(gt['mean_box_iou_not_truncated'], 3)} |",
    ]
    track, track_gt = result["tracking"], result["tracking_ground_truth_masks"]
    if track is not None:
        lines += [
            "",
            f"Tracking on {track['scenes']} trajectory scenes, {track['frames']} frames "
            "(motmetrics; match at mask IoU >= 0.5):",
            "",
            "| metric | SAOM masks | ground-truth masks |",
            "|---|---:|---:|",
            f"| MOTA | {num(track['MOTA'], 3)} | {num(track_gt['MOTA'], 3)} |",
            f"| IDF1 | {num(track['IDF1'], 3)} | {num(track_gt['IDF1'], 3)} |",
            f"| id switches | {track['id_switches']} | {track_gt['id_switches']} |",
        ]
    return lines
