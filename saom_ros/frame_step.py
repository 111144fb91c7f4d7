"""The per-frame step of everything mode, ROS-free and shared by `saom_node` and `saom bag` (so the
bag tracks, and gives the node's ids on the same recording): a colour frame (with its paired depth
and camera_info) in; its 2D messages, 3D messages and tracked instances out (`FrameStep`). The
prompted mode's step is `answer_prompts`.

Which instances are published, under which ids, and their 3D (`FrameObjectStep`), for each
segmented frame, in order: the score threshold; 3D from the paired depth and camera_info
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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saom_core.errors import SaomError
from saom_core.geometry3d import IDENTITY, DepthSettings, RigidTransform
from saom_core.infer.types import Instance, Segmentation, Segmenter
from saom_core.settings import ObjectSettings
from saom_core.track import Tracker, TrackerSettings

from .conversions import (
    answers_in_prompt_order,
    filter_instances,
    make_image,
    make_outputs,
    make_prompted_outputs,
    overlay_image,
    prompts_from_detections,
)
from .msgtypes import MessageTypes
from .objects3d import Messages3D, Outputs3D, frame_to_3d, make_outputs_3d


def check_size(seg: Segmentation, width: int, height: int) -> None:
    """A model's answer must be for the whole frame (ValueError otherwise: the frame counts as failed)."""
    if (seg.height, seg.width) != (height, width):
        raise ValueError(f"the model returned a {seg.width}x{seg.height} segmentation for a {width}x{height} frame")


NO_DEPTH = "no depth and camera_info within sync_slop of the colour frame's stamp"


@dataclass
class FrameObjects:
    """What to publish for one frame."""

    segmentation: Segmentation  # the published instances (confirmed tracks), best first
    with_3d: bool = False  # depth was used: publish the 3D outputs
    problem: str = ""  # why paired depth gave no 3D ("" otherwise)
    without_3d: int = 0  # published instances with too few valid depth pixels for a 3D result

    def empty_3d_reason(self) -> str:
        """Why this frame's 3D outputs are empty ("" when it has 3D objects)."""
        if self.problem:
            return f"unusable depth: {self.problem}"
        if not self.with_3d:
            return NO_DEPTH
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


@dataclass
class FrameOutputs:
    """One frame's messages (None where not asked for) and what the step found."""

    found: FrameObjects
    detections: Any
    instance_mask: Any | None
    overlay: Any | None
    outputs_3d: Outputs3D | None  # with 3D messages (Messages3D given): every frame, empty when it has no 3D
    empty_3d: str  # why outputs_3d are empty ("" when they are not)
    no_transform: str  # why the 3D could not go into target_frame ("" when it could or was not asked)
    inference_s: float  # the model's time


def tracker_settings(s: ObjectSettings) -> TrackerSettings:
    return TrackerSettings(min_hits=s.track_min_hits, max_misses=s.track_max_misses)


def depth_settings(s: ObjectSettings) -> DepthSettings:
    return DepthSettings(min_depth=s.depth_min, max_depth=s.depth_max, stride=s.depth_stride)


class FrameStep:
    """Everything mode on one colour frame: segment, then `FrameObjectStep`, then the messages, with
    the colour frame's header (3D in `target_frame` where one is given, through `lookup`)."""

    def __init__(self, segmenter: Segmenter, T: MessageTypes, M3: Messages3D | None, settings: ObjectSettings,
                 score_threshold: float = 0.0) -> None:
        self.segmenter, self.T, self.M3 = segmenter, T, M3
        self.objects = FrameObjectStep(tracker_settings(settings), depth_settings(settings))
        self.score_threshold = score_threshold

    def update(self, settings: ObjectSettings, score_threshold: float) -> None:
        """New settings from the next frame on; the live tracks and their ids are kept."""
        self.objects.update_settings(tracker_settings(settings), depth_settings(settings))
        self.score_threshold = score_threshold

    def __call__(self, msg: Any, rgb: np.ndarray, depth_msg: Any = None, info_msg: Any = None, *, mask: bool = True,
                 overlay: bool = False, cloud: bool = True, target_frame: str = "",
                 lookup: Callable[[Any, str], RigidTransform] | None = None) -> FrameOutputs:
        """`msg`: the colour image message, `rgb` its pixels; `lookup(header, target_frame)` gives the
        transform from the image's frame (tf2 in the node) or raises."""
        h, w = rgb.shape[:2]
        t0 = time.monotonic()
        seg = self.segmenter.segment(rgb)
        inference = time.monotonic() - t0
        check_size(seg, w, h)
        found = self.objects(seg, self.score_threshold, msg.header.frame_id, depth_msg, info_msg,
                             depth_expected=self.M3 is not None)
        out = make_outputs(self.T, msg.header, found.segmentation, mask=mask)
        image = None
        if overlay:
            image = make_image(self.T, out.detections.header, overlay_image(rgb, out.segmentation), "rgb8")
        if self.M3 is None:
            return FrameOutputs(found, out.detections, out.instance_mask, image, None, "", "", inference)
        reason, no_transform, to = found.empty_3d_reason(), "", IDENTITY
        if target_frame and found.with_3d and lookup is not None:
            try:
                to = lookup(msg.header, target_frame)
            except Exception as exc:  # noqa: BLE001 - tf2's lookup errors (or a stand-in's): 2D only
                no_transform = (f"no transform from {msg.header.frame_id!r} to {target_frame!r} at the image "
                                f"stamp: {exc}")
                reason = no_transform
                self.objects.counts.frames_no_transform += 1
        seg_3d = Segmentation(seg.height, seg.width, [] if reason else found.segmentation.instances)
        # 3D in target_frame where one can be looked up (empty when its transform is missing)
        frame_id = target_frame if target_frame and lookup is not None else msg.header.frame_id
        header = self.T.Header(stamp=out.detections.header.stamp, frame_id=frame_id)
        outputs_3d = make_outputs_3d(self.M3, header, seg_3d, rgb, cloud=cloud, to=to)
        return FrameOutputs(found, out.detections, out.instance_mask, image, outputs_3d, reason, no_transform,
                            inference)


@dataclass
class PromptAnswers:
    detections: Any  # Detection2DArray: detection k answers prompt k and carries its id
    masks: Any | None  # the stacked mono8 masks, when asked for
    problems: tuple[str, ...]  # why invalid prompts were answered empty
    inference_s: float


def answer_prompts(segmenter: Segmenter, T: MessageTypes, header: Any, rgb: np.ndarray, prompts_msg: Any,
                   masks: bool = True) -> PromptAnswers:
    """Prompted mode on one frame: answer k for prompt k of a Detection2DArray; an invalid prompt
    gets an empty answer at its place."""
    h, w = rgb.shape[:2]
    prompts = prompts_from_detections(prompts_msg, w, h)
    answers: list[Instance | None] = [None] * len(prompts)
    t0 = time.monotonic()
    if prompts.n_valid:
        seg = segmenter.segment_prompts(rgb, boxes=prompts.boxes if len(prompts.boxes) else None,
                                        points=prompts.points if len(prompts.points) else None)
        check_size(seg, w, h)
        answers = answers_in_prompt_order(seg, prompts)
    inference = time.monotonic() - t0
    detections, stacked = make_prompted_outputs(T, header, answers, prompts.ids, h, w, masks=masks)
    return PromptAnswers(detections, stacked, prompts.problems, inference)
