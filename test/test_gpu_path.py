"""The GPU path: device resolution, DDP on CPU + CUDA backends, and no device mixing anywhere.

What a CPU can tell apart, it tests here: the process group's backend covers CPU and CUDA tensors,
each rank binds its own GPU before joining, `any_true` reduces on the rank's device, and the whole
training step, validation, the generator and the prompted segmenter run with the model and their
inputs on a simulated CUDA device (`simulated_cuda.py`: CPU tensors that say they are on cuda:0 and
raise where CUDA would raise, e.g. a CPU tensor indexed by CUDA indices, the bug that broke the
first training step on a GPU).

What no CPU test can catch, left to the `cuda`-marked tests below and to `bench/gpu_check.sh` on a
GPU: NCCL itself (it refuses to start without a GPU) and which GPU each rank's traffic really
lands on; bugs inside CUDA kernels, TF32/bf16 numerics, memory use and speed; torch.compile on
CUDA; mixing inside ops that torch runs in C++ without passing through Python (the simulation
sees every Python-level torch call, not what a C++ op does with its arguments).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import BackendConfig

from saom_core.data.classes import ClassList
from saom_core.device import resolve_device
from saom_core.errors import ConfigError
from saom_core.eval.matching import agreement
from saom_core.eval.point_eval import evaluate_points
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig
from saom_core.infer.segmenter import SaomSegmenter
from saom_core.model.architectures import get_config
from saom_core.model.checkpoint import load_model, save_checkpoint
from saom_core.model.grid import grid_points
from saom_core.model.saom import build_model
from saom_core.train import distributed
from saom_core.train.prompts import Geometry, build_frame_prompts
from saom_core.train.recipe import load_train_config
from saom_core.train.trainer import Trainer

from simulated_cuda import CUDA, SimulatedCuda, model_to_simulated_cuda, on_cuda

CLASSES = ClassList.from_dict({"name": "tiny", "classes": ["Mug", "Table", "Ball"]})


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch believes in `n` GPUs (nothing is ever run on them)."""

    def install(n: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return install


@pytest.fixture
def simulated_cuda(fake_gpus, monkeypatch):
    """Run inside a simulated cuda:0; modules moved to it get simulated-CUDA parameters."""
    fake_gpus(1)
    # The optimizer asks the CUDA runtime whether a graph is being captured: there is none here.
    for name in ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check"):
        monkeypatch.setattr(torch.optim.Optimizer, name, lambda self: None, raising=False)
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # Module.to makes new (CUDA) Parameters
    try:
        with SimulatedCuda():
            yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)


def two_objects() -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 4:30, 4:30] = True
    masks[1, 36:60, 30:62] = True
    return masks, torch.tensor([3, 1])


def tiny_model(crop_classifier: bool = True):
    torch.manual_seed(0)
    return build_model(get_config("test"), CLASSES, "mask_pool", crop_classifier).eval()


# ---- the simulation itself must fail where CUDA fails ----------------------------------------------
def test_simulated_cuda_rejects_what_cuda_rejects(simulated_cuda):
    on_gpu = torch.arange(3, device="cuda")
    assert on_gpu.device == CUDA and on_cuda(on_gpu)
    with pytest.raises(RuntimeError, match="indices should be"):
        torch.tensor([5, 6, 7])[on_gpu]  # a CPU tensor indexed by CUDA indices
    with pytest.raises(RuntimeError, match="same device"):
        torch.ones(3) + on_gpu
    with pytest.raises(TypeError, match="numpy"):
        on_gpu.numpy()
    assert torch.equal(on_gpu[torch.tensor([0, 2])].cpu(), torch.tensor([0, 2]))  # CUDA tensor, CPU indices: fine
    assert not on_cuda(on_gpu.cpu()) and (on_gpu + torch.tensor(1)).device == CUDA  # 0-dim CPU scalars mix


# ---- device resolution -------------------------------------------------------------------------------
def test_resolve_device_names_and_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(ConfigError, match="train.device is 'cuda' but CUDA is not available"):
        resolve_device("cuda", "train.device")
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(ConfigError, match=f"'{bad}'"):
            resolve_device(bad)


