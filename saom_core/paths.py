"""Where the shipped config files live, from a source checkout or an installed package."""
from __future__ import annotations

import sys
from pathlib import Path

_SOURCE_CONFIG = Path(__file__).resolve().parent.parent / "config"


def config_dir() -> Path:
    """The project's config/ folder: the checkout's, else share/saom_ros/config of the install."""
    if _SOURCE_CONFIG.is_dir():
        return _SOURCE_CONFIG
    return Path(sys.prefix) / "share" / "saom_ros" / "config"


def resolve_config(name_or_path: str | Path, prefix: str = "") -> Path:
    """A path as given if it exists, else `config/<prefix><name>.yaml` (e.g. 'pybullet' -> classes_pybullet)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for candidate in (config_dir() / path, config_dir() / f"{prefix}{path.name}.yaml"):
        if candidate.exists():
            return candidate
    return path
