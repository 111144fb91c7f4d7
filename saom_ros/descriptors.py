"""The node's parameters as ROS declares them: typed descriptors with the schema's ranges, and
params-file values turned into parameters of the declared type (rclpy wiring of `saom_ros.node`;
the schema itself is `saom_ros.params`)."""
from __future__ import annotations

import sys
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from .params import RELOAD_HINT, Param

_ROS_TYPES = {"bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER, "float": Parameter.Type.DOUBLE,
              "str": Parameter.Type.STRING, "str_list": Parameter.Type.STRING_ARRAY}
# Read once, at start-up: a later change would do nothing, so ROS refuses it (read_only).
START_ONLY = frozenset({"autostart"})


def parameter_descriptor(p: Param) -> ParameterDescriptor:
    """Typed, with the schema's range where ROS can say it (an open bound or `0 = off` below the
    range is checked by params.validate); whether a change needs a reload in additional_constraints."""
    d = ParameterDescriptor(name=p.name, type=_ROS_TYPES[p.kind].value, description=p.description,
                            read_only=p.name in START_ONLY)
    constraints = []
    if p.choices:
        constraints.append("one of " + ", ".join(p.choices))
    if p.read_only and p.name not in START_ONLY:
        constraints.append(f"fixed while configured ({RELOAD_HINT})")
    d.additional_constraints = "; ".join(constraints)
    lo = 0 if p.zero_means else p.lo
    if p.kind == "float" and (lo is not None or p.hi is not None):
        d.floating_point_range = [FloatingPointRange(
            from_value=-sys.float_info.max if lo is None else float(lo),
            to_value=sys.float_info.max if p.hi is None else float(p.hi), step=0.0)]
    elif p.kind == "int" and (lo is not None or p.hi is not None):
        d.integer_range = [IntegerRange(from_value=-(2**63) if lo is None else int(lo),
                                        to_value=2**63 - 1 if p.hi is None else int(p.hi), step=0)]
    return d


def ros_parameter(p: Param, value: Any) -> Parameter:
    """A params-file or command-line value as a parameter of p's type: ints are fine for doubles
    (YAML's `0`), an empty list is an empty string array."""
    if p.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if p.kind == "str_list" and isinstance(value, (list, tuple)) and not value:
        return Parameter(p.name, Parameter.Type.STRING_ARRAY, [])
    return Parameter(p.name, value=value)


def declared_default(p: Param) -> Any:
    """p's default for declare_parameter: not set (its bare type) for None and an empty list (both
    read back as the schema's default)."""
    if p.default is None or (p.kind == "str_list" and not p.default):
        return _ROS_TYPES[p.kind]
    return float(p.default) if p.kind == "float" else p.default
