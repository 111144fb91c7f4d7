"""The node's parameters: the segmenter's settings schema plus the node's own, validated without ROS.

Every parameter is a field of `NodeParams`: the segmenter's (`saom_core.settings.SegmenterSettings`,
the same settings as `saom segment`), tracking and 3D (`saom_core.settings.ObjectSettings`, as
`saom bag`) and the node's own (`NodeSettings`), each with its default,
range or choices, help text and whether it is runtime-safe (`saom_core.settings.Spec`). `PARAMETERS`
is the table the node declares; `validate` turns raw values (from rclpy, or a params YAML read by
`load_params_file`) into a checked `NodeParams` or raises `ConfigError` naming the parameter, the bad
value and what is allowed. A parameter that is not set (rclpy's NOT_SET, a key absent from the YAML)
takes its default; for the thresholds that is the checkpoint's tuned value.
`python -m saom_ros.params --write-yaml config/saom.yaml` writes the documented params file.
"""
from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from saom_core.errors import ConfigError
from saom_core.settings import (
    ObjectSettings,
    SegmenterSettings,
    Settings,
    Thresholds,
    check,
    setting,
    spec,
    value_type,
)

NODE_NAME = "saom_node"

RELIABILITIES = ("auto", "best_effort", "reliable")
TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class NodeSettings(Settings):
    """The node's own parameters (the segmenter's are SegmenterSettings)."""

    checkpoint: str = setting("", "SAOM checkpoint file (.pt), or with backend onnxruntime the folder `saom export` "
                                  "wrote; required: configure fails while it is empty or missing")
    warmup: bool = setting(True, "run the model once on a blank frame at activate, "
                                 "so the first camera frame pays no set-up cost")
    score_threshold: float = setting(0.0, "drop instances whose score (predicted IoU x class probability) "
                                          "is below this; "
                                          "published as LabelInfo.threshold", lo=0.0, hi=1.0, runtime=True)
    image_topic: str = setting("image_raw", "input image topic (remap it from the launch file; "
                                            "`<image_topic>/compressed` when image_transport is compressed)")
    image_transport: str = setting("raw", "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage)",
                                   choices=TRANSPORTS)
    image_reliability: str = setting(
        "auto",
        "QoS reliability of the image subscription: auto (the camera publisher's, as rosbag2 adapts; best effort "
        "until one appears, then re-checked), best_effort (matches every camera) or reliable. Large frames sent best "
        "effort between processes over UDP need big socket buffers (ROS 2 DDS tuning): auto hears a reliable camera "
        "reliably", choices=RELIABILITIES)
    everything_mode: bool = setting(True, "segment every frame in everything mode "
                                          "(latest frame only; off: prompted mode only)")
    prompts_enabled: bool = setting(True, "subscribe to ~/prompts "
                                          "(vision_msgs/Detection2DArray boxes or centre points)")
    prompt_frame_buffer: int = setting(10, "recent frames kept to match prompts to their frame by stamp", lo=1, hi=1000)
    publish_overlay: bool = setting(True, "publish ~/overlay (rgb8) while someone subscribes to it", runtime=True)
    diagnostics_period: float = setting(1.0, "seconds between /diagnostics messages",
                                        lo=0.0, hi=3600.0, lo_open=True, runtime=True)
    log_period: float = setting(10.0, "seconds between statistics log lines (0 = off)",
                                lo=0.0, hi=86400.0, runtime=True)
    autostart: bool = setting(True, "configure and activate at start-up (false: wait for a lifecycle manager)")
    enable: bool = setting(True, "segment frames and answer prompts (false: paused, the model stays loaded)",
                           runtime=True)
    depth_enabled: bool = setting(False, "subscribe to depth/image_raw (16UC1 millimetres or 32FC1 metres, registered "
                                         "to the colour image) and camera_info, and publish ~/detections_3d, ~/objects "
                                         "and ~/markers")
    target_frame: str = setting("", "frame of the 3D outputs: transformed with tf2 at the image stamp (a frame whose "
                                    "transform is not available gets empty 3D outputs and a warning); empty: the "
                                    "colour camera's optical frame")
    sync_slop: float = setting(0.02, "seconds by which the stamps of a colour frame and its depth and camera_info may "
                                     "differ; keep it below half the frame period, or a frame whose depth comes late "
                                     "is paired with its neighbour's", lo=0.0, hi=1.0)
    depth_wait: float = setting(0.3, "seconds a colour frame waits for its depth before it is segmented in 2D only "
                                     "(and counted)", lo=0.0, hi=10.0, lo_open=True)


