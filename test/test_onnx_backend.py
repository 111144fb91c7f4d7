"""The onnxruntime backend: same instances as the torch backend, and clear errors around the export folder."""
from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from saom_core.cli import main as saom_main  # noqa: E402
from saom_core.data.classes import ClassList  # noqa: E402
from saom_core.errors import ConfigError, SaomError  # noqa: E402
from saom_core.infer import onnx_runtime  # noqa: E402
from saom_core.infer.export_onnx import METADATA_FILE, export_onnx  # noqa: E402
from saom_core.infer.onnx_runtime import PROVIDERS, execution_providers  # noqa: E402
from saom_core.infer.segmenter import load_segmenter  # noqa: E402
from saom_core.infer.types import Segmentation  # noqa: E402
from saom_core.model.architectures import get_config  # noqa: E402
from saom_core.model.checkpoint import save_checkpoint  # noqa: E402
from saom_core.model.saom import build_model  # noqa: E402
from saom_core.settings import Thresholds  # noqa: E402

# Loose thresholds: many instances per frame, so a wrong mask, class or order shows.
LOOSE = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
             min_mask_region_area=0, keep_background=True, device="cpu", threads=1)
TUNED = Thresholds(pred_iou_thresh=0.25, stability_score_thresh=0.9, box_nms_thresh=0.4, min_mask_region_area=10)
SIZES = [(48, 64), (64, 48), (64, 64), (37, 90), (120, 160)]  # the last ones: resized, padded, shrunk for the model


def _random_model(head_input: str, crop_classifier: bool, seed: int):
    torch.manual_seed(seed)
    model = build_model(get_config("test"), ClassList.from_yaml("pybullet"), head_input=head_input,
                        crop_classifier=crop_classifier)
    model.init_from_scratch()
    with torch.no_grad():  # SAM's zero-initialised parts get values, so they count
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module", params=[("mask_pool", True), ("iou_token", False)], ids=["mask_pool+crop", "iou_token"])
def exported(request, tmp_path_factory):
    """(checkpoint, export folder) of a random model: the mask_pool one has the object prior and a crop classifier."""
    root = tmp_path_factory.mktemp("onnx_backend")
    checkpoint = save_checkpoint(root / "model.pt", _random_model(*request.param, seed=3), tuned=TUNED)
    return checkpoint, export_onnx(checkpoint, root / "onnx")["metadata"].parent


