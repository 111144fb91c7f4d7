"""The object catalogue: which models the PyBullet collector places, as what class, at what size.

A catalogue is a YAML file (`config/objects_pybullet.yaml` holds the shipped 14 classes):

    name: my_kitchen                 # the class list's name
    min_area: 30                     # masks under this many pixels (at 224 x 224) are dropped
    floor_frequency: 0.15            # weight of a station with no receptacle (objects on the floor)
    classes:                         # order fixes the class ids (1..C)
      - name: Mug
        role: pickupable             # receptacle | pickupable | other
        size: small                  # the paper's size group: small | medium | large | medium_large
        models: [meshes/mug.obj]     # URDF, SDF, OBJ or STL (others converted with trimesh); relative to
                                     # this file, absolute, or pybullet_data:<path> for pybullet's models
        target_size: [0.09, 0.12]    # largest edge in metres (or `scale: [lo, hi]`, a factor on the file)
        mass: 0.3                    # kg (meshes; a URDF's own masses are kept when omitted)
        tint: any                    # keep | light (a mild cast) | any (any sane colour)
        frequency: 1.0               # relative weight among its role (receptacles: of their station)

Roles say where the scene builder puts a class: a `receptacle` is a station's furniture (`layout`:
table | side_table | tray | shelf; `surface: [hx, hy]`, the half extents in metres at scale 1 of the
area objects are dropped on, for the first three), a `pickupable` is dropped on receptacles and the
floor, an `other` stands on the floor at floor and shelf stations. Optional per class: `fixed`
(static), `ground` (shifted to rest on the floor), `upright` (dropped upright, else tumbled).

`load_catalogue` validates everything before any rendering and raises ConfigError naming the file,
class and key: missing or unloadable model, NaN or empty geometry, duplicate class, absurd size,
unknown key.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from saom_core.data.classes import SIZES, ClassList, ObjectClass
from saom_core.errors import ConfigError
from saom_core.paths import resolve_config

ROLES = ("receptacle", "pickupable", "other")
LAYOUTS = ("table", "side_table", "tray", "shelf")  # the receptacle stations the scene builder knows
TINTS = ("keep", "light", "any")
PYBULLET_DATA = "pybullet_data:"
NATIVE_FORMATS = (".urdf", ".sdf", ".obj", ".stl")  # loaded by pybullet itself
DEFAULT_MESH_MASS = 0.2  # kg, for a mesh without `mass`
SANE_SIZE_M = (0.005, 5.0)  # a model's largest edge at its scale must lie in this range
_KEYS = {"name", "role", "size", "models", "scale", "target_size", "mass", "tint", "frequency", "fixed", "ground",
         "upright", "layout", "surface"}
_TOP_KEYS = {"name", "min_area", "floor_frequency", "classes"}


@dataclass(frozen=True)
class Model:
    """One loadable model of a class: absolute file, scale range (factor on the file), how it is placed."""

    cls: str
    file: str
    scale: tuple[float, float]
    tint: str = "keep"  # keep: as shipped | light: a mild colour cast | any: any sane colour
    fixed: bool = False  # static furniture
    ground: bool = False  # shift so that its lowest point rests on the floor
    upright: bool = True  # dropped upright (else with a random orientation)
    mass: float | None = None  # kg; None: the URDF/SDF's own, DEFAULT_MESH_MASS for a mesh


@dataclass(frozen=True)
class CatalogueEntry:
    """One class of the catalogue and its models."""

    name: str
    role: str
    size: str
    models: tuple[Model, ...]
    frequency: float = 1.0
    layout: str | None = None  # receptacles: the station they furnish
    surface: tuple[float, float] | None = None  # receptacles: drop area half extents at scale 1


@dataclass(frozen=True)
class Catalogue:
    """A validated catalogue; `digest` identifies its content (YAML and model files), not its path."""

    name: str
    digest: str
    entries: tuple[CatalogueEntry, ...]
    floor_frequency: float

    @property
    def class_list(self) -> ClassList:
        return ClassList(self.name, tuple(ObjectClass(e.name, e.role, e.size) for e in self.entries))

    def of_role(self, role: str) -> list[CatalogueEntry]:
        return [e for e in self.entries if e.role == role]

    def with_layout(self, layout: str) -> list[CatalogueEntry]:
        return [e for e in self.entries if e.layout == layout]


def is_catalogue(data: Any) -> bool:
    """True for a parsed YAML whose classes carry models (a catalogue rather than a bare class list)."""
    classes = data.get("classes") if isinstance(data, dict) else None
    return isinstance(classes, list) and any(isinstance(c, dict) and "models" in c for c in classes)


def class_list_of(data: dict[str, Any], source: str) -> ClassList:
    """The class list of a parsed catalogue, without touching its models (cheap; for `--classes`)."""
    entries = _entries(data, source)
    return ClassList(str(data.get("name", Path(source).stem)),
                     tuple(ObjectClass(str(e["name"]), str(e["role"]), str(e.get("size", "medium")))
                           for e in entries))


def load_catalogue(name_or_path: str | Path) -> Catalogue:
    """Read and validate a catalogue ('pybullet' -> config/objects_pybullet.yaml); loads every model once.

    Cached per process on the file's path, size and modification time: every collector a run
    constructs (the parent's check, each worker's) shares one validation."""
    path = resolve_config(name_or_path, prefix="objects_")
    if not path.is_file():
        raise ConfigError(f"object catalogue not found: {name_or_path}")
    stat = path.stat()
    return _load(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load(path: Path, size: int, mtime_ns: int) -> Catalogue:
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    source = str(path)
    entries = _entries(data, source)
    digest = hashlib.sha256(text.encode())
    converted = _ConversionDir()
    parsed = []
    with _Measurer() as measurer:
        for raw in entries:
            parsed.append(_entry(raw, path.parent, source, measurer, converted, digest))
    floor = _number(data.get("floor_frequency", 0.15), f"{source}: floor_frequency", low=0.0)
    if floor + sum(e.frequency for e in parsed if e.role == "receptacle") <= 0:
        raise ConfigError(f"{source}: no station can be drawn (no receptacle and floor_frequency 0)")
    for role in ("pickupable", "other"):
        of_role = [e for e in parsed if e.role == role]
        if of_role and not sum(e.frequency for e in of_role):
            raise ConfigError(f"{source}: every {role} class has frequency 0 (none could be drawn)")
    catalogue = Catalogue(str(data.get("name", path.stem)), digest.hexdigest()[:16], tuple(parsed), floor)
    if converted.path is not None:  # converted meshes live as long as the catalogue that names them
        weakref.finalize(catalogue, converted.cleanup)
    return catalogue


def _entries(data: Any, source: str) -> list[dict[str, Any]]:
    """The class entries of a parsed catalogue, checked for structure, unknown keys and duplicates."""
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise ConfigError(f"{source}: a catalogue needs a non-empty 'classes' list")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    seen: set[str] = set()
    for i, entry in enumerate(data["classes"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{source}: classes[{i}] needs a 'name'")
        where = f"{source}: class '{entry['name']}'"
        unknown = set(entry) - _KEYS
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
        if entry["name"] in seen:
            raise ConfigError(f"{where} appears twice")
        seen.add(entry["name"])
        if entry.get("role") not in ROLES:
            raise ConfigError(f"{where}: role must be one of {ROLES}, got {entry.get('role')!r}")
        if entry.get("size", "medium") not in SIZES:
            raise ConfigError(f"{where}: size must be one of {SIZES}, got {entry.get('size')!r}")
    return data["classes"]


def _entry(raw: dict[str, Any], base: Path, source: str, measurer: _Measurer, converted: _ConversionDir,
           digest: Any) -> CatalogueEntry:
    name, role = str(raw["name"]), str(raw["role"])
    where = f"{source}: class '{name}'"
    tint = raw.get("tint", "keep")
    if tint not in TINTS:
        raise ConfigError(f"{where}: tint must be one of {TINTS}, got {tint!r}")
    layout, surface = raw.get("layout"), raw.get("surface")
    if role == "receptacle":
        if layout not in LAYOUTS:
            raise ConfigError(f"{where}: a receptacle needs a layout, one of {LAYOUTS}, got {layout!r}")
        if layout != "shelf":
            if not isinstance(surface, list) or len(surface) != 2:
                raise ConfigError(f"{where}: surface must be [half x, half y] in metres, got {surface!r}")
            surface = tuple(_number(v, f"{where}: surface", low=1e-3) for v in surface)
    elif layout is not None or surface is not None:
        raise ConfigError(f"{where}: layout and surface are for receptacles only")
    if ("scale" in raw) == ("target_size" in raw):
        raise ConfigError(f"{where}: give exactly one of scale (a factor) and target_size (metres)")
    mass = None if raw.get("mass") is None else _number(raw["mass"], f"{where}: mass", low=1e-4)
    files = raw.get("models")
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files:
        raise ConfigError(f"{where}: models must be a non-empty list of files")
    flags = {key: raw.get(key, default) for key, default in (("fixed", False), ("ground", False), ("upright", True))}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    models = []
    for file in files:
        path = _model_path(str(file), base, where)
        for part in (path, *_urdf_assets(path, where)):  # a URDF's meshes and textures are its content too
            digest.update(part.read_bytes())
        path = converted.native(path, where)
        extent = measurer.largest_edge(path, where)
        if "scale" in raw:
            scale = _pair(raw["scale"], f"{where}: scale", low=1e-6)
        else:
            size = _pair(raw["target_size"], f"{where}: target_size", low=1e-6)
            scale = (size[0] / extent, size[1] / extent)
        if not (SANE_SIZE_M[0] <= extent * scale[0] and extent * scale[1] <= SANE_SIZE_M[1]):
            raise ConfigError(f"{where}: {file} would be {extent * scale[0]:.4g} to {extent * scale[1]:.4g} m "
                              f"across, outside the sane {SANE_SIZE_M[0]} to {SANE_SIZE_M[1]} m (check scale/units)")
        models.append(Model(name, str(path), scale, tint=tint, mass=mass, **flags))
    frequency = _number(raw.get("frequency", 1.0), f"{where}: frequency", low=0.0)
    return CatalogueEntry(name, role, str(raw.get("size", "medium")), tuple(models), frequency,
                          None if layout is None else str(layout), surface)


def _model_path(file: str, base: Path, where: str) -> Path:
    if file.startswith(PYBULLET_DATA):
        import pybullet_data

        path = Path(pybullet_data.getDataPath()) / file[len(PYBULLET_DATA):]
    else:
        path = Path(os.path.expanduser(file))
        path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ConfigError(f"{where}: model file not found: {path}")
    return path


def _urdf_assets(path: Path, where: str) -> list[Path]:
    """The mesh and texture files a URDF names (relative to the URDF), so a changed mesh changes the
    catalogue's digest (and `saom dataset merge` refuses shards rendered with either version)."""
    if path.suffix.lower() != ".urdf":
        return []
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return []  # the load check names the broken file
    assets = []
    for element in root.iter():
        name = element.get("filename") if element.tag in ("mesh", "texture") else None
        if not name or "://" in name:  # package:// and other URIs: resolved (or not) by the simulator
            continue
        asset = Path(name) if Path(name).is_absolute() else path.parent / name
        if not asset.is_file():
            raise ConfigError(f"{where}: {path.name} names {name}, which is not found at {asset}")
        assets.append(asset)
    return assets


