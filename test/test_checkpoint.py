"""Loading official SAM weights and saving/loading SAOM checkpoints."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling import Sam

from saom_core.data.classes import ClassList
from saom_core.errors import CheckpointError
from saom_core.model.architectures import get_config
from saom_core.model.checkpoint import (
    CheckpointInfo,
    checkpoint_dict,
    load_checkpoint,
    load_model,
    load_sam_weights,
    read_checkpoint,
    save_checkpoint,
)
from saom_core.model.saom import build_model
from saom_core.settings import Thresholds


def official_state_dict(config: str = "test") -> dict[str, torch.Tensor]:
    """A randomly initialised SAM saved exactly as the official checkpoints are: a bare state_dict."""
    torch.manual_seed(0)
    return build_model(get_config(config)).state_dict()


@pytest.mark.parametrize("zip_format", [True, False])
def test_official_layout_loads_as_vanilla_sam(tmp_path, zip_format):
    path = tmp_path / "sam_test.pth"
    state = official_state_dict()
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)  # both layouts torch has written
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
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
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
    tuned = Thresholds(pred_iou_thresh=0.4, stability_score_thresh=0.8, box_nms_thresh=0.25, min_mask_region_area=60)
    path = save_checkpoint(tmp_path / "tuned.pt", model, tuned=tuned)
    loaded, info = load_checkpoint(path)
    assert info == CheckpointInfo(tuned, is_saom=True) and not hasattr(loaded, "generator_defaults")
    with pytest.raises(TypeError):  # the training record is read-only: no checkpoint can change another's
        info.trained_on["frames"] = 1  # type: ignore[index]
    assert CheckpointInfo(Thresholds(), is_saom=False).trained_on == {}
    config = load_segmenter(str(path), points_per_side=8).generator.config
    got = (config.pred_iou_thresh, config.stability_score_thresh, config.box_nms_thresh, config.min_mask_region_area)
    assert got == (0.4, 0.8, 0.25, 60)
    override = load_segmenter(str(path), stability_score_thresh=0.9).generator.config
    assert override.stability_score_thresh == 0.9 and override.pred_iou_thresh == 0.4
    torch.save(official_state_dict(), tmp_path / "sam.pth")
    assert load_checkpoint(tmp_path / "sam.pth").info == CheckpointInfo(Thresholds(), is_saom=False)
    vanilla = load_segmenter(str(tmp_path / "sam.pth")).generator.config  # no tuned values: the paper's
    got = vanilla.pred_iou_thresh, vanilla.stability_score_thresh, vanilla.box_nms_thresh, vanilla.min_mask_region_area
    assert got == (0.3, 0.95, 0.3, 150)


def test_a_bad_tuned_value_in_a_checkpoint_is_named(tmp_path):
    data = checkpoint_dict(build_model(get_config("test"), ClassList.from_yaml("pybullet")))
    data["generator"]["box_nms_thresh"] = 0.0
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: tuned box_nms_thresh: 0.0 is out of range \(0, 1\]"):
        load_checkpoint(tmp_path / "bad.pt")


class RunsCode:
    """Unpickling this calls Path.touch(marker): a stand-in for any command a hostile file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("layout", ["torch_zip", "legacy_pickle"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = {**official_state_dict(), "format": "saom", "extra": RunsCode(marker)}
    path = tmp_path / "hostile.pt"
    if layout == "torch_zip":
        torch.save(payload, path)
    else:
        # no tensors: plain pickle
        path.write_bytes(pickle.dumps({"format": "saom", "extra": RunsCode(marker)}, protocol=2))
    refused = r"hostile.pt: it holds Python objects.*\((getattr|pathlib\S*)\); refused"
    with pytest.raises(CheckpointError, match=refused):
        load_model(path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists(), "unpickling ran the file's code"
    RunsCode(marker).__reduce__()[0](marker)  # the payload does work when it is run: the test can fail
    assert marker.exists()


def test_training_state_is_plain_data(tmp_path):
    """What the trainer stores besides tensors must load under weights_only (numpy RNG state included)."""
    state = {"numpy_rng": [np.random.default_rng([0, 1]).bit_generator.state], "best_score": None, "step": 3}
    path = save_checkpoint(tmp_path / "last.pt", build_model(get_config("test")), state)
    assert read_checkpoint(path)["train_state"] == state


def test_embedding_cache_refuses_code_and_reads_tensors(tmp_path):
    from saom_core.train.embedding_cache import EmbeddingCache, EncoderSplit

    model = build_model(get_config("test"))
    cache = EmbeddingCache(tmp_path / "cache", model, EncoderSplit(len(model.image_encoder.blocks), whole=True))
    key = "ab" + "0" * 38
    cache.path(key).parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save(RunsCode(marker), cache.path(key))
    assert cache.get(key) is None and not marker.exists()  # refused: a miss, recomputed and replaced
    embedding = cache.put(key, np.zeros((32, 32, 3), np.uint8), torch.device("cpu"))
    assert torch.equal(cache.get(key), embedding)
