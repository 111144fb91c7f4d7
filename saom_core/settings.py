"""The segmenter's settings: one schema that every front end reads.

Each field carries its default, its valid range or choices and its help text (dataclass field
metadata, `spec(field)`), and `validate()` is the one check of them all. The `saom` CLI options,
the ROS node's parameters (`saom_ros.params`), the comments of `config/saom.yaml` and the training
config's `inference:` section are generated from these classes, so adding a setting is one field
here plus its use (docs/architecture.md).

"Not set" has one meaning: a threshold left at None takes the value tuned for the model at
training, which its checkpoint stores (`Thresholds`, returned by `load_checkpoint`), and the
paper's value where the checkpoint stores none (official SAM weights, older checkpoints).
"""
from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from saom_core.errors import ConfigError

S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Spec:
    """What a setting accepts and means; read by validate() and the front-end generators."""

    help: str
    lo: float | None = None  # inclusive lower bound (exclusive with lo_open)
    hi: float | None = None  # inclusive upper bound
    lo_open: bool = False
    zero_means: str | None = None  # 0 is allowed below `lo` and means this ("never")
    choices: tuple[str, ...] | None = None  # case-insensitive
    pattern: str | None = None  # full-match regular expression (case-insensitive), described by `allowed_text`
    allowed_text: str | None = None  # how the allowed values read in help and messages
    runtime: bool = False  # may change while the model is loaded (the node's `ros2 param set`)
    tuned: bool = False  # None = the checkpoint's tuned value (see the module docstring)

    def range_text(self) -> str:
        """The allowed values as help and messages show them: [0, 1], (0, 1], >= 1, 0 or [16, 16384],
        a list of choices, or nothing."""
        if self.allowed_text or self.choices:
            return self.allowed_text or " | ".join(self.choices or ())
        if self.lo is None and self.hi is None:
            return ""
        if self.hi is None:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}]"
        return f"0 or {text}" if self.zero_means else text


