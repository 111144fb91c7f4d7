"""saom_ros.params and saom_ros.segmenter_factory without ROS: schema, validation messages, params YAML,
factory hooks."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from saom_core.errors import ConfigError
from saom_core.settings import SegmenterSettings
from saom_ros import segmenter_factory as factories
from saom_ros.params import (
    DEFAULTS,
    PARAMETER_NAMES,
    PARAMETERS,
    RUNTIME_PARAMETERS,
    NodeParams,
    check_classes,
    load_params_file,
    validate,
)
from saom_ros.testing import FakeSegmenter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ckpt(tmp_path) -> str:
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    return str(path)


def test_defaults_validate_with_a_checkpoint(ckpt):
    p = validate({"checkpoint": ckpt})
    assert isinstance(p, NodeParams)
    assert p.checkpoint == ckpt and p.device == "auto" and p.image_reliability == "auto"
    assert p.input_topic == "image_raw" and p.keep_classes == ()
    assert set(DEFAULTS) == set(PARAMETER_NAMES)


@pytest.mark.parametrize("raw, message", [
    ({"checkpoint": ""}, "no checkpoint given"),
    ({"checkpoint": "/nonexistent/saom.pt"}, "/nonexistent/saom.pt does not exist"),
    ({"device": "gpu"}, "device: 'gpu' is not cpu, cuda, cuda:N or auto"),
    ({"max_input_size": 8}, "max_input_size: 8 is too small"),
    ({"stability_score_thresh": -0.1}, "stability_score_thresh"),
    ({"half": "yes"}, "half: expected true or false"),
    ({"pred_iou_thresh": 1.5}, "pred_iou_thresh: 1.5 is out of range"),
    ({"pred_iou_thresh": "high"}, "pred_iou_thresh: expected a number"),
    ({"box_nms_thresh": 0.0}, r"box_nms_thresh: 0.0 is out of range \(0, 1\]"),
    ({"points_per_side": 2.5}, "points_per_side: expected an integer"),
    ({"points_per_side": 0}, "points_per_side: 0 is out of range"),
    ({"min_mask_region_area": -2}, "min_mask_region_area"),
    ({"image_reliability": "sometimes"}, "image_reliability: 'sometimes' is not one of auto, best_effort, reliable"),
    ({"image_transport": "theora"}, "image_transport"),
    ({"keep_classes": [1, 2]}, "keep_classes: expected a list of names"),
    ({"pred_iou_thresh": -1.0}, "leave it unset for the checkpoint's tuned value"),
    ({"diagnostics_period": 0}, "diagnostics_period"),
    ({"everything_mode": False, "prompts_enabled": False}, "would do nothing"),
    ({"pred_iou_tresh": 0.5}, "unknown parameter.*pred_iou_tresh"),
    ({"image_topic": " "}, "image_topic: empty"),
])
def test_bad_values_name_the_parameter(ckpt, raw, message):
    with pytest.raises(ConfigError, match=message):
        validate({"checkpoint": ckpt, **raw})


def test_coercions(ckpt, tmp_path):
    p = validate({"checkpoint": ckpt, "pred_iou_thresh": 1, "points_per_side": 16.0, "half": "false",
                  "keep_classes": "mug, bottle", "image_reliability": "RELIABLE", "device": "CUDA:1",
                  "use_sim_time": True, "qos_overrides./x.subscription.depth": 3})
    assert p.pred_iou_thresh == 1.0 and isinstance(p.pred_iou_thresh, float)
    assert p.points_per_side == 16 and p.half is False
    assert p.keep_classes == ("mug", "bottle") and p.image_reliability == "reliable" and p.device == "cuda:1"
    assert validate({"checkpoint": ckpt, "keep_classes": None}).keep_classes == ()
    assert validate({"checkpoint": ckpt, "keep_classes": []}).keep_classes == ()
    compressed = validate({"checkpoint": ckpt, "image_transport": "compressed", "image_topic": "cam/"})
    assert compressed.input_topic == "cam/compressed"
    assert validate({"checkpoint": str(tmp_path / "later.pt")}, check_files=False).checkpoint.endswith("later.pt")
    with pytest.raises(ConfigError, match="is not a file"):
        validate({"checkpoint": str(tmp_path)})


def test_segmenter_settings_are_the_segmenter_parameters(ckpt):
    p = validate({"checkpoint": ckpt, "keep_classes": ["mug"], "max_input_size": 512, "model_config": "vit_b"})
    settings = p.segmenter_settings()
    assert isinstance(settings, SegmenterSettings) and settings == settings.validate()
    assert settings.keep_classes == ("mug",) and settings.max_input_size == 512 and settings.model_config == "vit_b"
    assert validate({"checkpoint": ckpt}).segmenter_settings() == SegmenterSettings()


def test_parameter_table(ckpt):
    by_name = {p.name: p for p in PARAMETERS}
    assert by_name["pred_iou_thresh"].default is None and by_name["pred_iou_thresh"].kind == "float"
    assert (by_name["pred_iou_thresh"].lo, by_name["pred_iou_thresh"].hi) == (0.0, 1.0)
    assert by_name["box_nms_thresh"].lo_open
    assert by_name["keep_classes"].default == [] and by_name["keep_classes"].kind == "str_list"
    assert by_name["image_reliability"].choices == ("auto", "best_effort", "reliable") and by_name["device"].read_only
    assert {"score_threshold", "keep_classes", "keep_background", "publish_overlay", "pred_iou_thresh",
            "points_per_side",
            "diagnostics_period", "log_period"} <= RUNTIME_PARAMETERS
    assert not {"checkpoint", "device", "half", "compile", "image_topic", "model_config"} & RUNTIME_PARAMETERS
    assert "not set: the checkpoint's tuned value, paper 0.3" in by_name["pred_iou_thresh"].description


def test_updated_checks_the_changes(ckpt):
    p = validate({"checkpoint": ckpt})
    q = p.updated({"score_threshold": 0.5, "keep_classes": "mug"})
    assert (q.score_threshold, q.keep_classes, q.checkpoint) == (0.5, ("mug",), p.checkpoint)
    with pytest.raises(ConfigError, match="parameter score_threshold: 2.0 is out of range"):
        p.updated({"score_threshold": 2.0})
    with pytest.raises(ConfigError, match="would do nothing"):
        p.updated({"everything_mode": False, "prompts_enabled": False})


def test_config_yaml_sets_every_parameter_and_validates(ckpt):
    raw = load_params_file(REPO / "config" / "saom.yaml")
    unset = {name for name, value in DEFAULTS.items() if value is None}
    assert unset == {"pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area",
                     "same_class_overlap_thresh"}
    assert set(raw) == set(PARAMETER_NAMES) - unset, "config/saom.yaml should set every parameter that has a value"
    assert raw["checkpoint"] == ""
    with pytest.raises(ConfigError, match="no checkpoint given"):
        validate(raw)
    p = validate({**raw, "checkpoint": ckpt})
    for name in PARAMETER_NAMES:
        if name not in ("checkpoint", "keep_classes"):
            assert getattr(p, name) == DEFAULTS[name], f"config/saom.yaml and the default of {name} differ"


def test_load_params_file_sections(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    device: cpu\n    half: false\n"
                 "/robot/saom_node:\n  ros__parameters:\n    device: cuda\n    nested: {a: 1}\n"
                 "other_node:\n  ros__parameters:\n    device: nope\n")
    raw = load_params_file(f)
    assert raw == {"device": "cuda", "half": False, "nested.a": 1}
    assert load_params_file(f, node_name="other_node")["device"] == "nope"
    with pytest.raises(ConfigError, match="no section for node 'x'"):
        load_params_file(_only(tmp_path), node_name="x")
    with pytest.raises(ConfigError, match="cannot read"):
        load_params_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("saom_node:\n  parameters: {}\n")
    with pytest.raises(ConfigError, match="has no ros__parameters"):
        load_params_file(bad)


def _only(tmp_path: Path) -> Path:
    f = tmp_path / "only.yaml"
    f.write_text("saom_node:\n  ros__parameters: {device: cpu}\n")
    return f


def test_check_classes(ckpt):
    names = FakeSegmenter().class_names
    check_classes(validate({"checkpoint": ckpt, "keep_classes": ["mug"]}), names)
    with pytest.raises(ConfigError, match="unicorn not in the model's classes"):
        check_classes(validate({"checkpoint": ckpt, "keep_classes": ["mug", "unicorn"]}), names)


def test_factory_resolution_order(monkeypatch, ckpt):
    explicit = lambda p: FakeSegmenter()  # noqa: E731
    hook = lambda p: FakeSegmenter(n_instances=1)  # noqa: E731
    monkeypatch.setattr(factories, "SEGMENTER_FACTORY", None)
    assert factories.resolve_factory(None) is factories.load_from_params
    monkeypatch.setenv("SAOM_SEGMENTER_FACTORY", "saom_ros.testing:fake_factory")  # no longer read
    assert factories.resolve_factory(None) is factories.load_from_params
    monkeypatch.setattr(factories, "SEGMENTER_FACTORY", hook)
    assert factories.resolve_factory(None) is hook
    assert factories.resolve_factory(explicit) is explicit


def test_fake_env_factory_delay(monkeypatch):
    monkeypatch.setenv("SAOM_FAKE_DELAY", "0.25")
    from saom_ros.testing import fake_factory

    assert fake_factory(None).delay == 0.25


def test_release_closes_the_model():
    seg = FakeSegmenter()
    factories.release(seg, "cpu")
    assert seg.closed
    factories.release(None, "cpu")
    assert factories.validate_segmenter(FakeSegmenter())[0] == "background"

    class NoClasses:
        class_names: list = []

    from saom_core.errors import SaomError

    with pytest.raises(SaomError, match="no class_names"):
        factories.validate_segmenter(NoClasses())


def test_default_factory_passes_the_parameters_and_warms_up(monkeypatch, ckpt):
    """load_from_params hands the node's parameters to saom_core's load_segmenter, then warms the model up."""

    import saom_core.infer.segmenter as real

    accepted = set(inspect.signature(real.load_segmenter).parameters)
    seen = {}

    class Warmable(FakeSegmenter):
        warmed = False

        def warmup(self) -> None:
            self.warmed = True

    def loader(checkpoint, settings=None, **overrides):
        seen.update(checkpoint=checkpoint, settings=settings, overrides=overrides)
        return Warmable()

    monkeypatch.setattr(real, "load_segmenter", loader)
    params = validate({"checkpoint": ckpt, "points_per_side": 8, "model_config": "vit_b"})
    segmenter = factories.load_from_params(params)
    assert {"checkpoint", "settings"} <= accepted
    assert seen["checkpoint"] == ckpt and seen["overrides"] == {}
    assert seen["settings"].points_per_side == 8 and seen["settings"].model_config == "vit_b"
    assert segmenter.warmed
    assert not factories.load_from_params(validate({"checkpoint": ckpt, "warmup": False})).warmed


def test_real_loader_reports_a_bad_checkpoint(ckpt):
    """The real saom_core loader fails with a SaomError naming the file (the node fails activate with it)."""
    from saom_core.errors import SaomError

    with pytest.raises(SaomError, match="model.pt"):
        factories.load_from_params(validate({"checkpoint": ckpt}))


def test_cuda_device_is_checked_at_configure():
    factories.check_device("cpu")  # no torch import needed
    factories.check_device("auto")
    import torch

    if torch.cuda.is_available():
        factories.check_device("cuda")
        with pytest.raises(ConfigError, match="does not exist"):
            factories.check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            factories.check_device("cuda:0")


def test_unset_thresholds_take_the_checkpoints_tuned_value(ckpt):
    settings = validate({"checkpoint": ckpt, "pred_iou_thresh": None}).segmenter_settings()
    for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area",
                 "same_class_overlap_thresh"):
        assert getattr(settings, name) is None, name  # load_segmenter then uses the checkpoint's value
    explicit = validate({"checkpoint": ckpt, "pred_iou_thresh": 0.5, "min_mask_region_area": 0}).segmenter_settings()
    assert explicit.pred_iou_thresh == 0.5 and explicit.min_mask_region_area == 0


def test_node_switches_and_single_parameter_checks():
    from saom_ros.params import SEGMENTER_PARAMETERS, check_parameter

    by_name = {p.name: p for p in PARAMETERS}
    assert "enable" in RUNTIME_PARAMETERS and by_name["enable"].default is True
    assert by_name["max_input_size"].default == 1280 and by_name["max_input_size"].zero_means == "never"
    assert {"points_per_side", "keep_classes", "pred_iou_thresh"} <= SEGMENTER_PARAMETERS
    assert not {"score_threshold", "enable", "checkpoint"} & SEGMENTER_PARAMETERS
    assert check_parameter("image_reliability", " Auto ") == "auto"
    assert check_parameter("pred_iou_thresh", None) is None  # not set: the checkpoint's tuned value
    with pytest.raises(ConfigError, match="parameter box_nms_thresh: 0.0 is out of range"):
        check_parameter("box_nms_thresh", 0.0)
    with pytest.raises(ConfigError, match="parameter max_input_size: 8 is too small"):
        check_parameter("max_input_size", 8)


def test_depth_and_tracker_parameters(ckpt):
    from saom_core.geometry3d import DepthSettings
    from saom_core.track import TrackerSettings
    from saom_ros.frame_step import depth_settings, tracker_settings

    p = validate({"checkpoint": ckpt, "track_min_hits": 1, "track_max_misses": 5, "depth_min": 0.3, "depth_max": 4})
    assert tracker_settings(p) == TrackerSettings(min_hits=1, max_misses=5)
    assert depth_settings(p) == DepthSettings(min_depth=0.3, max_depth=4.0, stride=2)
    assert not p.depth_enabled  # RGB users see no change: no depth subscription, no wait
    assert {"track_min_hits", "track_max_misses", "depth_min", "depth_max"} <= RUNTIME_PARAMETERS
    assert not {"depth_enabled", "sync_slop", "depth_wait"} & RUNTIME_PARAMETERS  # they make subscriptions
    with pytest.raises(ConfigError, match="depth_min must be smaller"):
        validate({"checkpoint": ckpt, "depth_min": 5.0, "depth_max": 1.0})
    with pytest.raises(ConfigError, match="track_min_hits"):
        validate({"checkpoint": ckpt, "track_min_hits": 0})
    with pytest.raises(ConfigError, match="depth_wait"):
        validate({"checkpoint": ckpt, "depth_wait": 0.0})


def test_a_parameter_change_is_decided_without_ros(ckpt):
    """`ros2 param set`: unconfigured anything valid; configured only runtime-safe ones, applied to the model."""
    from saom_ros.params import changed_params

    assert changed_params(None, {"checkpoint": "/other.pt"}, None, [], "unconfigured") is None
    with pytest.raises(ConfigError, match="track_min_hits"):
        changed_params(None, {"track_min_hits": 0}, None, [], "unconfigured")
    params, seg = validate({"checkpoint": ckpt}), FakeSegmenter()
    with pytest.raises(ConfigError, match="checkpoint: the node is active; a change needs a model reload"):
        changed_params(params, {"checkpoint": "/other.pt"}, seg, seg.class_names, "active")
    new = changed_params(params, {"points_per_side": 8, "depth_max": 3.0}, seg, seg.class_names, "active")
    assert new.points_per_side == 8 and new.depth_max == 3.0 and seg.applied[-1].points_per_side == 8
