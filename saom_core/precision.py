"""Which reduced number format makes a device faster: shared by inference (`half`) and training
(`train.amp: auto`).

On a GPU that is bf16 (fp16 where bf16 is unsupported). On a CPU, bf16 autocast is faster on some
CPUs with native bf16 (AVX512-BF16/AMX) and slower on others with the same flags: the casts and
the kernels' quality decide, not the flag. So a CPU without the flags gets fp32, and a CPU with
them is measured: a short timed probe of the tiny SAM config's own work (encoder forward and
backward for training, batched decoder prompts for inference) in fp32 and in bf16, cached per CPU
model, torch version and thread count under ~/.cache/saom (SAOM_CACHE_DIR overrides).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Literal

import torch

from saom_core.io import atomic_write_json

Workload = Literal["train", "infer"]
# bf16 must beat fp32 by this factor to be chosen: a tie is not worth the precision lost.
MIN_SPEEDUP = 1.05


def reduced_precision(device: torch.device, workload: Workload = "infer") -> torch.dtype | None:
    """The autocast dtype that makes `workload` faster on `device`, or None (stay in fp32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_pays(workload) else None
    return None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX; without them bf16 autocast is emulated (always slower). torch exposes
    the CPU feature checks only as private helpers, hence the getattr."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for the probe cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path() -> Path:
    return Path(os.environ.get("SAOM_CACHE_DIR", Path.home() / ".cache" / "saom")) / "cpu_bf16_probe.json"


def cpu_bf16_pays(workload: Workload) -> bool:
    """Whether bf16 autocast runs `workload` at least MIN_SPEEDUP times faster than fp32 on this CPU."""
    if not cpu_has_native_bf16():
        return False
    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {workload}"
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        fp32, bf16 = probe_seconds(workload)
        cached[key] = {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16}
        try:
            atomic_write_json(path, cached, indent=1)
        except OSError:
            pass  # an unwritable cache only costs the probe again next time
    return cached[key]["speedup"] >= MIN_SPEEDUP


def probe_seconds(workload: Workload, repeats: int = 5) -> tuple[float, float]:
    """(fp32, bf16) seconds of the tiny config's work, a 2-frame encoder forward and backward (train)
    or one decoder call on 64 prompts (infer): best of `repeats`, the two formats alternating so
    that a busy machine slows both alike, after a warm-up of each."""
    from saom_core.model.architectures import get_config
    from saom_core.model.saom import build_model

    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    size = model.config.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        embedding = model.encode(images[:1])
    points = torch.rand(64, 1, 2) * size
    labels = torch.ones(64, 1, dtype=torch.int)

    def step() -> None:
        if workload == "train":
            model.zero_grad(set_to_none=True)
            model.encode(images).float().square().mean().backward()
        else:
            with torch.no_grad():
                model.decode(embedding, points, labels)

    def timed(dtype: torch.dtype | None) -> float:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            start = time.perf_counter()
            step()
            return time.perf_counter() - start

    formats = (None, torch.bfloat16)
    for dtype in formats:
        timed(dtype)
    best = [timed(dtype) for dtype in formats]
    for _ in range(repeats - 1):
        best = [min(b, timed(dtype)) for b, dtype in zip(best, formats, strict=True)]
    return best[0], best[1]
