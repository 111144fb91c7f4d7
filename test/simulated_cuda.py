"""A stand-in for a CUDA device on a CPU-only machine, for tests of device handling.

Inside `SimulatedCuda()`, tensors created on or moved to "cuda" compute on the CPU as instances of
`FakeCudaTensor`, which reports `device == cuda:0`. Every torch call is checked as CUDA would: an
op mixing a cuda tensor with a CPU tensor of one or more dimensions raises, a CPU tensor indexed
by cuda indices raises, `.numpy()` of a cuda tensor raises. What it cannot show: anything inside
CUDA kernels (speed, memory, NCCL, TF32 numerics) and ops torch runs in C++ without Python.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that says it lives on cuda:0 (outputs of torch ops on it stay this type)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func == torch.Tensor.device.__get__:  # a fresh method-wrapper on each access: compare, not `is`
            return CUDA
        return super().__torch_function__(func, types, args, kwargs or {})


def on_cuda(t: object) -> bool:
    return isinstance(t, FakeCudaTensor)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor) if on_cuda(t) else t


def _cuda(t: object) -> object:
    return t.as_subclass(FakeCudaTensor) if isinstance(t, torch.Tensor) and not on_cuda(t) else t


def _is_cuda(device: object) -> bool:
    if isinstance(device, torch.Tensor):
        return on_cuda(device)
    if not isinstance(device, (torch.device, str)):
        return False
    try:
        return torch.device(device).type == "cuda"
    except RuntimeError:
        return False


def _move_target(func, args, kwargs) -> object:
    """Where a .to/.cuda/.cpu call sends its tensor (None: a dtype-only .to)."""
    if func is torch.Tensor.cuda:
        return CUDA
    if func is torch.Tensor.cpu:
        return "cpu"
    if "device" in kwargs:
        return kwargs["device"]
    for a in args[1:]:
        if isinstance(a, (torch.device, str, torch.Tensor)):
            return a
    return None


# Calls that may take tensors of different devices: copies, attribute access, module conversion checks.
CROSS_DEVICE = {"copy_", "__get__", "__set__", "_has_compatible_shallow_copy_type", "__deepcopy__", "__reduce_ex__"}
INDEXING = (torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put)


class SimulatedCuda(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == torch.Tensor.device.__get__:  # a fresh method-wrapper on each access: compare, not `is`
            return CUDA if on_cuda(args[0]) else torch.device("cpu")
        if func == torch.Tensor.grad.__get__:  # autograd (C++) makes plain grads; a cuda leaf's grad is cuda
            grad = func(*args, **kwargs)
            return _cuda(grad) if on_cuda(args[0]) and grad is not None else grad
        if func is torch.Tensor.numpy and on_cuda(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy (simulated CUDA)")
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            src, target = args[0], _move_target(func, args, kwargs)
            out = _cpu(src)
            if func is torch.Tensor.to:
                rest: list = []
                for a in args[1:]:
                    rest += (
                        ["cpu", a.dtype]
                        if isinstance(a, torch.Tensor)
                        else ["cpu" if isinstance(a, (torch.device, str)) else a]
                    )
                kw = {k: ("cpu" if k == "device" else v) for k, v in kwargs.items()}
                out = torch.Tensor.to(out, *rest, **kw)
            if target is None or _is_cuda(target) == on_cuda(src):
                return _cuda(out) if on_cuda(src) else out
            moved = out.clone() if out.data_ptr() == src.data_ptr() else out  # a move between devices copies
            return _cuda(moved) if _is_cuda(target) else moved
        if _is_cuda(kwargs.get("device")):  # a factory: torch.zeros(..., device="cuda")
            kwargs["device"] = "cpu"
            return tree_map(_cuda, func(*args, **kwargs))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in INDEXING:
            indices = [t for t in tree_flatten(args[1])[0] if isinstance(t, torch.Tensor)]
            if not on_cuda(args[0]) and any(on_cuda(t) for t in indices):
                raise RuntimeError(
                    "indices should be either on cpu or on the same device as the indexed tensor (cpu) (simulated CUDA)"
                )
        elif getattr(func, "__name__", "") not in CROSS_DEVICE and any(on_cuda(t) for t in tensors):
            cpu = [tuple(t.shape) for t in tensors if not on_cuda(t) and t.dim() > 0]
            if cpu:
                name = getattr(func, "__name__", str(func))
                raise RuntimeError(f"Expected all tensors to be on the same device, but found cuda:0 and cpu "
                                   f"(simulated CUDA: {name} with CPU tensors of shapes {cpu})")
        return func(*args, **kwargs)


def model_to_simulated_cuda(model: nn.Module) -> nn.Module:
    """Every parameter and buffer becomes a FakeCudaTensor (the model 'moves' to cuda:0)."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = nn.Parameter(_cuda(param.detach()), requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = _cuda(buffer)
    return model
