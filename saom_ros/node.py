"""`saom_node`: the SAOM lifecycle node (thin rclpy wiring over the ROS-free modules of saom_ros).

Lifecycle (the yolo_ros pattern): configure validates the parameters (a missing checkpoint, a bad
value or a malformed topic name fails the transition with one clear error line) and creates the
publishers; activate loads the model and subscribes; deactivate unsubscribes, waits for the worker
and frees the model (GPU memory included); cleanup removes the publishers. Every exception inside a
transition is logged with its reason. With `autostart` (default) the node configures and activates
itself at start-up, and exits with status 1 when that fails.

Threads: `main` spins a MultiThreadedExecutor (saom_ros.executor). The lifecycle services are in
a reentrant callback group and the diagnostics timer in its own group, so while a transition loads
(and compiles) the model, `get_state` and /diagnostics still answer; a second transition meanwhile
is refused. Frames are segmented by one worker thread (saom_ros.worker). One lock orders what the
threads race over (see `SaomNode.__init__`): transitions, subscriptions, the frame hand-off and the
3D outputs.

Topics (relative names, remappable; ~ is the node's name):
  in   image_raw (sensor_msgs/Image; `<image_topic>/compressed` CompressedImage when image_transport
       is compressed), keep last 1, reliability per `image_reliability` (auto: the camera
       publisher's, re-checked until one appears);
       ~/prompts (vision_msgs/Detection2DArray: boxes, or centre points where the size is 0),
       reliable, keep last PROMPTS_DEPTH
       with depth_enabled: depth/image_raw (sensor_msgs/Image 16UC1 mm or 32FC1 m, registered to
       colour) and camera_info (sensor_msgs/CameraInfo), paired with each colour frame by stamp
       within sync_slop (saom_ros.pairing: message_filters where installed)
  out  ~/detections (vision_msgs/Detection2DArray), ~/instance_mask (sensor_msgs/Image mono16),
       ~/overlay (rgb8, only while subscribed), ~/prompted/detections (detection k answers prompt k
       and carries its id), ~/prompted/masks (mono8, one H-row plane per answer: see
       conversions.make_prompted_outputs), ~/label_info (vision_msgs/LabelInfo, transient local),
       /diagnostics (diagnostic_msgs/DiagnosticArray); with depth_enabled ~/detections_3d
       (vision_msgs/Detection3DArray), ~/objects (sensor_msgs/PointCloud2, only while subscribed)
       and ~/markers (visualization_msgs/MarkerArray), with the colour frame's header.

Ids (everything mode): instances are tracked across frames (saom_ros.frame_step), and
Detection2D.id, Detection3D.id, the cloud's id field and the marker ids are the track id, which is
also the instance's pixel value in ~/instance_mask (0 = no published instance). A new object is
published once its track is confirmed (track_min_hits frames in a row). A colour frame without
matching depth, or with depth that cannot be used, is published in 2D and counted in /diagnostics.
"""
from __future__ import annotations

