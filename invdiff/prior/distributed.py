"""Data-parallel training under torchrun: ``torchrun --nproc_per_node N -m invdiff train ...``.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; we join the process
group (NCCL on CUDA, Gloo on the CPU), each rank takes an equal shard of every global batch
and gradients are averaged across ranks, so N processes follow the same trajectory as one
process with the same global batch. Only rank 0 writes files.

``invdiff reconstruct`` under torchrun needs no process group: :meth:`DistInfo.deal` gives
each rank every N-th input file (round-robin, so each file is reconstructed once and, its seed
being the command's ``--seed``, exactly as one process would), on the GPU of its LOCAL_RANK.

Gradient averaging uses ``DistributedDataParallel`` (Li et al. 2020); the energy
parametrisation differentiates the network inside its forward pass (double backward), which
DDP's reducer does not support, so there gradients are averaged by one explicit all-reduce
after backward instead (the same arithmetic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from invdiff.errors import InputError

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, batch_size: int) -> slice:
        """This rank's slice of a global batch (equal shards; batch_size % world_size == 0)."""
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def deal(self, items: Sequence[T]) -> list[T]:
        """The items this rank handles: every ``world_size``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world_size])

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) when torchrun started several."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return device

    @classmethod
    def from_env(cls) -> "DistInfo":
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (rank 0 of 1 without them)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them).") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise InputError(f"RANK {rank} and WORLD_SIZE {world} do not describe a torchrun process.")
        return cls(rank, world, local)


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if WORLD_SIZE > 1; returns (info, this rank's device)."""
    info = DistInfo.from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=info.rank,
                                world_size=info.world_size)
    return info, device


def check_batch(batch_size: int, info: DistInfo) -> None:
    if batch_size % info.world_size:
        raise InputError(f"--batch-size {batch_size} is not divisible by the {info.world_size} processes.")


def wrap_model(module: nn.Module, info: DistInfo, device: torch.device, explicit_allreduce: bool) -> nn.Module:
    """DDP around ``module`` when distributed (unless gradients are averaged explicitly)."""
    if not info.enabled or explicit_allreduce:
        if info.enabled:  # same start on every rank
            for p in module.parameters():
                dist.broadcast(p.data, src=0)
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def average_gradients(module: nn.Module, info: DistInfo) -> None:
    """All-reduce (mean) every gradient in one flat buffer (used with explicit_allreduce)."""
    if not info.enabled:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def all_min(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The elementwise minimum of ``values`` over all ranks (``values`` itself in one process);
    every rank must call it at the same point."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
