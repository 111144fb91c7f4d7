"""Tracker: persistent ids, births after min_hits, deaths after max_misses, 3D gating, label image."""
from __future__ import annotations

import numpy as np
import pytest

from saom_core.errors import ConfigError
from saom_core.geometry3d import Object3D
from saom_core.infer.types import Instance, Segmentation
from saom_core.track import Tracker, TrackerSettings, track_label_image

H = W = 64


def _inst(x: int, y: int, cls: int = 1, size: int = 10, centre=None) -> Instance:
    mask = np.zeros((H, W), bool)
    mask[y:y + size, x:x + size] = True
    obj = None
    if centre is not None:
        c = np.asarray(centre, float)
        obj = Object3D(box_min=c - 0.05, box_max=c + 0.05, surface_centroid=c, points=np.zeros((0, 3), np.float32),
                       pixels=np.zeros((0, 2), np.int64))
    return Instance(mask, (x, y, x + size, y + size), cls, f"c{cls}", 1.0, 1.0, 1.0, object3d=obj)


def _frame(*instances: Instance) -> Segmentation:
    return Segmentation(H, W, list(instances))


def _ids(seg: Segmentation) -> list[int | None]:
    return [i.track_id for i in seg.instances]


def test_static_scene_keeps_its_ids():
    tracker = Tracker()
    first = _ids(tracker.update(_frame(_inst(2, 2), _inst(30, 30, cls=2), _inst(40, 5, cls=1))))
    assert None not in first and len(set(first)) == 3
    for _ in range(5):  # same objects, listed in another order each time (instance order is by score)
        seg = tracker.update(_frame(_inst(40, 5, cls=1), _inst(2, 2), _inst(30, 30, cls=2)))
        assert _ids(seg) == [first[2], first[0], first[1]]


def test_moving_objects_keep_ids_and_do_not_swap():
    tracker = Tracker()
    ids = _ids(tracker.update(_frame(_inst(10, 20, cls=1), _inst(30, 20, cls=2))))
    for step in range(1, 8):  # both drift right 2 px a frame
        assert _ids(tracker.update(_frame(_inst(10 + 2 * step, 20, cls=1), _inst(30 + 2 * step, 20, cls=2)))) == ids


def test_births_after_min_hits_and_deaths_after_max_misses():
    tracker = Tracker(TrackerSettings(min_hits=2, max_misses=2))
    a = _ids(tracker.update(_frame(_inst(2, 2))))[0]
    tracker.update(_frame(_inst(2, 2)))
    tracker.update(_frame(_inst(2, 2)))
    newcomer = tracker.update(_frame(_inst(2, 2), _inst(40, 40)))
    assert _ids(newcomer)[1] is None  # tentative: one hit after the start-up frames
    b = _ids(tracker.update(_frame(_inst(2, 2), _inst(40, 40))))[1]
    assert b is not None and b != a
    for _ in range(2):  # a is unseen for max_misses frames: it survives
        tracker.update(_frame(_inst(40, 40)))
    assert _ids(tracker.update(_frame(_inst(2, 2), _inst(40, 40)))) == [a, b]
    for _ in range(3):  # one miss too many: a's track dies, the object comes back as a new track
        tracker.update(_frame(_inst(40, 40)))
    back = tracker.update(_frame(_inst(2, 2), _inst(40, 40)))
    assert _ids(back) == [None, b]
    assert _ids(tracker.update(_frame(_inst(2, 2), _inst(40, 40))))[0] not in (None, a, b)


def test_a_tentative_track_that_misses_is_dropped():
    tracker = Tracker(TrackerSettings(min_hits=2))
    for _ in range(3):
        tracker.update(_frame(_inst(2, 2)))
    tracker.update(_frame(_inst(2, 2), _inst(40, 40)))  # blip
    tracker.update(_frame(_inst(2, 2)))
    assert len(tracker.tracks) == 1


def test_class_must_agree_unless_class_agnostic():
    for agnostic, same in ((False, False), (True, True)):
        tracker = Tracker(TrackerSettings(class_agnostic=agnostic))
        a = _ids(tracker.update(_frame(_inst(2, 2, cls=1))))[0]
        tracker.update(_frame(_inst(2, 2, cls=3)))
        b = _ids(tracker.update(_frame(_inst(2, 2, cls=3))))[0]
        assert (a == b) is same


def test_3d_distance_bridges_a_jump_without_mask_overlap():
    tracker = Tracker(TrackerSettings(max_distance=0.15))
    a = _ids(tracker.update(_frame(_inst(2, 2, centre=[0.0, 0.0, 1.0]))))[0]
    # the mask jumps 30 px (no overlap) but the object moved 5 cm in 3D: the same object
    assert _ids(tracker.update(_frame(_inst(32, 2, centre=[0.05, 0.0, 1.0]))))[0] == a
    # a mask at the same place but 1 m farther is another object
    tracker.update(_frame(_inst(32, 2, centre=[0.05, 0.0, 2.0])))
    assert _ids(tracker.update(_frame(_inst(32, 2, centre=[0.05, 0.0, 2.0]))))[0] != a


def test_track_label_image_values_are_track_ids():
    tracker = Tracker(TrackerSettings(min_hits=1))
    for _ in range(3):  # age the ids past 1, 2 so index and id differ
        tracker.update(_frame(_inst(50, 50)))
    tracker.update(_frame())
    tracker.update(_frame())
    tracker.update(_frame())
    tracker.update(_frame())
    seg = tracker.update(_frame(_inst(2, 2), _inst(8, 8, cls=2)))  # overlapping: the first wins
    labels = track_label_image(seg)
    first, second = _ids(seg)
    assert first not in (1, 2) or second not in (1, 2)
    assert labels.dtype == np.uint16
    assert np.all(labels[seg.instances[0].mask] == first)
    assert np.all(labels[seg.instances[1].mask & ~seg.instances[0].mask] == second)
    assert set(np.unique(labels)) == {0, first, second}


def test_ids_wrap_around_and_skip_live_ones():
    tracker = Tracker(TrackerSettings(min_hits=1))
    tracker._last_id = 65534
    ids = _ids(tracker.update(_frame(_inst(2, 2), _inst(20, 20, cls=2), _inst(40, 40, cls=3))))
    assert ids == [65535, 1, 2]
    with pytest.raises(ConfigError):
        TrackerSettings(min_hits=0)