@dataclass(frozen=True)
class NodeParams(NodeSettings, ObjectSettings, SegmenterSettings):
    """Every parameter of the node, checked (build it with `validate`)."""

    @property
    def input_topic(self) -> str:
        """The topic actually subscribed to (image_transport convention for compressed)."""
        if self.image_transport == "compressed":
            return self.image_topic.rstrip("/") + "/compressed"
        return self.image_topic

    def segmenter_settings(self) -> SegmenterSettings:
        """The settings for `saom_core.infer.segmenter.load_segmenter(params.checkpoint, ...)`."""
        return SegmenterSettings(**{f.name: getattr(self, f.name) for f in fields(SegmenterSettings)})

    def updated(self, changes: Mapping[str, Any]) -> NodeParams:
        """These parameters with `changes` applied, all checked again (ConfigError names a bad one);
        for parameter changes while the node runs."""
        return validate({**self.values(), **changes}, check_files=False)


Kind = Literal["bool", "int", "float", "str", "str_list"]
_KINDS: dict[type, Kind] = {bool: "bool", int: "int", float: "float", str: "str", tuple: "str_list"}


@dataclass(frozen=True)
class Param:
    """One declared parameter, as the node's ParameterDescriptor and the params YAML need it."""

    name: str
    default: Any  # as a ROS parameter value: None = not set, lists for string arrays
    description: str  # help, range, runtime safety and what "not set" means
    kind: Kind
    read_only: bool  # changing it needs a reconfigure (the model is reloaded); else runtime-safe
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed (ROS ranges cannot say so: validate does)
    choices: tuple[str, ...] | None = None
    zero_means: str | None = None  # 0 is allowed below lo and means this


def _describe(name: str) -> str:
    s = spec(NodeParams.__dataclass_fields__[name])
    notes = [s.range_text() if s.choices or s.allowed_text else f"range {s.range_text()}" if s.range_text() else "",
             "runtime-safe" if s.runtime else "",
             f"not set: the checkpoint's tuned value, paper {getattr(Thresholds, name)}" if s.tuned else ""]
    notes = [n for n in notes if n]
    return s.help + (f" ({'; '.join(notes)})" if notes else "")


def _param(name: str) -> Param:
    f = NodeParams.__dataclass_fields__[name]
    s = spec(f)
    base, _ = value_type(NodeParams, name)
    default = list(f.default) if isinstance(f.default, tuple) else f.default
    return Param(name, default, _describe(name), _KINDS[base], not s.runtime, s.lo, s.hi, s.lo_open, s.choices,
                 s.zero_means)


# The node's own parameters first (checkpoint at the top of the params file), then the segmenter's.
_GROUPS = (
    ("node", NodeSettings),
    ("tracking and 3D: the same settings as `saom bag` (saom_core/settings.py)", ObjectSettings),
    ("segmenter: the same settings as `saom segment` (saom_core/settings.py)", SegmenterSettings),
)
PARAMETERS: tuple[Param, ...] = tuple(_param(f.name) for _, group in _GROUPS for f in fields(group))
PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
RUNTIME_PARAMETERS = frozenset(p.name for p in PARAMETERS if not p.read_only)
SEGMENTER_PARAMETERS = frozenset(f.name for f in fields(SegmenterSettings))  # what SaomSegmenter.apply takes
# Declared by every rclpy node itself; allowed in params files, not validated here.
ROS_STANDARD_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS}


def validate(raw: Mapping[str, Any], check_files: bool = True) -> NodeParams:
    """Check raw parameter values (missing or unset ones take their defaults); raise ConfigError on the first problem.

    Unknown names are an error too: a misspelled key that is silently ignored is worse than a failure.
    """
    unknown = sorted(k for k in set(raw) - set(PARAMETER_NAMES) - ROS_STANDARD_PARAMETERS
                     if not k.startswith("qos_overrides."))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMETER_NAMES)}")
    params = NodeParams.from_values({k: v for k, v in raw.items() if k in DEFAULTS}, prefix="parameter ")

    if not params.checkpoint:
        raise ConfigError("parameter checkpoint: no checkpoint given (set `checkpoint` to a SAOM .pt file, "
                          "e.g. --ros-args -p checkpoint:=/path/to/saom.pt)")
    checkpoint = os.path.expanduser(params.checkpoint)
    if check_files:
        path = Path(checkpoint)
        if not path.exists():
            raise ConfigError(f"parameter checkpoint: {checkpoint} does not exist")
        if not (path.is_dir() if params.backend == "onnxruntime" else path.is_file()):
            kind = "the folder `saom export` wrote" if params.backend == "onnxruntime" else "a file"
            raise ConfigError(f"parameter checkpoint: {checkpoint} is not {kind} (backend {params.backend})")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"parameter checkpoint: {checkpoint} is not readable")
    if not params.image_topic:
        raise ConfigError("parameter image_topic: empty topic name")
    if params.depth_min >= params.depth_max:
        raise ConfigError(f"parameters depth_min ({params.depth_min}) and depth_max ({params.depth_max}): "
                          "depth_min must be smaller")
    if not params.everything_mode and not params.prompts_enabled:
        raise ConfigError("parameters everything_mode and prompts_enabled are both false: the node would do nothing")
    return replace(params, checkpoint=checkpoint)