def _number(value: Any, where: str, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ConfigError(f"{where} must be a finite number >= {low}, got {value!r}")
    return float(value)


def _pair(value: Any, where: str, low: float) -> tuple[float, float]:
    """A [lo, hi] range (a single number means lo == hi)."""
    values = [value, value] if isinstance(value, (int, float)) else value
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{where} must be a number or [low, high], got {value!r}")
    lo, hi = (_number(v, where, low) for v in values)
    if lo > hi:
        raise ConfigError(f"{where}: low {lo} is above high {hi}")
    return lo, hi


class _ConversionDir:
    """Meshes pybullet cannot read (PLY, GLB, OFF, DAE ...) converted to OBJ with trimesh, in a
    temporary folder created on first use."""

    def __init__(self) -> None:
        self.path: str | None = None

    def native(self, path: Path, where: str) -> Path:
        if path.suffix.lower() in NATIVE_FORMATS:
            return path
        mesh = _load_mesh(path, where)
        if self.path is None:
            self.path = tempfile.mkdtemp(prefix="saom_meshes_")
        out = Path(self.path) / f"{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.obj"
        mesh.export(out)
        return out

    def cleanup(self) -> None:
        import shutil

        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def _load_mesh(path: Path, where: str) -> Any:
    """A trimesh of a mesh file, with every vertex finite and at least one face."""
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise ConfigError(f"{where}: {path} will not load as a mesh ({exc})") from exc
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))))
    if len(vertices) == 0 or len(getattr(mesh, "faces", [])) == 0:
        raise ConfigError(f"{where}: {path} has no geometry (empty mesh)")
    if not np.isfinite(vertices).all():
        raise ConfigError(f"{where}: {path} has NaN or infinite vertices")
    return mesh


