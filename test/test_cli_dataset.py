"""`saom collect` / `saom dataset check|show|import` from the command line, good and bad input."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saom_core.cli import main
from saom_core.data.reader import SaomDataset


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("saom")]
    assert len(lines) == 1 and lines[0].startswith("saom: error: "), err
    return lines[0]


def _total(output: str, row: str) -> int:
    match = re.search(rf"\| {row}\s+\|[^\n]*\|\s+(\d+) \|", output)
    assert match, output
    return int(match.group(1))


def test_collect_then_check_and_show(tmp_path, capsys):
    out = tmp_path / "D"
    rc, stdout, _ = _run(capsys, "collect", "--sim", "pybullet", "--scenes", "2", "--out", out)
    assert rc == 0 and stdout.strip() == f"wrote {out / 'annotations.json'}"
    rc, report, _ = _run(capsys, "dataset", "check", out, "--quiet")
    assert rc == 0
    assert _total(report, "scenes") == 2 and _total(report, "images") == 8
    assert _total(report, "object masks") >= 8
    present = int(re.search(r"classes present: (\d+) of 14", report).group(1))
    assert present > 1
    ds = SaomDataset(out)
    for sample in ds:
        assert sample.masks.shape[1:] == sample.image.shape[:2] == (224, 224)
        assert all(mask.any() for mask in sample.masks)

    rc, stdout, _ = _run(capsys, "dataset", "show", out, "--index", "0", "--out", tmp_path / "x.png")
    assert rc == 0 and "objects ->" in stdout
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG" and im.size == (448, 448)
        overlay = np.asarray(im.convert("RGB"))
    assert overlay.std() > 10


@pytest.fixture
def broken(tmp_path, pybullet_dataset):
    """A private copy of the session's 2-scene PyBullet dataset, to damage."""
    copy = tmp_path / "D"
    shutil.copytree(pybullet_dataset, copy)
    return copy


def test_missing_directory(tmp_path, capsys):
    rc, _, err = _run(capsys, "dataset", "check", tmp_path / "nope")
    assert rc == 2 and "dataset directory not found" in _one_line_error(err)
    rc, _, err = _run(capsys, "dataset", "show", tmp_path / "nope", "--out", tmp_path / "x.png")
    assert rc == 2 and "dataset directory not found" in _one_line_error(err)


def test_corrupt_annotations(broken, capsys):
    (broken / "annotations.json").write_text('{"images": [')
    rc, _, err = _run(capsys, "dataset", "check", broken)
    line = _one_line_error(err)
    assert rc == 2 and "corrupt" in line and "annotations.json" in line


def test_image_size_does_not_match_annotation(broken, capsys):
    coco = json.loads((broken / "annotations.json").read_text())
    victim = broken / coco["images"][3]["file_name"]
    Image.new("RGB", (100, 80)).save(victim)
    rc, _, err = _run(capsys, "dataset", "check", broken, "--quiet")
    line = _one_line_error(err)
    assert rc == 2 and "100x80" in line and "224x224" in line and victim.name in line


def test_unknown_class_in_annotations(broken, capsys):
    coco = json.loads((broken / "annotations.json").read_text())
    coco["annotations"][0]["category_id"] = 99
    (broken / "annotations.json").write_text(json.dumps(coco))
    rc, _, err = _run(capsys, "dataset", "check", broken)
    assert rc == 2 and "unknown category id 99" in _one_line_error(err)


def test_unknown_class_in_import_and_class_list(tmp_path, capsys):
    frame = tmp_path / "raw" / "f0"
    (frame / "masks").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(frame / "image.png")
    Image.new("L", (8, 8), 255).save(frame / "masks" / "0.png")
    (frame / "meta.json").write_text(json.dumps({"scene": "s", "objects": [{"mask": "masks/0.png", "label": "Sofa"}]}))
    rc, _, err = _run(capsys, "dataset", "import", tmp_path / "raw", "--out", tmp_path / "D", "--classes", "pybullet")
    line = _one_line_error(err)
    assert rc == 2 and "unknown class 'Sofa'" in line and "meta.json" in line
    rc, _, err = _run(capsys, "dataset", "import", tmp_path / "raw", "--out", tmp_path / "D2", "--classes", "nosuch")
    assert rc == 2 and "class list not found: nosuch" in _one_line_error(err)
    # the same raw frame with a known label imports fine
    (frame / "meta.json").write_text(json.dumps({"scene": "s", "objects": [{"mask": "masks/0.png", "label": "Mug"}]}))
    rc, _, _ = _run(capsys, "dataset", "import", tmp_path / "raw", "--out", tmp_path / "D3", "--classes", "pybullet")
    assert rc == 0 and SaomDataset(tmp_path / "D3")[0].labels == ["Mug"]


def test_unknown_simulator(tmp_path, capsys):
    rc, _, err = _run(capsys, "collect", "--sim", "gazebo", "--scenes", "1", "--out", tmp_path / "D")
    line = _one_line_error(err)
    assert rc == 2 and "unknown simulator 'gazebo'" in line and "pybullet" in line and "ai2thor" in line
    assert not (tmp_path / "D").exists()


def test_bad_collect_arguments(tmp_path, capsys, pybullet_dataset):
    rc, _, err = _run(capsys, "collect", "--scenes", "0", "--out", tmp_path / "D")
    assert rc == 2 and "--scenes must be at least 1" in _one_line_error(err)
    rc, _, err = _run(capsys, "collect", "--scenes", "1", "--out", pybullet_dataset)
    assert rc == 2 and "--resume" in _one_line_error(err)
    rc, _, err = _run(capsys, "dataset", "show", pybullet_dataset, "--index", "8", "--out", tmp_path / "x.png")
    assert rc == 2 and "out of range" in _one_line_error(err)


def test_console_script_exit_code(tmp_path):
    saom = Path(sys.executable).parent / "saom"
    if not saom.exists():
        pytest.skip("saom console script not installed next to this Python")
    result = subprocess.run([str(saom), "dataset", "check", str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"saom: error: dataset directory not found: {tmp_path / 'nope'}"