def check_parameter(name: str, value: Any) -> Any:
    """One parameter's value checked against the schema (a `ros2 param set` before configure);
    ConfigError names it. None (not set) is allowed where the schema allows it."""
    return check(NodeParams, NodeParams.__dataclass_fields__[name], value, prefix="parameter ")


RELOAD_HINT = "needs a model reload: deactivate, cleanup, set it, then configure and activate"


def changed_params(params: NodeParams | None, changes: Mapping[str, Any], segmenter: Any, class_names: list[str],
                   state: str) -> NodeParams | None:
    """A `ros2 param set` of `changes`: each checked against the schema; unconfigured (`params` None)
    any valid value is taken (configure reads them, None is returned); configured (`state` says how),
    runtime-safe ones give the new parameters, applied to the loaded `segmenter` where they are its
    settings, and the others are refused. SaomError carries the reason."""
    for name, value in changes.items():
        check_parameter(name, value)
    if params is None:
        return None
    reload = sorted(n for n in changes if n not in RUNTIME_PARAMETERS)
    if reload:
        raise ConfigError(f"{', '.join(reload)}: the node is {state}; a change {RELOAD_HINT}")
    new = params.updated(changes)
    if segmenter is not None and set(changes) & SEGMENTER_PARAMETERS:
        check_classes(new, class_names)
        apply = getattr(segmenter, "apply", None)
        if apply is None:
            raise ConfigError(f"this segmenter ({type(segmenter).__name__}) cannot change settings while "
                              f"loaded: {RELOAD_HINT}")
        apply(new.segmenter_settings())
    return new


def check_classes(params: NodeParams, class_names: list[str]) -> None:
    """keep_classes must name classes of the loaded model (checked once the model is loaded)."""
    unknown = [c for c in params.keep_classes if c not in class_names]
    if unknown:
        raise ConfigError(f"parameter keep_classes: {', '.join(unknown)} not in the model's classes "
                          f"({', '.join(class_names[1:])})")


def load_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The `ros__parameters` a ROS 2 params YAML gives `node_name` (wildcard `/**` first, then the node's own)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read params file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of node names to ros__parameters")
    out: dict[str, Any] = {}
    matched = False
    for key in sorted(data, key=lambda k: 0 if str(k) in ("/**", "**") else 1):
        name = str(key).rstrip("/")
        if name in ("/**", "**") or name.split("/")[-1] == node_name:
            section = data[key]
            if not isinstance(section, dict) or "ros__parameters" not in section:
                raise ConfigError(f"{path}: section {key!r} has no ros__parameters")
            out.update(_flatten(section["ros__parameters"] or {}))
            matched = True
    if not matched:
        raise ConfigError(f"{path}: no section for node {node_name!r} (or /**)")
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mappings become dotted parameter names, as rcl does."""
    out: dict[str, Any] = {}
    for k, val in d.items():
        name = f"{prefix}{k}"
        if isinstance(val, dict):
            out.update(_flatten(val, name + "."))
        else:
            out[name] = val
    return out


YAML_HEADER = """\
# Parameters of saom_node (ros2 launch saom_ros saom.launch.py params_file:=...; or
# ros2 run saom_ros saom_node --ros-args --params-file config/saom.yaml -p checkpoint:=/path/saom.pt).
# `/**` applies them to the node whatever its name or namespace. Every key below is a declared
# parameter; an unknown key or a bad value makes configure fail with a message naming it. A key left
# out (or commented out) is not set and takes its default; for the thresholds that is the value tuned
# for the checkpoint at training (stored in it). Parameters are read when the node configures; the
# runtime-safe ones need no model reload to change.
# Generated from the settings schema (saom_core/settings.py, saom_ros/params.py) by
# `python -m saom_ros.params --write-yaml config/saom.yaml`: edit the schema, then regenerate.
"""


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def params_yaml() -> str:
    """config/saom.yaml: every parameter with its default and its description as a comment."""
    lines = [YAML_HEADER.rstrip("\n"), "/**:", "  ros__parameters:"]
    for title, group in _GROUPS:
        lines.append(f"    # --- {title} ---")
        for f in fields(group):
            param = _param(f.name)
            lines += textwrap.wrap(param.description, 100, initial_indent="    # ", subsequent_indent="    #   ")
            if param.default is None:
                lines.append(f"    # {param.name}: {_yaml_value(getattr(Thresholds, param.name))}")
            else:
                lines.append(f"    {param.name}: {_yaml_value(param.default)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saom_ros.params", description="write the node's documented params file"
    )
    parser.add_argument("--write-yaml", type=Path, required=True, metavar="PATH", help="e.g. config/saom.yaml")
    args = parser.parse_args(argv)
    from saom_core.io import atomic_write_text

    atomic_write_text(args.write_yaml, params_yaml())
    print(f"wrote {args.write_yaml}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
