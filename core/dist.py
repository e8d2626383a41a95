"""Distributed training under `torchrun`: which process this is, and joining or leaving the group.

Owns: `Dist` (rank, world size, local rank), `init_distributed` (nccl on GPU, gloo on CPU,
only when torchrun set RANK/WORLD_SIZE), a barrier that is a no-op in one process, and the
ordered tear-down. Does not own: DistributedDataParallel itself (`core.train` wraps the model).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def init_distributed(device: str) -> Dist:
    """Under torchrun (RANK/WORLD_SIZE set) join the process group: nccl on GPU, gloo on CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    use_cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    return d


def teardown(d: Dist) -> None:
    """Leave the group once every rank is done. The caller drops its DDP model first: destroying
    the group under a live DDP reducer can abort the process at exit ("terminate called without
    an active exception")."""
    if not d.enabled:
        return
    import torch.distributed as dist

    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
