"""The node's parameters: one schema, validated without ROS.

`PARAMETERS` lists every parameter the node declares (name, default, description); `validate`
turns raw values (from rclpy, or from a params YAML read by `load_params_file`) into a checked
`NodeParams` or raises `ConfigError` naming the parameter, the bad value and what is allowed.
The node declares all of them with dynamic typing, so a wrong type in a YAML file reaches this
validation (a clear configure failure) instead of an exception in the node's constructor.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from saom_core.errors import ConfigError

NODE_NAME = "saom_node"

RELIABILITIES = ("auto", "best_effort", "reliable")
TRANSPORTS = ("raw", "compressed")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str


PARAMETERS: tuple[Param, ...] = (
    # model
    Param("checkpoint", "", "SAOM checkpoint file (required; configure fails when it is missing)"),
    Param("model_config", "", "SAM architecture name (vit_b, vit_l, vit_h, ...); empty = read from the checkpoint"),
    Param("device", "cpu", "cpu, cuda, cuda:N or auto (cuda when available)"),
    Param("half", False, "reduced precision: bf16 (fp16 on GPUs without bf16); faster, masks differ slightly (bench/everything_mode.py)"),
    Param("warmup", True, "run the model once on a blank frame at activate, so the first camera frame pays no set-up cost"),
    Param("compile", False, "torch.compile the mask decoder at activate (one-off ~15-30 s on a CPU, then faster decoding)"),
    Param("points_per_side", 32, "everything-mode prompt grid size (points per side)"),
    Param("pred_iou_thresh", -1.0, "drop masks whose predicted IoU is below this [0, 1]; -1 = the checkpoint's tuned value (paper: 0.3)"),
    Param("stability_score_thresh", -1.0, "drop masks whose stability score is below this [0, 1]; -1 = the checkpoint's tuned value (paper: 0.95)"),
    Param("box_nms_thresh", -1.0, "box IoU for non-maximum suppression between instances (0, 1]; -1 = the checkpoint's tuned value (paper: 0.3)"),
    Param("min_mask_region_area", -1, "remove mask islands and holes smaller than this (pixels, 0 = off); -1 = the checkpoint's tuned value (paper: 150)"),
    Param("score_threshold", 0.0, "drop instances whose score (predicted IoU x class probability) is below this [0, 1]; published as LabelInfo.threshold"),
    Param("keep_classes", [], "class names to keep (empty = all classes of the model)"),
    Param("keep_background", False, "also output instances classified as background (class id 0)"),
    Param("max_input_size", 1280, "downscale frames whose long side exceeds this before inference (pixels >= 16, 0 = never); outputs stay at input resolution"),
    # inputs
    Param("image_topic", "image_raw", "input image topic (remappable; `<image_topic>/compressed` when image_transport is compressed)"),
    Param("image_transport", "raw", "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage)"),
    Param("image_reliability", "auto", "QoS reliability of the image subscription: auto (the camera publisher's, default), best_effort or reliable"),
    Param("everything_mode", True, "segment every frame in everything mode (off: prompted mode only)"),
    Param("prompts_enabled", True, "subscribe to ~/prompts (vision_msgs/Detection2DArray boxes or centre points)"),
    Param("prompt_frame_buffer", 10, "recent frames kept to match prompts to their frame by stamp"),
    # outputs
    Param("publish_overlay", True, "publish ~/overlay (rgb8) while someone subscribes to it"),
    Param("diagnostics_period", 1.0, "seconds between /diagnostics messages"),
    Param("log_period", 10.0, "seconds between statistics log lines (0 = off)"),
    # start-up
    Param("autostart", True, "configure and activate at start-up (no lifecycle manager needed)"),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
# Declared by every rclpy node itself; allowed in params files, not validated here.
ROS_STANDARD_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS}


@dataclass(frozen=True)
class NodeParams:
    checkpoint: str
    model_config: str = ""
    device: str = "cpu"
    half: bool = False
    warmup: bool = True
    compile: bool = False
    points_per_side: int = 32
    pred_iou_thresh: float = -1.0  # -1: the checkpoint's tuned value (TUNED)
    stability_score_thresh: float = -1.0
    box_nms_thresh: float = -1.0
    min_mask_region_area: int = -1
    score_threshold: float = 0.0
    keep_classes: tuple[str, ...] = field(default_factory=tuple)
    keep_background: bool = False
    max_input_size: int = 1280
    image_topic: str = "image_raw"
    image_transport: str = "raw"
    image_reliability: str = "auto"
    everything_mode: bool = True
    prompts_enabled: bool = True
    prompt_frame_buffer: int = 10
    publish_overlay: bool = True
    diagnostics_period: float = 1.0
    log_period: float = 10.0
    autostart: bool = True

    @property
    def input_topic(self) -> str:
        """The topic actually subscribed to (image_transport convention for compressed)."""
        if self.image_transport == "compressed":
            return self.image_topic.rstrip("/") + "/compressed"
        return self.image_topic

    def segmenter_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `saom_core.infer.segmenter.load_segmenter`."""
        kwargs: dict[str, Any] = dict(
            checkpoint=self.checkpoint,
            device=self.device,
            half=self.half,
            points_per_side=self.points_per_side,
            pred_iou_thresh=_tuned(self.pred_iou_thresh),
            stability_score_thresh=_tuned(self.stability_score_thresh),
            box_nms_thresh=_tuned(self.box_nms_thresh),
            min_mask_region_area=_tuned(self.min_mask_region_area),
            keep_classes=list(self.keep_classes) or None,
            keep_background=self.keep_background,
            max_input_size=self.max_input_size or None,
            compile=self.compile,
        )
        if self.model_config:
            kwargs["model_config"] = self.model_config
        return kwargs