class _Measurer:
    """Loads each model once, in a pybullet client of its own, to prove it loads and measure it."""

    def __enter__(self) -> _Measurer:
        self.client: Any = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.client is not None:
            self.client.disconnect()

    def largest_edge(self, path: Path, where: str) -> float:
        """The largest edge (m) of the model's box at scale 1."""
        if path.suffix.lower() not in (".urdf", ".sdf", ".obj"):  # STL and converted meshes
            mesh = _load_mesh(path, where)
            return float(np.max(mesh.bounds[1] - mesh.bounds[0]))
        lo, hi = self._aabb(path, where)
        extent = float(np.max(hi - lo))
        if not np.isfinite(np.concatenate([lo, hi])).all() or extent <= 0:
            raise ConfigError(f"{where}: {path} has NaN or empty geometry (box {lo.tolist()} .. {hi.tolist()})")
        return extent

    def _aabb(self, path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
        import pybullet
        from pybullet_utils.bullet_client import BulletClient

        from saom_core.data.collect.pybullet import _mesh_is_finite, _quiet_stdout

        if self.client is None:
            with _quiet_stdout():
                self.client = BulletClient(connection_mode=pybullet.DIRECT)
            # as in the scenes: no file cache, so measuring cannot change what a scene loads later
            self.client.setPhysicsEngineParameter(enableFileCaching=0)
        bc = self.client
        bc.resetSimulation()
        suffix = path.suffix.lower()
        if suffix == ".obj" and not _mesh_is_finite(str(path)):  # never hand Bullet a NaN vertex
            raise ConfigError(f"{where}: {path} has NaN or infinite vertices")
        try:
            if suffix == ".sdf":
                uids = bc.loadSDF(str(path))
            elif suffix == ".obj":
                shape = bc.createCollisionShape(pybullet.GEOM_MESH, fileName=str(path))
                uids = [bc.createMultiBody(0.0, shape)]
            else:
                uids = [bc.loadURDF(str(path))]
        except Exception as exc:  # pybullet raises bare `error`
            raise ConfigError(f"{where}: pybullet could not load {path} ({exc})") from exc
        if not uids or uids[0] < 0:
            raise ConfigError(f"{where}: {path} holds no model")
        boxes = [np.array(bc.getAABB(uids[0], link)) for link in range(-1, bc.getNumJoints(uids[0]))]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
