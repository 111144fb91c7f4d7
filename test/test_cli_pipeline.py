"""The user-facing pipeline through the `saom` command: train -> eval -> segment -> export -> bag -> demo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saom_core.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

TRAIN = [
    "model.config=test", "model.checkpoint=null",
    "train.max_steps=8", "train.frames_per_step=2", "train.trainable=[all]", "train.device=cpu",
    "train.cache_embeddings=false", "train.threads=1", "train.checkpoint_every=4", "prompts.points_per_side=8",
]


@pytest.fixture(scope="module")
def trained(rect_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", "--config", "config/train_tiny.yaml", "--data", str(rect_dataset), "--out", str(run), "--quiet"]
    assert main([*args, *TRAIN]) == 0
    return run


def test_train_then_resume_longer(trained, rect_dataset, capsys):
    assert main(["train", "--out", str(trained), "--resume", "--quiet", "train.max_steps=10"]) == 0
    assert "trained 10 steps" in capsys.readouterr().out


def test_eval_writes_the_report(trained, rect_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    code = main([
        "eval", "--checkpoint", str(trained / "checkpoints/last.pt"), "--baseline",
        str(trained / "checkpoints/init.pt"), "--data", str(rect_dataset), "--split", "val", "--out", str(out),
        "--overlays", "2", "--device", "cpu", "--quiet",
    ])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["points_per_side"] == 8, "the grid the checkpoint was trained on (TRAIN), not SAM's 32"
    assert "grid 8" in report["saom"]["generator"]
    assert report["saom"]["points"]["objects"] == report["objects"] > 0
    assert report["saom"]["random_points"]["objects"] == report["objects"]
    assert 0 <= report["saom"]["random_points"]["instance_mIoU"] <= 1
    assert set(report["saom"]["points"]["per_class"]) == {"Mug", "Table", "Ball"}
    markdown = (out / "report.md").read_text()
    assert "| mIoU over objects, random point |" in markdown
    # everything mode covers the whole split by default, with the ground truth of the same frames beside it
    everything = report["saom"]["everything"]
    assert everything["frames"] == report["frames"] and everything["ground_truth_objects"] == report["objects"]
    assert (
        "| ground-truth objects per frame (same frames) |" in markdown
        and " of " not in markdown.split("## Per-class")[0].split("everything mode")[1]
    )
    for heading in (
        "## Summary",
        "## Per-class results (paper Tables 3 and 4)",
        "## Output masks in everything mode (paper Table 5)",
    ):
        assert heading in markdown
    for png in ("per_class_iou.png", "per_class_acc.png", "overlay_000.png", "overlay_001.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 100
    assert "report:" in capsys.readouterr().out


def test_segment_continues_past_bad_images(trained, tmp_path, capsys):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    code = main([
        "segment", "--checkpoint", str(trained / "checkpoints/last.pt"), "--device", "cpu", "--points-per-side", "8",
        str(corrupt), str(good), str(tmp_path / "missing.png"), "--out", str(tmp_path / "seg"),
    ])
    captured = capsys.readouterr()
    assert code == 1
    assert "corrupt.png: not a readable image" in captured.err and "missing.png: no such file" in captured.err
    # said once, at load: what the model was trained on, so a simulator-trained model is not mistaken for a general one
    said = [line for line in captured.out.splitlines() if line.startswith("model: ")]
    assert len(said) == 1 and "trained on synthetic frames" in said[0], said
    assert "3 classes: Mug, Table, Ball" in said[0] and "prompt grid 8x8" in said[0], said
    result = json.loads((tmp_path / "seg/good.json").read_text())
    assert (result["height"], result["width"]) == (120, 90)
    with Image.open(tmp_path / "seg/good_overlay.png") as im:
        assert im.mode == "RGB"


def test_segment_missing_checkpoint_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "none.pt")
    assert main(["segment", "--checkpoint", missing, str(tmp_path / "x.png"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"saom: error: checkpoint not found: {tmp_path / 'none.pt'}"


def test_export_cli(trained, tmp_path, capsys):
    checkpoint = str(trained / "checkpoints/last.pt")
    assert main(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx/encoder.onnx").exists() and (tmp_path / "onnx/decoder.onnx").exists()
    assert main(["export", "--checkpoint", checkpoint, "--format", "tflite", "--out", str(tmp_path)]) == 2


def test_bag_cli_round_trip(trained, tmp_path):
    from rosbags.rosbag2 import Reader, Writer

    from saom_ros.conversions import make_image
    from saom_ros.msgtypes import rosbags_types, typestore

    store = typestore()
    types = rosbags_types(store)
    with Writer(tmp_path / "in", version=8) as writer:
        conn = writer.add_connection("/cam", "sensor_msgs/msg/Image", typestore=store)
        for i in range(2):
            header = types.Header(stamp=types.Time(sec=10 + i, nanosec=0), frame_id="cam")
            frame = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            message = make_image(types, header, frame, "rgb8")
            writer.write(conn, 1000 + i, store.serialize_cdr(message, "sensor_msgs/msg/Image"))
    assert main([
        "bag", "--checkpoint", str(trained / "checkpoints/last.pt"), "--device", "cpu", "--points-per-side", "8",
        str(tmp_path / "in"), str(tmp_path / "out"), "--topic", "/cam", "--quiet",
    ]) == 0
    with Reader(tmp_path / "out") as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        stamps = [store.deserialize_cdr(raw, c.msgtype).header.stamp.sec
                  for c, _, raw in reader.messages() if c.msgtype == "vision_msgs/msg/Detection2DArray"]
    assert "vision_msgs/msg/Detection2DArray" in topics.values() and "sensor_msgs/msg/Image" in topics.values()
    assert stamps == [10, 11]


def test_demo_end_to_end(tmp_path, capsys):
    """The demo fine-tunes from a vanilla (class-agnostic) SAM and compares SAOM with that model."""
    from saom_core.model.architectures import get_config
    from saom_core.model.checkpoint import save_checkpoint
    from saom_core.model.saom import build_model

    vanilla = save_checkpoint(tmp_path / "vanilla.pt", build_model(get_config("test")))
    config = tmp_path / "demo.yaml"
    config.write_text(
        f"model: {{config: test, checkpoint: {vanilla}}}\n"
        "train: {max_steps: 4, frames_per_step: 2, trainable: [all], device: cpu, cache_embeddings: false, "
        "threads: 1}\n"
        "prompts: {points_per_side: 8}\ndata: {hflip: true}\n"
    )
    assert main([
        "demo", "--out", str(tmp_path / "demo"), "--config", str(config), "--scenes", "4", "--workers", "1",
        "--everything-frames", "2", "--baseline-everything-frames", "1",
    ]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "report:" in out
    # the baseline's everything mode covered fewer frames than SAOM's, and every such row says so
    report = json.loads((tmp_path / "demo/report/report.json").read_text())
    assert report["baseline_checkpoint"] == str(vanilla) and "vanilla SAM" in report["baseline_model"]
    assert (report["baseline"]["everything"]["frames"], report["saom"]["everything"]["frames"]) == (1, 2)
    rows = [line for line in out.splitlines() if "everything mode" in line or "mask A" in line]
    assert len(rows) >= 5 and all("frames: baseline first 1 of" in line for line in rows), rows
    assert "| IDF1 |" in out and "median 3D centroid error (cm)" in out  # the trajectory stage's figures
    assert "## 3D objects from depth" in (tmp_path / "demo/report/report.md").read_text()
    assert list((tmp_path / "demo/report/segment").glob("*_overlay.png"))


def test_demo_budget_leaves_the_reserve_and_refuses_a_budget_too_small():
    from saom_core.demo import DemoSettings, _training_budget
    from saom_core.errors import SaomError

    settings = DemoSettings(out=Path("x"), config=Path("c"), budget_s=900, reserve_s=240)
    assert _training_budget(settings, used=200, recipe_seconds=570) == 460  # 900 - 200 - 240
    assert _training_budget(settings, used=0, recipe_seconds=570) == 570  # never more than the recipe's own
    assert _training_budget(settings, used=0, recipe_seconds=None) == 660
    with pytest.raises(SaomError, match="leaves 10 s for training"):
        _training_budget(settings, used=650, recipe_seconds=570)
    # a machine that collected twice as slowly as the reference keeps twice the reserve
    slow = settings.reserve_collect_s_per_scene * 2
    assert _training_budget(settings, used=200, recipe_seconds=None, collect_s_per_scene=slow) == 900 - 200 - 480
    fast = settings.reserve_collect_s_per_scene / 2  # never less than the reference reserve
    assert _training_budget(settings, used=200, recipe_seconds=None, collect_s_per_scene=fast) == 460
