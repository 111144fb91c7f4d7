"""Which reduced number format a device runs fast: shared by inference (`half`) and training (`train.amp`)."""
from __future__ import annotations

import torch


def reduced_precision(device: torch.device) -> torch.dtype:
    """The autocast dtype for `half` on a device: bf16 where it is supported (the only reduced type
    CPU autocast runs fast, on CPUs with AVX512-BF16 or AMX), else fp16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 autocast speeds a CPU up (elsewhere it is emulated).
    torch exposes the CPU feature checks only as private helpers, hence the getattr."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