import functools
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import (
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.node import LifecycleNodeMixin
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from saom_core.errors import ConfigError, ImageError, SaomError
from saom_core.infer.types import Segmenter

from . import qos
from . import segmenter_factory as factories
from .conversions import (
    SUPPORTED_ENCODINGS,
    UnsupportedEncoding,
    select_image_converter,
    stamp_key,
)
from .descriptors import declared_default, parameter_descriptor, ros_parameter
from .diagnostics import NodeHealth, diagnosis, diagnostic_array
from .frame_step import FrameStep, ObjectCounts, answer_prompts
from .image_input import ImageInput
from .msgtypes import rclpy_types
from .objects3d import Outputs3D, RigidTransform, transform_from_msg, unrectified_warning
from .outputs import OUTPUTS, Publishers, output_keys
from .pairing import Match, stamp_ns
from .params import (
    NODE_NAME,
    PARAMETER_NAMES,
    PARAMETERS,
    ROS_STANDARD_PARAMETERS,
    NodeParams,
    Param,
    changed_params,
    check_classes,
    validate,
)
from .rgbd_input import RgbdInput
from .worker import FrameWorker, Job, PromptMatcher, RateLimiter, Stats

# Prompt sets waiting for the model beyond PROMPT_QUEUE are dropped oldest first, logged and counted.
PROMPT_QUEUE = 4
PROMPTS_TOPIC = "~/prompts"
TRANSFORM_TIMEOUT_S = 0.1  # target_frame: how long a frame waits for its transform
STREAM_RESTART_NS = 1_000_000_000  # a frame older than the last by more than this restarts the stream

OK, FAILURE, ERROR = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE, TransitionCallbackReturn.ERROR


@dataclass
class FrameJob(Job):
    """An everything-mode frame with its paired depth and camera_info (None: none matched)."""

    depth: Any = None
    camera_info: Any = None


def _transition(name: str) -> Callable:
    """Run a transition callback with every exception logged with its reason (rclpy swallows them):
    SaomError (a problem the user can fix) fails the transition, anything else is an ERROR."""
    def wrap(callback: Callable[[Any, LifecycleState], TransitionCallbackReturn]) -> Callable:
        @functools.wraps(callback)
        def run(self: SaomNode, state: LifecycleState) -> TransitionCallbackReturn:
            self.transition_in_progress = name
            try:
                result = callback(self, state)
                if result == OK:
                    self.last_transition_error = ""
                return result
            except SaomError as exc:
                self._transition_failed(name, str(exc))
                return FAILURE
            except Exception as exc:  # noqa: BLE001 - logged with its traceback, then the transition fails
                self._transition_failed(name, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                return ERROR
            finally:
                self.transition_in_progress = ""
        return run
    return wrap


class SaomNode(LifecycleNode):
    """SAOM everything mode (and prompted mode) as a ROS 2 lifecycle node.

    `segmenter_factory(params) -> Segmenter` replaces the real model loader (tests, benchmarks);
    see `saom_ros.segmenter_factory` for the other hooks. `tf_buffer` replaces tf2_ros.Buffer for `target_frame`
    (tests: anything with tf2's `lookup_transform(target, source, time, timeout)`).
    """

    def __init__(self, node_name: str = NODE_NAME, *, segmenter_factory: factories.SegmenterFactory | None = None,
                 tf_buffer: Any = None, **kwargs: Any) -> None:
        # LifecycleNode.__init__ puts the lifecycle services in the node's default (mutually
        # exclusive) group, where get_state would wait for a transition that loads the model:
        # the two base initialisers are called here with a reentrant group instead.
        Node.__init__(self, node_name, **kwargs)
        self.lifecycle_group = ReentrantCallbackGroup()
        LifecycleNodeMixin.__init__(self, callback_group=self.lifecycle_group)
        self.timer_group = MutuallyExclusiveCallbackGroup()  # diagnostics and QoS re-checks
        self._override_problems = [problem for p in PARAMETERS if (problem := self._declare(p))]
        self._factory = segmenter_factory
        self.T = rclpy_types()
        self.params: NodeParams | None = None
        self.segmenter: Segmenter | None = None
        self.class_names: list[str] = []
        self.stats = Stats()
        self.worker: FrameWorker | None = None
        self.matcher: PromptMatcher | None = None
        self.outputs: Publishers | None = None  # made at configure
        self.image_input: ImageInput | None = None  # the colour subscription (while active)
        self._prompt_sub: Subscription | None = None
        self._diag_pub: Publisher | None = None
        self._timer: Timer | None = None
        self._log_limit = RateLimiter(0.0)
        self._warn_limits: dict[str, RateLimiter] = defaultdict(lambda: RateLimiter(5.0))
        # The node's one lock orders what threads race over: the start of a transition (one at a time),
        # _active, the input subscriptions and their re-subscription, the hand-off of frames to the
        # worker, and the 3D outputs vs their clearing. A re-subscription, a frame or a stale 3D output
        # therefore never slips in after a deactivate. Held only for those short steps, never while
        # a model loads or the worker finishes a frame.
        self._lock = threading.RLock()
        self._transitioning = False
        self._active = False
        self._last_handed = 0  # stamp (ns) of the newest frame handed to the worker: never an older one after it
        self.transition_in_progress = ""
        self.last_transition_error = ""
        self.overlays_published = 0
        self.qos_incompatible_events = 0
        self.no_frame_warn_s = 5.0  # diagnostics WARN (and a log line) after this long without a frame
        self.no_frame_warnings = 0
        self.worker_stop_timeout_s = 30.0
        self._last_frame = 0.0
        self._last_processed = 0.0
        self._last_skip = ""  # why the latest frame was skipped
        self._last_skip_time = 0.0
        self._to_rgb: Callable[[Any], Any] = select_image_converter(None)[0]  # set at configure
        self.step: FrameStep | None = None  # segmenter, score filter, 3D, tracker, messages (while active)
        self.rgbd: RgbdInput | None = None  # depth and camera_info paired with colour (depth_enabled, active)
        self._last_3d = 0.0
        self._given_tf_buffer = tf_buffer  # a stand-in for tf2_ros.Buffer (tests); else made at configure
        self._tf_buffer: Any = None  # with target_frame: looks up camera -> target_frame
        self._tf_listener: Any = None
        self._rectification_checked = False  # camera_info's distortion looked at (objects3d.unrectified_warning)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- helpers -----------------------------------------------------------------------------

    def _LifecycleNodeMixin__change_state(self, transition_id: int) -> TransitionCallbackReturn:
        """One transition at a time, whoever asks (the lifecycle services and autostart's trigger_*
        calls alike): rclpy's state change takes no lock, so two threads could both start one from the
        same state. A transition asked for while another runs is refused, not queued."""
        with self._lock:
            refused = self._transitioning
            self._transitioning = True
        if refused:
            self.get_logger().error(f"transition {transition_id} refused: {self.transition_in_progress or 'another'} "
                                    "transition is in progress")
            return ERROR
        try:
            return LifecycleNodeMixin._LifecycleNodeMixin__change_state(self, transition_id)  # type: ignore[attr-defined]
        finally:
            with self._lock:
                self._transitioning = False

    def warn_throttled(self, key: str, message: str) -> None:
        if self._warn_limits[key].ready():
            self.get_logger().warning(message)

    def _transition_failed(self, name: str, reason: str, details: str = "") -> None:
        self.last_transition_error = f"{name} failed: {reason}"
        self.get_logger().error(self.last_transition_error + (f"\n{details}" if details else ""))

    def _declare(self, p: Param) -> str:
        """Declare p typed, with its range; a params-file or command-line value of the wrong type or
        out of range is not applied but returned as the reason configure will fail with."""
        overrides: dict[str, Parameter] | None = getattr(self, "_parameter_overrides", None)
        given = overrides.get(p.name) if overrides else None
        if overrides is not None and given is not None and given.type_ != Parameter.Type.NOT_SET:
            given = overrides[p.name] = ros_parameter(p, given.value)
        try:
            self.declare_parameter(p.name, declared_default(p), parameter_descriptor(p))
            return ""
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            self.declare_parameter(p.name, declared_default(p), parameter_descriptor(p), ignore_override=True)
            return f"parameter {p.name}: {given.value if given is not None else None!r} refused: {exc}"

    @property
    def enabled(self) -> bool:
        """The `enable` switch: False pauses segmentation without unloading the model."""
        params = self.params
        return params.enable if params is not None else bool(self.get_parameter("enable").value)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """`ros2 param set`: rclpy has checked type and range; here the schema's checks. Unconfigured,
        any valid value is taken (configure reads them); configured, runtime-safe ones apply at once
        (the segmenter's without reloading the model) and the others are refused with what to do."""
        changes = {p.name: p.value for p in parameters if p.name in PARAMETER_NAMES}
        params = self.params
        try:
            new = changed_params(params, changes, self.segmenter, self.class_names,
                                 "active" if self._active else "configured")
        except SaomError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if params is None or new is None or not changes:
            return SetParametersResult(successful=True)
        self.params = new
        self._apply_node_settings(params, new)
        self.get_logger().info("parameters set: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    def _apply_node_settings(self, old: NodeParams, new: NodeParams) -> None:
        if new.diagnostics_period != old.diagnostics_period and self._timer is not None:
            self._timer.timer_period_ns = int(new.diagnostics_period * 1e9)
        if new.log_period != old.log_period:
            self._log_limit = RateLimiter(new.log_period)
            self._log_limit.ready()
        if new.score_threshold != old.score_threshold and self._active and self.outputs is not None:
            self.outputs.publish_label_info(self.T, self.class_names, new.score_threshold)
        step = self.step
        if step is not None:
            step.update(new, new.score_threshold)
        if old.enable and not new.enable and self.outputs is not None:
            self.outputs.clear_3d(self.T)
        if new.enable != old.enable:
            self.get_logger().info("segmentation " + ("resumed" if new.enable else "paused (enable is false; "
                                                                              "the model stays loaded)"))

    def read_params(self) -> NodeParams:
        if self._override_problems:
            raise ConfigError("; ".join(self._override_problems))
        raw = {name: self.get_parameter_or(name, Parameter(name)).value for name in PARAMETER_NAMES}  # unset: None
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = sorted(n for n in overrides if n not in PARAMETER_NAMES and n not in ROS_STANDARD_PARAMETERS
                         and not n.startswith("qos_overrides.") and not self.has_parameter(n))
        if unknown:
            raise SaomError(f"unknown parameter(s) {', '.join(unknown)} given to {self.get_name()}; "
                            f"known: {', '.join(PARAMETER_NAMES)}")
        return validate(raw)

    def input_topic(self, params: NodeParams) -> str:
        """The fully qualified input topic; ConfigError naming the parameter when it is not a valid name."""
        try:
            return self.resolve_topic_name(params.input_topic)
        except Exception as exc:  # noqa: BLE001 - rclpy raises InvalidTopicNameException or RCLError
            raise ConfigError(f"parameter image_topic: {params.image_topic!r} is not a valid ROS topic name "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc

    def autostart_requested(self) -> bool:
        value = self.get_parameter("autostart").value
        return value is True or (isinstance(value, str) and value.strip().lower() == "true")

    def startup(self) -> bool:
        """configure + activate (the autostart path); False with the reason logged when either fails."""
        if self.trigger_configure() != OK:
            return False
        return self.trigger_activate() == OK

    @property
    def is_active(self) -> bool:
        return self._active

    # -- lifecycle -----------------------------------------------------------------------------

    @_transition("configure")
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.read_params()
        factories.check_device(params.device)
        topic = self.input_topic(params)
        qos.check_overrides(getattr(self, "_parameter_overrides", None) or {},
                            subscriptions=(topic, self.resolve_topic_name(PROMPTS_TOPIC)),
                            publishers=[self.resolve_topic_name(OUTPUTS[key][1]) for key in output_keys(params)])
        self.params = params
        self.outputs = Publishers(self, params, self._lock)
        if params.depth_enabled and params.target_frame:
            self._tf_buffer = self._given_tf_buffer or self._make_tf_buffer()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.stats = Stats()
        self._log_limit = RateLimiter(params.log_period)
        self._log_limit.ready()  # first line after one period
        self._timer = self.create_timer(params.diagnostics_period, self._on_timer, callback_group=self.timer_group)
        self.matcher = PromptMatcher(params.prompt_frame_buffer)
        self._to_rgb, converter = select_image_converter(Image)
        self.get_logger().info(
            f"configured: checkpoint {params.checkpoint}, device {params.device}{' (half)' if params.half else ''}, "
            f"input {topic} ({params.image_transport}, {params.image_reliability}, converted with {converter})")
        return super().on_configure(state)

    def _make_tf_buffer(self) -> Any:
        """tf2_ros's buffer and listener (in every ROS install; not among the PyPI wheels)."""
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError as exc:
            raise ConfigError(f"parameter target_frame: needs tf2_ros, which is not importable ({exc}); "
                              "leave target_frame empty for the camera's frame") from exc
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)
        return buffer

    @_transition("activate")
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.params
        assert params is not None
        segmenter = None
        try:
            factory = factories.resolve_factory(self._factory)
            t0 = time.monotonic()
            segmenter = factory(params)
            class_names = factories.validate_segmenter(segmenter)
            check_classes(params, class_names)
        except Exception as exc:  # noqa: BLE001 - any load failure fails the transition, with the reason
            try:
                factories.release(segmenter, params.device)
            except Exception as release_exc:  # noqa: BLE001
                self.get_logger().warning(f"releasing the half-loaded model failed: {release_exc}")
            raise SaomError(f"cannot load the model: {type(exc).__name__}: {exc}") from exc
        self.segmenter, self.class_names = segmenter, class_names
        self.get_logger().info(f"model loaded in {time.monotonic() - t0:.1f} s: {len(class_names) - 1} classes")
        ret = super().on_activate(state)
        outputs = self.outputs
        assert outputs is not None  # made at configure
        outputs.publish_label_info(self.T, class_names, params.score_threshold)
        self.step = FrameStep(segmenter, self.T, outputs.M3, params, params.score_threshold)
        self.worker = FrameWorker(self._process, self._on_error, prompt_capacity=PROMPT_QUEUE)
        self.worker.start()
        with self._lock:
            self._last_handed = 0
            if params.depth_enabled and params.everything_mode:
                self.rgbd = RgbdInput(self, params, self._hand_over_pair, self._lock, self.timer_group,
                                      accepting=lambda: self.worker is not None and self.enabled)
            self.image_input = ImageInput(self, params, self.input_topic(params), self._on_image,
                                          self._on_incompatible_qos, self._lock, self.timer_group)
            self._last_frame = time.monotonic()
            if params.prompts_enabled:
                self._prompt_sub = self.create_subscription(
                    Detection2DArray, PROMPTS_TOPIC, self._on_prompts, qos.prompts_qos(),
                    qos_overriding_options=QoSOverridingOptions.with_default_policies())
            self._active = True
        return ret

    @property
    def image_reliability(self) -> str:
        """The reliability the image subscription uses now ("" while inactive)."""
        image_input = self.image_input
        return image_input.reliability if image_input is not None else ""

    def _stop_processing(self) -> None:
        """Unsubscribe, stop the worker and free the model, never while the worker may still use it."""
        with self._lock:
            self._active = False
            if self.image_input is not None:
                self.image_input.close()
                self.image_input = None
            if self._prompt_sub is not None:
                self.destroy_subscription(self._prompt_sub)
                self._prompt_sub = None
            if self.rgbd is not None:
                self.rgbd.close()
                self.rgbd = None
        if self.matcher is not None:
            before = self.matcher.unmatched
            self.matcher.clear()
            self._count_unmatched(before)
        worker, self.worker = self.worker, None
        segmenter, self.segmenter, self.step = self.segmenter, None, None
        device = self.params.device if self.params else "cpu"
        if worker is not None and not worker.stop(timeout=self.worker_stop_timeout_s):
            self.get_logger().warning(f"the model is still on a frame after {self.worker_stop_timeout_s:.0f} s; "
                                      f"it is freed when that frame is done")
            threading.Thread(target=self._release_after, args=(worker, segmenter, device), daemon=True,
                             name="saom-release").start()
            return
        self._release(segmenter, device)

    def _release_after(self, worker: FrameWorker, segmenter: Any, device: str) -> None:
        worker.join()
        self._release(segmenter, device)

    def _release(self, segmenter: Any, device: str) -> None:
        if segmenter is not None:
            factories.release(segmenter, device)
            self.get_logger().info("model freed")

    @_transition("deactivate")
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        if self.outputs is not None:
            self.outputs.clear_3d(self.T)  # while the publishers are still active
        return super().on_deactivate(state)

    def _destroy_outputs(self) -> None:
        if self.outputs is not None:
            self.outputs.destroy()
            self.outputs = None
        self._tf_buffer = self._tf_listener = None
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None

    @_transition("cleanup")
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_outputs()
        self.params = None
        return super().on_cleanup(state)

    @_transition("shutdown")
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._destroy_outputs()
        self.params = None
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Back to unconfigured: the failed configuration's parameters go too (else a fixed
        `checkpoint` would be refused as if the node were configured)."""
        try:
            self._stop_processing()
            self._destroy_outputs()
            self.params = None
        except Exception as exc:  # noqa: BLE001
            self._transition_failed("error processing", f"{type(exc).__name__}: {exc}", traceback.format_exc())
            return FAILURE
        return OK

    def close(self) -> None:
        """Stop everything (process exit, test teardown); safe to call in any state."""
        try:
            self._stop_processing()
        finally:
            self._destroy_outputs()

    # -- data path -------------------------------------------------------------------------------

    def _on_incompatible_qos(self, info: Any) -> None:
        self.qos_incompatible_events += 1
        policy = getattr(getattr(info, "last_policy_kind", None), "name", str(getattr(info, "last_policy_kind", "")))
        hint = ""
        if "RELIABILITY" in policy.upper():
            hint = " (the camera publishes best effort: set image_reliability to auto or best_effort)"
        topic = self.input_topic(self.params) if self.params else "the image topic"
        self.warn_throttled("qos", f"a publisher on {topic} offers an incompatible QoS ({policy}); "
                                   f"its frames will not arrive{hint}")

    def _skip(self, reason: str) -> None:
        self.stats.count("skipped")
        self._last_skip, self._last_skip_time = reason, time.monotonic()
        self.warn_throttled("skip", f"skipping frames: {reason}")

    def _count_unmatched(self, before: int) -> None:
        matcher = self.matcher
        if matcher is not None and matcher.unmatched > before:
            self.stats.count("prompts_unmatched", matcher.unmatched - before)
            self.warn_throttled("prompts_unmatched", matcher.last_unmatched)

    def _submit_prompts(self, worker: FrameWorker, job: Job) -> None:
        if worker.submit_prompts(job):
            self.stats.count("prompts_dropped")
            self.warn_throttled("prompts_dropped", f"a prompt set was dropped unanswered: {PROMPT_QUEUE} newer ones "
                                                   f"wait for the model (it is slower than the prompts come)")

    def _on_image(self, msg: Any) -> None:
        received = time.monotonic()
        self._last_frame = received
        worker, params = self.worker, self.params
        if worker is None or params is None or not self.enabled:
            return
        self.stats.count("received")
        encoding = getattr(msg, "encoding", None)
        if encoding is not None and str(encoding).strip().lower() not in SUPPORTED_ENCODINGS:
            self._skip(f"encoding {encoding!r} is not supported (supported: {', '.join(SUPPORTED_ENCODINGS)})")
            return
        if params.prompts_enabled and self.matcher is not None:
            before = self.matcher.unmatched
            match = self.matcher.add_frame(stamp_key(msg.header), msg)
            self._count_unmatched(before)
            if match is not None:
                frame, prompts, prompts_received = match
                self._submit_prompts(worker, Job("prompts", frame, prompts_received, prompts))
        if not params.everything_mode:
            return
        rgbd = self.rgbd
        if rgbd is None:
            self._submit_frame(worker, FrameJob("frame", msg, received))
        else:
            rgbd.add_color(msg, received)

    def _submit_frame(self, worker: FrameWorker, job: FrameJob) -> None:
        """Hand a frame to the worker unless a newer one went before it (outputs never go back in
        time; a stream restarted far in the past, e.g. a looping bag, starts over). Under the state
        lock: deactivate waits for it, and two threads cannot swap the order of their frames."""
        stamp = stamp_ns(job.image.header)
        with self._lock:
            if not self._active:
                return
            if stamp < self._last_handed and self._last_handed - stamp <= STREAM_RESTART_NS:
                self.stats.count("dropped")
                self.warn_throttled("order", f"a frame older than one already segmented was dropped (stamp "
                                             f"{stamp} < {self._last_handed}): outputs stay in stamp order")
                return
            self._last_handed = stamp
            if worker.submit_frame(job):
                self.stats.count("dropped")

    def _hand_over_pair(self, match: Match, received: float) -> None:
        """A colour frame the depth pairing has decided (with depth, or without it)."""
        worker = self.worker
        if worker is not None:
            self._submit_frame(worker, FrameJob("frame", match.color, received, depth=match.depth,
                                                camera_info=match.camera_info))

    def _on_prompts(self, msg: Detection2DArray) -> None:
        received = time.monotonic()
        worker, matcher = self.worker, self.matcher
        if worker is None or matcher is None:
            return
        if not self.enabled:
            self.stats.count("prompts_dropped")
            self.warn_throttled("prompts_paused", "a prompt set was dropped: segmentation is paused (enable is false)")
            return
        before = matcher.unmatched
        frame = matcher.add_prompts(stamp_key(msg.header), msg, received)
        self._count_unmatched(before)
        if frame is not None:
            self._submit_prompts(worker, Job("prompts", frame, received, msg))

    def _process(self, job: Job) -> None:
        """The worker's job: a prompt set (prompted mode) or a frame (everything mode)."""
        params, segmenter = self.params, self.segmenter
        if params is None or segmenter is None:
            return
        try:
            rgb = self._to_rgb(job.image)
        except UnsupportedEncoding as exc:
            self._skip(str(exc))
            return
        if isinstance(job, FrameJob):
            self._process_frame(job, rgb, params)
        else:
            self._answer_prompts(job, rgb, segmenter)

    def _process_frame(self, job: FrameJob, rgb: Any, params: NodeParams) -> None:
        """Everything mode through the step `saom bag` shares (frame_step), then publish."""
        step, pubs = self.step, self.outputs
        assert step is not None and pubs is not None  # made before the worker starts
        out = step(job.image, rgb, job.depth, job.camera_info, mask=pubs.wanted("instance_mask"),
                   overlay=params.publish_overlay and pubs.wanted("overlay"), cloud=pubs.wanted("objects"),
                   target_frame=params.target_frame, lookup=self._lookup_transform if self._tf_buffer else None)
        if out.found.problem:
            self.warn_throttled("depth", f"no 3D output: {out.found.problem}")
        if out.no_transform:
            self.warn_throttled("transform", f"no 3D output: {out.no_transform}")
        if job.camera_info is not None and not self._rectification_checked:
            self._rectification_checked = True  # warned once: the camera's calibration does not change
            if warning := unrectified_warning(job.camera_info, self.resolve_topic_name(params.image_topic)):
                self.get_logger().warning(warning)
        pubs["detections"].publish(out.detections)
        if out.instance_mask is not None:
            pubs["instance_mask"].publish(out.instance_mask)
        if out.outputs_3d is not None:
            self._publish_3d(out.outputs_3d, out.empty_3d, step.objects.counts)
        if out.overlay is not None:
            pubs["overlay"].publish(out.overlay)
            self.overlays_published += 1
        self._last_processed = time.monotonic()
        self.stats.done(self._last_processed - job.received, out.inference_s)

    def _publish_3d(self, out: Outputs3D, empty_because: str, counts: ObjectCounts) -> None:
        """Every frame's 3D outputs, empty when it has none (the diagnostics say why), so rviz and a
        planner never keep stale objects."""
        outputs = self.outputs
        if outputs is None or not outputs.publish_3d(out, still_wanted=lambda: self._active and self.enabled):
            return
        counts.empty_because = empty_because
        if not empty_because:
            self._last_3d = time.monotonic()

    def _lookup_transform(self, image_header: Any, target_frame: str) -> RigidTransform:
        from rclpy.duration import Duration
        from rclpy.time import Time

        msg = self._tf_buffer.lookup_transform(target_frame, image_header.frame_id, Time.from_msg(image_header.stamp),
                                               timeout=Duration(seconds=TRANSFORM_TIMEOUT_S))
        return transform_from_msg(msg)

    def _answer_prompts(self, job: Job, rgb: Any, segmenter: Any) -> None:
        """Answer k for prompt k, with its id; invalid prompts get an empty answer (and a warning)."""
        pubs = self.outputs
        assert pubs is not None  # made before the worker starts
        out = answer_prompts(segmenter, self.T, job.image.header, rgb, job.prompts, masks=pubs.wanted("prompted_masks"))
        if out.problems:
            self.warn_throttled("prompt_invalid", f"{len(out.problems)} prompt(s) answered empty: "
                                                  + "; ".join(out.problems))
        pubs["prompted_detections"].publish(out.detections)
        if out.masks is not None:
            pubs["prompted_masks"].publish(out.masks)
        self._last_processed = time.monotonic()
        self.stats.done(self._last_processed - job.received, out.inference_s, prompts=True)

    def _on_error(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, ImageError):  # the frame's data, not the model: skipped, with the reason
            self._skip(f"bad frame (stamp {stamp_key(job.image.header)}): {exc}")
            return
        self.stats.error(f"inference failed: {type(exc).__name__}: {exc}")
        self.warn_throttled("error", f"inference failed (stamp {stamp_key(job.image.header)}): "
                                     f"{type(exc).__name__}: {exc}")

    # -- diagnostics -------------------------------------------------------------------------------

    def diagnosis(self, fps: float = 0.0) -> tuple[bytes, str]:
        """(level, message) of the node now (saom_ros.diagnostics)."""
        now, params = time.monotonic(), self.params
        objects = self.step.objects if self.step is not None else None
        with_3d = self.rgbd is not None and objects is not None
        return diagnosis(NodeHealth(
            transition=self.transition_in_progress, active=self._active, transition_error=self.last_transition_error,
            enabled=self.enabled, failures=self.stats.consecutive_failures, last_error=self.stats.last_error,
            topic=self.input_topic(params) if params else "the image topic", window=self.no_frame_warn_s,
            frame_age=now - self._last_frame, processed_age=now - self._last_processed,
            skip_age=now - self._last_skip_time, last_skip=self._last_skip,
            everything_mode=params.everything_mode if params else True,
            age_3d=now - self._last_3d if with_3d else None,
            problem_3d=objects.counts.last_problem if objects is not None else "", fps=fps))

    def _on_timer(self) -> None:
        with self._lock:  # a deactivate cannot come between the check and the re-subscription
            if self._active and self.rgbd is not None:
                self.rgbd.resubscribe_unsettled()
        snap = self.stats.snapshot()
        if self._active and self._log_limit.ready():
            self.get_logger().info(snap.line())
        if self._active and self.params is not None and time.monotonic() - self._last_frame > self.no_frame_warn_s:
            topic = self.input_topic(self.params)
            publishers = self.count_publishers(topic)
            if publishers and self._warn_limits["no_frames"].ready():
                self.no_frame_warnings += 1
                self.get_logger().warning(
                    f"{publishers} publisher(s) on {topic} but no frame for "
                    f"{time.monotonic() - self._last_frame:.0f} s: "
                    f"check the QoS (image_reliability is {self.params.image_reliability}, subscribed "
                    f"{self.image_reliability}) and, for large frames between processes, the DDS transport "
                    f"(best-effort images over UDP need large socket buffers)")
        diag_pub = self._diag_pub
        if diag_pub is None:
            return
        values = snap.key_values() + [("image reliability", self.image_reliability)]
        objects = self.step.objects if self.step is not None else None
        if objects is not None and self.params is not None and self.params.depth_enabled:
            values += objects.counts.key_values()
        level, message = self.diagnosis(snap.fps)
        diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), f"{self.get_name()}: segmentation",
                                          self.params.device if self.params else "", level, message, values))


def main(args: Sequence[str] | None = None) -> int:
    """`saom_node` / `ros2 run saom_ros saom_node`: run the node until Ctrl-C; status 1 when autostart fails.

    The executor spins from the start, so during an autostart that loads a slow model the lifecycle
    services and the diagnostics answer (the start-up runs in its own thread).
    """
    from rclpy.executors import ExternalShutdownException
    from rclpy.task import Future

    from saom_ros.executor import NodeExecutor

    rclpy.init(args=list(args) if args is not None else None)
    node = SaomNode()
    executor = NodeExecutor(num_threads=4)
    executor.add_node(node)
    start_failed: Future = Future()

    def autostart() -> None:
        if not node.startup():
            node.get_logger().fatal("start-up failed (see the error above); exiting")
            start_failed.set_result(True)

    status = 0
    try:
        if node.autostart_requested():
            threading.Thread(target=autostart, name="saom-autostart", daemon=True).start()
        executor.spin_until_future_complete(start_failed)
        status = 1 if start_failed.done() else 0
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            node.close()
        except Exception as exc:  # noqa: BLE001
            print(f"saom_node: error while shutting down: {exc}", file=sys.stderr)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
