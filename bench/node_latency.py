"""saom_node latency and throughput against the bare `segment()` call, on the same frames, in one run.

    python bench/node_latency.py                       # fake model that takes --model-ms per frame
    python bench/node_latency.py --checkpoint X.pt     # the real SAOM model (--device, --half, --threads)
    python bench/node_latency.py --checkpoint EXPORT/ --backend onnxruntime   # its `saom export` folder

Phases (the node runs as its own process, `python -m saom_ros.node`, over the real rmw on loopback):
  1. paired:   for each frame, segmenter.segment(rgb) in this process, then publish the frame and wait
               for its Detection2DArray from the node (one in flight)  -> frames/s, p50/p95 of each.
               Interleaved so that both see the same machine: on a shared VM a ~1 s CPU model drifts
               by 10-20% over a minute, more than the node's own overhead.
  2. overload: publish at --overload x the bare frame rate for --overload-s  -> latency first vs second half
               (no growing queue: the second half is not slower), frames dropped (from /diagnostics)
  3. RGB-D:    a second node with depth_enabled (its own process and namespace); each frame goes to the
               RGB node (-> Detection2DArray) and, with a 16UC1 depth image and CameraInfo of the same
               stamp, to the RGB-D node (-> Detection3DArray), interleaved  -> what depth, the 3D step and
               the tracker add to the node's per-frame time; and the same step in this process
               (saom_ros.frame_objects on the model's own segmentations, with and without depth, plus
               building the output messages), timed alone: the stable figure on a noisy machine.
Checks (exit status 1 when one fails, unless --no-check): node p50 latency overhead <= --max-overhead
(15%), node frames/s >= bare x (1 - max overhead), overload p95 of the second half <= first half x 1.5
+ one model period, the node dropped frames rather than queueing them, and the RGB-D node's p50 and
the in-process 3D step + tracker each within --max-3d-overhead (10%) of the RGB per-frame time.

Frames are 640x480 rgb8 sent reliable by default (--reliability): best-effort frames of that size
between two processes are mostly lost in Fast DDS' UDP path on hosts with default socket buffers
(ROS 2 "DDS tuning"), which would measure the host, not the node. With the fake model the node's
own work (conversion, outputs) is ~1-2 ms a frame; the rest of the overhead is moving the image
through rclpy and DDS. The check is relative, so it depends on the model time: SAM's everything
mode with a 32x32 grid takes well over 100 ms per frame even on a GPU (--model-ms, default 100).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saom_ros.params import DEFAULTS  # noqa: E402
from saom_ros.testing import FakeSegmenter, isolate_ros_env  # noqa: E402


def pct(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) * 1e3 if len(values) else float("nan")


def make_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return [np.roll(base, 7 * i, axis=1) for i in range(n)]


def load_segmenter(args):
    if not args.checkpoint:
        return FakeSegmenter(delay=args.model_ms / 1e3)
    from saom_core.infer.segmenter import load_segmenter as load

    return load(args.checkpoint, device=args.device, half=args.half, points_per_side=args.points_per_side,
                backend=args.backend, threads=args.threads)


def make_depth(width: int, height: int) -> np.ndarray:
    """A floor-like depth ramp, 0.8 m at the top to 2.0 m at the bottom (metres)."""
    return np.repeat(np.linspace(0.8, 2.0, height, dtype=np.float32)[:, None], width, axis=1)


def camera_k(width: int, height: int) -> list[float]:
    """RealSense D435-like pinhole intrinsics for the frame size (fx = fy = 0.94 x width)."""
    f = 0.94 * width
    return [f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0]


def time_frame_step(segmenter, frames: list[np.ndarray], depth_m: np.ndarray) -> dict:
    """The node's per-frame work after the model, in this process: score filter + tracker (+ depth
    parsing, 3D and the 3D messages with depth) and the 2D messages; ms p50 per frame."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    from saom_core.geometry3d import DepthSettings
    from saom_core.track import TrackerSettings
    from saom_ros.conversions import make_outputs
    from saom_ros.frame_step import FrameObjectStep
    from saom_ros.msgtypes import rclpy_types
    from saom_ros.objects3d import (
        depth_to_message,
        make_detection3d_array,
        make_markers,
        make_point_cloud,
        rclpy_types_3d,
    )
    from saom_ros.params import DEFAULTS

    T, M = rclpy_types(), rclpy_types_3d()
    h, w = depth_m.shape
    out = {}
    for with_depth in (False, True):
        step = FrameObjectStep(TrackerSettings(), DepthSettings(stride=DEFAULTS["depth_stride"]))
        times, cloud_times, objects = [], [], 0
        for i, frame in enumerate(frames):
            seg = segmenter.segment(frame)
            header = Header(stamp=Time(sec=i, nanosec=0), frame_id="bench_cam")
            depth = depth_to_message(T, header, depth_m, "16UC1") if with_depth else None
            info = CameraInfo(header=header, width=w, height=h, k=camera_k(w, h)) if with_depth else None
            start = time.perf_counter()
            found = step(seg, 0.0, header.frame_id, depth, info, depth_expected=with_depth)
            make_outputs(T, header, found.segmentation)
            if with_depth:
                make_detection3d_array(M, header, found.segmentation)
                make_markers(M, header, found.segmentation)
            times.append(time.perf_counter() - start)
            if with_depth:  # built by the node only while ~/objects has a subscriber
                start = time.perf_counter()
                make_point_cloud(M, header, found.segmentation, frame)
                cloud_times.append(time.perf_counter() - start)
            objects += len(found.segmentation.instances)
        out["rgbd" if with_depth else "rgb"] = {"p50_ms": pct(times, 50), "p95_ms": pct(times, 95),
                                                "cloud_p50_ms": pct(cloud_times, 50),
                                                "objects_per_frame": objects / len(frames)}
    return out


