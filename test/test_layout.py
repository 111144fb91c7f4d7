"""Package layout: saom_core never depends on saom_ros, its subpackages import one way only, and
`saom bag` reaches the `saom` command as a plug-in."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from importlib.metadata import EntryPoint
from itertools import pairwise
from pathlib import Path

import pytest

import saom_core
from saom_core import cli

CORE = Path(saom_core.__file__).resolve().parent


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_every_core_module_imports_nothing_from_saom_ros():
    out = _run(
        "import json, pkgutil, importlib, sys, saom_core\n"
        "names = [m.name for m in pkgutil.walk_packages(saom_core.__path__, 'saom_core.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "ros = sorted(m for m in sys.modules if m.split('.')[0] in ('saom_ros', 'rclpy'))\n"
        "print(json.dumps({'modules': names, 'ros': ros}))"
    )
    result = json.loads(out)
    assert "saom_core.cli" in result["modules"] and "saom_core.prompting.assignment" in result["modules"]
    assert result["ros"] == [], f"importing saom_core pulled in {result['ros']}"


def test_what_the_ros_node_imports_from_saom_core_stays_light():
    """The node imports these at start-up; torch comes with the model, when the node activates."""
    out = _run("import sys, saom_core, saom_core.errors, saom_core.infer.types; print('torch' in sys.modules)")
    assert out.strip() == "False"


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Every saom_core / saom_ros module that `path` imports (top level or inside functions), with the line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
    return [(t, line) for t, line in found if t.split(".")[0] in ("saom_core", "saom_ros")]


def _core_imports() -> list[tuple[str, str, int]]:
    edges = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        edges += [(module, target, line) for target, line in _imports(path, module)]
    return edges


def test_no_core_source_imports_saom_ros():
    """Also the imports inside functions, which importing a module does not run."""
    bad = [f"{m}:{line} imports {t}" for m, t, line in _core_imports() if t.split(".")[0] == "saom_ros"]
    assert not bad, bad


def _unit(module: str) -> str:
    """saom_core.train.trainer -> train; saom_core.cli -> cli; saom_core -> saom_core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_reports_a_cycle():
    assert _cycle({"train": {"eval", "model"}, "eval": {"train"}, "model": set()}) == ["eval", "train", "eval"]
    assert _cycle({"train": {"eval", "model"}, "eval": {"model"}}) is None


def test_no_import_cycle_between_core_subpackages():
    """Each subpackage (and top-level module) of saom_core is a node; imports inside functions count."""
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for module, target, line in _core_imports():
        a, b = _unit(module), _unit(target)
        if target.startswith("saom_core") and a != b and b != "saom_core":
            graph[a].add(b)
            where.setdefault((a, b), f"{module}:{line} imports {target}")
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: " + "; ".join(map(where.get, pairwise(cycle)))


def test_saom_bag_is_a_plugin_subcommand_from_saom_ros():
    plugins = {ep.name: ep.value for ep in cli.entry_points(group=cli.SUBCOMMAND_GROUP)}
    assert plugins.get("bag") == "saom_ros.bag:add_subcommand", (
        f"`saom bag` is not registered (entry points: {plugins}); setup.py declares it under "
        f"'{cli.SUBCOMMAND_GROUP}': reinstall the package (make setup) to refresh its metadata")
    parser = cli.build_parser()
    args = parser.parse_args(["bag", "--checkpoint", "m.pt", "in", "out", "--topic", "/camera/image_raw",
                              "--points-per-side", "16"])
    # the plug-in gets the core's model options (generated from the settings schema)
    assert args.handler.__module__ == "saom_ros.bag" and args.points_per_side == 16


def test_a_broken_plugin_is_named_and_the_other_commands_still_work(monkeypatch, capsys):
    broken = EntryPoint(name="broken", value="saom_no_such_module:add_subcommand", group=cli.SUBCOMMAND_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken])
    parser = cli.build_parser()
    warning = "saom: warning: subcommand 'broken' (saom_no_such_module:add_subcommand) is unavailable"
    assert warning in capsys.readouterr().err
    assert parser.parse_args(["dataset", "check", "d"]).dir == Path("d")
    with pytest.raises(SystemExit):
        parser.parse_args(["broken"])
