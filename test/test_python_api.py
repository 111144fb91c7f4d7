"""The Python API: what `saom_core` exports, and the README's example run as written on a tiny random model."""
from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import saom_core

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first python code block of the README's "### Python API" subsection."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Python API", 1)
    assert len(section) == 2, "README.md has no '### Python API' subsection"
    found = re.search(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.DOTALL)
    assert found, "the README's Python API subsection has no ```python block"
    return found.group(1)


def test_every_exported_name_resolves():
    for name in saom_core.__all__:
        assert getattr(saom_core, name) is not None, name
    assert set(saom_core.__all__) <= set(dir(saom_core))
    with pytest.raises(AttributeError, match="no attribute 'load_segmentr'"):
        saom_core.load_segmentr  # noqa: B018 -- a misspelt name fails like any missing attribute


def test_readme_example_imports_only_the_exported_names():
    tree = ast.parse(readme_example())
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saom_core"):
            assert node.module == "saom_core", f"the example reaches into {node.module}: use saom_core's exports"
            used += [alias.name for alias in node.names]
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("saom_core") for a in node.names), "use `from saom_core import ...`"
    assert used, "the example imports nothing from saom_core"
    assert set(used) <= set(saom_core.__all__), sorted(set(used) - set(saom_core.__all__))


def test_readme_example_runs_on_a_tiny_random_model(tmp_path, monkeypatch, tiny_classes):
    from saom_core import build_model, get_config, save_checkpoint

    # The files the example names, made up: an untrained test-size model and a random photo.
    model = build_model(get_config("test"), tiny_classes, head_input="mask_pool")
    save_checkpoint(tmp_path / "runs/tiny/checkpoints/best.pt", model)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)

    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md (Python API)", "exec"), namespace)

    result, labels, clicked = namespace["result"], namespace["labels"], namespace["clicked"]
    assert isinstance(result, saom_core.Segmentation)
    assert labels.shape == (48, 64) and labels.dtype == np.uint16
    assert int(labels.max()) <= len(result.instances)
    assert len(clicked.instances) == 1 and clicked.instances[0].point == (40.0, 30.0)
    printed = out.getvalue().splitlines()
    assert printed[-1] == f"{['background', 'Mug', 'Table', 'Ball']} {sorted(saom_core.MODEL_CONFIGS)}"
    assert len(printed) == len(result.instances) + 1


def test_type_checkers_see_the_same_names_as_run_time():
    """saom_core/__init__.py names each export twice (run-time map, TYPE_CHECKING imports): they agree."""
    tree = ast.parse(Path(saom_core.__file__).read_text(encoding="utf-8"))
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    imports = [node for node in guarded.body if isinstance(node, ast.ImportFrom)]
    typed = {alias.name: node.module for node in imports for alias in node.names}
    assert typed == saom_core._EXPORTS
