# Everything runs inside .venv/ in the repo root. `make demo` and `make test` each do all set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
DEMO_OUT ?= runs/demo

.PHONY: setup ros demo test bench clean

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
	$(VENV)/bin/saom demo --out $(DEMO_OUT)

test: setup ros
	$(PY) -m pytest -q test

bench: setup ros
	$(PY) bench/train_throughput.py
	$(PY) bench/everything_mode.py
	$(PY) bench/node_latency.py
	test -f $(DEMO_OUT)/data/annotations.json || $(VENV)/bin/saom collect --scenes 400 --out $(DEMO_OUT)/data
	$(PY) bench/tiny_recipe.py --data $(DEMO_OUT)/data
	$(PY) bench/assignment_ablation.py --data $(DEMO_OUT)/data

clean:
	rm -rf $(VENV) build *.egg-info
