"""Single-process or DDP under ``torchrun``: one context object says which rank we are and where to compute.

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; then the
process group uses NCCL when each rank has a GPU and gloo on CPU. Without those
variables training runs in one process and every collective is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medcam.errors import UserError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """CUDA when present (never required); ``preference`` "cpu" or "cuda" forces one."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(preference: str = "auto") -> Context:
    """Join the process group if started by torchrun, else a one-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Context(rank, world_size, local_rank, device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(value: float, ctx: Context) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def gather_floats(values: list[float], ctx: Context) -> list[list[float]]:
    """Every rank's ``values`` (same length on all ranks), in rank order."""
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if not ctx.distributed:
        return [t.tolist()]
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


def weight_fingerprint(model: torch.nn.Module) -> list[float]:
    """Two checksums of all parameters (plain and position-weighted), to compare replicas."""
    total, weighted = 0.0, 0.0
    for i, p in enumerate(model.parameters()):
        data = p.detach().double().flatten()
        position = torch.arange(1, data.numel() + 1, dtype=torch.float64, device=data.device)
        total += float(data.sum())
        weighted += float((data * position).sum()) * (i + 1)
    return [total, weighted]
