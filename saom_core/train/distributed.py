"""torch.distributed set-up for `torchrun` (DDP); a plain single process when not launched by it.

The process group has a backend for each kind of tensor it may carry: NCCL for CUDA tensors
(gradients, `any_true` on a GPU) and gloo for CPU ones (`all_gather_object` of RNG states, any
CPU flag), so no collective depends on which device a caller's tensor happens to be on. Each rank
binds its own GPU (`cuda:$LOCAL_RANK`) before joining: otherwise NCCL and the object collectives
of every rank land on cuda:0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from saom_core.device import local_rank as env_local_rank

# Per-device backends (torch >= 2.0): CPU tensors over gloo, CUDA tensors over NCCL.
CPU_AND_CUDA_BACKEND = "cpu:gloo,cuda:nccl"
CPU_BACKEND = "gloo"


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where this rank's collective tensors live
    enabled: bool = False  # in a process group (launched by torchrun, even with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_true(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (e.g. a non-finite loss)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def max_value(self, value: float) -> float:
        """The largest of every rank's `value`, on every rank (e.g. the slowest rank's clock)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def process_group_backend(device_kind: str) -> str:
    """gloo alone on CPUs; gloo for CPU tensors plus NCCL for CUDA tensors on GPUs."""
    return CPU_AND_CUDA_BACKEND if device_kind == "cuda" else CPU_BACKEND


def launched_by_torchrun() -> bool:
    """torchrun (or any launcher of its env:// protocol) sets these for every process it starts;
    `torchrun --nproc_per_node 1` is a real one-process group, which is how one GPU checks DDP."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment. On a CUDA `device` (from
    `saom_core.device.resolve_device`: `cuda:$LOCAL_RANK` under torchrun) that GPU is made this
    process's current device before the group is joined."""
    if not launched_by_torchrun():
        return DistContext()
    world_size = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(device.type))
    return DistContext(
        rank=dist.get_rank(), local_rank=env_local_rank() or 0, world_size=world_size, device=device, enabled=True
    )


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
