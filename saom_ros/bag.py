"""`saom bag`: run SAOM on every image of a rosbag2 and write the node's outputs into a new bag.

Pure Python (rosbags): no ROS installation needed. Reads MCAP or sqlite3 bags (a bag directory or
a single .mcap/.db3 file), writes a new bag directory (MCAP by default) holding, for every input
frame and at its bag timestamp, the same messages `saom_node` publishes: `<prefix>/detections`
(vision_msgs/Detection2DArray), `<prefix>/instance_mask` (mono16), optionally `<prefix>/overlay`
(rgb8), and `<prefix>/label_info` once (transient local, so rviz/Foxglove and `ros2 bag play` get
the class map). Every output carries its input frame's header. A frame that cannot be read or
segmented is counted and skipped; the run goes on.

Each frame goes through the node's per-frame step (saom_ros.frame_step): score filter, 3D, and
the tracker, so the ids are track ids, the node's on the same recording.

With `depth_topic` and `camera_info_topic` (registered depth, 16UC1 or 32FC1), each colour frame is
paired with them by header stamp within `sync_slop` seconds (saom_ros.pairing) and the 3D outputs are
written too, for every frame: `<prefix>/detections_3d` (vision_msgs/Detection3DArray),
`<prefix>/objects` (sensor_msgs/PointCloud2) and `<prefix>/markers`
(visualization_msgs/MarkerArray), ids as in `<prefix>/detections` (saom_ros.objects3d). A colour
frame without matching depth, or with depth that cannot be used, gets empty 3D outputs and is
counted.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saom_core.errors import ImageError, SaomError
from saom_core.infer.types import Segmenter
from saom_core.settings import ObjectSettings

from .conversions import UnsupportedEncoding, make_label_info, message_to_rgb
from .frame_step import FrameStep
from .msgtypes import rosbags_types, typestore
from .objects3d import rosbags_types_3d
from .pairing import CAMERA_INFO, COLOR, DEPTH, StampSync, stamp_ns

if TYPE_CHECKING:
    from saom_core.cli import PluginContext

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
DEFAULT_PREFIX = "/saom_node"


@dataclass
class BagSummary:
    frames: int = 0  # image messages read on the topic
    segmented: int = 0  # frames with outputs written
    skipped: int = 0  # unsupported encodings
    failed: int = 0  # unreadable frames or model errors
    errors: list[str] = field(default_factory=list)  # the first few failures
    topics: dict[str, int] = field(default_factory=dict)  # output topic -> messages written
    without_depth: int = 0  # with depth topics: segmented frames without usable matching depth

    def line(self) -> str:
        depth = f", {self.without_depth} without depth" if self.without_depth else ""
        counts = f"{self.segmented}/{self.frames} frames segmented, {self.skipped} skipped, {self.failed} failed"
        return f"{counts}{depth}; " + ", ".join(f"{t}: {n}" for t, n in self.topics.items())


def _qos(transient_local: bool = False):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return [Qos(history=QosHistory.KEEP_LAST, depth=1 if transient_local else 10,
                reliability=QosReliability.RELIABLE,
                durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
                deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
                liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)]


def _storage_of(path: Path) -> str:
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    return "mcap" if any(path.glob("*.mcap")) else "sqlite3"


def run_bag(
    segmenter: Segmenter,
    in_bag: str | Path,
    out_bag: str | Path,
    topic: str,
    progress: bool = True,
    *,
    output_prefix: str = DEFAULT_PREFIX,
    overlay: bool = True,
    copy_input: bool = False,
    score_threshold: float = 0.0,
    storage: str | None = "mcap",
    depth_topic: str | None = None,
    camera_info_topic: str | None = None,
    sync_slop: float = 0.05,
    objects: ObjectSettings | None = None,
) -> BagSummary:
    """Segment every image on `topic` of `in_bag` and write the outputs to the new bag `out_bag`.

    `storage` is "mcap", "sqlite3" or None (the input's format). `copy_input` also writes the
    input images (same topic name) so the output bag is viewable on its own. Raises SaomError for
    a missing/unreadable input bag, an output that exists already, or a topic that is not an image
    topic of the bag. `objects`: tracking and 3D (the schema's defaults, as the node's, when None).
    """
    in_bag, out_bag = Path(in_bag), Path(out_bag)
    if not in_bag.exists():
        raise SaomError(f"{in_bag}: no such bag")
    if out_bag.exists():
        raise SaomError(f"{out_bag} exists already; choose a new output path")
    storage = storage or _storage_of(in_bag)
    if storage not in ("mcap", "sqlite3"):
        raise SaomError(f"storage {storage!r}: use mcap or sqlite3")
    summary = BagSummary()
    reader = _open_reader(in_bag)
    try:
        inputs = _find_inputs(reader, in_bag, topic, depth_topic, camera_info_topic, sync_slop)
        writer = _open_writer(out_bag, storage)
        try:
            outputs = _Outputs(writer, output_prefix, summary, overlay=overlay, three_d=inputs.sync is not None,
                               copies=inputs.images if copy_input else [])
            step = FrameStep(segmenter, outputs.types, outputs.types_3d, objects or ObjectSettings(), score_threshold)
            frames = _FrameSegmenter(step, outputs, summary)
            _segment_all(reader, inputs, outputs, frames, summary, list(segmenter.class_names), score_threshold,
                         progress)
        finally:
            writer.close()
    finally:
        reader.close()
    return summary


# ---- open --------------------------------------------------------------------------------------
def _open_reader(in_bag: Path) -> Any:
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    try:
        reader = Reader(in_bag)
        reader.open()
    except (ReaderError, OSError, ValueError) as exc:
        raise SaomError(f"{in_bag}: cannot open the bag: {exc}") from exc
    return reader


def _open_writer(out_bag: Path, storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.errors import WriterError

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    try:
        writer = Writer(out_bag, version=8, storage_plugin=plugin)
        writer.open()
    except (WriterError, OSError) as exc:
        raise SaomError(f"{out_bag}: cannot create the bag: {exc}") from exc
    return writer


# ---- set up ------------------------------------------------------------------------------------
@dataclass
class _Inputs:
    """The input bag's connections to read: the images, and the depth/camera_info streams to pair."""

    images: list[Any]
    streams: dict[int, str]  # connection id -> sync stream (DEPTH, CAMERA_INFO)
    sync: StampSync | None  # pairs colour with depth by stamp; None without depth topics
    connections: list[Any]  # the images and the streams


def _find_inputs(reader: Any, in_bag: Path, topic: str, depth_topic: str | None, camera_info_topic: str | None,
                 sync_slop: float) -> _Inputs:
    images = [c for c in reader.connections if c.topic == topic]
    if not images:
        found = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
        raise SaomError(f"{in_bag}: no topic {topic}; image topics in the bag: {', '.join(found) or 'none'}")
    bad = [c.msgtype for c in images if c.msgtype not in IMAGE_TYPES]
    if bad:
        raise SaomError(f"{in_bag}: topic {topic} is {bad[0]}, not sensor_msgs/Image or CompressedImage")
    if (depth_topic is None) != (camera_info_topic is None):
        raise SaomError("3D outputs need both a depth topic and a camera_info topic")
    streams = {}
    for stream, name, msgtype in ((DEPTH, depth_topic, "sensor_msgs/msg/Image"),
                                  (CAMERA_INFO, camera_info_topic, "sensor_msgs/msg/CameraInfo")):
        if name is None:
            continue
        found_conns = [c for c in reader.connections if c.topic == name]
        if not found_conns or any(c.msgtype != msgtype for c in found_conns):
            raise SaomError(f"{in_bag}: no {msgtype} topic {name}")
        streams.update({c.id: stream for c in found_conns})
    connections = images + [c for c in reader.connections if c.id in streams]
    return _Inputs(images, streams, StampSync(sync_slop) if streams else None, connections)


class _Outputs:
    """The output bag's topics (the node's, under `prefix`, and optional copies of the input images),
    each message written at its input frame's bag time and counted in the summary."""

    def __init__(self, writer: Any, output_prefix: str, summary: BagSummary, *, overlay: bool, three_d: bool,
                 copies: list[Any]) -> None:
        self.writer = writer
        self.store = typestore()
        self.types = rosbags_types(self.store)
        self.types_3d = rosbags_types_3d(self.store) if three_d else None
        self.summary = summary
        self.prefix = "/" + output_prefix.strip("/") if output_prefix.strip("/") else ""
        self.overlay = overlay
        self.topics = {
            "detections": self._add("detections", "vision_msgs/msg/Detection2DArray"),
            "instance_mask": self._add("instance_mask", "sensor_msgs/msg/Image"),
            "label_info": self._add("label_info", "vision_msgs/msg/LabelInfo", transient_local=True),
        }
        if overlay:
            self.topics["overlay"] = self._add("overlay", "sensor_msgs/msg/Image")
        if three_d:
            self.topics["detections_3d"] = self._add("detections_3d", "vision_msgs/msg/Detection3DArray")
            self.topics["objects"] = self._add("objects", "sensor_msgs/msg/PointCloud2")
            self.topics["markers"] = self._add("markers", "visualization_msgs/msg/MarkerArray")
        self.copies = {}
        for c in copies:
            summary.topics[c.topic] = 0
            self.copies[c.id] = writer.add_connection(c.topic, c.msgtype, typestore=self.store,
                                                      offered_qos_profiles=_qos())

    def _add(self, name: str, msgtype: str, transient_local: bool = False) -> tuple[str, Any, str]:
        full = f"{self.prefix}/{name}"
        self.summary.topics[full] = 0
        conn = self.writer.add_connection(full, msgtype, typestore=self.store,
                                          offered_qos_profiles=_qos(transient_local))
        return full, conn, msgtype

    def write(self, key: str, timestamp: int, msg: Any) -> None:
        name, conn, msgtype = self.topics[key]
        self.writer.write(conn, timestamp, self.store.serialize_cdr(msg, msgtype))
        self.summary.topics[name] += 1

    def copy(self, conn: Any, timestamp: int, raw: bytes) -> None:
        """The input image message as it was, when the inputs are copied."""
        if conn.id in self.copies:
            self.writer.write(self.copies[conn.id], timestamp, raw)
            self.summary.topics[conn.topic] += 1


# ---- the loop ----------------------------------------------------------------------------------
class _FrameSegmenter:
    """Runs the per-frame step on one colour frame and writes its outputs: 2D, and with depth topics
    3D for every frame (empty without usable depth)."""

    def __init__(self, step: FrameStep, outputs: _Outputs, summary: BagSummary) -> None:
        self.step = step
        self.outputs = outputs
        self.summary = summary

    def __call__(self, timestamp: int, msg: Any, depth: Any = None, info: Any = None) -> None:
        summary, outputs = self.summary, self.outputs
        try:
            rgb = message_to_rgb(msg)
        except UnsupportedEncoding as exc:
            summary.skipped += 1
            if len(summary.errors) < 5:
                summary.errors.append(f"t={timestamp}: {exc}")
            return
        except ImageError as exc:
            _fail(summary, timestamp, str(exc))
            return
        try:
            out = self.step(msg, rgb, depth, info, overlay=outputs.overlay)
        except Exception as exc:  # noqa: BLE001 - keep going after a bad frame
            _fail(summary, timestamp, f"{type(exc).__name__}: {exc}")
            return
        outputs.write("detections", timestamp, out.detections)
        outputs.write("instance_mask", timestamp, out.instance_mask)
        if out.overlay is not None:
            outputs.write("overlay", timestamp, out.overlay)
        summary.segmented += 1
        if out.outputs_3d is None:
            return
        if not out.found.with_3d:
            summary.without_depth += 1
            if out.found.problem and len(summary.errors) < 5:
                summary.errors.append(f"t={timestamp}: {out.found.problem}")
        outputs.write("detections_3d", timestamp, out.outputs_3d.detections)
        outputs.write("objects", timestamp, out.outputs_3d.cloud)
        outputs.write("markers", timestamp, out.outputs_3d.markers)

    def matches(self, matches: Any) -> None:
        """Colour frames the stamp sync has paired (with depth, or given up on)."""
        for match in matches:
            timestamp, msg = match.color
            self(timestamp, msg, match.depth, match.camera_info)


def _segment_all(reader: Any, inputs: _Inputs, outputs: _Outputs, frames: _FrameSegmenter, summary: BagSummary,
                 class_names: list[str], score_threshold: float, progress: bool) -> None:
    """Every message of the inputs in bag order: images are segmented (paired with depth first when
    there is depth), the label map is written once before the first frame's outputs."""
    from tqdm import tqdm

    store, T, sync = outputs.store, outputs.types, inputs.sync
    label_info_written = False
    with tqdm(total=sum(c.msgcount for c in inputs.images), unit="frame", desc="saom bag", disable=not progress) as bar:
        for conn, timestamp, raw in reader.messages(connections=inputs.connections):
            if sync is not None and conn.id in inputs.streams:
                try:
                    other = store.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:  # noqa: BLE001 - a corrupt depth message is just missing depth
                    _fail(summary, timestamp, f"cannot deserialize {conn.topic}: {exc}")
                    continue
                frames.matches(sync.add(inputs.streams[conn.id], stamp_ns(other.header), other))
                continue
            bar.update(1)
            summary.frames += 1
            outputs.copy(conn, timestamp, raw)
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - a corrupt message is a bad frame
                _fail(summary, timestamp, f"cannot deserialize: {exc}")
                continue
            if not label_info_written:
                header = T.Header(stamp=T.Time(sec=msg.header.stamp.sec, nanosec=msg.header.stamp.nanosec), frame_id="")
                outputs.write("label_info", timestamp, make_label_info(T, header, class_names, score_threshold))
                label_info_written = True
            if sync is None:
                frames(timestamp, msg)
            else:
                frames.matches(sync.add(COLOR, stamp_ns(msg.header), (timestamp, msg)))
        if sync is not None:  # the end of the recording: what still waits has no depth
            frames.matches(sync.expire(2**63 - 1))


def _fail(summary: BagSummary, timestamp: int, message: str) -> None:
    summary.failed += 1
    if len(summary.errors) < 5:
        summary.errors.append(f"t={timestamp}: {message}")


def add_subcommand(subparsers: argparse._SubParsersAction, cli: PluginContext) -> None:
    """Add `saom bag` to the `saom` command (the `saom.subcommands` entry point in setup.py)."""

    def handle(args: argparse.Namespace) -> int:
        segmenter = cli.segmenter_from(args)
        try:
            summary = run_bag(
                segmenter, args.in_bag, args.out_bag, args.topic, progress=not args.quiet, storage=args.storage,
                depth_topic=args.depth_topic, camera_info_topic=args.camera_info_topic, sync_slop=args.sync_slop,
                objects=ObjectSettings.from_values({f.name: getattr(args, f.name) for f in fields(ObjectSettings)}),
            )
        finally:
            segmenter.close()
        print(summary.line())
        return 0

    from saom_core.cli import add_settings_options

    p = subparsers.add_parser("bag", help="segment every image of a rosbag2; write the node's outputs to a new bag")
    cli.add_generator_args(p)
    add_settings_options(p, ObjectSettings)
    p.add_argument("in_bag", type=Path)
    p.add_argument("out_bag", type=Path)
    p.add_argument("--topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"], help="output bag storage")
    p.add_argument("--depth-topic", default=None, help="registered depth (16UC1/32FC1): also write 3D outputs")
    p.add_argument("--camera-info-topic", default=None, help="the colour camera's sensor_msgs/CameraInfo")
    p.add_argument("--sync-slop", type=float, default=0.05, help="max stamp difference colour-depth (seconds)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=handle)
