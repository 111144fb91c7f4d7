"""The settings schema and its front ends: the CLI, the node's parameters, config/saom.yaml and the
training config's inference section must agree with it on names, defaults and ranges."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from saom_core.cli import build_parser, main, option_name
from saom_core.errors import ConfigError
from saom_core.infer.generator import GeneratorConfig, generator_config
from saom_core.settings import THRESHOLD_NAMES, ObjectSettings, SegmenterSettings, Thresholds, spec
from saom_ros import params as node_params

REPO = Path(__file__).resolve().parents[1]
SCHEMA = (Thresholds, SegmenterSettings, ObjectSettings, node_params.NodeSettings)
NODE_SCHEMA = (SegmenterSettings, ObjectSettings, node_params.NodeSettings)


@pytest.mark.parametrize("cls", SCHEMA)
def test_every_setting_is_documented_and_its_default_is_valid(cls):
    for f in fields(cls):
        assert spec(f).help, f"{cls.__name__}.{f.name} has no help text"
    assert cls().validate() == cls()


@pytest.mark.parametrize("values, message", [
    ({"points_per_side": 0}, r"points_per_side: 0 is out of range \[1, 256\]"),
    ({"pred_iou_thresh": 1.5}, r"pred_iou_thresh: 1.5 is out of range \[0, 1\]; leave it unset"),
    ({"box_nms_thresh": 0}, r"box_nms_thresh: 0.0 is out of range \(0, 1\]"),
    ({"min_mask_region_area": 2.5}, "min_mask_region_area: expected an integer"),
    ({"max_input_size": 8}, r"max_input_size: 8 is too small \(0 = never, else \[16, 16384\]\)"),
    ({"max_input_size": 20000}, "max_input_size: 20000 is out of range"),
    ({"device": "gpu"}, "device: 'gpu' is not cpu, cuda, cuda:N or auto"),
    ({"half": "maybe"}, "half: expected true or false"),
    ({"keep_classes": [1]}, "keep_classes: expected a list of names"),
    ({"pred_iou_tresh": 0.5}, "unknown setting.*pred_iou_tresh"),
])
def test_validate_names_the_bad_value(values, message):
    with pytest.raises(ConfigError, match=message):
        SegmenterSettings.from_values(values)


def test_validate_normalises():
    settings = SegmenterSettings.from_values({
        "device": " CUDA:1 ", "keep_classes": ["mug", " bottle"], "points_per_side": 16.0, "pred_iou_thresh": 1,
        "max_input_size": 0, "half": "true",
    })
    assert settings.device == "cuda:1" and settings.keep_classes == ("mug", "bottle") and settings.half is True
    assert settings.points_per_side == 16 and isinstance(settings.points_per_side, int)
    assert settings.pred_iou_thresh == 1.0 and isinstance(settings.pred_iou_thresh, float)


def test_unset_thresholds_take_the_tuned_then_the_papers():
    tuned = Thresholds(pred_iou_thresh=0.4, stability_score_thresh=0.8, box_nms_thresh=0.25, min_mask_region_area=60)
    settings = SegmenterSettings(points_per_side=8, stability_score_thresh=0.9, keep_classes=("mug",))
    assert settings.thresholds(tuned) == Thresholds(0.4, 0.9, 0.25, 60)
    assert settings.thresholds() == Thresholds(stability_score_thresh=0.9)
    config = generator_config(settings, tuned)
    got = (config.points_per_side, config.keep_classes, config.pred_iou_thresh, config.stability_score_thresh)
    assert got == (8, ["mug"], 0.4, 0.9)
    assert generator_config(SegmenterSettings()).keep_classes is None  # empty: every class
    paper = GeneratorConfig()
    assert {n: getattr(paper, n) for n in THRESHOLD_NAMES} == Thresholds().values() == {
        "pred_iou_thresh": 0.3, "stability_score_thresh": 0.95, "box_nms_thresh": 0.3, "min_mask_region_area": 150,
        "same_class_overlap_thresh": 1.0}
    assert paper.points_per_side == SegmenterSettings().points_per_side


def _segment_options() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["segment"]._actions}


def test_cli_options_are_the_schema():
    options = _segment_options()
    for f in fields(SegmenterSettings):
        action = options[f.name]
        assert option_name(f.name) in action.option_strings
        assert action.default is None, f"--{f.name}: a default here would hide the schema's"
        s = spec(f)
        assert s.help in action.help and s.range_text() in action.help
        if s.tuned:
            assert f"the paper's {getattr(Thresholds, f.name)}" in action.help
    own = {"help", "checkpoint", "images", "out", "depth", "depth_scale", "intrinsics"}  # segment's own, not settings
    generated = set(options) - own
    assert generated == {f.name for f in fields(SegmenterSettings)}
    args = build_parser().parse_args(["segment", "--checkpoint", "m.pt", "--out", "o", "a.png"])
    values = {f.name: getattr(args, f.name) for f in fields(SegmenterSettings)}
    assert SegmenterSettings.from_values(values) == SegmenterSettings()
    args = build_parser().parse_args([
        "bag", "--checkpoint", "m.pt", "--topic", "t", "in", "out", "--stability-thresh", "0.5",
        "--min-region-area", "0", "--keep-classes", "mug", "bottle", "--half",
    ])
    got = (args.stability_score_thresh, args.min_mask_region_area, args.keep_classes, args.half)
    assert got == (0.5, 0, ["mug", "bottle"], True)


def test_cli_refuses_a_bad_value_before_loading(tmp_path, capsys):
    rc = main([
        "segment", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path), "a.png", "--points-per-side", "0",
    ])
    assert rc == 2 and "points_per_side: 0 is out of range [1, 256]" in capsys.readouterr().err


def test_node_parameters_are_the_schema():
    by_name = {p.name: p for p in node_params.PARAMETERS}
    assert set(by_name) == {f.name for cls in NODE_SCHEMA for f in fields(cls)}
    for cls in NODE_SCHEMA:
        for f in fields(cls):
            param, s = by_name[f.name], spec(f)
            expected = list(f.default) if isinstance(f.default, tuple) else f.default
            assert param.default == expected and type(param.default) is type(expected), f.name
            assert (param.lo, param.hi, param.lo_open, param.choices) == (s.lo, s.hi, s.lo_open, s.choices), f.name
            assert param.read_only is not s.runtime and s.help in param.description, f.name


def test_tracking_and_3d_settings_have_one_home():
    """The node's parameters, `saom bag`'s options and the library's own defaults all come from ObjectSettings."""
    from saom_core.geometry3d import DepthSettings
    from saom_core.track import TrackerSettings
    from saom_ros.frame_step import depth_settings, tracker_settings

    parser = build_parser()
    args = parser.parse_args(["bag", "--checkpoint", "x.pt", "in", "out", "--topic", "/i", "--track-min-hits", "4"])
    values = {f.name: getattr(args, f.name) for f in fields(ObjectSettings)}
    assert ObjectSettings.from_values(values) == ObjectSettings(track_min_hits=4)
    assert tracker_settings(ObjectSettings()) == TrackerSettings()
    assert depth_settings(ObjectSettings()) == DepthSettings(stride=ObjectSettings().depth_stride)


