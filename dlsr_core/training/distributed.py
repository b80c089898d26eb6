"""DDP helpers: the process's rank and device under torchrun, the wrapped model, and one loss for all ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel


def distributed_context() -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device). Under torchrun with several processes it initialises the process
    group once (NCCL on GPU, gloo on CPU) and binds each process to its own GPU, so it is safe to call repeatedly."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if torch.cuda.is_available():
        if world_size == 1:
            return rank, world_size, torch.device("cuda")
        return rank, world_size, torch.device("cuda", torch.cuda.current_device())
    return rank, world_size, torch.device("cpu")


def end_process_group() -> None:
    """Destroy the process group, if this process initialised one (a no-op otherwise).

    Called before the process exits, on success and on error alike: left to interpreter shutdown, gloo's worker threads
    can outlive Python's teardown and abort the process (SIGABRT, "terminate called without an active exception")
    after its result or its `error:` line was already printed, turning exit code 0 or 2 into -6.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_ranks(model: torch.nn.Module, world_size: int, device: torch.device) -> torch.nn.Module:
    """The module the optimisation steps call: `model` itself, or a DistributedDataParallel wrapper of it."""
    if world_size > 1:
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def mean_over_ranks(loss: Tensor, world_size: int) -> float:
    """The loss averaged over all processes (every rank then takes the same decision)."""
    if world_size > 1:
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world_size
    return float(loss)


def wait_for_all_ranks(world_size: int) -> None:
    """Return once every process has reached this point (a no-op on one process)."""
    if world_size > 1:
        dist.barrier()
