"""launch/saom.launch.py, config/saom.rviz and the package install layout, checked without `launch`.

launch/launch_ros are not on PyPI: the launch file runs here against small recording stand-ins
of the launch API it uses, which shows its arguments, the node it starts (executable, params file,
overrides, remappings) and the optional rviz. The real launch test is test/launch/test_saom_launch.py
(ROS 2 machines); the params YAML going through rcl's parser is in test_ros_node.py.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "saom.launch.py"


class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorder):
    def perform(self, context):
        return context[self.args[0]]


def _stub_modules(share: str) -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in (
        "launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions",
        "ament_index_python", "ament_index_python.packages")}
    mods["launch"].LaunchDescription = type("LaunchDescription", (_Recorder,), {})
    mods["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorder,), {})
    mods["launch.actions"].OpaqueFunction = type("OpaqueFunction", (_Recorder,), {})
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (_Recorder,), {})
    mods["launch_ros.actions"].LifecycleNode = type("LifecycleNode", (_Recorder,), {})

    def get_package_share_directory(package):
        assert package == "saom_ros"
        return share

    mods["ament_index_python.packages"].get_package_share_directory = get_package_share_directory
    return mods


@pytest.fixture
def launch_module(monkeypatch):
    share = "/opt/ws/install/saom_ros/share/saom_ros"
    if importlib.util.find_spec("launch_ros") is None:  # only stand in where the real ones are missing
        for name, mod in _stub_modules(share).items():
            monkeypatch.setitem(sys.modules, name, mod)
    else:  # pragma: no cover - ROS 2 machine: the real launch API is checked by test/launch
        pytest.skip("real launch installed: covered by test/launch/test_saom_launch.py")
    spec = importlib.util.spec_from_file_location("saom_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, share


def test_launch_arguments_node_and_rviz(launch_module, tmp_path):
    module, share = launch_module
    desc = module.generate_launch_description()
    actions = desc.args[0]
    declared = {a.kwargs.get("name", a.args[0] if a.args else None): a.kwargs for a in actions
                if type(a).__name__ == "DeclareLaunchArgument"}
    for name in ("params_file", "image_topic", "use_sim_time", "rviz", "rviz_config", "checkpoint", "autostart",
                 "image_reliability", "namespace", "depth_enabled", "depth_topic", "camera_info_topic"):
        assert name in declared, f"launch argument {name} missing"
        assert declared[name]["description"]
    assert declared["params_file"]["default_value"] == f"{share}/config/saom.yaml"
    assert declared["rviz_config"]["default_value"] == f"{share}/config/saom.rviz"
    assert declared["rviz"]["default_value"] == "false"
    assert [type(a).__name__ for a in actions if type(a).__name__ != "DeclareLaunchArgument"] == ["OpaqueFunction"]

    opaque = [a for a in actions if type(a).__name__ == "OpaqueFunction"]
    context = {name: kw["default_value"] for name, kw in declared.items()}
    context.update(checkpoint="/models/saom.pt", image_topic="/camera/color/image_raw", use_sim_time="true",
                   depth_topic="/camera/aligned_depth_to_color/image_raw",
                   camera_info_topic="/camera/color/camera_info")
    (node,) = opaque[0].kwargs["function"](context)
    assert type(node).__name__ == "LifecycleNode", "a lifecycle manager or launch events must be able to drive it"
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"], kw["namespace"]) == ("saom_ros", "saom_node", "saom_node", "")
    params_file, overrides = kw["parameters"]
    assert params_file == f"{share}/config/saom.yaml"
    assert overrides == {"use_sim_time": True, "checkpoint": "/models/saom.pt"}
    remaps = dict(kw["remappings"])
    assert remaps["image_raw"] == "/camera/color/image_raw"
    assert remaps["image_raw/compressed"] == "/camera/color/image_raw/compressed"
    assert remaps["depth/image_raw"] == "/camera/aligned_depth_to_color/image_raw"
    assert remaps["camera_info"] == "/camera/color/camera_info"

    context.update(checkpoint="", device="cuda", use_sim_time="false", autostart="false", image_reliability="reliable")
    (node,) = opaque[0].kwargs["function"](context)
    assert node.kwargs["parameters"][1] == {"use_sim_time": False, "device": "cuda", "autostart": False,
                                            "image_reliability": "reliable"}
    context.update(device="", autostart="", image_reliability="", depth_enabled="true")
    (node,) = opaque[0].kwargs["function"](context)
    assert node.kwargs["parameters"][1] == {"use_sim_time": False, "depth_enabled": True}
    context.update(autostart="maybe")
    with pytest.raises(ValueError, match="maybe"):
        opaque[0].kwargs["function"](context)

    # rviz: the config's /saom_node/ topics follow the namespace (a rewritten copy)
    rviz_config = REPO / "config" / "saom.rviz"
    context.update(autostart="", rviz="true", rviz_config=str(rviz_config), namespace="arm_cam")
    node, rviz = opaque[0].kwargs["function"](context)
    assert node.kwargs["namespace"] == "arm_cam"
    assert rviz.kwargs["executable"] == "rviz2" and rviz.kwargs["arguments"][0] == "-d"
    rewritten = Path(rviz.kwargs["arguments"][1])
    try:
        topics = _rviz_image_topics(rewritten)
        assert "/arm_cam/saom_node/overlay" in topics and "/arm_cam/saom_node/instance_mask" in topics
        assert not [t for t in topics if t.startswith("/saom_node/")]
    finally:
        rewritten.unlink()
    context.update(namespace="")
    _, rviz = opaque[0].kwargs["function"](context)
    assert rviz.kwargs["arguments"][1] == str(rviz_config)
    assert module.node_topic_prefix("/robot/arm_cam/") == "/robot/arm_cam/saom_node/"


def _rviz_image_topics(path: Path) -> dict[str, dict]:
    config = yaml.safe_load(path.read_text())
    displays = config["Visualization Manager"]["Displays"]
    return {d["Topic"]["Value"]: d for d in displays if d["Class"] == "rviz_default_plugins/Image"}


def test_rviz_config_shows_the_overlay():
    topics = _rviz_image_topics(REPO / "config" / "saom.rviz")
    assert topics["/saom_node/overlay"]["Enabled"] is True
    assert topics["/saom_node/overlay"]["Topic"]["Reliability Policy"] == "Reliable"  # the node's outputs are reliable
    assert "/saom_node/instance_mask" in topics


def test_rviz_config_shows_the_3d_objects():
    config = yaml.safe_load((REPO / "config" / "saom.rviz").read_text())
    displays = {d["Class"]: d for d in config["Visualization Manager"]["Displays"]}
    markers, cloud = displays["rviz_default_plugins/MarkerArray"], displays["rviz_default_plugins/PointCloud2"]
    assert markers["Topic"]["Value"] == "/saom_node/markers" and markers["Enabled"] is True
    assert cloud["Topic"]["Value"] == "/saom_node/objects" and cloud["Color Transformer"] == "RGB8"  # the PCL rgb field
    assert cloud["Channel Name"] == "label"  # the track id, for the Intensity transformer
    assert {markers["Topic"]["Reliability Policy"], cloud["Topic"]["Reliability Policy"]} == {"Reliable"}
    # the outputs carry the colour camera's optical frame: the default fixed frame of realsense2_camera
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "camera_color_optical_frame"


def test_install_layout_for_colcon():
    """setup.py installs launch/*.py and config/*.yaml|*.rviz under share/saom_ros; the entry point exists."""
    setup = (REPO / "setup.py").read_text()
    assert re.search(r'glob\("launch/\*\.py"\)', setup) and re.search(r'glob\("config/\*\.rviz"\)', setup)
    assert '"saom_node = saom_ros.node:main"' in setup
    assert LAUNCH_FILE.is_file() and (REPO / "config" / "saom.yaml").is_file()
    # ros/vision_msgs is only for pip-wheel ROS: colcon must not build it next to the real vision_msgs
    assert (REPO / "ros" / "COLCON_IGNORE").exists()


@pytest.mark.parametrize("symlink", [False, True], ids=["copy", "symlink_install"])
def test_colcon_build_installs_the_package(tmp_path, symlink):
    """`colcon build` (colcon-ros from PyPI, as `make ros` installs it) puts the node, launch file and
    configs where `ros2 launch saom_ros saom.launch.py` looks for them."""
    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (`make ros` installs it)")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "saom_ros").symlink_to(REPO)
    cmd = [str(colcon), "build", "--packages-select", "saom_ros", "--event-handlers", "console_direct-"]
    result = subprocess.run(cmd + (["--symlink-install"] if symlink else []), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prefix = tmp_path / "install" / "saom_ros"
    share = prefix / "share" / "saom_ros"
    for path in (share / "package.xml", share / "launch" / "saom.launch.py", share / "config" / "saom.yaml",
                 share / "config" / "saom.rviz", prefix / "lib" / "saom_ros" / "saom_node",
                 prefix / "share" / "ament_index" / "resource_index" / "packages" / "saom_ros"):
        assert path.exists(), f"{path.relative_to(tmp_path)} not installed"


def test_launch_test_is_collected_and_skipped_cleanly():
    text = (REPO / "test" / "launch" / "test_saom_launch.py").read_text()
    assert 'pytest.importorskip(\n    "launch_testing"' in text
    assert "@pytest.mark.launch_test" in text


ROSDEP_KEYS = REPO.parent / "shared" / "ros" / "rosdep-keys.txt"
if not ROSDEP_KEYS.is_file():  # a worktree of the project's own machines: the shared folder is two levels up
    ROSDEP_KEYS = Path("/work/shared/ros/rosdep-keys.txt")


def _package_dependencies() -> dict[str, str]:
    """{dependency: tag} of package.xml (every *depend tag of format 3)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "package.xml").getroot()
    deps = {el.text.strip(): el.tag for el in root if el.tag.endswith("depend") and el.text}
    assert deps, "package.xml declares no dependencies"
    return deps


def _rosdep_keys() -> tuple[set[str], dict[str, set[str]]]:
    """(keys of rosdep's base/python yaml, {distro: released ROS packages}) from the shared key list."""
    if not ROSDEP_KEYS.is_file():
        pytest.skip(f"{ROSDEP_KEYS} (rosdep's key list) is not on this machine")
    plain: set[str] = set()
    released: dict[str, set[str]] = {}
    for line in ROSDEP_KEYS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        distro, sep, name = line.partition(":")
        if sep:
            released.setdefault(distro, set()).add(name)
        else:
            plain.add(line)
    assert plain and released, f"{ROSDEP_KEYS} holds no keys"
    return plain, released


def test_every_package_xml_dependency_resolves_with_rosdep():
    """`rosdep install --from-paths . -y` resolves each dependency: a rosdep key, or a ROS package
    released for every distro in the list (humble, jazzy, kilted, rolling)."""
    plain, released = _rosdep_keys()
    unresolved = []
    for dep in _package_dependencies():
        missing = sorted(d for d, names in released.items() if dep not in names)
        if dep not in plain and missing:
            unresolved.append(f"{dep} (not a rosdep key; not released for {', '.join(missing)})")
    assert not unresolved, "package.xml dependencies rosdep cannot resolve: " + "; ".join(unresolved)


def test_every_ros_package_the_code_imports_is_a_dependency():
    """The ROS packages imported by saom_ros/ and the launch file are declared (rosdep installs them)."""
    import ast

    _, released = _rosdep_keys()
    ros_packages = set.intersection(*released.values())
    deps = _package_dependencies()
    files = sorted((REPO / "saom_ros").glob("*.py")) + [LAUNCH_FILE]
    undeclared = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in ros_packages and top not in deps:
                    undeclared.add(f"{top} ({path.relative_to(REPO)})")
    assert not undeclared, f"imported but not in package.xml: {sorted(undeclared)}"


# The rosdep key of each third-party module saom_node imports (None: a pip package without a key,
# in the README's pip install line). A new import needs a row here and its key in package.xml.
NODE_IMPORT_KEYS = {"numpy": "python3-numpy", "scipy": "python3-scipy", "yaml": "python3-yaml",
                    "cv2": "python3-opencv", "torch": "python3-torch", "torchvision": "python3-torchvision",
                    "PIL": "python3-pil", "tqdm": "python3-tqdm", "segment_anything": None, "pycocotools": None}
TOOLS = {"rviz2", "python3-matplotlib", "python3-pybullet-pip", "python3-rosbags-pip", "python3-tensorboard-pip"}


def _node_run_dependencies() -> set[str]:
    """package.xml's exec_depends without a condition (what a plain `rosdep install` installs)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "package.xml").getroot()
    return {el.text.strip() for el in root.iter("exec_depend") if el.text and "condition" not in el.attrib}


def test_every_import_of_the_node_at_start_up_is_a_run_dependency():
    """Import the node and what activate loads (the real segmenter), then map every third-party module
    that SAOM's own loaded modules import to its rosdep key: a plain `rosdep install` must give them all."""
    import ast

    plain, released = _rosdep_keys()
    ros_packages = set.intersection(*released.values())
    code = ("import json, sys, saom_ros.node, saom_core.infer.segmenter\n"
            "print(json.dumps({m: getattr(sys.modules[m], '__file__', None) for m in list(sys.modules)}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    imported: set[str] = set()  # top-level names SAOM's loaded modules import
    for name, path in loaded.items():
        if name.split(".")[0] in ("saom_core", "saom_ros") and path:
            for node in ast.walk(ast.parse(Path(path).read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    third_party = {m for m in imported & {n.split(".")[0] for n in loaded}
                   if m not in sys.stdlib_module_names and m not in ("saom_core", "saom_ros")}
    assert {"rclpy", "scipy", "torch", "numpy"} <= third_party  # the check sees the start-up
    run_deps = _node_run_dependencies()
    problems = []
    for module in sorted(third_party):
        if module in ros_packages:
            key = module
        elif module in NODE_IMPORT_KEYS:
            key = NODE_IMPORT_KEYS[module]
            if key is None:
                continue
            assert key in plain, f"{key} is not a rosdep key"
        else:
            problems.append(f"{module}: no rosdep key known (add it to NODE_IMPORT_KEYS and package.xml)")
            continue
        if key not in run_deps:
            problems.append(f"{module}: {key} is not an unconditional exec_depend")
    assert not problems, problems
    assert not TOOLS & run_deps, f"the node does not need {sorted(TOOLS & run_deps)}: keep them conditional"
    assert TOOLS <= set(_package_dependencies()), "the tools' dependencies are declared (conditionally)"


def test_readme_names_the_pip_packages_rosdep_cannot_install():
    """Packages of setup.py without a rosdep key are in one `pip install` line of the README's ROS 2 section."""
    plain, _ = _rosdep_keys()
    readme = (REPO / "README.md").read_text()
    section = readme.split("## ROS 2", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if "pip install" in line]
    assert len(lines) == 1, f"expected one pip install line in the ROS 2 section, got {lines}"
    for pypi in ("segment-anything", "pycocotools"):
        assert not {f"python3-{pypi}", f"python3-{pypi}-pip"} & plain, f"{pypi} has a rosdep key now: use it"
        assert pypi in lines[0], f"{pypi} missing from {lines[0]!r}"
    assert "pybullet" not in lines[0], "pybullet has a rosdep key (python3-pybullet-pip): use it"