def summary(seconds: list[float]) -> dict:
    """Closed loop (one frame in flight): frames/s is frames over the time spent on them."""
    fps = len(seconds) / sum(seconds) if seconds else 0.0
    return {"fps": fps, "p50_ms": pct(seconds, 50), "p95_ms": pct(seconds, 95)}


def timed_segment(segmenter, frame: np.ndarray) -> float:
    start = time.perf_counter()
    segmenter.segment(frame)
    return time.perf_counter() - start


class Client:
    """Publishes frames and records when each frame's Detection2DArray arrives (matched by stamp)."""

    def __init__(self, domain: int, image_topic: str, node_name: str, reliable: bool,
                 rgbd_ns: str | None = None) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        self.Image = Image
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("saom_bench", context=self.ctx)
        camera = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.pub = self.node.create_publisher(Image, image_topic, camera)
        self.received: dict[tuple[int, int], float] = {}
        self.cond = threading.Condition()
        self.node.create_subscription(Detection2DArray, f"/{node_name}/detections", self._on_det, 100)
        self.diag: dict[str, str] = {}
        self.diag_rgbd: dict[str, str] = {}  # the RGB-D node's
        self.node_name = node_name
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        if rgbd_ns:  # the RGB-D node: colour, depth and camera_info in, Detection3DArray out
            from sensor_msgs.msg import CameraInfo
            from vision_msgs.msg import Detection3DArray

            self.CameraInfo = CameraInfo
            inputs = ((Image, "image"), (Image, "depth/image_raw"), (CameraInfo, "camera_info"))
            self.rgbd_pubs = [self.node.create_publisher(t, f"{rgbd_ns}/{name}", camera) for t, name in inputs]
            self.received_3d: dict[tuple[int, int], float] = {}
            self.node.create_subscription(Detection3DArray, f"{rgbd_ns}/{node_name}_rgbd/detections_3d",
                                          self._on_det3d, 100)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self._stop and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.02)

    def _on_det(self, msg):
        now = time.perf_counter()
        with self.cond:
            self.received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now
            self.cond.notify_all()

    def _on_det3d(self, msg):
        now = time.perf_counter()
        with self.cond:
            self.received_3d[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now
            self.cond.notify_all()

    def send_rgbd_and_wait(self, msg, depth_msg, timeout: float) -> float | None:
        """Colour, depth and camera_info of one stamp to the RGB-D node; seconds to its Detection3DArray."""
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        depth_msg.header = msg.header
        info = self.CameraInfo(header=msg.header, width=msg.width, height=msg.height,
                               k=camera_k(msg.width, msg.height))
        t = time.perf_counter()
        for pub, m in zip(self.rgbd_pubs, (msg, depth_msg, info), strict=True):
            pub.publish(m)
        with self.cond:
            if self.cond.wait_for(lambda: key in self.received_3d, timeout):
                return self.received_3d[key] - t
        return None

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(f"{self.node_name}:"):
                self.diag = {kv.key: kv.value for kv in st.values}
            elif st.name.startswith(f"{self.node_name}_rgbd:"):
                self.diag_rgbd = {kv.key: kv.value for kv in st.values}

    def image(self, rgb: np.ndarray, i: int):
        msg = self.Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1 + i // 1000, (i % 1000) * 1000
        msg.header.frame_id = "bench_cam"
        msg.height, msg.width = rgb.shape[:2]
        msg.encoding, msg.step = "rgb8", rgb.shape[1] * 3
        msg.data = rgb.tobytes()
        return msg

    def send_and_wait(self, msg, timeout: float) -> float | None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        t = time.perf_counter()
        self.pub.publish(msg)
        with self.cond:
            if self.cond.wait_for(lambda: key in self.received, timeout):
                return self.received[key] - t
        return None

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy

        rclpy.try_shutdown(context=self.ctx)


def start_node(args, node_name: str, image_topic: str, tmp: Path,
               rgbd_ns: str | None = None) -> subprocess.Popen:
    """The node as its own process; with rgbd_ns, in that namespace with depth_enabled."""
    env = dict(os.environ)
    module = "saom_ros.node"
    ros_args = ["-r", f"__node:={node_name}", "-p", f"image_topic:={image_topic}", "-p", "log_period:=0.0",
                "-p", f"image_reliability:={args.reliability}",
                "-p", "diagnostics_period:=0.5", "-p", "prompts_enabled:=false"]
    if args.checkpoint:
        ros_args += ["-p", f"checkpoint:={args.checkpoint}", "-p", f"device:={args.device}",
                     "-p", f"half:={str(args.half).lower()}", "-p", f"points_per_side:={args.points_per_side}",
                     "-p", f"backend:={args.backend}", "-p", f"threads:={args.threads}"]
    else:
        ckpt = tmp / "fake.pt"
        ckpt.write_bytes(b"fake")
        ros_args += ["-p", f"checkpoint:={ckpt}"]
        module = "saom_ros.testing"  # the node with the fake model
        env["SAOM_FAKE_DELAY"] = str(args.model_ms / 1e3)
    if rgbd_ns:
        ros_args += ["-r", f"__ns:={rgbd_ns}", "-p", "depth_enabled:=true"]
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rgbd_phase(client: Client, rgbd_proc: subprocess.Popen, frames: list[np.ndarray], depth_m: np.ndarray,
               i: int, model_s: float, n: int) -> dict:
    """Each frame to the RGB node, then with depth to the RGB-D node (after it answers once)."""
    from saom_ros.msgtypes import rclpy_types
    from saom_ros.objects3d import depth_to_message

    T = rclpy_types()
    timeout = 10 * model_s + 1
    first, deadline = None, time.monotonic() + 120
    while first is None and time.monotonic() < deadline:
        if rgbd_proc.poll() is not None:
            raise SystemExit(f"the RGB-D saom_node exited: {rgbd_proc.communicate()[0]}")
        i += 1
        msg = client.image(frames[0], i)
        first = client.send_rgbd_and_wait(msg, depth_to_message(T, msg.header, depth_m, "16UC1"), 1.0)
    if first is None:
        raise SystemExit("no Detection3DArray from the RGB-D saom_node within 120 s")
    rgb, rgbd = [], []
    for k in range(n):
        frame = frames[k % len(frames)]
        i += 1
        lat = client.send_and_wait(client.image(frame, i), timeout)
        if lat is not None:
            rgb.append(lat)
        i += 1
        msg = client.image(frame, i)
        lat = client.send_rgbd_and_wait(msg, depth_to_message(T, msg.header, depth_m, "16UC1"), timeout)
        if lat is not None:
            rgbd.append(lat)
    out = {"frames": n, "rgb": summary(rgb), "rgbd": summary(rgbd),
           "rgb_lost": n - len(rgb), "rgbd_lost": n - len(rgbd)}
    out["overhead_p50"] = out["rgbd"]["p50_ms"] / out["rgb"]["p50_ms"] - 1
    time.sleep(1.2)  # one /diagnostics period
    out["rgbd_node_counts"] = {k: client.diag_rgbd.get(k, "?") for k in (
        "frames processed", "frames with 3D", "frames without depth (2D only)", "frames with unusable depth (2D only)",
        "frames dropped", "latency p50 ms", "latency p95 ms", "inference p95 ms")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="", help="real SAOM checkpoint (default: fake model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                    help="onnxruntime: --checkpoint is the folder `saom export` wrote")
    ap.add_argument("--threads", type=int, default=0,
                    help="the model's intra-op threads, bare and in the node (0: the default, every core but one)")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--model-ms", type=float, default=100.0,
                    help="fake model time per frame "
                         "(ms; SAM everything mode with a 32x32 grid takes longer even on a GPU)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--overload", type=float, default=2.0, help="overload publish rate, x the bare frame rate")
    ap.add_argument("--overload-s", type=float, default=6.0)
    ap.add_argument("--max-overhead", type=float, default=0.15)
    ap.add_argument("--max-3d-overhead", type=float, default=0.10,
                    help="what depth, the 3D step and the tracker may add to the per-frame time")
    ap.add_argument("--rgbd-frames", type=int, default=None, help="frames of the RGB-D phase (default: --frames)")
    ap.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable",
                    help="camera and node image QoS (best_effort: large frames between processes may be lost "
                         "in the DDS transport, which shows up as lost frames)")
    ap.add_argument("--dds-transport", choices=("large_data", "default"), default="default",
                    help="large_data sets FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (shared memory + TCP, Fast DDS' "
                         "setting for camera-sized messages) for both processes unless it is set already; "
                         "default leaves Fast DDS as it is (UDP fragments: ~10 ms more per 640x480 frame here)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    domain = isolate_ros_env()
    if args.dds_transport == "large_data":
        os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    transport = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "Fast DDS default")
    frames = make_frames(args.frames + args.warmup, args.width, args.height)
    segmenter = load_segmenter(args)
    for f in frames[:args.warmup]:
        segmenter.segment(f)
    model_s = timed_segment(segmenter, frames[0])

    node_name, image_topic = f"saom_bench_node_{os.getpid()}", f"/saom_bench_{os.getpid()}/image"
    rgbd_ns = f"/saom_bench_rgbd_{os.getpid()}"
    depth_m = make_depth(args.width, args.height)
    tmp = tempfile.TemporaryDirectory(prefix="saom_bench_")
    proc = start_node(args, node_name, image_topic, Path(tmp.name))
    rgbd_proc = start_node(args, f"{node_name}_rgbd", "image", Path(tmp.name), rgbd_ns=rgbd_ns)
    client = Client(domain, image_topic, node_name, args.reliability == "reliable", rgbd_ns=rgbd_ns)
    results = {"width": args.width, "height": args.height, "dds_transport": transport,
               "image_reliability": args.reliability, "model": args.checkpoint or f"fake {args.model_ms} ms"}
    try:
        # wait for the node (model load, discovery): re-send the first frame until it is answered
        first, deadline, i = None, time.monotonic() + 120, 0
        while first is None and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"saom_node exited: {proc.communicate()[0]}")
            first = client.send_and_wait(client.image(frames[0], i), 1.0)
            i += 1
        if first is None:
            raise SystemExit("no answer from saom_node within 120 s")
        for f in frames[1:args.warmup]:
            i += 1
            client.send_and_wait(client.image(f, i), 10 * model_s + 1)

        # 1. paired closed loop: the bare call and the node on each frame in turn
        bare_times, latencies = [], []
        for f in frames[args.warmup:]:
            bare_times.append(timed_segment(segmenter, f))
            i += 1
            lat = client.send_and_wait(client.image(f, i), 10 * model_s + 1)
            if lat is not None:
                latencies.append(lat)
        step = results["frame_step"] = time_frame_step(segmenter, frames[args.warmup:][:20], depth_m)
        segmenter.close()
        bare = results["bare"] = summary(bare_times)
        model_s = bare["p50_ms"] / 1e3
        print(f"bare segment(): {bare['fps']:.2f} frames/s, p50 {bare['p50_ms']:.1f} ms, p95 {bare['p95_ms']:.1f} ms "
              f"({args.width}x{args.height}, "
              f"{'fake ' + str(args.model_ms) + ' ms' if not args.checkpoint else args.checkpoint})")
        node = {**summary(latencies), "lost": args.frames - len(latencies)}
        node["overhead_p50"] = node["p50_ms"] / bare["p50_ms"] - 1
        node["overhead_fps"] = 1 - node["fps"] / bare["fps"]
        time.sleep(1.2)  # one /diagnostics period: the node's own view of the same frames
        node["node_internal_p50_ms"] = float(client.diag.get("latency p50 ms", "nan"))
        node["node_model_p50_ms"] = float(client.diag.get("inference p50 ms", "nan"))
        results["node"] = node
        print(f"node (one in flight; {args.reliability}, transport {transport}): {node['fps']:.2f} frames/s, "
              f"p50 {node['p50_ms']:.1f} ms, "
              f"p95 {node['p95_ms']:.1f} ms, {node['lost']} lost; overhead p50 {100 * node['overhead_p50']:+.1f}%, "
              f"frames/s {100 * node['overhead_fps']:+.1f}%; inside the node: callback->published p50 "
              f"{node['node_internal_p50_ms']:.1f} ms, model {node['node_model_p50_ms']:.1f} ms")

        print(f"per-frame step after the model, in this process (p50; {step['rgbd']['objects_per_frame']:.1f} "
              f"objects a frame): without depth {step['rgb']['p50_ms']:.2f} ms (filter, tracker, 2D messages), "
              f"with depth {step['rgbd']['p50_ms']:.2f} ms (+ depth parsing, 3D, Detection3DArray, markers; "
              f"depth_stride {DEFAULTS['depth_stride']}): {100 * step['rgbd']['p50_ms'] / node['p50_ms']:.1f}% of the "
              f"RGB node's p50; the PointCloud2 (only while subscribed) {step['rgbd']['cloud_p50_ms']:.2f} ms more")

        # 2. overload: a camera faster than the model
        rate = args.overload * bare["fps"]
        n = max(10, int(rate * args.overload_s))
        sent: dict[tuple[int, int], float] = {}
        start = time.perf_counter()
        for k in range(n):
            time.sleep(max(0.0, start + k / rate - time.perf_counter()))
            i += 1
            msg = client.image(frames[args.warmup + k % args.frames], i)
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()
            client.pub.publish(msg)
        time.sleep(3 * model_s + 1.0)  # let the last frame through, and /diagnostics report it
        done = sorted((sent[k], client.received[k] - sent[k]) for k in sent if k in client.received)
        half = len(done) // 2
        first_half, second_half = [d for _, d in done[:half]], [d for _, d in done[half:]]
        over = {"publish_hz": rate, "published": n, "answered": len(done),
                "p95_first_half_ms": pct(first_half, 95), "p95_second_half_ms": pct(second_half, 95),
                "p50_ms": pct([d for _, d in done], 50),
                "node_dropped": int(client.diag.get("frames dropped", "-1")),
                "node_received": int(client.diag.get("frames received", "-1"))}
        results["overload"] = over
        print(f"overload at {rate:.1f} Hz ({n} frames): {len(done)} answered, p50 {over['p50_ms']:.1f} ms, "
              f"p95 first half {over['p95_first_half_ms']:.1f} ms, second half {over['p95_second_half_ms']:.1f} ms; "
              f"node dropped {over['node_dropped']} of {over['node_received']} received")
        time.sleep(3 * model_s)  # the overload's last frames out of the RGB node's way

        # 3. RGB-D: the RGB node and the RGB-D node on each frame in turn
        results["rgbd"] = rgbd_phase(client, rgbd_proc, frames[args.warmup:], depth_m, i, model_s,
                                     args.rgbd_frames or args.frames)
        rgb_p50, rgbd_p50 = results["rgbd"]["rgb"]["p50_ms"], results["rgbd"]["rgbd"]["p50_ms"]
        print(f"RGB vs RGB-D node (one in flight, interleaved, {results['rgbd']['frames']} frames): p50 "
              f"{rgb_p50:.1f} vs {rgbd_p50:.1f} ms ({100 * results['rgbd']['overhead_p50']:+.1f}%), p95 "
              f"{results['rgbd']['rgb']['p95_ms']:.1f} vs {results['rgbd']['rgbd']['p95_ms']:.1f} ms; "
              f"lost {results['rgbd']['rgb_lost']} / {results['rgbd']['rgbd_lost']}; the RGB-D node's counts: "
              + ", ".join(f"{k} {v}" for k, v in results["rgbd"]["rgbd_node_counts"].items()))
    finally:
        client.close()
        for p in (proc, rgbd_proc):
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        tmp.cleanup()

    checks = {
        f"node p50 overhead <= {args.max_overhead:.0%}": results["node"]["overhead_p50"] <= args.max_overhead,
        f"node frames/s within {args.max_overhead:.0%} of bare": results["node"]["overhead_fps"] <= args.max_overhead,
        "no growing queue (overload p95, 2nd half <= 1st half x 1.5 + 1 model period)":
            over["p95_second_half_ms"] <= 1.5 * over["p95_first_half_ms"] + bare["p50_ms"],
        "frames dropped, not queued, under overload": over["node_dropped"] > 0 and over["answered"] < n,
        f"RGB-D node p50 within {args.max_3d_overhead:.0%} of the RGB node's":
            results["rgbd"]["overhead_p50"] <= args.max_3d_overhead,
        f"3D step + tracker (in process) <= {args.max_3d_overhead:.0%} of the RGB node's p50":
            results["frame_step"]["rgbd"]["p50_ms"] <= args.max_3d_overhead * results["node"]["p50_ms"],
    }
    results["checks"] = checks
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if args.no_check or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
