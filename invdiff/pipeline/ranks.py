"""Batch reconstruction under torchrun: ``torchrun --nproc_per_node N -m invdiff reconstruct
FILES... --out-dir DIR`` shares the input files out across the N processes.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in every process it starts. Files are dealt
round-robin in the order given (rank r takes files r, r + N, r + 2N, ...), so every file is
reconstructed exactly once, by a process that needs no communication with the others; on CUDA
each process uses the GPU of its LOCAL_RANK. A file's result does not depend on which rank
made it (its seed is the command's ``--seed``), so N processes write what one would have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

from invdiff.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class RankShare:
    """This process's place among the torchrun processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "RankShare":
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them).") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise InputError(f"RANK {rank} and WORLD_SIZE {world} do not describe a torchrun process.")
        return cls(rank, world, local)

    def mine(self, items: Sequence[T]) -> list[T]:
        """The items this rank handles: every ``world_size``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world_size])

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) when torchrun started several."""
        if self.world_size > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return device