def _num(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


def setting(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with its Spec (see Spec for the keywords)."""
    return field(default=default, metadata={"spec": Spec(help, **spec)})


def spec(f: Field) -> Spec:
    return f.metadata["spec"]


def value_type(cls: type, name: str) -> tuple[type, bool]:
    """(bool | int | float | str | tuple, whether None is allowed) of a setting, from its annotation."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    base = typing.get_origin(hint) or hint
    return base, optional


class Settings:
    """Base of the schema's dataclasses: checking and building them from raw values."""

    if TYPE_CHECKING:  # every subclass is a dataclass: fields() and replace() accept it
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def validate(self: S, prefix: str = "") -> S:
        """A copy with every value checked and normalised (strings stripped, choices lower case,
        lists as tuples, whole floats as ints); ConfigError names the first bad one, after `prefix`
        (e.g. "parameter ")."""
        return replace(self, **{f.name: check(type(self), f, getattr(self, f.name), prefix) for f in fields(self)})

    @classmethod
    def from_values(cls: type[S], values: Mapping[str, Any], prefix: str = "") -> S:
        """Checked settings from raw values (a CLI namespace, ROS parameters, YAML); missing or None
        values take their defaults. Unknown names are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{prefix}unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in values.items() if v is not None}).validate(prefix)

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check(cls: type, f: Field, value: Any, prefix: str = "") -> Any:
    """One setting's value, coerced to its type and checked against its Spec."""
    s = spec(f)
    base, optional = value_type(cls, f.name)
    where = f"{prefix}{f.name}"
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if base is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if base is tuple:
        return _names(where, value)
    if base is str:
        return _text(where, value, s)
    return _number(where, value, base, s, optional)


def _names(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # "mug, bottle" from a command line
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    if isinstance(value, (list, tuple, bytes)) and len(value) == 0:  # an empty ROS array of any type
        return ()
    raise ConfigError(f"{where}: expected a list of names, got {value!r}")


def _text(where: str, value: Any, s: Spec) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    value = value.strip()
    if s.choices is not None or s.pattern is not None:
        value = value.lower()
    if s.choices is not None and value not in s.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(s.choices)}")
    if s.pattern is not None and not re.fullmatch(s.pattern, value):
        raise ConfigError(f"{where}: {value!r} is not {s.allowed_text}")
    return value


def _number(where: str, value: Any, base: type, s: Spec, optional: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected {'an integer' if base is int else 'a number'}, got {value!r}")
    if value != value:
        raise ConfigError(f"{where}: NaN is not allowed")
    if base is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if s.zero_means and value == 0:
        return value
    too_low = s.lo is not None and (value <= s.lo if s.lo_open else value < s.lo)
    if too_low or (s.hi is not None and value > s.hi):
        unset = "; leave it unset for the checkpoint's tuned value" if optional and s.tuned else ""
        if s.zero_means and s.lo is not None and 0 < value < s.lo:
            raise ConfigError(f"{where}: {value} is too small (0 = {s.zero_means}, else {s.range_text()[5:]})")
        raise ConfigError(f"{where}: {value} is out of range {s.range_text()}{unset}")
    return value


@dataclass(frozen=True)
class Thresholds(Settings):
    """The everything-mode thresholds tuned per model: the training config's `inference:` section
    writes them into the checkpoint, and a segmenter setting left unset takes them. The defaults
    are the paper's (SAOM's tuned values; stock SAM's are STOCK_SAM)."""

    pred_iou_thresh: float = setting(0.3, "drop masks whose predicted IoU is below this",
                                     lo=0.0, hi=1.0, runtime=True, tuned=True)
    stability_score_thresh: float = setting(0.95, "drop masks whose stability score is below this",
                                            lo=0.0, hi=1.0, runtime=True, tuned=True)
    box_nms_thresh: float = setting(0.3, "box IoU above which non-maximum suppression drops the weaker instance",
                                    lo=0.0, hi=1.0, lo_open=True, runtime=True, tuned=True)
    min_mask_region_area: int = setting(150, "remove mask islands and holes smaller than this (pixels, 0 = off)",
                                        lo=0, runtime=True, tuned=True)
    same_class_overlap_thresh: float = setting(
        1.0, "drop a mask when more than this fraction of it, or of a better-scoring mask of the same class, lies "
        "in the other (1 = off)", lo=0.0, hi=1.0, lo_open=True, runtime=True, tuned=True)


STOCK_SAM = Thresholds(pred_iou_thresh=0.88, stability_score_thresh=0.95, box_nms_thresh=0.7, min_mask_region_area=0,
                       same_class_overlap_thresh=1.0)
POINTS_PER_SIDE = 32  # the everything-mode grid's default: SAM's, the paper's, training's and evaluation's


def _tuned(name: str) -> Any:
    """A segmenter setting for one of the Thresholds: same Spec, unset (None) by default."""
    return field(default=None, metadata=Thresholds.__dataclass_fields__[name].metadata)


THRESHOLD_NAMES = tuple(f.name for f in fields(Thresholds))
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
BACKENDS = ("torch", "onnxruntime")
ONNX_PROVIDERS = ("auto", "tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class SegmenterSettings(Settings):
    """Every setting of a loaded segmenter (`load_segmenter`, `saom segment/bag`, the ROS node).

    `runtime` ones apply per frame; the others are fixed when the model loads.
    """

    backend: str = setting("torch", "what runs the model: torch (a checkpoint .pt) or onnxruntime (the folder "
                           "`saom export` writes; pip install 'saom_ros[onnx]')", choices=BACKENDS)
    device: str = setting("auto", "where the model runs (auto: cuda when available); with onnxruntime: where the "
                          "pre- and post-processing run", pattern=DEVICE_PATTERN,
                          allowed_text="cpu, cuda, cuda:N or auto")
    onnx_provider: str = setting("auto", "onnxruntime's execution provider (auto: TensorRT, then CUDA, then CPU, "
                                 "the first one installed)", choices=ONNX_PROVIDERS)
    threads: int = setting(0, "intra-op threads of the model and its pre- and post-processing "
                           "(0 = every core but one, which ROS/DDS and the frame I/O keep)",
                           lo=1, hi=1024, zero_means="every core but one")
    model_config: str = setting(
        "", "SAM architecture of a bare SAM state_dict (vit_b, vit_l, vit_h, ...); empty = from the checkpoint"
    )
    half: bool = setting(False, "reduced precision: bf16 (fp16 on GPUs without bf16); faster, masks differ slightly; "
                         "onnxruntime: fp16 TensorRT engines (export with --half for fp16 models)")
    compile: bool = setting(False, "torch.compile the mask decoder: a one-off cost at load, then faster frames")
    # 1280: a 4K camera frame costs what a 1280x720 one does (README, ROS 2 section)
    max_input_size: int = setting(1280, "segment frames whose long side exceeds this many pixels downscaled; "
                                  "masks come back at the input resolution", lo=16, hi=16384, zero_means="never")
    points_per_side: int = setting(POINTS_PER_SIDE, "everything-mode prompt grid: points per side "
                                   "(points_per_side^2 prompts a frame)", lo=1, hi=256, runtime=True)
    coarse_to_fine: bool = setting(
        True, "SAOM models: prompt every second grid point of every second row first, then only the points "
        "outside the whole objects found", runtime=True)
    prompt_min_object_prob: float = setting(
        0.3, "SAOM models with a mask_pool class head: prompt only grid points whose image-embedding cell the "
        "head calls an object of interest with at least this probability (0 = every point)",
        lo=0.0, hi=1.0, runtime=True)
    pred_iou_thresh: float | None = _tuned("pred_iou_thresh")
    stability_score_thresh: float | None = _tuned("stability_score_thresh")
    box_nms_thresh: float | None = _tuned("box_nms_thresh")
    min_mask_region_area: int | None = _tuned("min_mask_region_area")
    same_class_overlap_thresh: float | None = _tuned("same_class_overlap_thresh")
    keep_classes: tuple[str, ...] = setting((), "class names to keep (empty = every class of the model)", runtime=True)
    keep_background: bool = setting(False, "also output masks classified as background (class id 0)", runtime=True)

    def thresholds(self, tuned: Thresholds | None = None) -> Thresholds:
        """The thresholds in force: those set here, the rest from `tuned` (the paper's when None)."""
        tuned = tuned or Thresholds()
        return Thresholds(**{
            n: getattr(tuned, n) if getattr(self, n) is None else getattr(self, n) for n in THRESHOLD_NAMES
        })


@dataclass(frozen=True)
class ObjectSettings(Settings):
    """Tracking and 3D of everything mode's instances (the ROS node's parameters, `saom bag`'s options);
    saom_core.track.TrackerSettings and saom_core.geometry3d.DepthSettings take their defaults from here."""

    track_min_hits: int = setting(2, "everything mode: consecutive frames a new object must be seen in before it is "
                                     "published under its track id (1 = at once)", lo=1, hi=100, runtime=True)
    track_max_misses: int = setting(3, "everything mode: frames a tracked object may go unseen and keep its id",
                                    lo=0, hi=1000, runtime=True)
    depth_stride: int = setting(2, "3D from every n-th depth pixel in each direction (n^2 fewer points in the 3D "
                                   "step and the cloud; 1 = every pixel)", lo=1, hi=16, runtime=True)
    depth_min: float = setting(0.1, "nearest valid depth (metres); nearer pixels are ignored", lo=0.0, hi=100.0,
                               lo_open=True, runtime=True)
    depth_max: float = setting(10.0, "farthest valid depth (metres); farther pixels are ignored", lo=0.0, hi=1000.0,
                               lo_open=True, runtime=True)

