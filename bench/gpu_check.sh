#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) from the repository as it is, without installing it:
#   bash bench/gpu_check.sh --bundle gpu_bundle        # GPU machine; the bundle from `make gpu-bundle`
#   bash bench/gpu_check.sh --device cpu --quick       # CPU, tiny configs (make test runs this)
# Python: $PYTHON, else the repo's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
