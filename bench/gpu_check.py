"""One check of the whole GPU path: tests, training (single, torchrun/NCCL, resume), benches, ONNX.

Made for a GPU machine with no network (the missing wheels and a small PyBullet dataset come from
`make gpu-bundle`), and run on a CPU with `--device cpu --quick` (tiny configs) by `make test`, so
it cannot rot unnoticed. Each step prints its figures as it goes; all of them land in
`results.json` and `results.md` under `--out` (default `$OUT`, else runs/gpu_check), rewritten after
every step so a run cut short still leaves what it measured. Exit status 1 names the failed steps;
the last line is `gpu_check: ok` when every step passed.

    bash bench/gpu_check.sh --bundle gpu_bundle                 # on the GPU machine
    bash bench/gpu_check.sh --device cpu --quick                # CPU, tiny configs (CI)
    bash bench/gpu_check.sh --bundle gpu_bundle --sam-checkpoint sam_vit_b_01ec64.pth
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 420  # one stuck step must not eat the machine's whole time slot


class StepFailed(Exception):
    """A check inside a step did not hold; the message says which figure and why."""


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    log: str | None = None


@dataclass
class Plan:
    """What the steps run: the paper's vit_b on the GPU; with `--quick` the `test` config (the
    smallest SAM shapes), so the CPU form stays well inside CI time on a loaded 2-core machine."""

    device: str
    quick: bool
    model_config: str
    train_steps: int
    extra_steps: int  # torchrun steps, and steps added by --resume
    frames_per_step: int
    throughput_args: list[str]
    everything_args: list[str]

    @staticmethod
    def make(device: str, quick: bool) -> Plan:
        if quick:
            return Plan(
                device, True, "test", train_steps=6, extra_steps=2, frames_per_step=2,
                throughput_args=["--config", "test", "--naive-masks", "6", "--steps", "2", "--frames-per-step", "2"],
                everything_args=["--random-model", "test", "--frames", "1", "--points-per-side", "4", "--no-compile"],
            )
        return Plan(
            device, False, "vit_b", train_steps=24, extra_steps=6, frames_per_step=8,
            throughput_args=["--config", "vit_b", "--naive-masks", "16", "--steps", "6"],
            everything_args=["--random-model", "vit_b", "--frames", "2", "--points-per-side", "32"],
        )


class Runner:
    def __init__(self, out: Path, env: dict[str, str], header: dict[str, Any]) -> None:
        self.out = out
        self.env = env
        self.header = header
        self.steps: list[Step] = []

    def run(self, name: str, body: Callable[[], dict[str, Any]], needs: tuple[str, ...] = ()) -> bool:
        failed_needs = [n for n in needs if not any(s.name == n and s.ok for s in self.steps)]
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        if failed_needs:
            step = Step(name, False, 0.0, error=f"skipped: needs {', '.join(failed_needs)}")
        else:
            try:
                figures = body()
                step = Step(name, True, time.perf_counter() - start, figures)
            except Exception as exc:  # every failure is recorded; the remaining steps still run
                log = exc.log if isinstance(exc, CommandFailed) else traceback.format_exc()
                step = Step(name, False, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}", log=log)
        self.steps.append(step)
        for key, value in step.figures.items():
            if key != "log":
                print(f"  {key}: {value}", flush=True)
        print(f"  -> {'ok' if step.ok else 'FAILED: ' + str(step.error)} ({step.seconds:.1f} s)", flush=True)
        self.write()
        return step.ok

    def command(self, args: list[str], timeout: float = SUBPROCESS_TIMEOUT_S) -> str:
        """Run a command with the check's environment, echo its output, return it; raise on failure."""
        print("$ " + " ".join(args), flush=True)
        proc = subprocess.run(args, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
        print(proc.stdout, end="", flush=True)
        if proc.returncode != 0:
            program = Path(args[1] if args[0] == sys.executable else args[0]).name
            raise CommandFailed(f"{program} exited {proc.returncode}", proc.stdout)
        return proc.stdout

    def write(self) -> None:
        from saom_core.io import atomic_write_json, atomic_write_text

        self.out.mkdir(parents=True, exist_ok=True)
        data = {**self.header, "ok": all(s.ok for s in self.steps), "steps": [vars(s) for s in self.steps]}
        atomic_write_json(self.out / "results.json", data, indent=1)
        atomic_write_text(self.out / "results.md", markdown(data))


class CommandFailed(Exception):
    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log[-6000:]


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# GPU check ({'quick, ' if data['quick'] else ''}{data['device']})", ""]
    lines += [f"- {k}: {data[k]}" for k in ("machine", "torch", "python", "started", "commit", "unpacked_wheels")]
    lines += ["", "| step | result | s | figures |", "|---|---|---:|---|"]
    for s in data["steps"]:
        figures = "; ".join(f"{k} {v}" for k, v in s["figures"].items() if k != "log")
        result = "ok" if s["ok"] else "FAILED: " + str(s["error"])
        lines.append(f"| {s['name']} | {result} | {s['seconds']:.1f} | {figures} |")
    for s in data["steps"]:
        text = s["figures"].get("log") or s["log"]
        if text:
            lines += ["", f"## {s['name']}", "", "```", text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


# ---- the bundle ----------------------------------------------------------------------------------
def install_bundle(bundle: Path, site: Path) -> list[str]:
    """Unpack the bundle's wheels whose distribution is not installed yet into `site` (no pip, no
    network: a wheel is a zip of its files); what the machine already has is left alone."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu_check: {bundle}/wheels holds no wheels; run `make gpu-bundle` on a machine with network")
    if not (bundle / "data" / "annotations.json").exists():
        raise SystemExit(f"gpu_check: {bundle}/data holds no dataset; run `make gpu-bundle` again")
    unpacked = []
    for wheel in wheels:
        try:
            importlib.metadata.distribution(wheel.name.split("-")[0])
            continue
        except importlib.metadata.PackageNotFoundError:
            pass
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        unpacked.append(wheel.name)
    return unpacked


# ---- steps ---------------------------------------------------------------------------------------
def step_environment(plan: Plan) -> dict[str, Any]:
    import torch

    missing = [m for m in ("segment_anything", "pycocotools", "onnx", "onnxruntime", "cv2", "yaml", "tensorboard")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise StepFailed(f"not importable: {missing} (pass --bundle from `make gpu-bundle`)")
    figures: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if plan.device == "cuda":
        if not torch.cuda.is_available():
            raise StepFailed("--device cuda but torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(0)
        figures |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}
    tensorrt = importlib.util.find_spec("tensorrt")
    figures["tensorrt"] = "importable" if tensorrt else "not importable (TensorRT step skipped)"
    return figures


def step_cuda_tests(runner: Runner, plan: Plan) -> dict[str, Any]:
    output = runner.command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                             "-rs", "test/test_gpu_path.py"])
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|skipped|failed|error)", output)}
    if plan.device == "cuda" and (counts.get("skipped") or not counts.get("passed")):
        raise StepFailed(f"CUDA tests did not all run on the GPU: {counts}")
    return {"tests": counts}


def random_sam_checkpoint(config: str, path: Path) -> Path:
    """Random weights in the official SAM checkpoint layout (a bare state_dict): vit_b from
    segment_anything's own registry, the tiny config (no official release) from SAOM's builder."""
    import torch

    torch.manual_seed(0)
    if config in ("vit_b", "vit_l", "vit_h"):
        from segment_anything import sam_model_registry

        state = sam_model_registry[config](checkpoint=None).state_dict()
    else:
        from saom_core.model.architectures import get_config
        from saom_core.model.saom import build_model

        state = build_model(get_config(config), None).state_dict()
    torch.save(state, path)
    return path


def train_overrides(plan: Plan, data: Path, work: Path, checkpoint: Path, steps: int) -> list[str]:
    return [
        f"model.config={plan.model_config}", f"model.checkpoint={checkpoint}", f"data.root={data}",
        f"train.device={plan.device}", f"train.max_steps={steps}", f"train.frames_per_step={plan.frames_per_step}",
        f"train.cache_dir={work / 'cache'}", "train.validate_every_epochs=1000", "train.val_max_frames=4",
        f"train.checkpoint_every={max(1, plan.train_steps // 2)}", "train.log_every=1",
    ]


def step_train_single(plan: Plan, data: Path, work: Path, checkpoint: Path) -> dict[str, Any]:
    """In process, so the cache fill and the GPU's peak memory can be measured around `fit`."""
    import torch

    from saom_core.train.recipe import load_train_config
    from saom_core.train.trainer import Trainer

    overrides = train_overrides(plan, data, work, checkpoint, plan.train_steps)
    cfg = load_train_config(REPO / "config" / "train_vit_b.yaml", overrides)
    trainer = Trainer(cfg, work / "run_single", progress=False)
    places = {str(p.device) for p in trainer.model.parameters()}
    if places != {str(trainer.device)} or trainer.device.type != plan.device:
        raise StepFailed(
            f"asked for {plan.device}, the trainer runs on {trainer.device} with weights on {sorted(places)}"
        )
    if trainer.cache is None:
        raise StepFailed("the vit_b recipe should train from the embedding cache (frozen encoder)")
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(trainer.device)
    start = time.perf_counter()
    for frame in trainer.frames:
        trainer.cache.put(frame.key, frame.image, trainer.device)
    sync(trainer.device)
    fill_s = time.perf_counter() - start
    result = trainer.fit()
    figures: dict[str, Any] = {
        "steps": result.steps, "masks_per_s": round(result.masks_per_second, 2),
        "cache_fill_frames_per_s": round(len(trainer.frames) / fill_s, 2), "cache_frames": len(trainer.frames),
        "amp": str(trainer.amp_dtype), "device": str(trainer.device),
    }
    if plan.device == "cuda":
        figures["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if result.steps != plan.train_steps:
        raise StepFailed(f"trained {result.steps} steps, asked for {plan.train_steps}")
    return figures


def trained_steps(output: str) -> int:
    found = re.findall(r"trained (\d+) steps \(([\d.]+) masks/s\)", output)
    if not found:
        raise StepFailed("the trainer printed no 'trained N steps' line")
    return int(found[-1][0])


def step_train_torchrun(runner: Runner, plan: Plan, data: Path, work: Path, checkpoint: Path) -> dict[str, Any]:
    """`torchrun --nproc_per_node 1`: a real process group (NCCL for CUDA tensors on a GPU) and DDP."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "saom_core.cli", "train", "--quiet", "--config", str(REPO / "config" / "train_vit_b.yaml"),
            "--out", str(work / "run_torchrun"), *train_overrides(plan, data, work, checkpoint, plan.extra_steps)]
    output = runner.command(args)
    steps = trained_steps(output)
    if steps != plan.extra_steps:
        raise StepFailed(f"torchrun trained {steps} steps, asked for {plan.extra_steps}")
    return {"steps": steps, "masks_per_s": float(re.findall(r"\(([\d.]+) masks/s\)", output)[-1])}


def step_train_resume(runner: Runner, plan: Plan, work: Path) -> dict[str, Any]:
    total = plan.train_steps + plan.extra_steps
    output = runner.command([
        sys.executable, "-m", "saom_core.cli", "train", "--quiet", "--out", str(work / "run_single"),
        "--resume", f"train.max_steps={total}",
    ])
    steps = trained_steps(output)
    if steps != total:
        raise StepFailed(f"resumed run ended at step {steps}, expected {total}")
    return {"steps": steps, "masks_per_s": float(re.findall(r"\(([\d.]+) masks/s\)", output)[-1])}


def step_bench(runner: Runner, script: str, args: list[str], device: str) -> dict[str, Any]:
    output = runner.command([sys.executable, f"bench/{script}", *args, "--device", device])
    speedup = re.findall(r"^speedup: ([\d.]+)", output, re.M)
    if not speedup:
        raise StepFailed(f"{script} printed no 'speedup:' line")
    return {"speedup": float(speedup[-1]), "log": output}


def step_onnx(plan: Plan, work: Path) -> dict[str, Any]:
    """Export the trained checkpoint from a model on the device; the onnxruntime backend (CPU provider)
    must agree with PyTorch."""
    import onnxruntime as ort
    import torch

    from saom_core.infer.export_onnx import decoder_output_names, export_onnx
    from saom_core.infer.onnx_runtime import OnnxRuntime
    from saom_core.model.checkpoint import load_model

    checkpoint = work / "run_single" / "checkpoints" / "last.pt"
    start = time.perf_counter()
    paths = export_onnx(checkpoint, work / "onnx", device=plan.device)
    export_s = time.perf_counter() - start
    model = load_model(checkpoint, device=plan.device)
    size = model.config.image_size
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, size, size, generator=generator)
    points = torch.rand(4, 2, generator=generator) * size
    with torch.no_grad():
        embedding = model.encode(image.to(model.device))
        labels = torch.ones(4, 1, device=model.device)
        out = model.decode(embedding, points[:, None].to(model.device), labels)
    runtime = OnnxRuntime(paths["metadata"].parent, "cpu")
    onnx_embedding = runtime.encode(image).numpy()
    onnx = runtime.decode_points(embedding.cpu(), points)
    torch_out = [out.low_res_logits, out.iou_pred] + ([out.class_logits] if out.class_logits is not None else [])
    onnx_out = [onnx.low_res_logits, onnx.iou_pred] + ([onnx.class_logits] if onnx.class_logits is not None else [])
    errors = {"encoder": relative_error(onnx_embedding, embedding.cpu().numpy())}
    for name, ours, theirs in zip(decoder_output_names(model), torch_out, onnx_out, strict=True):
        errors[name] = relative_error(theirs.numpy(), ours.cpu().numpy())
    # A GPU runs convolutions in TF32 by default: agreement to ~1e-3 of the output's range, not 1e-6.
    limit = 1e-2 if plan.device == "cuda" else 1e-4
    bad = {k: v for k, v in errors.items() if not v <= limit}
    if bad:
        raise StepFailed(f"onnxruntime disagrees with PyTorch beyond {limit} (max abs error / output range): {bad}")
    return {"export_s": round(export_s, 1), "relative_error": {k: float(f"{v:.2e}") for k, v in errors.items()},
            "onnxruntime_providers": ort.get_available_providers(),
            "tensorrt": "importable" if importlib.util.find_spec("tensorrt") else "not importable"}


def step_onnx_backend(plan: Plan, work: Path) -> dict[str, Any]:
    """Everything of interest on 640x480 frames with the onnxruntime backend, per execution provider
    this onnxruntime has (TensorRT and CUDA where installed, the CPU always): median ms per frame."""
    import numpy as np
    import onnxruntime as ort

    from saom_core.infer.onnx_runtime import PROVIDERS
    from saom_core.infer.segmenter import load_segmenter

    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    figures: dict[str, Any] = {}
    for choice, name in PROVIDERS.items():
        if name not in ort.get_available_providers():
            figures[choice] = "not installed"
            continue
        segmenter = load_segmenter(work / "onnx", backend="onnxruntime", onnx_provider=choice, device=plan.device,
                                   points_per_side=16 if plan.quick else 32)
        segmenter.segment(frame)  # TensorRT builds (or loads) its engines here
        times = []
        for _ in range(3 if plan.quick else 10):
            start = time.perf_counter()
            segmenter.segment(frame)
            times.append(time.perf_counter() - start)
        figures[choice] = f"{1000 * sorted(times)[len(times) // 2]:.1f} ms/frame"
        segmenter.close()
    return figures


def relative_error(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-6))


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def source_revision() -> str:
    """The commit checked (and whether the tree differs from it); 'unknown' without git or .git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not commit:
            return "unknown"
        return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- main ----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny configs and few steps (the CPU form make test runs)")
    parser.add_argument("--bundle", type=Path, default=None, help="folder from `make gpu-bundle`: wheels/ and data/")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset (default: the bundle's, else collect 4 PyBullet scenes)")
    parser.add_argument("--sam-checkpoint", type=Path, default=None,
                        help="official SAM checkpoint (default: random weights in its layout)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "gpu_check"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="saom-gpu-check-") as tmp:
        return check(args, Path(tmp))


def check(args: argparse.Namespace, work: Path) -> int:
    env = dict(os.environ)
    paths = [str(REPO)]
    wheels: list[str] = []
    if args.bundle is not None:
        wheels = install_bundle(args.bundle, work / "site")
        paths.append(str(work / "site"))
    sys.path[:0] = paths
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))

    import torch

    plan = Plan.make(args.device, args.quick)
    commit = source_revision()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if args.device == "cuda" and torch.cuda.is_available():
        machine = f"{torch.cuda.get_device_name(0)}; {machine}"
    header = {"device": args.device, "quick": args.quick, "machine": machine, "torch": torch.__version__,
              "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "commit": commit, "unpacked_wheels": wheels}
    runner = Runner(args.out, env, header)
    print(f"gpu_check: {header}", flush=True)

    runner.run("environment", lambda: step_environment(plan))
    runner.run("cuda tests", lambda: step_cuda_tests(runner, plan))
    data = args.data or (args.bundle / "data" if args.bundle is not None else None)
    if data is None:
        from saom_core.data.collect import collect_dataset

        data = work / "data"
        collect_dataset("pybullet", scenes=4, out=data, seed=0, progress=False)
    checkpoint = args.sam_checkpoint or random_sam_checkpoint(
        plan.model_config, work / f"sam_{plan.model_config}_random.pth"
    )
    runner.run("train: single process", lambda: step_train_single(plan, data, work, checkpoint))
    runner.run("train: torchrun --nproc_per_node 1", lambda: step_train_torchrun(runner, plan, data, work, checkpoint))
    runner.run("train: --resume", lambda: step_train_resume(runner, plan, work), needs=("train: single process",))
    throughput_args = [*plan.throughput_args, "--data", str(data)]
    runner.run("bench: train_throughput",
               lambda: step_bench(runner, "train_throughput.py", throughput_args, args.device))
    runner.run("bench: everything_mode",
               lambda: step_bench(runner, "everything_mode.py", plan.everything_args, args.device))
    runner.run("onnx export", lambda: step_onnx(plan, work), needs=("train: single process",))
    runner.run("onnxruntime backend", lambda: step_onnx_backend(plan, work), needs=("onnx export",))

    failed = [s.name for s in runner.steps if not s.ok]
    print(f"\nresults: {args.out / 'results.md'}")
    if failed:
        print(f"gpu_check: FAILED: {', '.join(failed)}")
        return 1
    print("gpu_check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
