"""torchrun support shared by training and batch upscaling: rank, world, process group, gathering."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """What torchrun put in the environment (a plain run is rank 0 of 1)."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the torchrun group once: NCCL on CUDA, gloo otherwise."""
    if env.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank, world_size=env.world_size)


def rank_device(env: DistEnv, device: torch.device) -> torch.device:
    """One device per rank: cuda:LOCAL_RANK when running on CUDA."""
    if device.type == "cuda" and env.enabled:
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return device


def gather_objects(obj: Any, env: DistEnv) -> List[Any]:
    """Every rank's `obj`, in rank order (just [obj] without torchrun)."""
    if not (env.enabled and dist.is_initialized()):
        return [obj]
    out: List[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
