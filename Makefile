# Everything runs inside .venv/ in the repo root. `make demo` and `make test` each do all set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
DEMO_OUT ?= runs/demo

.PHONY: setup ros lint demo pretrain test bench gpu-bundle clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# Real ROS 2 (Kilted) from PyPI wheels + vision_msgs built from its message definitions into the venv.
ros: $(VENV)/.ros-installed

$(VENV)/.ros-installed: $(VENV)/.installed ros/setup_ros_venv.sh $(wildcard ros/vision_msgs/msg/*.msg)
	bash ros/setup_ros_venv.sh $(VENV)
	touch $@

demo: setup
	$(VENV)/bin/saom demo --out $(DEMO_OUT) --budget-minutes 15

# The vanilla tiny SAM that the demo fine-tunes from (hours of CPU; re-running continues where it
# stopped), copied with its provenance into the package (docs/pretraining.md).
PRETRAIN_OUT ?= runs/pretrain
pretrain: setup
	$(VENV)/bin/saom pretrain --out $(PRETRAIN_OUT)
	cp $(PRETRAIN_OUT)/vanilla_tiny.pt $(PRETRAIN_OUT)/vanilla_tiny.json saom_core/weights/

test: setup ros lint
	$(PY) -m pytest -q test
	PYTHON=$(PY) bash bench/gpu_check.sh --device cpu --quick --out runs/gpu_check

# Lint and types (ruff.toml, setup.cfg [mypy]); part of `make test`.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup ros
	$(PY) bench/train_throughput.py
	$(PY) bench/everything_mode.py
	$(PY) bench/node_latency.py
	test -f $(DEMO_OUT)/data/annotations.json || $(VENV)/bin/saom collect --scenes 400 --out $(DEMO_OUT)/data
	$(PY) bench/tiny_recipe.py --data $(DEMO_OUT)/data
	$(PY) bench/assignment_ablation.py --data $(DEMO_OUT)/data --steps 900 --seconds 570 --seeds 0 1
	$(PY) bench/domain_shift.py --data $(DEMO_OUT)/data --work runs/domain_shift --steps 300 --everything-frames 100
	test ! -f $(DEMO_OUT)/run/checkpoints/best.pt || \
		$(PY) bench/snapping_rule.py --data $(DEMO_OUT)/data --checkpoint $(DEMO_OUT)/run/checkpoints/best.pt
	test ! -f $(DEMO_OUT)/run/checkpoints/best.pt || \
		$(PY) bench/runtime.py --checkpoint $(DEMO_OUT)/run/checkpoints/best.pt
	test ! -f $(DEMO_OUT)/run/checkpoints/best.pt || \
		$(PY) bench/everything_thresholds.py --checkpoint $(DEMO_OUT)/run/checkpoints/best.pt --data $(DEMO_OUT)/data

# For a GPU machine without network (bench/gpu_check.sh --bundle $(GPU_BUNDLE)): the wheels it lacks,
# for CPython 3.12 manylinux x86_64 (segment-anything, pycocotools; pytest for the CUDA tests), and
# a small PyBullet dataset. Built in $(GPU_BUNDLE).partial, renamed when complete; a few MiB.
GPU_BUNDLE ?= gpu_bundle
GPU_BUNDLE_SCENES ?= 8
WHEEL_TARGET := --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64

gpu-bundle: setup
	rm -rf $(GPU_BUNDLE).partial
	$(PIP) download -q --no-deps $(WHEEL_TARGET) -d $(GPU_BUNDLE).partial/wheels segment-anything pycocotools
	$(PIP) download -q $(WHEEL_TARGET) -d $(GPU_BUNDLE).partial/wheels pytest
	$(VENV)/bin/saom collect --sim pybullet --scenes $(GPU_BUNDLE_SCENES) --seed 0 --out $(GPU_BUNDLE).partial/data
	rm -rf $(GPU_BUNDLE) && mv $(GPU_BUNDLE).partial $(GPU_BUNDLE)
	du -sh $(GPU_BUNDLE)

clean:
	rm -rf $(VENV) build *.egg-info
