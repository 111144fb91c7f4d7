"""One package, two installs: a ROS 2 ament_python package (colcon) and a plain pip package.

`pip install -e .[dev]` gives the `saom_core` library and the `saom` command; `colcon build`
additionally installs launch/ and config/ under share/saom_ros and the `saom_node` executable.
"""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "saom_ros"
# colcon's symlink install runs setup.py from the build directory through a symlink: find the README
# next to the real file, not in the working directory.
README = Path(__file__).resolve().parent / "README.md"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="SAOM: Segment Anything fine-tuned in simulation for whole-object, labelled masks",
    long_description=README.read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["saom_core", "saom_core.*", "saom_ros", "saom_ros.*"]),
    package_data={"saom_core": ["py.typed"], "saom_core.weights": ["*.pt", "*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "torchvision>=0.16",
        "segment-anything>=1.0",
        "pybullet>=3.2.5",
        "pycocotools>=2.0.7",
        "opencv-python-headless>=4.8",
        "pillow>=10",
        "scipy>=1.10",
        "motmetrics>=1.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
        "rosbags>=0.10",
        "trimesh>=4",
    ],
    extras_require={
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        "ai2thor": ["ai2thor>=5.0"],
        "dev": ["pytest>=7", "onnx>=1.15", "onnxruntime>=1.17",
                "ruff>=0.17", "mypy>=2.4", "types-PyYAML", "types-tqdm"],
    },
    entry_points={
        "console_scripts": [
            "saom = saom_core.cli:main",
            "saom_node = saom_ros.node:main",
        ],
        "saom.subcommands": ["bag = saom_ros.bag:add_subcommand"],
    },
    zip_safe=True,
)
