"""Loading official SAM weights and saving/loading SAOM checkpoints."""
from __future__ import annotations

import pytest
import torch

from saom_core.data.classes import ClassList
from saom_core.errors import CheckpointError
from saom_core.model.checkpoint import load_model, load_sam_weights, save_checkpoint
from saom_core.model.configs import get_config
from saom_core.model.saom import build_model
from segment_anything.modeling import Sam


def official_state_dict(config: str = "test") -> dict[str, torch.Tensor]:
    """A randomly initialised SAM saved exactly as the official checkpoints are: a bare state_dict."""
    torch.manual_seed(0)
    return build_model(get_config(config)).state_dict()


def test_official_layout_loads_as_vanilla_sam(tmp_path):
    path = tmp_path / "sam_test.pth"
    state = official_state_dict()
    torch.save(state, path)
    model = load_model(path)  # config guessed from the shapes
    assert isinstance(model, Sam) and model.classifier is None and model.config.name == "test"
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_official_weights_under_a_saom_head(tmp_path):
    path = tmp_path / "sam_test.pth"
    torch.save(official_state_dict(), path)
    model = build_model(get_config("test"), ClassList.from_yaml("pybullet"), "mask_token")
    head_before = model.classifier.linear.weight.clone()
    load_sam_weights(model, path)
    assert torch.equal(model.mask_decoder.iou_token.weight, official_state_dict()["mask_decoder.iou_token.weight"])
    assert torch.equal(model.classifier.linear.weight, head_before)  # the new head is not in SAM's file


def test_saom_checkpoint_round_trip_is_exact(tmp_path):
    classes = ClassList.from_yaml("pybullet")
    model = build_model(get_config("test"), classes, "mask_token")
    torch.nn.init.normal_(model.classifier.linear.weight)
    path = save_checkpoint(tmp_path / "saom.pt", model)
    loaded = load_model(path)
    assert loaded.class_list == classes and loaded.classifier.head_input == "mask_token"
    assert loaded.config == model.config
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        load_model(tmp_path / "nope.pth")


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_model(path)


def test_weights_of_another_config_are_refused_with_a_hint(tmp_path):
    path = tmp_path / "sam_test.pth"
    torch.save(official_state_dict("test"), path)
    model = build_model(get_config("tiny"))
    with pytest.raises(CheckpointError, match=r"sam_test.pth does not fit model config 'tiny'.*match config 'test'"):
        load_sam_weights(model, path)


def test_truncated_state_dict_is_refused(tmp_path):
    state = official_state_dict()
    state.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_model(path, config="test")


def test_tuned_generator_thresholds_travel_with_the_checkpoint(tmp_path):
    from saom_core.infer.segmenter import load_segmenter

    model = build_model(get_config("test"), ClassList.from_yaml("pybullet"))
    model.generator_defaults = {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.8, "box_nms_thresh": 0.25, "min_mask_region_area": 60}
    path = save_checkpoint(tmp_path / "tuned.pt", model)
    assert load_model(path).generator_defaults == model.generator_defaults
    config = load_segmenter(str(path), points_per_side=8).generator.config
    assert (config.pred_iou_thresh, config.stability_score_thresh, config.box_nms_thresh, config.min_mask_region_area) == (0.4, 0.8, 0.25, 60)
    override = load_segmenter(str(path), stability_score_thresh=0.9).generator.config
    assert override.stability_score_thresh == 0.9 and override.pred_iou_thresh == 0.4
    torch.save(official_state_dict(), tmp_path / "sam.pth")
    vanilla = load_segmenter(str(tmp_path / "sam.pth")).generator.config  # no tuned values: the paper's
    assert (vanilla.pred_iou_thresh, vanilla.stability_score_thresh, vanilla.box_nms_thresh, vanilla.min_mask_region_area) == (0.3, 0.95, 0.3, 150)
