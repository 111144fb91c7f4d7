"""Weights that ship with the package, by name, each with its provenance beside it.

`vanilla_tiny`: the project's own class-agnostic tiny SAM (`saom pretrain`), what SAOM's tiny config
fine-tunes from, as the paper fine-tunes the official SAM. A name works wherever a checkpoint path
does (`model.checkpoint: vanilla_tiny`, `saom eval --baseline vanilla_tiny`). The provenance file
(`<name>.json`) records how the file was made and its sha256.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent
SHIPPED = ("vanilla_tiny",)


def shipped_path(name: str) -> Path | None:
    """The file of a shipped name, or None where `name` is not one."""
    return WEIGHTS_DIR / f"{name}.pt" if name in SHIPPED else None


def resolve_weights(name_or_path: str | Path) -> Path:
    """A path as given if it exists or is not a shipped name, else the shipped file of that name."""
    path = Path(name_or_path)
    if path.exists():
        return path
    return shipped_path(str(name_or_path)) or path


def provenance(name: str) -> dict[str, Any]:
    """The recorded provenance of a shipped file (command, commit, data, steps, time, CPU, figures)."""
    return json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
