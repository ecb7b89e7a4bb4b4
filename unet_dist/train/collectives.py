"""Every ``torch.distributed`` collective of the training loop and its metrics goes through this module.

GPU runs start their process group with a backend per device type (:data:`GPU_BACKEND`,
``"cpu:gloo,cuda:nccl"``): NCCL carries the gradients of CUDA tensors, and gloo the small CPU tensors the loop
reduces (batch flags, the slowest clock, confusion matrices) and object collectives. A process group made with
``"nccl"`` alone has no backend for CPU tensors ("No backend type associated with device type cpu"), so any
collective outside this module is refused by a test (``tests/train/test_gpu_backend.py``) rather than found on a
cluster. Outside a process group (one worker) every function is the identity.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

GPU_BACKEND = "cpu:gloo,cuda:nccl"
CPU_BACKEND = "gloo"
Op = Literal["sum", "min", "max"]


def backend(use_gpu: bool) -> str:
    """The process-group backend spec a run starts with (``TorchConfig(backend=...)``)."""
    return GPU_BACKEND if use_gpu else CPU_BACKEND


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(t: torch.Tensor, op: Op = "sum") -> torch.Tensor:
    """Reduce ``t`` (CPU or CUDA) over every rank in place, and return it."""
    if active():
        import torch.distributed as dist

        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``t`` on every rank (in place)."""
    if active():
        import torch.distributed as dist

        dist.broadcast(t, src=src)
    return t


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``value`` on every rank."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's picklable ``value``, in rank order."""
    if not active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def group_backend() -> str | None:
    """The running process group's backend spec (recorded in each worker-group start event), None without one."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over every rank in place (the ``reduce`` of the loop's metrics and validation)."""
    return all_reduce(t, "sum")
