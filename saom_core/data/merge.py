"""`saom dataset merge`: shards collected on several machines (`saom collect --first-scene K
--scenes M`) into one dataset, the same bytes as one collection of all their scenes.

A scene depends only on (settings, seed, scene index), so shards are interchangeable with one run as
long as they share every setting a frame depends on (`SHARED_SETTINGS` of collect.json: simulator,
seed, size, classes, catalogue, ...) and no scene comes twice. The merge copies each shard's
per-scene records (`.scenes/*.json`) and files, then assembles annotations.json exactly as a
collection does (`DatasetWriter.finalize`).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saom_core.data.classes import ClassList
from saom_core.data.collect.runner import SETTINGS_FILE, SHARED_SETTINGS
from saom_core.data.format import ANNOTATIONS, DatasetWriter
from saom_core.errors import DatasetError
from saom_core.io import atomic_write_json


def merge_datasets(parts: Sequence[str | Path], out: str | Path) -> Path:
    """Merge finished collections `parts` into `out` (new or empty); returns its annotations.json."""
    roots = [Path(p) for p in parts]
    if len(roots) < 2:
        raise DatasetError("saom dataset merge needs at least two datasets")
    settings = [_settings(root) for root in roots]
    for root, own in zip(roots[1:], settings[1:], strict=True):
        for key in SHARED_SETTINGS:
            if own.get(key) != settings[0].get(key):
                raise DatasetError(f"{root} was collected with {key}={own.get(key)!r} but {roots[0]} with "
                                   f"{settings[0].get(key)!r}: shards must share every setting but the scenes")
    coco = [json.loads((root / ANNOTATIONS).read_text()) for root in roots]
    for root, own in zip(roots[1:], coco[1:], strict=True):
        if own["categories"] != coco[0]["categories"]:
            raise DatasetError(f"{root} and {roots[0]} have different classes")
    owner: dict[str, Path] = {}
    for root in roots:
        for shard in sorted((root / ".scenes").glob("*.json")):
            if shard.stem in owner:
                raise DatasetError(f"scene {shard.stem} is in both {owner[shard.stem]} and {root}: shards must not "
                                   "overlap (give each its own --first-scene range)")
            owner[shard.stem] = root
    class_list = ClassList.from_categories(coco[0]["saom"]["class_list"]["name"], coco[0]["categories"])
    writer = DatasetWriter(out, class_list, coco[0]["saom"]["simulator"])
    for scene, root in sorted(owner.items()):
        shard = root / ".scenes" / f"{scene}.json"
        for record in json.loads(shard.read_text())["frames"]:
            for key in ("file_name", "depth_file_name"):
                if key in record:
                    (writer.root / record[key]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(root / record[key], writer.root / record[key])
        shutil.copyfile(shard, writer.shard_dir / shard.name)  # after its files, as a collection writes
    starts = [s["first_scene"] for s in settings]
    merged = dict(settings[0], first_scene=min(starts), scenes=len(owner), merged_from=[str(r) for r in roots])
    atomic_write_json(writer.root / SETTINGS_FILE, merged, indent=2)
    return writer.finalize()


def _settings(root: Path) -> dict[str, Any]:
    """A finished collection's collect.json (with first_scene, 0 for collections older than shards)."""
    if not (root / ANNOTATIONS).is_file():
        raise DatasetError(f"{root}: no {ANNOTATIONS} (not a finished collection; finish it with --resume)")
    path = root / SETTINGS_FILE
    if not path.is_file() or not (root / ".scenes").is_dir():
        raise DatasetError(f"{root}: no {SETTINGS_FILE} or .scenes/ (not written by saom collect)")
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"corrupt {path}: {exc}") from exc
    return dict(settings, first_scene=settings.get("first_scene", 0))
