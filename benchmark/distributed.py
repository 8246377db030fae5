"""torch.distributed as launched by ``torchrun``: who am I, which patterns are mine, gather on rank 0.

``torchrun --nproc-per-node N -m benchmark run ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; the command line
then initializes the process group (gloo on CPU, nccl on GPUs). Patterns are sharded round-robin (pattern k runs
on rank k mod N), per-pattern results are gathered on rank 0, which alone writes result files. Without torchrun
everything runs in one process and these helpers are no-ops.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_from_env", "launched_by_torchrun", "ddp_wrap"]


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class DistContext:
    """Rank, world size and collectives; a single-process context when not distributed."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, backend: str | None = None):
        self.rank, self.world, self.local_rank, self.backend = rank, world, local_rank, backend

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """The pattern indices of this rank (round-robin)."""
        return list(range(self.rank, n, self.world))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_objects(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> tuple[DistContext, str]:
    """Initialize the process group from torchrun's environment; returns (context, device for this rank)."""
    if not launched_by_torchrun():
        return DistContext(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, backend), device


def ddp_wrap(dist_ctx: DistContext, device):
    """A function wrapping a model in DistributedDataParallel under torchrun (None in a single process)."""
    if not dist_ctx.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    def wrap(m):
        return DDP(m, device_ids=[device.index] if device.type == "cuda" else None)

    return wrap
