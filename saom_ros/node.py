"""`saom_node`: the SAOM lifecycle node (thin rclpy wiring over the ROS-free modules of saom_ros).

Lifecycle (the yolo_ros pattern): configure validates the parameters (a missing checkpoint or a bad
value fails the transition with one clear error line) and creates the publishers; activate loads
the model and subscribes; deactivate unsubscribes, stops the worker and frees the model (GPU memory
included); cleanup removes the publishers. With `autostart` (default) the node configures and
activates itself at start-up, and exits with status 1 when that fails.

Topics (relative names, remappable; ~ is the node's name):
  in   image_raw (sensor_msgs/Image; `<image_topic>/compressed` CompressedImage when image_transport
       is compressed), sensor-data QoS (best effort, keep last 1; `image_reliability` reliable);
       ~/prompts (vision_msgs/Detection2DArray: boxes, or centre points where the size is 0)
  out  ~/detections (vision_msgs/Detection2DArray), ~/instance_mask (sensor_msgs/Image mono16),
       ~/overlay (rgb8, only while subscribed), ~/prompted/detections, ~/prompted/instance_mask
       (prompted mode; detection k answers prompt k), ~/label_info (vision_msgs/LabelInfo,
       transient local), /diagnostics (diagnostic_msgs/DiagnosticArray).
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any, Sequence

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

try:  # Jazzy and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from saom_core.errors import ImageError, SaomError

from . import model as model_mod
from .conversions import (
    SUPPORTED_ENCODINGS,
    UnsupportedEncoding,
    make_image,
    make_label_info,
    make_outputs,
    message_to_rgb,
    overlay_image,
    prompts_from_detections,
    reorder_prompted,
    select_image_converter,
    stamp_key,
)
from .msgtypes import rclpy_types
from .params import NODE_NAME, PARAMETER_NAMES, PARAMETERS, ROS_STANDARD_PARAMETERS, NodeParams, check_classes, validate
from .pipeline import FrameWorker, Job, PromptMatcher, RateLimiter, Stats

# Outputs are lossless: reliable, a few messages deep so a slow reader does not lose any.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
LABEL_INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Prompts: best effort matches reliable and best-effort publishers alike.
PROMPTS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)

OK, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def image_qos(reliability: str) -> QoSProfile:
    """Sensor-data QoS (keep last 1) with the configured reliability."""
    rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=rel, durability=DurabilityPolicy.VOLATILE)


class SaomNode(LifecycleNode):
    """SAOM everything mode (and prompted mode) as a ROS 2 lifecycle node.

    `segmenter_factory(params) -> Segmenter` replaces the real model loader (tests, benchmarks);
    see `saom_ros.model` for the other hooks.
    """

    def __init__(self, node_name: str = NODE_NAME, *, segmenter_factory: model_mod.SegmenterFactory | None = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for p in PARAMETERS:
            # Dynamic typing: a wrong type in a params file fails configure with a clear message
            # (params.validate) instead of raising in this constructor.
            self.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description, dynamic_typing=True))
        self._factory = segmenter_factory
        self.T = rclpy_types()
        self.params: NodeParams | None = None
        self.segmenter = None
        self.class_names: list[str] = []
        self.stats = Stats()
        self.worker: FrameWorker | None = None
        self.matcher: PromptMatcher | None = None
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._diag_pub = None
        self._timer = None
        self._log_limit = RateLimiter(0.0)
        self._warn_limits: dict[str, RateLimiter] = defaultdict(lambda: RateLimiter(5.0))
        self._last_failed = 0
        self._active = False
        self.overlays_published = 0
        self.qos_incompatible_events = 0
        self.no_frame_warn_s = 5.0  # warn when publishers are matched but no frame came for this long
        self.no_frame_warnings = 0
        self._last_frame = 0.0
        self._to_rgb = message_to_rgb  # replaced at configure (cv_bridge where it works)

    # -- helpers -----------------------------------------------------------------------------

    def warn_throttled(self, key: str, message: str) -> None:
        if self._warn_limits[key].ready():
            self.get_logger().warning(message)

    def read_params(self) -> NodeParams:
        raw = {name: self.get_parameter(name).value for name in PARAMETER_NAMES}
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = sorted(n for n in overrides if n not in PARAMETER_NAMES and n not in ROS_STANDARD_PARAMETERS
                         and not n.startswith("qos_overrides.") and not self.has_parameter(n))
        if unknown:
            raise SaomError(f"unknown parameter(s) {', '.join(unknown)} given to {self.get_name()}; "
                            f"known: {', '.join(PARAMETER_NAMES)}")
        return validate(raw)

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

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            params = self.read_params()
            model_mod.check_device(params.device)
        except SaomError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return FAILURE
        self.params = params
        pub = self.create_lifecycle_publisher
        self._pubs = {
            "detections": pub(Detection2DArray, "~/detections", OUTPUT_QOS),
            "instance_mask": pub(Image, "~/instance_mask", OUTPUT_QOS),
            "label_info": pub(LabelInfo, "~/label_info", LABEL_INFO_QOS),
        }
        if params.publish_overlay:
            self._pubs["overlay"] = pub(Image, "~/overlay", OUTPUT_QOS)
        if params.prompts_enabled:
            self._pubs["prompted_detections"] = pub(Detection2DArray, "~/prompted/detections", OUTPUT_QOS)
            self._pubs["prompted_instance_mask"] = pub(Image, "~/prompted/instance_mask", OUTPUT_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.stats = Stats()
        self._last_failed = 0
        self._log_limit = RateLimiter(params.log_period)
        self._log_limit.ready()  # first line after one period
        self._timer = self.create_timer(params.diagnostics_period, self._on_timer)
        self.matcher = PromptMatcher(params.prompt_frame_buffer)
        self._to_rgb, converter = select_image_converter(Image)
        self.get_logger().info(
            f"configured: checkpoint {params.checkpoint}, device {params.device}{' (half)' if params.half else ''}, "
            f"input {self.resolve_topic_name(params.input_topic)} ({params.image_transport}, {params.image_reliability}, "
            f"converted with {converter})")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.params
        assert params is not None
        segmenter = None
        try:
            factory = model_mod.resolve_factory(self._factory)
            t0 = time.monotonic()
            segmenter = factory(params)
            class_names = model_mod.validate_segmenter(segmenter)
            check_classes(params, class_names)
        except Exception as exc:  # noqa: BLE001 - any load failure fails the transition, with the reason
            self.get_logger().error(f"activate failed: cannot load the model: {exc}")
            try:
                model_mod.release(segmenter, params.device)
            except Exception:  # noqa: BLE001
                pass
            return FAILURE
        self.segmenter, self.class_names = segmenter, class_names
        self.get_logger().info(f"model loaded in {time.monotonic() - t0:.1f} s: {len(class_names) - 1} classes")
        ret = super().on_activate(state)
        header = self.T.Header(stamp=self.get_clock().now().to_msg(), frame_id="")
        self._pubs["label_info"].publish(make_label_info(self.T, header, class_names, params.score_threshold))
        self.worker = FrameWorker(self._process, self._on_error)
        self.worker.start()
        image_type = CompressedImage if params.image_transport == "compressed" else Image
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self._subs.append(self.create_subscription(image_type, params.input_topic, self._on_image,
                                                   image_qos(params.image_reliability), event_callbacks=events))
        self._last_frame = time.monotonic()
        if params.prompts_enabled:
            self._subs.append(self.create_subscription(Detection2DArray, "~/prompts", self._on_prompts, PROMPTS_QOS))
        self._active = True
        return ret

    def _stop_processing(self) -> None:
        self._active = False
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self.worker is not None:
            if not self.worker.stop(timeout=30.0):
                self.get_logger().error("the model did not finish its frame within 30 s; freeing it anyway")
            self.worker = None
        if self.matcher is not None:
            self.matcher.clear()
        segmenter, self.segmenter = self.segmenter, None
        if segmenter is not None:
            model_mod.release(segmenter, self.params.device if self.params else "cpu")
            self.get_logger().info("model freed")

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        return super().on_deactivate(state)

    def _destroy_outputs(self) -> None:
        destroy = getattr(self, "destroy_lifecycle_publisher", self.destroy_publisher)
        for p in self._pubs.values():
            destroy(p)
        self._pubs = {}
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_outputs()
        self.params = None
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._destroy_outputs()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._destroy_outputs()
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
            hint = " (the camera publishes best effort: set image_reliability to best_effort)"
        self.warn_throttled("qos", f"a publisher on {self.resolve_topic_name(self.params.input_topic)} offers an "
                                   f"incompatible QoS ({policy}); its frames will not arrive{hint}")

    def _on_image(self, msg: Any) -> None:
        received = time.monotonic()
        self._last_frame = received
        worker, params = self.worker, self.params
        if worker is None or params is None:
            return
        self.stats.count("received")
        if hasattr(msg, "encoding") and msg.encoding.lower() not in SUPPORTED_ENCODINGS:
            self.stats.count("skipped")
            self.warn_throttled("encoding", f"skipping frames in encoding {msg.encoding!r}: "
                                            f"supported are {', '.join(SUPPORTED_ENCODINGS)}")
            return
        if params.prompts_enabled and self.matcher is not None:
            match = self.matcher.add_frame(stamp_key(msg.header), msg)
            if match is not None:
                frame, prompts, prompts_received = match
                worker.submit_prompts(Job("prompts", frame, prompts_received, prompts))
        if params.everything_mode and worker.submit_frame(Job("frame", msg, received)):
            self.stats.count("dropped")

    def _on_prompts(self, msg: Detection2DArray) -> None:
        received = time.monotonic()
        worker = self.worker
        if worker is None or self.matcher is None:
            return
        frame = self.matcher.add_prompts(stamp_key(msg.header), msg, received)
        if frame is not None:
            worker.submit_prompts(Job("prompts", frame, received, msg))

    def _process(self, job: Job) -> None:
        params, segmenter, T = self.params, self.segmenter, self.T
        if params is None or segmenter is None:
            return
        try:
            rgb = self._to_rgb(job.image)
        except UnsupportedEncoding as exc:
            self.stats.count("skipped")
            self.warn_throttled("encoding", f"skipping a frame: {exc}")
            return
        h, w = rgb.shape[:2]
        if job.kind == "prompts":
            prompts = prompts_from_detections(job.prompts, w, h)
            t0 = time.monotonic()
            if len(prompts):
                seg = segmenter.segment_prompts(rgb, boxes=prompts.boxes if len(prompts.boxes) else None,
                                                points=prompts.points if len(prompts.points) else None)
                _check_size(seg, w, h)
                ordered = reorder_prompted(seg, prompts)
                if ordered is seg and len(seg.instances) != len(prompts):
                    self.warn_throttled("prompt_count", f"the model returned {len(seg.instances)} instances for "
                                                        f"{len(prompts)} prompts; ids follow its order")
                seg = ordered
            else:
                from saom_core.infer.types import Segmentation
                seg = Segmentation(height=h, width=w, instances=[])
            inference = time.monotonic() - t0
            mask_pub = self._pubs["prompted_instance_mask"]
            out = make_outputs(T, job.image.header, seg, 0.0, mask=mask_pub.get_subscription_count() > 0)
            self._pubs["prompted_detections"].publish(out.detections)
            if out.instance_mask is not None:
                mask_pub.publish(out.instance_mask)
            self.stats.done(time.monotonic() - job.received, inference, prompts=True)
            return
        t0 = time.monotonic()
        seg = segmenter.segment(rgb)
        inference = time.monotonic() - t0
        _check_size(seg, w, h)
        # the mask (and overlay) are only made while someone subscribes: a volatile topic without
        # subscribers delivers nothing, and a 16-bit full-frame image is the costly part
        mask_pub = self._pubs["instance_mask"]
        out = make_outputs(T, job.image.header, seg, params.score_threshold,
                           mask=mask_pub.get_subscription_count() > 0)
        self._pubs["detections"].publish(out.detections)
        if out.instance_mask is not None:
            mask_pub.publish(out.instance_mask)
        overlay_pub = self._pubs.get("overlay")
        if overlay_pub is not None and overlay_pub.get_subscription_count() > 0:
            overlay_pub.publish(make_image(T, out.detections.header, overlay_image(rgb, out.segmentation), "rgb8"))
            self.overlays_published += 1
        self.stats.done(time.monotonic() - job.received, inference)

    def _on_error(self, job: Job, exc: BaseException) -> None:
        kind = "bad frame" if isinstance(exc, ImageError) else "inference failed"
        self.stats.error(f"{kind}: {exc}")
        self.warn_throttled("error", f"{kind} (stamp {stamp_key(job.image.header)}): {type(exc).__name__}: {exc}")

    # -- diagnostics -------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        snap = self.stats.snapshot()
        if self._active and self._log_limit.ready():
            self.get_logger().info(snap.line())
        if self._active and self.params is not None and time.monotonic() - self._last_frame > self.no_frame_warn_s:
            topic = self.resolve_topic_name(self.params.input_topic)
            publishers = self.count_publishers(topic)
            if publishers and self._warn_limits["no_frames"].ready():
                self.no_frame_warnings += 1
                self.get_logger().warning(
                    f"{publishers} publisher(s) on {topic} but no frame for {time.monotonic() - self._last_frame:.0f} s: "
                    f"check the QoS (image_reliability is {self.params.image_reliability}) and, for large frames "
                    f"between processes, the DDS transport (best-effort images over UDP need large socket buffers)")
        if self._diag_pub is None:
            return
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: segmentation"
        status.hardware_id = self.params.device if self.params else ""
        new_failures = snap.failed - self._last_failed
        self._last_failed = snap.failed
        if not self._active:
            level, status.message = DiagnosticStatus.WARN, "inactive (model not loaded)"
        elif new_failures:
            level, status.message = DiagnosticStatus.WARN, f"{new_failures} frame(s) failed: {snap.last_error}"
        else:
            level, status.message = DiagnosticStatus.OK, f"{snap.fps:.1f} frames/s"
        status.level = level  # `byte`: b'\x00' OK, b'\x01' WARN
        status.values = [KeyValue(key=k, value=v) for k, v in snap.key_values()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self._diag_pub.publish(msg)


def _check_size(seg: Any, width: int, height: int) -> None:
    if (seg.height, seg.width) != (height, width):
        raise ValueError(f"the model returned a {seg.width}x{seg.height} segmentation for a {width}x{height} frame")


def main(args: Sequence[str] | None = None) -> int:
    """`saom_node` / `ros2 run saom_ros saom_node`: run the node until Ctrl-C; status 1 when autostart fails."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = SaomNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    status = 0
    try:
        if node.autostart_requested() and not node.startup():
            node.get_logger().fatal("start-up failed (see the error above); exiting")
            status = 1
        else:
            executor.spin()
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