def _frame(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth blobs, so masks have shapes rather than noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_instances(want: Segmentation, got: Segmentation) -> None:
    """The same prompts give instances (one per prompt in SAOM mode) with mask IoU >= 0.98, the same
    class and close scores (matched by prompt: near-equal scores may rank in another order)."""
    assert (got.height, got.width) == (want.height, want.width)
    by_point = {b.point: b for b in got.instances}
    assert sorted(by_point) == sorted(a.point for a in want.instances)
    for a in want.instances:
        b = by_point[a.point]
        assert _mask_iou(a.mask, b.mask) >= 0.98, f"prompt {a.point}: mask IoU {_mask_iou(a.mask, b.mask):.3f}"
        assert a.class_id == b.class_id, f"prompt {a.point}"
        assert a.score == pytest.approx(b.score, abs=1e-3)


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_everything_mode_gives_the_torch_backends_instances(exported, size):
    checkpoint, folder = exported
    on_torch = load_segmenter(checkpoint, **LOOSE, max_input_size=100)
    on_onnx = load_segmenter(folder, backend="onnxruntime", **LOOSE, max_input_size=100)
    frame = _frame(*size, seed=size[0])
    want = on_torch.segment(frame)
    assert len(want.instances) >= 3, "too few instances to compare"
    assert_same_instances(want, on_onnx.segment(frame))


@pytest.mark.parametrize("size", SIZES[:3], ids=[f"{h}x{w}" for h, w in SIZES[:3]])
def test_prompted_mode_gives_the_torch_backends_instances(exported, size):
    checkpoint, folder = exported
    height, width = size
    boxes = np.array([[2, 3, width // 2, height // 2], [width // 3, height // 4, width - 1, height - 2]], np.float32)
    points = np.array([[5, 6], [width - 7, height // 2], [width / 2, height - 3]], np.float32)
    frame = _frame(height, width, seed=7)
    want = load_segmenter(checkpoint, **LOOSE).segment_prompts(frame, boxes, points)
    got = load_segmenter(folder, backend="onnxruntime", **LOOSE).segment_prompts(frame, boxes, points)
    assert len(want.instances) == len(got.instances) == 5
    for a, b in zip(want.instances, got.instances, strict=True):
        assert _mask_iou(a.mask, b.mask) >= 0.98 and a.class_id == b.class_id and a.point == b.point
        assert a.predicted_iou == pytest.approx(b.predicted_iou, abs=1e-4)


def test_the_export_carries_the_tuned_thresholds_and_the_training_line(exported):
    checkpoint, folder = exported
    segmenter = load_segmenter(folder, backend="onnxruntime", device="cpu")
    assert segmenter.tuned == TUNED
    assert segmenter.generator.config.pred_iou_thresh == TUNED.pred_iou_thresh
    assert "14 classes" in segmenter.trained_on and "CPUExecutionProvider" in segmenter.trained_on


def test_fp16_export_writes_and_runs(exported, tmp_path):
    """`--half` models take and give float16; CPU onnxruntime runs them, close to the fp32 ones."""
    checkpoint, _ = exported
    assert saom_main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "half"), "--half"]) == 0
    meta = json.loads((tmp_path / "half" / METADATA_FILE).read_text())
    assert meta["dtype"] == "float16"
    session = ort.InferenceSession(str(tmp_path / "half" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert {i.type for i in session.get_inputs()} == {"tensor(float16)"}
    frame = _frame(48, 64, seed=1)
    points = np.array([[10.0, 12.0], [40.0, 30.0]], np.float32)
    try:
        half = load_segmenter(tmp_path / "half", backend="onnxruntime", **LOOSE).segment_prompts(frame, points=points)
    except SaomError as exc:  # an onnxruntime build without the CPU fp16 kernels these models need
        pytest.skip(f"CPU onnxruntime cannot run the fp16 models: {exc}")
    full = load_segmenter(checkpoint, **LOOSE).segment_prompts(frame, points=points)
    for a, b in zip(full.instances, half.instances, strict=True):
        assert _mask_iou(a.mask, b.mask) > 0.9 and a.predicted_iou == pytest.approx(b.predicted_iou, abs=0.02)


def test_saom_segment_runs_on_the_onnxruntime_backend(exported, tmp_path):
    _, folder = exported
    image = tmp_path / "frame.png"
    import cv2

    cv2.imwrite(str(image), _frame(48, 64, seed=2))
    code = saom_main(["segment", "--checkpoint", str(folder), "--backend", "onnxruntime", "--device", "cpu",
                      "--points-per-side", "4", str(image), "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "frame.json").exists()


def test_providers_tensorrt_then_cuda_then_cpu_where_installed():
    trt, cuda, cpu = PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]
    everything = ["AzureExecutionProvider", cpu, cuda, trt]
    assert execution_providers("auto", everything) == [trt, cuda, cpu]
    assert execution_providers("auto", [cuda, cpu]) == [cuda, cpu]
    assert execution_providers("auto", [cpu]) == [cpu]
    assert execution_providers("cuda", everything) == [cuda, cpu]
    assert execution_providers("cpu", everything) == [cpu]
    with pytest.raises(SaomError, match="TensorrtExecutionProvider.*onnxruntime-gpu"):
        execution_providers("tensorrt", [cuda, cpu])


def test_tensorrt_gets_an_engine_cache_in_the_export_folder(exported, monkeypatch):
    """What a TensorRT machine would be asked for (the sessions themselves run on the CPU here)."""
    _, folder = exported
    runtime = onnx_runtime.OnnxRuntime(folder, "cpu")
    runtime.providers = [PROVIDERS["tensorrt"], PROVIDERS["cpu"]]
    (name, options), cpu = runtime._provider_options(folder, True, {"point_coords": "{}x2x2"})
    assert (name, cpu) == (PROVIDERS["tensorrt"], PROVIDERS["cpu"])
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(folder / "trt_engines")
    assert options["trt_fp16_enable"] is True
    assert options["trt_profile_min_shapes"] == "point_coords:1x2x2"
    assert options["trt_profile_max_shapes"] == f"point_coords:{onnx_runtime.MAX_PROMPTS}x2x2"


def test_unknown_provider_or_backend_is_a_config_error(exported):
    _, folder = exported
    with pytest.raises(ConfigError, match="onnx_provider"):
        load_segmenter(folder, backend="onnxruntime", onnx_provider="directml")
    with pytest.raises(ConfigError, match="backend"):
        load_segmenter(folder, backend="tensorflow")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_a_folder_of_another_format_version_says_export_again(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    meta = json.loads((folder / METADATA_FILE).read_text())
    (folder / METADATA_FILE).write_text(json.dumps(meta | {"format_version": 1}))
    with pytest.raises(SaomError, match="format version 1.*export the checkpoint again"):
        load_segmenter(folder, backend="onnxruntime")


def test_a_missing_file_is_named(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    (folder / "decoder.onnx").unlink()
    with pytest.raises(SaomError, match=r"missing decoder\.onnx"):
        load_segmenter(folder, backend="onnxruntime")
    (folder / METADATA_FILE).unlink()
    with pytest.raises(SaomError, match=f"no {METADATA_FILE}.*saom export"):
        load_segmenter(folder, backend="onnxruntime")
    with pytest.raises(SaomError, match="not a folder"):
        load_segmenter(exported[0], backend="onnxruntime")


def test_missing_onnxruntime_names_what_to_install(exported, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(SaomError, match=r"pip install 'saom_ros\[onnx\]'"):
        load_segmenter(exported[1], backend="onnxruntime")
