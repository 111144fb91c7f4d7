"""Class-agnostic pretraining targets at every granularity, as SA-1B has them.

Vanilla SAM learned from masks of whole things, their parts and their sub-parts, with no classes; a
point on a mug's handle is answered with the handle, the mug, or the mug and its saucer. The
project pretrains its own vanilla tiny SAM (`saom pretrain`) on simulator frames labelled the same
way. From a frame's body/part id maps and its image, each visible thing gets:

* `whole`: the visible pixels of one body (an object of interest, furniture or a distractor alike);
* `part`: each visible link of a body that shows two or more (a robot's head, wheels, legs);
* `region`: a connected area of one colour inside a part or a whole body that shows two clearly
  different colours (a checkerboard's squares, a duck's beak, a painted stripe): Lab colour split
  in two along its main axis at Otsu's threshold, kept when the two halves' mean colours differ by
  more than `MIN_REGION_CONTRAST` (so shading alone does not split a plain surface);
* `stuff`: floor and walls, whole, which SAOM later learns to ignore (their regions count too).

Granularity is the COCO category of each mask in the dataset (`GRANULARITIES`), used for
reporting mIoU per level; training ignores it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from saom_core.data.classes import ClassList, ObjectClass

GRANULARITIES = ClassList(
    "granularity",
    tuple(ObjectClass(name) for name in ("whole", "part", "region", "stuff")),
)
MIN_REGION_CONTRAST = 22.0  # Lab distance between the two colours of a body that count as regions
MAX_SHARE = 0.9  # a part or region covering more of its parent than this is the parent again


@dataclass(frozen=True)
class Target:
    mask: np.ndarray  # (H, W) bool
    granularity: str  # one of GRANULARITIES' names
    body: int  # the body it belongs to


def granularity_targets(
    image: np.ndarray, bodies: np.ndarray, parts: np.ndarray, stuff: set[int], min_area: int
) -> list[Target]:
    """All targets of one frame, bodies in id order, each body's whole first.

    image: (H, W, 3) uint8 RGB; bodies: (H, W) int body id per pixel (< 0: nothing); parts: (H, W)
    int part (link) id per pixel within its body; stuff: body ids of floor and walls."""
    lab = cv2.cvtColor(cv2.medianBlur(image, 3), cv2.COLOR_RGB2LAB).astype(np.float32)
    targets: list[Target] = []
    for body in np.unique(bodies[bodies >= 0]).tolist():
        whole = bodies == body
        if int(whole.sum()) < min_area:
            continue
        targets.append(Target(whole, "stuff" if body in stuff else "whole", body))
        links = [parts == link for link in np.unique(parts[whole]).tolist()]
        links = [link & whole for link in links]
        links = [link for link in links if min_area <= int(link.sum()) <= MAX_SHARE * whole.sum()]
        if len(links) >= 2:
            targets += [Target(link, "part", body) for link in links]
        for unit in links if len(links) >= 2 else [whole]:
            targets += [Target(region, "region", body) for region in colour_regions(lab, unit, min_area)]
    return targets


def colour_regions(lab: np.ndarray, unit: np.ndarray, min_area: int) -> list[np.ndarray]:
    """Connected areas of one of two clearly different colours inside `unit` ((H, W) bool), from the
    (H, W, 3) Lab image; [] when the unit is one colour (up to shading)."""
    area = int(unit.sum())
    if area < 2 * min_area:
        return []
    colours = lab[unit]
    mean = colours.mean(0)
    centred = colours - mean
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    projection = centred @ axis
    low, high = float(projection.min()), float(projection.max())
    if high - low < MIN_REGION_CONTRAST:
        return []
    scaled = np.round((projection - low) / (high - low) * 255).astype(np.uint8)
    threshold, _ = cv2.threshold(scaled[:, None], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    upper = scaled > threshold
    if upper.all() or not upper.any():
        return []
    if float(np.linalg.norm(colours[upper].mean(0) - colours[~upper].mean(0))) < MIN_REGION_CONTRAST:
        return []
    side = np.zeros(unit.shape, dtype=np.uint8)
    side[unit] = np.where(upper, 2, 1)
    regions = []
    for value in (1, 2):
        layer = cv2.morphologyEx((side == value).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(layer, connectivity=4)
        for k in range(1, count):
            if min_area <= stats[k, cv2.CC_STAT_AREA] <= MAX_SHARE * area:
                regions.append(labels == k)
    return regions
