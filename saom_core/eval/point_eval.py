"""The paper's evaluation: one foreground point per ground-truth object, the model's most
confident mask, IoU and Acc accumulated per class.

Definitions (as the authors' evaluation computes them, per class over all its instances):
    IoU = sum of intersections / sum of unions
    Acc = sum of intersections / sum of ground-truth pixels
    class accuracy = fraction of instances whose kept mask gets the right class (SAOM only)
The point is the object's nearest-neighbour-assigned grid point (the prompt everything mode
would use for it), computed once with the `assign_with` model's encoder and shared by every
model compared, so baseline and SAOM answer the very same prompts. An object with no grid point
inside it cannot be found in everything mode: it is scored as an empty mask. `prompt=
"random_foreground"` instead draws one pixel of each object (seeded, the same for every model):
the usual interactive point-prompt benchmark, which every object can take part in.
Per-instance means (mean IoU over objects, share of objects classified right) are kept as well. Classes without
instances stay in the tables with occurrences 0 and are left out of the means.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from saom_core.data.classes import ClassList
from saom_core.data.reader import Sample, SaomDataset
from saom_core.device import resolve_device
from saom_core.model.grid import grid_points
from saom_core.model.saom import SaomModel
from saom_core.prompting.assignment import Assignment, nearest_neighbour_assignment, random_foreground_points
from saom_core.settings import POINTS_PER_SIDE

POINT_PROMPTS = ("nearest_neighbour", "random_foreground")


@dataclass
class ClassStats:
    occurrences: int = 0
    intersection: float = 0.0
    union: float = 0.0
    gt_area: float = 0.0
    correct: int = 0
    iou_sum: float = 0.0  # sum of per-instance IoUs

    @property
    def iou(self) -> float | None:
        return self.intersection / self.union if self.occurrences else None

    @property
    def acc(self) -> float | None:
        return self.intersection / self.gt_area if self.occurrences else None

    @property
    def class_accuracy(self) -> float | None:
        return self.correct / self.occurrences if self.occurrences else None

    def add(self, intersection: float, union: float, gt_area: float, correct: bool) -> None:
        self.occurrences += 1
        self.intersection += intersection
        self.union += union
        self.gt_area += gt_area
        self.correct += int(correct)
        self.iou_sum += intersection / union if union > 0 else 0.0


@dataclass
class PointEvalResult:
    classes: ClassList
    has_classifier: bool
    per_class: dict[str, ClassStats] = field(default_factory=dict)
    unreachable: int = 0
    objects: int = 0

    def _mean(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.per_class.values() if s.occurrences]
        return float(np.mean(values)) if values else None

    @property
    def miou(self) -> float | None:
        return self._mean("iou")

    @property
    def macc(self) -> float | None:
        return self._mean("acc")

    @property
    def mean_class_accuracy(self) -> float | None:
        return self._mean("class_accuracy") if self.has_classifier else None

    @property
    def instance_miou(self) -> float | None:
        """Mean IoU over objects (not classes)."""
        return sum(s.iou_sum for s in self.per_class.values()) / self.objects if self.objects else None

    @property
    def instance_class_accuracy(self) -> float | None:
        """Share of objects classified right (not a mean over classes)."""
        if not (self.objects and self.has_classifier):
            return None
        return sum(s.correct for s in self.per_class.values()) / self.objects

    def to_dict(self) -> dict[str, Any]:
        return {
            "mIoU": self.miou,
            "mAcc": self.macc,
            "mean_class_accuracy": self.mean_class_accuracy,
            "instance_mIoU": self.instance_miou,
            "instance_class_accuracy": self.instance_class_accuracy,
            "objects": self.objects,
            "unreachable_objects": self.unreachable,
            "per_class": {
                name: {
                    "occurrences": s.occurrences,
                    "IoU": s.iou,
                    "Acc": s.acc,
                    "class_accuracy": s.class_accuracy if self.has_classifier else None,
                }
                for name, s in self.per_class.items()
            },
        }


def evaluate_points(
    models: Mapping[str, SaomModel],
    dataset: SaomDataset,
    points_per_side: int = POINTS_PER_SIDE,
    assign_with: str | None = None,
    max_frames: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    prompt: str = "nearest_neighbour",
    seed: int = 0,
    best_of_three: bool = False,
) -> dict[str, PointEvalResult]:
    """Evaluate several models on the same single-point prompts; returns one result per model."""
    return evaluate_point_prompts(
        models, dataset, (prompt,), points_per_side, assign_with, max_frames, device, progress, seed, best_of_three
    )[prompt]


@torch.no_grad()
def evaluate_point_prompts(
    models: Mapping[str, SaomModel],
    dataset: SaomDataset,
    prompts: Sequence[str] = POINT_PROMPTS,
    points_per_side: int = POINTS_PER_SIDE,
    assign_with: str | None = None,
    max_frames: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    seed: int = 0,
    best_of_three: bool = False,
) -> dict[str, dict[str, PointEvalResult]]:
    """`evaluate_points` for several kinds of prompt in one pass: each frame is encoded once per
    model (with vit_b on a CPU the encoder is most of the cost). -> {prompt: {model: result}}.

    `best_of_three` scores the one of SAM's 3 masks closest to the object instead of the most
    confident one: SAM's oracle metric, for a class-agnostic model whose targets come at several
    granularities (a point on a part is answered with the part, the whole, or both)."""
    unknown = [p for p in prompts if p not in POINT_PROMPTS]
    if unknown:
        raise ValueError(f"unknown point prompt {unknown[0]!r}; known: {POINT_PROMPTS}")
    device = resolve_device(device)
    elsewhere = {name: str(m.device) for name, m in models.items() if m.device != device}
    if elsewhere:  # one device for every model and the ground truth: nothing moves silently
        raise ValueError(f"point evaluation on {device}, but models {elsewhere} are elsewhere; move them first")
    rng = np.random.default_rng(seed)
    assign_name = assign_with or next(iter(models))
    results = {
        prompt: {
            name: PointEvalResult(
                dataset.classes, m.classifier is not None, {c: ClassStats() for c in dataset.classes.names}
            )
            for name, m in models.items()
        }
        for prompt in prompts
    }
    was_training = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    n_frames = len(dataset) if max_frames is None else min(len(dataset), max_frames)
    for index in tqdm(range(n_frames), desc="point eval", unit="frame", disable=not progress, leave=False):
        sample = dataset[index]
        if len(sample.masks) == 0:
            continue
        height, width = sample.image.shape[:2]
        masks = torch.from_numpy(sample.masks).to(device)
        image = torch.from_numpy(sample.image)[None].to(device)
        prepared = {name: m.prepare_images(image) for name, m in models.items()}
        embeddings = {name: m.encode(prepared[name]) for name, m in models.items()}
        ref = models[assign_name]
        for prompt in prompts:
            if prompt == "random_foreground":
                assignment = random_foreground_points(sample.masks, rng)
            else:
                assignment = nearest_neighbour_assignment(
                    embeddings[assign_name][0], masks, grid_points(points_per_side, height, width),
                    ref.input_size(height, width), ref.config.image_size,
                )
            for name, model in models.items():
                _score(
                    model, prepared[name], embeddings[name], assignment, sample, masks, dataset.classes,
                    results[prompt][name], best_of_three,
                )
    for name, m in models.items():
        m.train(was_training[name])
    return results


def _score(
    model: SaomModel, prepared: torch.Tensor, embedding: torch.Tensor, assignment: Assignment, sample: Sample,
    masks: torch.Tensor, classes: ClassList, result: PointEvalResult, best_of_three: bool = False,
) -> None:
    """Prompt `model` with the assigned points of one frame and add its objects to `result`."""
    height, width = masks.shape[1:]
    device = masks.device
    points = torch.as_tensor(assignment.points, dtype=torch.float32, device=device)
    decoded = model.decode_points(embedding, points, [(height, width)])
    kept = decoded.keep_best()
    if best_of_three:
        pred = model.logits_to_frame(decoded.low_res_logits, height, width) > 0  # (P, 3, H, W)
        inter = (pred & masks[:, None]).flatten(2).sum(2).float()
        union = (pred | masks[:, None]).flatten(2).sum(2).float()
        best = (inter / union.clamp(min=1)).argmax(1, keepdim=True)
        inter, union = inter.gather(1, best)[:, 0], union.gather(1, best)[:, 0]
    else:
        pred = model.logits_to_frame(kept.logits[:, None], height, width)[:, 0] > 0
        inter = (pred & masks).flatten(1).sum(1).float()
        union = (pred | masks).flatten(1).sum(1).float()
    gt_area = masks.flatten(1).sum(1).float()
    class_logits = model.kept_class_logits(prepared, kept)
    predicted_class = class_logits.argmax(1).cpu().numpy() if class_logits is not None else None
    names = model.class_names
    for k, class_id in enumerate(sample.class_ids):
        reachable = bool(assignment.reachable[k])
        result.objects += 1
        result.unreachable += int(not reachable)
        result.per_class[classes.name_of(int(class_id))].add(
            intersection=float(inter[k]) if reachable else 0.0,
            union=float(union[k]) if reachable else float(gt_area[k]),
            gt_area=float(gt_area[k]),
            correct=reachable
            and predicted_class is not None
            and names[int(predicted_class[k])] == classes.name_of(int(class_id)),
        )
