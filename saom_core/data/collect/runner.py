"""`saom collect`: render N scenes with a simulator into a dataset directory.

Scenes are written one by one through `DatasetWriter` (a shard per finished scene; annotations.json
only at the end), so a crash leaves an unfinished collection that `saom dataset check` rejects and
`--resume` continues. With `workers > 1` each worker process runs its own simulator client and the
parent writes the results in scene order; since every scene is seeded from (seed, scene index) the
output is byte-identical for any worker count.
"""
from __future__ import annotations

import json
import multiprocessing
from multiprocessing import util as mp_util
from pathlib import Path
from typing import Any

from tqdm import tqdm

from saom_core.data.classes import ClassList
from saom_core.data.collect.base import Collector, collector_class, load_class_list, resolve_min_area, scene_id
from saom_core.data.format import DatasetWriter, Frame
from saom_core.errors import ConfigError, DatasetError
from saom_core.io import atomic_write_json

SETTINGS_FILE = "collect.json"  # how the directory was collected; --resume must use the same settings
# what every scene of one dataset shares: a --resume and `saom dataset merge` check these
SHARED_SETTINGS = ("simulator", "seed", "size", "class_list", "min_area", "trajectory", "catalogue", "randomisation")
_RESUME_KEYS = (*SHARED_SETTINGS, "first_scene")


def collect_dataset(
    sim: str,
    scenes: int,
    out: str | Path,
    seed: int = 0,
    size: int = 224,
    workers: int = 1,
    resume: bool = False,
    classes: str | Path | ClassList | None = None,
    min_area: int | None = None,
    progress: bool = True,
    trajectory: int = 0,
    objects: str | Path | None = None,
    first_scene: int = 0,
    randomisation: str = "none",
    domain: str = "train",
) -> Path:
    """Collect `scenes` scenes (4 frames each, or `trajectory` frames of a moving camera) into `out`;
    returns the annotations.json path. `objects`: the object catalogue (pybullet; default its own),
    whose classes are the class list unless `classes` names a subset. `first_scene`: the index of the
    first scene, so that shards (`--first-scene K --scenes M`) run anywhere and merge into one dataset.
    `randomisation` (none, default, strong) and `domain` (train, shifted): see `collect/randomise.py`."""
    cls = collector_class(sim)
    if scenes < 1:
        raise ConfigError(f"--scenes must be at least 1, got {scenes}")
    if first_scene < 0:
        raise ConfigError(f"--first-scene must be 0 or more, got {first_scene}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if not 16 <= size <= 4096:
        raise ConfigError(f"--size must be between 16 and 4096 pixels, got {size}")
    if trajectory < 0 or (trajectory and not getattr(cls, "supports_trajectory", False)):
        raise ConfigError(f"--trajectory must be a positive number of frames, supported by pybullet only "
                          f"(got {trajectory} for {cls.name})")
    if objects is not None and not getattr(cls, "supports_catalogue", False):
        raise ConfigError(f"--objects (an object catalogue) is supported by pybullet only, not {cls.name}")
    class_list, extras = load_class_list(classes if classes is not None else objects or cls.default_classes)
    area = resolve_min_area(min_area, extras, size)
    # fail before touching the output directory: simulator not installed, class list it cannot label,
    # a bad catalogue ...
    cls.check_available()
    kwargs: dict[str, Any] = {"trajectory": int(trajectory)} if trajectory else {}
    if objects is not None:
        kwargs["objects"] = str(objects)
    if (randomisation, domain) != ("none", "train"):
        if not getattr(cls, "supports_randomisation", False):
            raise ConfigError(f"--randomisation and --domain are supported by pybullet only, not {cls.name}")
        kwargs.update(randomisation=randomisation, domain=domain)
    with cls(class_list, size=size, min_area=area, **kwargs) as collector:  # the simulator starts lazily
        described = collector.describe()

    out = Path(out)
    writer = DatasetWriter(out, class_list, cls.name, resume=resume)
    settings = {"simulator": cls.name, "seed": int(seed), "size": int(size), "class_list": class_list.name,
                "min_area": area, "first_scene": int(first_scene), "scenes": int(scenes),
                "trajectory": int(trajectory), **described}
    _check_resume_settings(out, settings)
    atomic_write_json(out / SETTINGS_FILE, settings, indent=2)

    done = writer.completed_scenes()
    pending = [i for i in range(first_scene, first_scene + scenes) if scene_id(i) not in done]
    bar = tqdm(total=scenes, initial=scenes - len(pending), desc=f"collect {cls.name}", unit="scene",
               disable=not progress)
    try:
        for index, frames in _render(cls, class_list, size, area, seed, pending, workers, kwargs):
            writer.write_scene(scene_id(index), frames)
            bar.update(1)
    finally:
        bar.close()
    return writer.finalize()


def _check_resume_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / SETTINGS_FILE
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"corrupt {path}: {exc}") from exc
    for key in _RESUME_KEYS:
        if key in previous and previous[key] != settings[key]:
            raise DatasetError(
                f"{out} was collected with {key}={previous[key]!r}, not {settings[key]!r}; "
                "--resume needs the same --sim, --seed, --size, --classes, --objects, --min-area, --first-scene, "
                "--randomisation and --domain"
            )


def _render(cls: type[Collector], class_list: ClassList, size: int, min_area: int, seed: int,
            indices: list[int], workers: int, kwargs: dict[str, Any]):
    """Yield (scene index, frames) in scene order."""
    if not indices:
        return
    if workers == 1 or len(indices) == 1:
        with cls(class_list, size=size, min_area=min_area, **kwargs) as collector:
            for index in indices:
                yield index, collector.collect_scene(index, seed)
        return
    # spawn: every worker starts clean (no simulator state or threads inherited from the parent)
    ctx = multiprocessing.get_context("spawn")
    init_args = (cls.name, class_list.to_dict(), size, min_area, seed, kwargs)
    with ctx.Pool(min(workers, len(indices)), initializer=_worker_init, initargs=init_args) as pool:
        yield from pool.imap(_worker_scene, indices, chunksize=1)


# --- worker process side -------------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _worker_init(sim: str, class_list: dict[str, Any], size: int, min_area: int, seed: int,
                 kwargs: dict[str, Any]) -> None:
    # Only store the settings: an exception in a Pool initializer makes the pool respawn workers
    # forever, so the simulator is started (and may fail, reported normally) on the first scene.
    _worker.update(sim=sim, class_list=class_list, size=size, min_area=min_area, seed=seed, kwargs=kwargs)


def _worker_scene(index: int) -> tuple[int, list[Frame]]:
    collector = _worker.get("collector")
    if collector is None:
        cls = collector_class(_worker["sim"])
        collector = cls(ClassList.from_dict(_worker["class_list"]), size=_worker["size"], min_area=_worker["min_area"],
                        **_worker["kwargs"])
        _worker["collector"] = collector
        mp_util.Finalize(collector, collector.close, exitpriority=10)  # runs when the worker exits cleanly
    return index, collector.collect_scene(index, _worker["seed"])
