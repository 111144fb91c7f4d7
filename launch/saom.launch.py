"""ros2 launch saom_ros saom.launch.py checkpoint:=/path/saom.pt image_topic:=/camera/color/image_raw [rviz:=true]

Starts saom_node (a lifecycle node that configures and activates itself: `autostart` in the
params file) and optionally rviz2 with config/saom.rviz showing the overlay.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "saom_ros"

ARGUMENTS = (
    ("params_file", os.path.join("{share}", "config", "saom.yaml"), "parameters of saom_node (ROS 2 params YAML)"),
    ("checkpoint", "", "SAOM checkpoint; overrides the params file when set"),
    ("device", "", "cpu, cuda or cuda:N; overrides the params file when set"),
    ("image_topic", "/camera/image_raw", "input image topic (remapped onto the node's image_raw)"),
    ("image_transport", "", "raw or compressed (subscribes <image_topic>/compressed); overrides the params file when set"),
    ("use_sim_time", "false", "use /clock (bag playback, simulators)"),
    ("namespace", "", "namespace of the node"),
    ("log_level", "info", "logging level of the node"),
    ("rviz", "false", "also start rviz2 with the overlay"),
    ("rviz_config", os.path.join("{share}", "config", "saom.rviz"), "rviz2 config"),
)


def _node(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {"use_sim_time": get("use_sim_time").strip().lower() == "true"}
    for name in ("checkpoint", "device", "image_transport"):
        if get(name).strip():
            overrides[name] = get(name).strip()
    image_topic = get("image_topic").strip() or "image_raw"
    return [Node(
        package=PACKAGE,
        executable="saom_node",
        name="saom_node",
        namespace=get("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[get("params_file"), overrides],
        remappings=[("image_raw", image_topic), ("image_raw/compressed", image_topic.rstrip("/") + "/compressed")],
        arguments=["--ros-args", "--log-level", get("log_level")],
    )]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    declared = [DeclareLaunchArgument(name, default_value=default.format(share=share), description=description)
                for name, default, description in ARGUMENTS]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="saom_rviz",
        arguments=["-d", LaunchConfiguration("rviz_config")],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="log",
    )
    return LaunchDescription(declared + [OpaqueFunction(function=_node), rviz])
