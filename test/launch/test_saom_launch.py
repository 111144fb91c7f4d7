"""launch_testing test of `ros2 launch saom_ros saom.launch.py` (for ROS 2 machines).

Runs with `colcon test --packages-select saom_ros` or `launch_test test/launch/test_saom_launch.py`
after `colcon build` (the node must be installed: `ros2 run saom_ros saom_node`). It starts the
real launch file with a fake model (a sitecustomize on the node's PYTHONPATH sets the test-only
hook saom_ros.segmenter_factory.SEGMENTER_FACTORY, so no checkpoint contents or GPU are needed), publishes
one image and expects detections, a mono16 mask and the latched LabelInfo, then checks the node
exits cleanly on shutdown.

launch, launch_ros and launch_testing are not on PyPI, so where they are missing (the pip-wheel
ROS 2 used by `make test`) pytest skips this module; test/test_ros_launch.py checks the launch
file and params there as far as that is possible without them.
"""
import atexit
import os
import shutil
import tempfile
import time
import unittest

import pytest

pytest.importorskip(
    "launch_testing", reason="launch_testing is not installed (not on PyPI): run this on a ROS 2 machine "
                             "with `colcon test` or `launch_test`")
pytest.importorskip("launch_ros", reason="launch_ros is not installed (not on PyPI)")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

_TMP = tempfile.mkdtemp(prefix="saom_launch_test_")
atexit.register(shutil.rmtree, _TMP, True)
CHECKPOINT = os.path.join(_TMP, "fake.pt")
with open(CHECKPOINT, "wb") as _f:
    _f.write(b"read by the fake segmenter only")
IMAGE_TOPIC = "/saom_launch_test/image_raw"
with open(os.path.join(_TMP, "sitecustomize.py"), "w") as _f:  # imported by the node's interpreter at start
    _f.write("import saom_ros.segmenter_factory, saom_ros.testing\n"
             "saom_ros.segmenter_factory.SEGMENTER_FACTORY = saom_ros.testing.fake_factory\n")


@pytest.mark.launch_test
def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("saom_ros"), "launch", "saom.launch.py")
    saom = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"checkpoint": CHECKPOINT, "image_topic": IMAGE_TOPIC, "rviz": "false"}.items(),
    )
    return launch.LaunchDescription([
        SetEnvironmentVariable("PYTHONPATH", os.pathsep.join(p for p in (_TMP, os.environ.get("PYTHONPATH")) if p)),
        saom,
        launch_testing.actions.ReadyToTest(),
    ])


class TestSaomLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("saom_launch_tester")

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def test_image_in_detections_out(self):
        got = {"det": [], "mask": [], "info": []}
        self.node.create_subscription(Detection2DArray, "/saom_node/detections", got["det"].append, 10)
        self.node.create_subscription(Image, "/saom_node/instance_mask", got["mask"].append, 10)
        self.node.create_subscription(
            LabelInfo, "/saom_node/label_info", got["info"].append,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        pub = self.node.create_publisher(Image, IMAGE_TOPIC, 1)
        msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=bytes(48 * 64 * 3))
        msg.header.frame_id = "launch_cam"
        msg.header.stamp.sec = 42
        end = time.monotonic() + 60.0
        while time.monotonic() < end and not (got["det"] and got["mask"] and got["info"]):
            pub.publish(msg)
            rclpy.spin_once(self.node, timeout_sec=0.2)
        self.assertTrue(got["det"], "no Detection2DArray from the launched node")
        self.assertTrue(got["mask"], "no instance mask")
        self.assertTrue(got["info"], "no LabelInfo")
        self.assertEqual(got["det"][0].header.frame_id, "launch_cam")
        self.assertEqual(got["det"][0].header.stamp.sec, 42)
        self.assertEqual(got["mask"][0].encoding, "mono16")
        self.assertEqual(got["info"][0].class_map[0].class_name, "background")


@launch_testing.post_shutdown_test()
class TestSaomShutdown(unittest.TestCase):
    def test_clean_exit(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