assert tuple(f.name for f in fields(NodeParams)) == PARAMETER_NAMES, "PARAMETERS and NodeParams out of sync"


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"parameter {name}: expected true or false, got {value!r}")


def _int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"parameter {name}: expected an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"parameter {name}: {value} is out of range [{lo}, {'inf' if hi is None else hi}]")
    return value


def _float(name: str, value: Any, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"parameter {name}: expected a number, got {value!r}")
    value = float(value)
    if value != value:  # NaN
        raise ConfigError(f"parameter {name}: NaN is not allowed")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        raise ConfigError(f"parameter {name}: {value} is out of range {left}{lo}, {'inf' if hi is None else hi}]")
    return value


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"parameter {name}: expected a string, got {value!r}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    value = _str(name, value).strip().lower()
    if value not in choices:
        raise ConfigError(f"parameter {name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _str_list(name: str, value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):  # "mug, bottle" from a command line
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    if isinstance(value, (list, tuple, bytes)) and len(value) == 0:
        return ()
    raise ConfigError(f"parameter {name}: expected a list of class names, got {value!r}")


def _max_input_size(value: Any) -> int:
    value = _int("max_input_size", value, 0, 16384)
    if 0 < value < 16:
        raise ConfigError(f"parameter max_input_size: {value} is too small (0 = never downscale, else >= 16 pixels)")
    return value


TUNED = -1  # a threshold parameter at -1 takes the value tuned for the checkpoint


def _tuned(value: float) -> float | None:
    """None (= the checkpoint's tuned value) for the TUNED sentinel."""
    return None if value == TUNED else value


def _or_tuned(check: Any, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """-1 passes through (the checkpoint's value); anything else is checked as usual."""
    if not isinstance(value, bool) and isinstance(value, (int, float)) and value == TUNED:
        return type(DEFAULTS[name])(TUNED)
    return check(name, value, *args, **kwargs)


def validate(raw: Mapping[str, Any], check_files: bool = True) -> NodeParams:
    """Check raw parameter values (missing ones take their defaults); raise ConfigError on the first problem.

    Unknown names are an error too: a misspelled key that is silently ignored is worse than a failure.
    """
    unknown = sorted(k for k in set(raw) - set(PARAMETER_NAMES) - ROS_STANDARD_PARAMETERS
                     if not k.startswith("qos_overrides."))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMETER_NAMES)}")
    v = dict(DEFAULTS)
    v.update({k: val for k, val in raw.items() if k in DEFAULTS and (val is not None or k == "keep_classes")})

    checkpoint = _str("checkpoint", v["checkpoint"]).strip()
    if not checkpoint:
        raise ConfigError("parameter checkpoint: no checkpoint given (set `checkpoint` to a SAOM .pt file, "
                          "e.g. --ros-args -p checkpoint:=/path/to/saom.pt)")
    checkpoint = os.path.expanduser(checkpoint)
    if check_files:
        path = Path(checkpoint)
        if not path.exists():
            raise ConfigError(f"parameter checkpoint: {checkpoint} does not exist")
        if not path.is_file():
            raise ConfigError(f"parameter checkpoint: {checkpoint} is not a file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"parameter checkpoint: {checkpoint} is not readable")

    device = _str("device", v["device"]).strip().lower()
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"parameter device: {device!r} is not cpu, cuda, cuda:N or auto")
    half = _bool("half", v["half"])

    image_topic = _str("image_topic", v["image_topic"]).strip()
    if not image_topic:
        raise ConfigError("parameter image_topic: empty topic name")
    everything_mode = _bool("everything_mode", v["everything_mode"])
    prompts_enabled = _bool("prompts_enabled", v["prompts_enabled"])
    if not everything_mode and not prompts_enabled:
        raise ConfigError("parameters everything_mode and prompts_enabled are both false: the node would do nothing")

    return NodeParams(
        checkpoint=checkpoint,
        model_config=_str("model_config", v["model_config"]).strip(),
        device=device,
        half=half,
        warmup=_bool("warmup", v["warmup"]),
        compile=_bool("compile", v["compile"]),
        points_per_side=_int("points_per_side", v["points_per_side"], 1, 256),
        pred_iou_thresh=_or_tuned(_float, "pred_iou_thresh", v["pred_iou_thresh"], 0.0, 1.0),
        stability_score_thresh=_or_tuned(_float, "stability_score_thresh", v["stability_score_thresh"], 0.0, 1.0),
        box_nms_thresh=_or_tuned(_float, "box_nms_thresh", v["box_nms_thresh"], 0.0, 1.0, lo_open=True),
        min_mask_region_area=_or_tuned(_int, "min_mask_region_area", v["min_mask_region_area"], 0),
        score_threshold=_float("score_threshold", v["score_threshold"], 0.0, 1.0),
        keep_classes=_str_list("keep_classes", v["keep_classes"]),
        keep_background=_bool("keep_background", v["keep_background"]),
        max_input_size=_max_input_size(v["max_input_size"]),
        image_topic=image_topic,
        image_transport=_choice("image_transport", v["image_transport"], TRANSPORTS),
        image_reliability=_choice("image_reliability", v["image_reliability"], RELIABILITIES),
        everything_mode=everything_mode,
        prompts_enabled=prompts_enabled,
        prompt_frame_buffer=_int("prompt_frame_buffer", v["prompt_frame_buffer"], 1, 1000),
        publish_overlay=_bool("publish_overlay", v["publish_overlay"]),
        diagnostics_period=_float("diagnostics_period", v["diagnostics_period"], 0.0, 3600.0, lo_open=True),
        log_period=_float("log_period", v["log_period"], 0.0, 86400.0),
        autostart=_bool("autostart", v["autostart"]),
    )


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
