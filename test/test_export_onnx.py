"""ONNX export: both models run in onnxruntime and match PyTorch; metadata, errors and atomicity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from saom_core.data.classes import BACKGROUND, ClassList  # noqa: E402
from saom_core.errors import CheckpointError, SaomError  # noqa: E402
from saom_core.infer import export_onnx as export_module  # noqa: E402
from saom_core.infer.export_onnx import (  # noqa: E402
    CLASSIFIER_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    METADATA_FILE,
    _single_data_file,
    export_onnx,
)
from saom_core.model.architectures import get_config  # noqa: E402
from saom_core.model.checkpoint import load_model, save_checkpoint  # noqa: E402
from saom_core.model.saom import SaomModel, build_model  # noqa: E402
from saom_core.settings import Thresholds  # noqa: E402


def _random_model(config: str, classes: ClassList | None, seed: int = 0, crop_classifier: bool = False) -> SaomModel:
    torch.manual_seed(seed)
    head_input = "mask_token" if config == "tiny" else "iou_token"
    model = build_model(get_config(config), classes, head_input=head_input, crop_classifier=crop_classifier)
    model.init_from_scratch()
    with torch.no_grad():  # SAM's zero-initialised parts (e.g. rel-pos tables) get values so they count
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(0, 0.02)
    return model.eval()


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _frame(height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (1, height, width, 3), dtype=np.uint8))


def _padded(coords: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """The decoder's point inputs for prompts of points without a box: SAM's padding point appended."""
    coords = torch.cat([coords, torch.zeros_like(coords[:, :1])], 1)
    labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], 1)
    return {"point_coords": coords.numpy(), "point_labels": labels.numpy()}


def _prompts(model: SaomModel, num_prompts: int, num_points: int, height: int, width: int, seed: int):
    """Random frame-pixel points mapped to model input, labels with -1 padding mixed in."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_prompts, num_points, 2, generator=gen) * torch.tensor([width - 1.0, height - 1.0])
    labels = torch.randint(-1, 2, (num_prompts, num_points), generator=gen).float()
    labels[:, 0] = 1.0
    return model.points_to_input(xy, height, width), labels


@pytest.fixture(scope="module", params=["test", "tiny"])
def exported(request, tmp_path_factory):
    """A random SAOM model with the pybullet class head, saved as a checkpoint and exported."""
    model = _random_model(request.param, ClassList.from_yaml("pybullet"))
    root = tmp_path_factory.mktemp(f"onnx_{request.param}")
    checkpoint = save_checkpoint(root / "model.pt", model)
    paths = export_onnx(checkpoint, root / "onnx")
    return model, paths


def test_export_writes_the_files(exported):
    model, paths = exported
    out_dir = paths["encoder"].parent
    assert paths == {
        "encoder": out_dir / ENCODER_FILE, "decoder": out_dir / DECODER_FILE, "metadata": out_dir / METADATA_FILE
    }
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([ENCODER_FILE, DECODER_FILE, METADATA_FILE])
    size, grid = model.config.image_size, model.config.embedding_size
    encoder = _session(paths["encoder"])
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("image", [1, 3, size, size])]
    embedding_shape = [1, model.config.prompt_embed_dim, grid, grid]
    assert [(o.name, o.shape) for o in encoder.get_outputs()] == [("image_embeddings", embedding_shape)]
    decoder = _session(paths["decoder"])
    inputs = {i.name: i.shape for i in decoder.get_inputs()}
    assert list(inputs) == ["image_embeddings", "point_coords", "point_labels"]
    # P and K are symbolic (dynamic), not fixed to the sizes used while tracing.
    assert inputs["point_coords"][:2] == ["num_prompts", "num_points"] and inputs["point_coords"][2] == 2
    assert inputs["point_labels"] == ["num_prompts", "num_points"]
    assert [o.name for o in decoder.get_outputs()] == ["low_res_logits", "iou_predictions", "class_logits"]


def test_encoder_matches_pytorch(exported):
    model, paths = exported
    prepared = model.prepare_images(_frame(45, 80))  # landscape: resized and padded at the bottom
    with torch.no_grad():
        expected = model.encode(prepared).numpy()
    (got,) = _session(paths["encoder"]).run(None, {"image": prepared.numpy()})
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_prompts,num_points", [(1, 1), (7, 3), (4, 6)])
def test_decoder_matches_pytorch(exported, num_prompts, num_points):
    model, paths = exported
    with torch.no_grad():
        embeddings = model.encode(model.prepare_images(_frame(45, 80)))
        coords, labels = _prompts(model, num_prompts, num_points, 45, 80, seed=num_prompts * 10 + num_points)
        expected = model.decode(embeddings, coords, labels, multimask_output=True)
    got = _session(paths["decoder"]).run(None, {"image_embeddings": embeddings.numpy(), **_padded(coords, labels)})
    low = model.config.low_res_size
    classes = model.class_list.num_classes_with_background
    assert [g.shape for g in got] == [(num_prompts, 4, low, low), (num_prompts, 4), (num_prompts, 4, classes)]
    got = [g[:, 1:] for g in got]  # SAM's 3 multimask outputs
    want = {
        "low_res_logits": expected.low_res_logits,
        "iou_predictions": expected.iou_pred,
        "class_logits": expected.class_logits,
    }
    for (name, e), g in zip(want.items(), got, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=0, err_msg=name)
    # Prompts differ, so the outputs do: a decoder ignoring the points would not pass.
    if num_prompts > 1:
        assert np.abs(got[0][0] - got[0][1]).max() > 1e-3