def test_config_yaml_is_generated_from_the_schema():
    text = (REPO / "config" / "saom.yaml").read_text(encoding="utf-8")
    assert text == node_params.params_yaml(), (
        "config/saom.yaml is stale: run python -m saom_ros.params --write-yaml config/saom.yaml"
    )
    raw = node_params.load_params_file(REPO / "config" / "saom.yaml")
    for f in fields(SegmenterSettings):
        if f.default is None:
            assert f.name not in raw and f"    # {f.name}: {getattr(Thresholds, f.name)}\n" in text
        else:
            assert raw[f.name] == (list(f.default) if isinstance(f.default, tuple) else f.default), f.name


def test_write_yaml(tmp_path):
    assert node_params.main(["--write-yaml", str(tmp_path / "p.yaml")]) == 0
    assert (tmp_path / "p.yaml").read_text(encoding="utf-8") == node_params.params_yaml()


def test_training_config_inference_section_is_the_thresholds(tmp_path):
    from saom_core.train.recipe import load_train_config

    cfg = load_train_config(None, ["inference.stability_score_thresh=0.8"])
    assert cfg.inference == Thresholds(stability_score_thresh=0.8)
    for path in sorted((REPO / "config").glob("train_*.yaml")):
        assert isinstance(load_train_config(path).inference, Thresholds), path
    with pytest.raises(ConfigError, match=r"inference.pred_iou_thresh: 2.0 is out of range \[0, 1\]"):
        load_train_config(None, ["inference.pred_iou_thresh=2"])
    with pytest.raises(ConfigError, match="unknown key 'points_per_side'"):
        load_train_config(None, ["inference.points_per_side=8"])


def test_segmenter_apply_changes_per_frame_settings_only():
    from saom_core.data.classes import ClassList
    from saom_core.infer.segmenter import SaomSegmenter
    from saom_core.model.architectures import get_config
    from saom_core.model.saom import build_model

    tuned = Thresholds(pred_iou_thresh=0.4)
    model = build_model(get_config("test"), ClassList.from_yaml("pybullet"))
    segmenter = SaomSegmenter(model, generator_config(SegmenterSettings(), tuned), max_input_size=64, tuned=tuned)
    segmenter.apply(
        SegmenterSettings(points_per_side=4, box_nms_thresh=0.5, keep_classes=(model.class_names[1],), compile=True)
    )
    config = segmenter.generator.config
    assert (config.points_per_side, config.pred_iou_thresh, config.box_nms_thresh) == (4, 0.4, 0.5)
    assert config.keep_classes == [model.class_names[1]] and config.compile is False and segmenter.max_input_size == 64
    with pytest.raises(ConfigError, match="points_per_side"):
        segmenter.apply(SegmenterSettings(points_per_side=0))


def test_threads_default_leaves_a_core_for_ros(monkeypatch):
    """threads 0: every core this process may use but one (at least one); a set value is taken as is."""
    import os

    from saom_core.infer.runtime import resolve_threads

    for cores, expected in ((1, 1), (2, 1), (4, 3), (16, 15)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert resolve_threads(0) == expected
    assert resolve_threads(5) == 5
    with pytest.raises(ConfigError, match="threads"):
        SegmenterSettings(threads=-1).validate()
