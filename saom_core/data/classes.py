"""Class lists: the objects of interest, with the paper's type (receptacle/pickupable/openable) and size.

Index 0 is always background ("not of interest"); configured classes are 1..C, the same numbers as
the COCO `category_id` in a dataset, so class ids never need remapping between data and model.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saom_core.errors import ConfigError
from saom_core.paths import resolve_config

BACKGROUND = "background"
TYPES = ("receptacle", "pickupable", "openable", "other")
SIZES = ("small", "medium", "large", "medium_large")


@dataclass(frozen=True)
class ObjectClass:
    name: str
    type: str = "other"
    size: str = "medium"


@dataclass(frozen=True)
class ClassList:
    """An ordered list of object classes; `index(name)` is the model's and the dataset's class id."""

    name: str
    classes: tuple[ObjectClass, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if not names:
            raise ConfigError(f"class list '{self.name}' is empty")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"class list '{self.name}' repeats {duplicates}")
        if BACKGROUND in names:
            raise ConfigError(f"class list '{self.name}': '{BACKGROUND}' is reserved for index 0")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes_with_background(self) -> int:
        return len(self.classes) + 1

    def index(self, name: str) -> int:
        """1-based id of a class name; unknown names are an error naming the list."""
        for i, cls in enumerate(self.classes):
            if cls.name == name:
                return i + 1
        raise ConfigError(f"unknown class '{name}' (not in class list '{self.name}': {self.names})")

    def name_of(self, index: int) -> str:
        return BACKGROUND if index == 0 else self.classes[index - 1].name

    def to_categories(self) -> list[dict[str, Any]]:
        """COCO `categories`, with the paper's grouping as extra fields."""
        return [
            {"id": i + 1, "name": c.name, "supercategory": c.type, "saom_type": c.type, "saom_size": c.size}
            for i, c in enumerate(self.classes)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "classes": [vars(c).copy() for c in self.classes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> ClassList:
        if not isinstance(data, dict) or "classes" not in data:
            raise ConfigError(f"{source}: a class list needs a 'classes' list")
        entries = []
        for i, entry in enumerate(data["classes"]):
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or "name" not in entry:
                raise ConfigError(f"{source}: classes[{i}] needs a 'name'")
            unknown = set(entry) - {"name", "type", "size"}
            if unknown:
                raise ConfigError(f"{source}: classes[{i}] has unknown keys {sorted(unknown)}")
            obj = ObjectClass(str(entry["name"]), str(entry.get("type", "other")), str(entry.get("size", "medium")))
            if obj.type not in TYPES:
                raise ConfigError(f"{source}: class '{obj.name}' has type '{obj.type}', expected one of {TYPES}")
            if obj.size not in SIZES:
                raise ConfigError(f"{source}: class '{obj.name}' has size '{obj.size}', expected one of {SIZES}")
            entries.append(obj)
        return cls(name=str(data.get("name", Path(source).stem)), classes=tuple(entries))

    @classmethod
    def from_yaml(cls, name_or_path: str | Path) -> ClassList:
        """Load `config/classes_<name>.yaml`, else the classes of `config/objects_<name>.yaml` (an object
        catalogue, the one home of a simulator's class list), or an explicit YAML path of either kind."""
        from saom_core.data.collect.catalogue import class_list_of, is_catalogue

        path = class_list_path(name_or_path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        return class_list_of(data, str(path)) if is_catalogue(data) else cls.from_dict(data, source=str(path))

    @classmethod
    def from_categories(cls, name: str, categories: Iterable[dict[str, Any]]) -> ClassList:
        """Rebuild the list from a dataset's COCO categories (ids must be 1..C in order)."""
        cats = sorted(categories, key=lambda c: c["id"])
        if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
            raise ConfigError(f"class list '{name}': category ids must be 1..C without gaps")
        return cls(
            name=name,
            classes=tuple(
                ObjectClass(
                    c["name"], c.get("saom_type", c.get("supercategory", "other")), c.get("saom_size", "medium")
                )
                for c in cats
            ),
        )


def class_list_path(name_or_path: str | Path) -> Path:
    """The YAML a class list name or path stands for: a class list, else an object catalogue."""
    for prefix in ("classes_", "objects_"):
        path = resolve_config(name_or_path, prefix=prefix)
        if path.is_file():
            return path
    raise ConfigError(f"class list not found: {name_or_path}")
