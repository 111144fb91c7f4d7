"""SAOM core: simulator data, model, fine-tuning, inference and evaluation (no ROS imports).

The names below are the Python API (the README's "Python API" shows them in use); everything else
is reached through its module. They are imported on first use, so `import saom_core` (and the
light modules the ROS node imports, such as `saom_core.errors`) does not pull in torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that owns it
_EXPORTS = {
    # loading a model or a ready-to-use segmenter
    "load_segmenter": "saom_core.infer.segmenter",
    "SaomSegmenter": "saom_core.infer.segmenter",
    "load_model": "saom_core.model.checkpoint",
    "save_checkpoint": "saom_core.model.checkpoint",
    "build_model": "saom_core.model.saom",
    "SaomModel": "saom_core.model.saom",
    # everything-of-interest mode on a loaded model
    "EverythingGenerator": "saom_core.infer.generator",
    "GeneratorConfig": "saom_core.infer.generator",
    # results
    "Segmentation": "saom_core.infer.types",
    "Instance": "saom_core.infer.types",
    "Segmenter": "saom_core.infer.types",
    # the model registry and class lists
    "MODEL_CONFIGS": "saom_core.model.architectures",
    "SamConfig": "saom_core.model.architectures",
    "get_config": "saom_core.model.architectures",
    "ClassList": "saom_core.data.classes",
    # every user-facing failure
    "SaomError": "saom_core.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see (`X as X`: re-exported); at run time __getattr__ imports on demand
    from saom_core.data.classes import ClassList as ClassList
    from saom_core.errors import SaomError as SaomError
    from saom_core.infer.generator import EverythingGenerator as EverythingGenerator
    from saom_core.infer.generator import GeneratorConfig as GeneratorConfig
    from saom_core.infer.segmenter import SaomSegmenter as SaomSegmenter
    from saom_core.infer.segmenter import load_segmenter as load_segmenter
    from saom_core.infer.types import Instance as Instance
    from saom_core.infer.types import Segmentation as Segmentation
    from saom_core.infer.types import Segmenter as Segmenter
    from saom_core.model.architectures import MODEL_CONFIGS as MODEL_CONFIGS
    from saom_core.model.architectures import SamConfig as SamConfig
    from saom_core.model.architectures import get_config as get_config
    from saom_core.model.checkpoint import load_model as load_model
    from saom_core.model.checkpoint import save_checkpoint as save_checkpoint
    from saom_core.model.saom import SaomModel as SaomModel
    from saom_core.model.saom import build_model as build_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saom_core' has no attribute '{name}'")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
