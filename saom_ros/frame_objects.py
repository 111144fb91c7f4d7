"""The node's per-frame step after everything mode (ROS-free): which instances are published, under
which ids, and their 3D.

For each segmented frame, in order: the score threshold; 3D from the paired depth and camera_info
(`objects3d.frame_to_3d`, the code `saom bag` uses); the tracker (`saom_core.track`: mask IoU and
class, plus 3D centre distance where both sides have depth); then only instances whose track is
confirmed are kept. Every output then names an instance by its track id: `Detection2D.id`,
`Detection3D.id`, the PointCloud2 `id` field, the marker ids, and the instance's pixel value in
`~/instance_mask` (`track.track_label_image`). A new object's track is tentative, and left out of
every output, until it has been seen in `min_hits` consecutive frames (at once during the
tracker's first `min_hits` frames, so a stream's first frame has ids); an id is never reused
while its track lives (it survives `max_misses` frames unseen).

Depth that cannot give 3D for the frame (another size or frame than colour, an unsupported
encoding, a camera_info without focal length) is a `problem` string: the frame keeps its 2D outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saom_core.errors import SaomError
from saom_core.geometry3d import DepthSettings
from saom_core.infer.types import Segmentation
from saom_core.track import Tracker, TrackerSettings

from .conversions import filter_instances
from .objects3d import frame_to_3d

NO_DEPTH = "no depth and camera_info within sync_slop of the colour frame's stamp"


@dataclass
class FrameObjects:
    """What to publish for one frame."""

    segmentation: Segmentation  # the published instances (confirmed tracks), best first
    with_3d: bool = False  # depth was used: publish the 3D outputs
    problem: str = ""  # why paired depth gave no 3D ("" otherwise)
    without_3d: int = 0  # published instances with too few valid depth pixels for a 3D result

    def empty_3d_reason(self, depth_expected: bool) -> str:
        """Why this frame's 3D outputs are empty ("" when it has 3D objects)."""
        if self.problem:
            return f"unusable depth: {self.problem}"
        if not self.with_3d:
            return NO_DEPTH if depth_expected else ""
        if not self.segmentation.instances:
            return "no objects in the frame"
        if self.without_3d == len(self.segmentation.instances):
            return "no object has enough valid depth pixels"
        return ""


@dataclass
class ObjectCounts:
    """Running counts for the diagnostics."""

    frames_3d: int = 0  # frames published with 3D outputs
    frames_without_depth: int = 0  # frames that came without matching depth/camera_info (2D only)
    frames_bad_depth: int = 0  # frames whose depth or camera_info could not be used (2D only)
    objects_without_3d: int = 0  # published instances that had too few depth pixels
    frames_no_transform: int = 0  # frames whose 3D could not be moved into target_frame
    last_problem: str = field(default="")
    empty_because: str = ""  # why the latest frame's 3D outputs were empty ("": they were not)

    def key_values(self) -> list[tuple[str, str]]:
        return [("frames with 3D", str(self.frames_3d)),
                ("frames without depth (2D only)", str(self.frames_without_depth)),
                ("frames with unusable depth (2D only)", str(self.frames_bad_depth)),
                ("frames without a transform to target_frame (2D only)", str(self.frames_no_transform)),
                ("objects without 3D (too few depth pixels)", str(self.objects_without_3d)),
                ("latest 3D outputs empty because", self.empty_because or "-")]


class FrameObjectStep:
    """Score filter, 3D from depth and tracking for the frames of one camera (see the module docstring)."""

    def __init__(self, tracker: TrackerSettings, depth: DepthSettings) -> None:
        self.tracker = Tracker(tracker)
        self.depth = depth
        self.counts = ObjectCounts()

    def update_settings(self, tracker: TrackerSettings, depth: DepthSettings) -> None:
        """New settings from the next frame on; the live tracks and their ids are kept."""
        self.tracker.settings, self.depth = tracker, depth

    def __call__(self, seg: Segmentation, score_threshold: float, frame_id: str, depth_msg: Any = None,
                 info_msg: Any = None, depth_expected: bool = False) -> FrameObjects:
        """`frame_id`: the colour image's; `depth_msg`/`info_msg`: the frame's paired depth and
        camera_info (None: none matched; counted when `depth_expected`)."""
        seg = filter_instances(seg, score_threshold)
        result = FrameObjects(seg)
        if depth_msg is not None and info_msg is not None:
            try:
                frame_to_3d(seg, depth_msg, info_msg, frame_id, self.depth)
                result.with_3d = True
            except SaomError as exc:  # DepthInputError, or intrinsics that are not finite
                result.problem = str(exc)
        self.tracker.update(seg)
        result.segmentation = Segmentation(seg.height, seg.width, [i for i in seg.instances if i.track_id is not None])
        if result.with_3d:
            result.without_3d = sum(i.object3d is None for i in result.segmentation.instances)
        self._count(result, depth_expected)
        return result

    def _count(self, result: FrameObjects, depth_expected: bool) -> None:
        counts = self.counts
        if result.with_3d:
            counts.frames_3d += 1
            counts.objects_without_3d += result.without_3d
        elif result.problem:
            counts.frames_bad_depth += 1
            counts.last_problem = result.problem
        elif depth_expected:
            counts.frames_without_depth += 1
            counts.last_problem = NO_DEPTH
