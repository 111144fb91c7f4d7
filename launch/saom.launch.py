"""ros2 launch saom_ros saom.launch.py checkpoint:=/path/saom.pt image_topic:=/camera/color/image_raw [rviz:=true]
[backend:=onnxruntime checkpoint:=/path/export_folder]

Starts saom_node as a launch_ros LifecycleNode (a lifecycle manager or launch events can drive it;
with `autostart`, the default of the params file, it configures and activates itself) and
optionally rviz2 with config/saom.rviz, its topics moved into the node's namespace.
"""
import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = "saom_ros"
NODE_NAME = "saom_node"

ARGUMENTS = (
    ("params_file", os.path.join("{share}", "config", "saom.yaml"), "parameters of saom_node (ROS 2 params YAML)"),
    ("checkpoint", "", "SAOM checkpoint (backend onnxruntime: the `saom export` folder); overrides the params file "
                       "when set"),
    ("backend", "", "torch or onnxruntime; overrides the params file when set"),
    ("onnx_provider", "", "auto, tensorrt, cuda or cpu (backend onnxruntime); overrides the params file when set"),
    ("device", "", "cpu, cuda or cuda:N; overrides the params file when set"),
    ("autostart", "", "true: configure and activate at start-up; false: wait for a lifecycle manager; "
                      "empty: the params file's value"),
    ("image_topic", "/camera/image_raw", "input image topic (remapped onto the node's image_raw)"),
    ("image_transport", "",
     "raw or compressed (subscribes <image_topic>/compressed); overrides the params file when set"),
    ("image_reliability", "", "auto, best_effort or reliable; overrides the params file when set"),
    ("depth_enabled", "", "true: also subscribe to depth and camera_info and publish the 3D outputs; "
                          "empty: the params file's value"),
    ("depth_topic", "/camera/depth_registered/image_rect",
     "depth registered to the colour camera (remapped onto the node's depth/image_raw; RealSense: "
     "<camera>/aligned_depth_to_color/image_raw)"),
    ("camera_info_topic", "/camera/camera_info",
     "camera info of the colour camera (remapped onto the node's camera_info)"),
    ("use_sim_time", "false", "use /clock (bag playback, simulators)"),
    ("namespace", "", "namespace of the node (rviz follows it)"),
    ("log_level", "info", "logging level of the node"),
    ("rviz", "false", "also start rviz2 with the overlay"),
    ("rviz_config", os.path.join("{share}", "config", "saom.rviz"),
     "rviz2 config (its /saom_node/ topics follow `namespace`)"),
)
# launch arguments passed to the node as parameters when set (the params file's value otherwise)
STRING_OVERRIDES = ("checkpoint", "backend", "onnx_provider", "device", "image_transport", "image_reliability")


def _flag(value: str) -> bool:
    value = value.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value == "true"


def node_topic_prefix(namespace: str) -> str:
    """The absolute prefix of the node's private topics: /<namespace>/saom_node/."""
    parts = [p for p in namespace.strip().split("/") if p]
    return "/" + "/".join(parts + [NODE_NAME]) + "/"


def rviz_config_for(config_path: str, namespace: str) -> str:
    """config_path itself, or a copy whose /saom_node/ topics are moved into `namespace`."""
    prefix = node_topic_prefix(namespace)
    if prefix == f"/{NODE_NAME}/":
        return config_path
    with open(config_path, encoding="utf-8") as f:
        text = f.read().replace(f"Value: /{NODE_NAME}/", f"Value: {prefix}")
    fd, path = tempfile.mkstemp(prefix="saom_rviz_", suffix=".rviz")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _actions(context):
    get = lambda name: LaunchConfiguration(name).perform(context).strip()  # noqa: E731
    overrides = {"use_sim_time": _flag(get("use_sim_time"))}
    for name in STRING_OVERRIDES:
        if get(name):
            overrides[name] = get(name)
    for name in ("autostart", "depth_enabled"):
        if get(name):
            overrides[name] = _flag(get(name))
    image_topic = get("image_topic") or "image_raw"
    namespace = get("namespace")
    node = LifecycleNode(
        package=PACKAGE,
        executable="saom_node",
        name=NODE_NAME,
        namespace=namespace,
        output="screen",
        emulate_tty=True,
        parameters=[get("params_file"), overrides],
        remappings=[("image_raw", image_topic), ("image_raw/compressed", image_topic.rstrip("/") + "/compressed"),
                    ("depth/image_raw", get("depth_topic") or "depth/image_raw"),
                    ("camera_info", get("camera_info_topic") or "camera_info")],
        arguments=["--ros-args", "--log-level", get("log_level")],
    )
    actions = [node]
    if _flag(get("rviz")):
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="saom_rviz",
            arguments=["-d", rviz_config_for(get("rviz_config"), namespace)],
            parameters=[{"use_sim_time": overrides["use_sim_time"]}],
            output="log",
        ))
    return actions


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    declared = [DeclareLaunchArgument(name, default_value=default.format(share=share), description=description)
                for name, default, description in ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_actions)])