def test_resolve_device_takes_the_ranks_gpu_under_torchrun(fake_gpus, monkeypatch):
    fake_gpus(4)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # explicit index kept
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ConfigError, match="4 CUDA device"):
        resolve_device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        resolve_device("cuda")


# ---- the process group -----------------------------------------------------------------------------
def test_process_group_backend_covers_cpu_and_cuda_tensors():
    gpu = BackendConfig(distributed.process_group_backend("cuda")).get_device_backend_map()
    assert gpu == {"cpu": "gloo", "cuda": "nccl"}
    assert BackendConfig(distributed.process_group_backend("cpu")).get_device_backend_map()["cpu"] == "gloo"
    # what the trainer used before: NCCL alone has no backend for the CPU tensors it all-reduced
    assert "cpu" not in BackendConfig("nccl").get_device_backend_map()


def test_each_rank_binds_its_own_gpu_before_joining(fake_gpus, monkeypatch):
    fake_gpus(4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    for key, value in (("RANK", "2"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    ctx = distributed.init_distributed(resolve_device("auto"))
    assert calls == [("set_device", torch.device("cuda", 2)), ("init", "cpu:gloo,cuda:nccl")]
    got = (ctx.rank, ctx.local_rank, ctx.world_size, ctx.device, ctx.enabled)
    assert got == (2, 2, 4, torch.device("cuda", 2), True)


def test_a_one_process_torchrun_is_a_real_process_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert not distributed.init_distributed(torch.device("cpu")).enabled
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert distributed.launched_by_torchrun()


def test_any_true_reduces_a_tensor_on_the_ranks_device(simulated_cuda, monkeypatch):
    seen = []

    def all_reduce(tensor, op):
        seen.append(tensor.device)
        tensor.fill_(1)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    assert distributed.DistContext(world_size=2, device=CUDA, enabled=True).any_true(False)
    assert distributed.DistContext(world_size=2, enabled=True).any_true(False)
    assert seen == [CUDA, torch.device("cpu")]


# ---- the training step, validation, inference on a (simulated) GPU ---------------------------------
def test_frame_prompts_index_each_tensor_on_its_own_device(simulated_cuda):
    masks, class_ids = two_objects()
    prompts = build_frame_prompts(
        torch.randn(4, 8, 8).cuda(), masks.cuda(), class_ids, grid_points(8, 64, 64), Geometry((64, 64), 64, 16),
        "nearest_neighbour", 2, 32, np.random.default_rng(0), extra_points=1,
    )
    assert prompts.mask_targets.device == CUDA
    assert {t.device for t in (prompts.points, prompts.class_ids, prompts.positive)} == {torch.device("cpu")}
    assert sorted(prompts.class_ids[prompts.positive].tolist()) == [1, 1, 3, 3]


@pytest.mark.parametrize("cache", [False, True], ids=["encoder-trained", "embedding-cache"])
def test_train_step_and_validation_on_simulated_cuda(rect_dataset, tmp_path, simulated_cuda, cache):
    trainable = "[mask_decoder,classifier,crop_classifier]" if cache else "[all]"
    cfg = load_train_config(None, [
        "model.config=test", f"data.root={rect_dataset}", "data.negatives_per_frame=2", "train.frames_per_step=2",
        "train.device=cuda", "train.amp=off", "train.val_max_frames=2", "train.threads=1", "model.head_input=mask_pool",
        "model.crop_classifier=true", f"train.cache_embeddings={str(cache).lower()}",
        f"train.cache_dir={tmp_path}/cache", f"train.trainable={trainable}",
    ])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.device == CUDA and (trainer.cache is not None) == cache
    assert all(on_cuda(p) for p in trainer.model.parameters())
    before = [p.detach().cpu().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_step([trainer.frames[0], trainer.frames[1]])
    assert np.isfinite(metrics["loss"])
    assert any(not torch.equal(a, p.detach().cpu()) for a, p in zip(before, trainer.model.parameters(), strict=True))
    assert all(on_cuda(p) for p in trainer.model.parameters())
    assert trainer.validate()["mIoU"] is not None


def test_generator_and_prompted_segmenter_on_simulated_cuda(fake_gpus):
    fake_gpus(1)
    frame = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    config = GeneratorConfig(
        points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0, min_mask_region_area=0
    )
    boxes, points = np.array([[2, 2, 30, 30]]), np.array([[10, 12]])
    on_cpu = SaomSegmenter(tiny_model(), config)
    expected = [on_cpu.segment(frame), on_cpu.segment_prompts(frame, boxes=boxes, points=points)]
    with SimulatedCuda():
        on_gpu = SaomSegmenter(model_to_simulated_cuda(tiny_model()), config)
        assert on_gpu.runtime.device == CUDA and on_gpu.generator.device == CUDA
        got = [on_gpu.segment(frame), on_gpu.segment_prompts(frame, boxes=boxes, points=points)]
    for a, b in zip(expected, got, strict=True):
        assert len(a.instances) == len(b.instances) > 0
        pairs = zip(a.instances, b.instances, strict=True)
        assert all(np.array_equal(x.mask, y.mask) and x.class_id == y.class_id for x, y in pairs)


def test_point_evaluation_refuses_a_model_on_another_device(rect_dataset, fake_gpus):
    from saom_core.data.reader import SaomDataset

    fake_gpus(1)
    with pytest.raises(ValueError, match="models .*'model': 'cpu'"):
        evaluate_points(
            {"model": tiny_model()}, SaomDataset(rect_dataset, split="val"), 4, device="cuda", progress=False
        )


def test_load_model_resolves_its_device(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_model(path, device="auto").device == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model(path, device="cuda")


@pytest.fixture
def gpu_check(monkeypatch):
    """bench/gpu_check.py as a module."""
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_check_records_failed_and_skipped_steps(gpu_check, tmp_path):
    header = {
        "device": "cpu", "quick": True, "machine": "m", "torch": "t", "python": "p", "started": "s", "commit": "c",
        "unpacked_wheels": [],
    }
    runner = gpu_check.Runner(tmp_path, dict(os.environ), header)

    def broken() -> dict:
        raise gpu_check.StepFailed("masks/s is 0")

    assert runner.run("first", lambda: {"masks_per_s": 3.5})
    assert not runner.run("second", broken)
    assert not runner.run("third", lambda: {}, needs=("second",))
    data = json.loads((tmp_path / "results.json").read_text())
    assert not data["ok"]
    assert [(s["name"], s["ok"], s["error"]) for s in data["steps"]] == [
        ("first", True, None), ("second", False, "StepFailed: masks/s is 0"), ("third", False, "skipped: needs second")]
    assert data["steps"][0]["figures"] == {"masks_per_s": 3.5}
    assert "| second | FAILED: StepFailed: masks/s is 0 |" in (tmp_path / "results.md").read_text()


def test_gpu_check_unpacks_only_the_wheels_the_machine_lacks(gpu_check, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "data").mkdir()
    (bundle / "data" / "annotations.json").write_text("{}")
    for name, files in (("saom_probe_pkg-0.1-py3-none-any.whl", {"saom_probe_pkg/__init__.py": "VALUE = 7\n"}),
                        ("pytest-0.0-py3-none-any.whl", {"pytest/__init__.py": "raise ImportError\n"})):
        with zipfile.ZipFile(bundle / "wheels" / name, "w") as archive:
            for path, text in files.items():
                archive.writestr(path, text)
    assert gpu_check.install_bundle(bundle, tmp_path / "site") == ["saom_probe_pkg-0.1-py3-none-any.whl"]
    assert (tmp_path / "site" / "saom_probe_pkg" / "__init__.py").read_text() == "VALUE = 7\n"
    assert not (tmp_path / "site" / "pytest").exists(), "an installed package must not be shadowed"


# ---- on a real GPU (skipped with the reason on a CPU) ----------------------------------------------
@pytest.mark.cuda
def test_cuda_frame_prompts_with_masks_on_the_gpu():
    masks, class_ids = two_objects()
    prompts = build_frame_prompts(
        torch.randn(4, 8, 8, device="cuda"), masks.cuda(), class_ids, grid_points(8, 64, 64),
        Geometry((64, 64), 64, 16), "nearest_neighbour", 2, 32, np.random.default_rng(0),
    )
    assert prompts.mask_targets.is_cuda and sorted(prompts.class_ids[prompts.positive].tolist()) == [1, 3]


@pytest.mark.cuda
def test_cuda_training_resumes_and_checkpoints_load_on_the_cpu(rect_dataset, tmp_path):
    overrides = [
        "model.config=test", f"data.root={rect_dataset}", "train.frames_per_step=2", "train.device=cuda",
        "train.checkpoint_every=2", "train.val_max_frames=2", "model.head_input=mask_pool",
        "model.crop_classifier=true", "train.trainable=[all]", "train.cache_embeddings=false",
    ]
    straight = Trainer(load_train_config(None, [*overrides, "train.max_steps=4"]), tmp_path / "a", progress=False).fit()
    Trainer(load_train_config(None, [*overrides, "train.max_steps=2"]), tmp_path / "b", progress=False).fit()
    longer = load_train_config(None, [*overrides, "train.max_steps=4"])
    resumed = Trainer(longer, tmp_path / "b", resume=True, progress=False).fit()
    assert straight.steps == resumed.steps == 4
    cpu_model = load_model(resumed.last_checkpoint, device="cpu")
    assert cpu_model.device == torch.device("cpu")
    # CUDA kernels (atomic adds) are not bit-deterministic, so resumed weights are close, not equal
    a, b = load_model(straight.last_checkpoint).state_dict(), cpu_model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a), "resume on the GPU does not continue the run"


@pytest.mark.cuda
def test_cuda_generator_agrees_with_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the same fp32 arithmetic as the CPU
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    config = GeneratorConfig(
        points_per_side=8, pred_iou_thresh=-1.0, stability_score_thresh=0.0, min_mask_region_area=0
    )
    cpu = EverythingGenerator(tiny_model(crop_classifier=False), config).generate(frame)
    gpu = EverythingGenerator(tiny_model(crop_classifier=False).cuda(), config).generate(frame)
    stack = lambda seg: np.stack([i.mask for i in seg.instances]) if seg.instances else np.zeros((0, 48, 64), bool)  # noqa: E731
    found = agreement(stack(cpu), stack(gpu))
    assert len(cpu.instances) > 0 and found.mean_matched_iou >= 0.9


@pytest.mark.cuda
def test_cuda_onnx_export_from_a_gpu_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from saom_core.infer.export_onnx import export_onnx

    path = save_checkpoint(tmp_path / "m.pt", tiny_model(crop_classifier=False))
    paths = export_onnx(path, tmp_path / "onnx", device="cuda")
    model = load_model(path, device="cuda")
    image = torch.randn(1, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        expected = model.encode(image.cuda()).cpu().numpy()
    session = ort.InferenceSession(str(paths["encoder"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": image.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max()


@pytest.mark.cuda
def test_cuda_every_process_group_collective_works_on_its_device():
    """One-process group with the trainer's backend: CUDA and CPU tensors both reduce."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
    ctx = distributed.DistContext()
    try:
        ctx = distributed.init_distributed(resolve_device("cuda"))
        assert ctx.enabled and torch.cuda.current_device() == 0
        assert ctx.any_true(True) and not ctx.any_true(False)
        cpu = torch.ones(2)
        dist.all_reduce(cpu)
        assert ctx.gather_objects({"rank": 0}) == [{"rank": 0}]
    finally:
        distributed.shutdown_distributed(ctx)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)


def test_no_test_here_silently_needs_a_gpu():
    """Every test of this file that needs real CUDA carries the marker (so CPUs skip it with a reason)."""
    import inspect

    module = sys.modules[__name__]
    for name, func in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("test_cuda_"):
            assert any(m.name == "cuda" for m in getattr(func, "pytestmark", [])), name
