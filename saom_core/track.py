"""Ids that follow objects across frames (ROS-free): the node, `saom bag` and the evaluation use it.

Each frame's instances are matched to the live tracks by the Hungarian assignment
(scipy.optimize.linear_sum_assignment) on an affinity of mask IoU with the track's last mask and, when
both have a 3D result, closeness of their 3D centres; a pair is allowed only if the classes agree and
the centres lie within `max_distance` metres (when both have 3D: a mask in the same place but at
another depth is another object, a mask that jumped in the image but not in space is the same one),
else if the IoU reaches `min_iou`. Unmatched instances start
tentative tracks; a track is confirmed (its id is published) after `min_hits` consecutive hits, or
at once during the tracker's first `min_hits` frames (so a stream's first frame has ids, as in SORT);
a tentative track that misses once is dropped, a confirmed one after `max_misses` consecutive misses.

Ids are 1..65535 (they are the values of a mono16 instance image), never 0, and never reused while
their track lives; after 65535 they wrap around to the smallest free id.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from saom_core.errors import ConfigError
from saom_core.geometry3d import mask_bounds
from saom_core.infer.types import Instance, Segmentation
from saom_core.settings import ObjectSettings

MAX_TRACK_ID = 65535


@dataclass(frozen=True)
class TrackerSettings:
    min_hits: int = ObjectSettings.track_min_hits  # consecutive hits before a new track's id is published
    max_misses: int = ObjectSettings.track_max_misses  # consecutive frames a confirmed track survives unseen
    min_iou: float = 0.2  # the mask IoU gate, for pairs without 3D on both sides
    max_distance: float = 0.15  # the gate on 3D centre distance (metres), for pairs with 3D on both sides
    class_agnostic: bool = False  # True: a track may change class (a flickering label keeps its id)

    def __post_init__(self) -> None:
        if self.min_hits < 1 or self.max_misses < 0 or not 0 < self.min_iou <= 1 or self.max_distance <= 0:
            raise ConfigError(f"invalid tracker settings: {self}")


@dataclass
class _Track:
    track_id: int
    mask: np.ndarray
    class_id: int
    centre: np.ndarray | None
    hits: int = 1
    misses: int = 0
    confirmed: bool = False


class Tracker:
    """Assigns `track_id` to the instances of consecutive Segmentations of one camera."""

    def __init__(self, settings: TrackerSettings = TrackerSettings()) -> None:
        self.settings = settings
        self.tracks: list[_Track] = []
        self.frames = 0
        self._last_id = 0

    def reset(self) -> None:
        self.tracks, self.frames, self._last_id = [], 0, 0

    def update(self, segmentation: Segmentation) -> Segmentation:
        """Set `track_id` on every instance (None while its track is tentative); returns the input."""
        self.frames += 1
        instances = segmentation.instances
        rows, cols = self._assign(instances)
        matched_tracks, matched_instances = set(rows.tolist()), set(cols.tolist())
        for t, i in zip(rows, cols, strict=True):
            track, instance = self.tracks[t], instances[i]
            track.hits, track.misses = track.hits + 1, 0
            self._observe(track, instance)
        survivors = []
        for t, track in enumerate(self.tracks):
            if t not in matched_tracks:
                track.hits, track.misses = 0, track.misses + 1
                if not track.confirmed or track.misses > self.settings.max_misses:
                    continue
            survivors.append(track)
        for t, i in zip(rows, cols, strict=True):
            track = self.tracks[t]
            instances[i].track_id = track.track_id if track.confirmed else None
        self.tracks = survivors
        for i, instance in enumerate(instances):
            if i in matched_instances:
                continue
            track = _Track(self._new_id(), instance.mask, instance.class_id, None)
            self._observe(track, instance)
            self.tracks.append(track)
            instance.track_id = track.track_id if track.confirmed else None
        return segmentation

    def _observe(self, track: _Track, instance: Instance) -> None:
        track.mask, track.class_id = instance.mask, instance.class_id
        track.centre = None if instance.object3d is None else np.asarray(instance.object3d.centre, dtype=np.float64)
        if track.hits >= self.settings.min_hits or self.frames <= self.settings.min_hits:
            track.confirmed = True

    def _assign(self, instances: list[Instance]) -> tuple[np.ndarray, np.ndarray]:
        """Hungarian assignment of tracks (rows) to instances (columns) over the allowed pairs."""
        if not self.tracks or not instances:
            return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
        s = self.settings
        iou = _mask_ious([t.mask for t in self.tracks], [i.mask for i in instances])
        closeness = np.zeros_like(iou)
        near = np.zeros(iou.shape, dtype=bool)
        both_3d = np.zeros(iou.shape, dtype=bool)
        for r, track in enumerate(self.tracks):
            for c, instance in enumerate(instances):
                if track.centre is not None and instance.object3d is not None:
                    both_3d[r, c] = True
                    distance = float(np.linalg.norm(track.centre - instance.object3d.centre))
                    closeness[r, c] = max(0.0, 1.0 - distance / s.max_distance)
                    near[r, c] = distance <= s.max_distance
        affinity = np.where(both_3d, (iou + closeness) / 2, iou)
        allowed = np.where(both_3d, near, iou >= s.min_iou)
        if not s.class_agnostic:
            same_class = np.array([[t.class_id == i.class_id for i in instances] for t in self.tracks])
            allowed &= same_class
        cost = np.where(allowed, 1.0 - affinity, 1e6)
        rows, cols = linear_sum_assignment(cost)
        keep = allowed[rows, cols]
        return rows[keep], cols[keep]

    def _new_id(self) -> int:
        live = {t.track_id for t in self.tracks}
        for _ in range(MAX_TRACK_ID):
            self._last_id = self._last_id % MAX_TRACK_ID + 1
            if self._last_id not in live:
                return self._last_id
        raise RuntimeError(f"more than {MAX_TRACK_ID} live tracks")


def _mask_ious(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) mask IoU, computed only inside the union box of pairs whose boxes overlap
    (a frame's few objects rarely do: far cheaper than full-frame IoU)."""
    boxes_a, boxes_b = [mask_bounds(m) for m in a], [mask_bounds(m) for m in b]
    areas_a, areas_b = [int(np.count_nonzero(m)) for m in a], [int(np.count_nonzero(m)) for m in b]
    iou = np.zeros((len(a), len(b)))
    for r, (ma, ba) in enumerate(zip(a, boxes_a, strict=True)):
        for c, (mb, bb) in enumerate(zip(b, boxes_b, strict=True)):
            if ba is None or bb is None or ba[1] <= bb[0] or bb[1] <= ba[0] or ba[3] <= bb[2] or bb[3] <= ba[2]:
                continue
            y0, y1, x0, x1 = min(ba[0], bb[0]), max(ba[1], bb[1]), min(ba[2], bb[2]), max(ba[3], bb[3])
            inter = int(np.count_nonzero(ma[y0:y1, x0:x1] & mb[y0:y1, x0:x1]))
            iou[r, c] = inter / (areas_a[r] + areas_b[c] - inter)
    return iou


def track_label_image(segmentation: Segmentation) -> np.ndarray:
    """(H, W) uint16 instance image keyed by track id: 0 = no tracked instance, k = the pixels of the
    instance whose `track_id` is k (what `~/instance_mask` carries when tracking is on, so a
    Detection2D/Detection3D `id` equal to str(k) names exactly the pixels of value k). Overlaps go
    to the better instance (the earlier one), as `Segmentation.label_image`; tentative instances
    (track_id None) are left out."""
    labels = np.zeros((segmentation.height, segmentation.width), dtype=np.uint16)
    for instance in reversed(segmentation.instances):
        if instance.track_id is not None:
            labels[instance.mask] = instance.track_id
    return labels