def test_box_prompts_are_their_two_corners(exported):
    """A box is two points labelled 2 and 3, without padding; output 0 is decode(boxes=...)'s single mask."""
    model, paths = exported
    boxes = torch.tensor([[3.0, 4.0, 40.0, 30.0], [50.0, 10.0, 70.0, 44.0]])
    with torch.no_grad():
        embeddings = model.encode(model.prepare_images(_frame(45, 80)))
        box_in = model.points_to_input(boxes.view(-1, 2, 2), 45, 80)
        expected = model.decode(embeddings, boxes=box_in.view(-1, 4), multimask_output=False)
    feed = {"image_embeddings": embeddings.numpy(), "point_coords": box_in.numpy(),
            "point_labels": np.tile(np.array([[2.0, 3.0]], np.float32), (2, 1))}
    got = _session(paths["decoder"]).run(None, feed)
    want = (expected.low_res_logits, expected.iou_pred, expected.class_logits)
    for name, g, e in zip(("low_res_logits", "iou_predictions", "class_logits"), got, want, strict=True):
        np.testing.assert_allclose(g[:, :1], e.numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_metadata_describes_the_models(exported):
    model, paths = exported
    meta = json.loads(paths["metadata"].read_text())
    classes = ClassList.from_yaml("pybullet")
    assert meta["input_size"] == model.config.image_size
    assert meta["low_res_size"] == model.config.low_res_size
    assert meta["class_names"] == [BACKGROUND] + classes.names
    assert meta["has_class_head"] is True
    assert meta["head_input"] == model.classifier.head_input
    assert meta["opset"] == 17
    assert meta["format_version"] == export_module.FORMAT_VERSION and meta["dtype"] == "float32"
    assert meta["tuned_thresholds"] == Thresholds().values()
    assert meta["files"] == {"encoder": ENCODER_FILE, "decoder": DECODER_FILE, "external_data": []}
    assert list(meta["decoder"]["outputs"]) == ["low_res_logits", "iou_predictions", "class_logits"]
    assert meta["model_config"] == model.config.to_dict()

    # The recipe in the metadata, done by hand in numpy, gives exactly the encoder input prepare_images makes
    # (a frame whose longest side already is S, so no resampling is involved).
    size = meta["input_size"]
    frame = _frame(size // 2 + 3, size)
    mean, std = np.array(meta["pixel_mean"], np.float32), np.array(meta["pixel_std"], np.float32)
    x = (frame[0].numpy().astype(np.float32) - mean) / std
    padded = np.zeros((size, size, 3), np.float32)
    padded[: x.shape[0], : x.shape[1]] = x
    np.testing.assert_allclose(padded.transpose(2, 0, 1)[None], model.prepare_images(frame).numpy(), atol=1e-5)

    # The point mapping it states is points_to_input's (for a frame that is resized).
    height, width = 45, 80
    new_h, new_w = model.input_size(height, width)
    xy = torch.tensor([[[10.0, 20.0], [79.0, 44.0]]])
    stated = xy * torch.tensor([new_w / width, new_h / height])
    np.testing.assert_allclose(model.points_to_input(xy, height, width).numpy(), stated.numpy())
    assert "x * new_w / W" in " ".join(meta["points"])


def test_vanilla_sam_state_dict_exports_without_class_logits(tmp_path):
    model = _random_model("test", None, seed=3)
    checkpoint = tmp_path / "sam_test.pth"
    torch.save(model.state_dict(), checkpoint)  # bare state_dict, as the official SAM files are
    paths = export_onnx(checkpoint, tmp_path / "onnx", model_config="test")
    decoder = _session(paths["decoder"])
    assert [o.name for o in decoder.get_outputs()] == ["low_res_logits", "iou_predictions"]
    meta = json.loads(paths["metadata"].read_text())
    assert meta["has_class_head"] is False and meta["head_input"] is None
    assert "class_logits" not in meta["decoder"]["outputs"]

    loaded = load_model(checkpoint, config="test")
    with torch.no_grad():
        embeddings = loaded.encode(loaded.prepare_images(_frame(64, 48)))
        coords, labels = _prompts(loaded, 5, 2, 64, 48, seed=5)
        expected = loaded.decode(embeddings, coords, labels, multimask_output=True)
    (got_embeddings,) = _session(paths["encoder"]).run(None, {"image": loaded.prepare_images(_frame(64, 48)).numpy()})
    np.testing.assert_allclose(got_embeddings, embeddings.numpy(), atol=1e-4, rtol=0)
    logits, iou = (out[:, 1:] for out in decoder.run(None, {"image_embeddings": embeddings.numpy(),
                                                            **_padded(coords, labels)}))
    np.testing.assert_allclose(logits, expected.low_res_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(iou, expected.iou_pred.numpy(), atol=1e-4, rtol=0)


def test_missing_or_invalid_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        export_onnx(tmp_path / "nope.pt", tmp_path / "out")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        export_onnx(garbage, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opset", [7, 12, 99, "17", True])
def test_unsupported_opset_is_a_saom_error(tmp_path, opset):
    checkpoint = save_checkpoint(tmp_path / "model.pt", _random_model("test", None))
    with pytest.raises(SaomError, match="opset"):
        export_onnx(checkpoint, tmp_path / "out", opset=opset)
    assert not (tmp_path / "out").exists()


def test_other_supported_opset_exports(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "model.pt", _random_model("test", ClassList.from_yaml("pybullet")))
    paths = export_onnx(checkpoint, tmp_path / "out", opset=13)
    assert onnx.load(str(paths["decoder"])).opset_import[0].version == 13
    assert json.loads(paths["metadata"].read_text())["opset"] == 13


def test_failed_export_is_a_saom_error_and_leaves_earlier_files_intact(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "model.pt", _random_model("test", ClassList.from_yaml("pybullet")))
    out_dir = tmp_path / "out"
    paths = export_onnx(checkpoint, out_dir)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}

    real_export = torch.onnx.export

    def encoder_only(module, *args, **kwargs):  # the encoder exports, then the decoder fails
        if isinstance(module, export_module.OnnxDecoder):
            raise RuntimeError("unsupported operator aten::boom")
        return real_export(module, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", encoder_only)
    other = save_checkpoint(tmp_path / "other.pt", _random_model("test", ClassList.from_yaml("pybullet"), seed=9))
    with pytest.raises(SaomError, match=r"decoder\.onnx.*aten::boom"):
        export_onnx(other, out_dir)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # no new encoder, no temp folder
    assert paths["encoder"].exists()


def test_large_model_weights_are_gathered_into_one_data_file(tmp_path):
    """What the exporter writes for a model over 2 GB (one file per tensor) becomes <name>.onnx.data."""
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.full((4, 4), i + 1.0, np.float32), name=f"w{i}") for i in range(3)]
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 2 else "y"])
        for i in range(3)
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=weights,
    )
    folder = tmp_path / "encoder"
    folder.mkdir()
    onnx.save_model(helper.make_model(graph), str(folder / "encoder.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(folder.iterdir())) == 4

    files = _single_data_file(folder, "encoder.onnx")
    assert [p.name for p in files] == ["encoder.onnx.data", "encoder.onnx"]
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    (y,) = _session(folder / "encoder.onnx").run(None, {"x": np.ones((1, 4), np.float32)})
    np.testing.assert_allclose(y, np.full((1, 4), 4.0 * 8.0 * 12.0))


def test_crop_classifier_exports_as_its_own_graph_that_matches_pytorch(tmp_path):
    model = _random_model("test", ClassList.from_yaml("pybullet"), crop_classifier=True)
    with torch.no_grad():
        for module in model.crop_classifier.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial running statistics
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    paths = export_onnx(save_checkpoint(tmp_path / "crop.pt", model), tmp_path / "onnx")
    assert paths["classifier"] == tmp_path / "onnx" / CLASSIFIER_FILE
    meta = json.loads(paths["metadata"].read_text())
    assert meta["files"]["classifier"] == CLASSIFIER_FILE and "class_logits" in meta["classifier"]["outputs"]

    prepared = model.prepare_images(_frame(45, 80))
    low = model.config.low_res_size
    masks = torch.zeros(3, low, low)
    masks[0, 2:6, 3:9] = 1.0
    masks[1, 8:, :4] = 0.8
    with torch.no_grad():
        expected = model.classify_masks(prepared, masks).numpy()
    (got,) = _session(paths["classifier"]).run(None, {"image": prepared.numpy(), "masks": masks.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    with pytest.raises(SaomError, match="opset >= 16"):
        export_onnx(tmp_path / "crop.pt", tmp_path / "onnx13", opset=13)
