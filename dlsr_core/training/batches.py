"""The training data side: feature statistics in bounded memory, and each epoch's seeded batches for this rank
(rows of the features with their timesteps and noise)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from dlsr_core.diffusion import ConfigError
from dlsr_core.mapped import gather_rows, release_pages
from dlsr_core.training.config import TrainConfig

_STATISTICS_CHUNK = 8192


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Per-dimension mean and unbiased std (D,) of features (N, D), and whether all are finite, in row chunks
    accumulated in float64 (the same numbers for an in-memory and a memory-mapped matrix)."""
    total = torch.zeros(features.shape[1], dtype=torch.float64)
    squares = torch.zeros(features.shape[1], dtype=torch.float64)
    finite = True
    for begin in range(0, features.shape[0], _STATISTICS_CHUNK):
        chunk = features[begin : begin + _STATISTICS_CHUNK].double()
        finite = finite and bool(torch.isfinite(chunk).all())
        total += chunk.sum(dim=0)
        squares += chunk.pow(2).sum(dim=0)
        release_pages(features)
    count = features.shape[0]
    mean = total / count
    variance = (squares - count * mean.pow(2)).clamp(min=0.0) / max(count - 1, 1)
    return mean.float(), variance.sqrt().float(), finite


def checked_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std (D,) of features (N, D); raises ConfigError when any value is NaN/Inf."""
    # Chunked float64 statistics: the same numbers for an in-memory and a memory-mapped matrix; one vector gives std 0.
    feature_mean, feature_std, finite = feature_statistics(features)
    if not finite:
        raise ConfigError("training features contain NaN/Inf; re-extract them")
    return feature_mean, feature_std


def steps_per_rank_epoch(count: int, world_size: int, train_config: TrainConfig) -> int:
    """Optimiser steps per epoch and process for `count` training vectors (the last partial batch counts unless
    drop_last)."""
    per_rank = max(count // world_size, 1)
    if train_config.drop_last:
        return per_rank // train_config.batch_size
    return math.ceil(per_rank / train_config.batch_size)


def checked_steps_per_epoch(count: int, world_size: int, train_config: TrainConfig) -> int:
    """steps_per_rank_epoch, refusing a run in which no process gets a whole batch under drop_last."""
    steps_per_epoch = steps_per_rank_epoch(count, world_size, train_config)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{max(count // world_size, 1)} feature vectors per process are fewer than one batch of "
            f"{train_config.batch_size}, and drop_last drops partial batches: lower the batch size or turn drop_last "
            "off"
        )
    return steps_per_epoch


def epoch_batches(
    features: Tensor,
    num_timesteps: int,
    train_config: TrainConfig,
    epoch: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """This rank's batches of `epoch`: (z0 (B, D) on `device`, timesteps (B,) in 1..T, noise (B, D)), both CPU.

    The permutation depends on the seed and epoch only; every rank takes an equal share of it so DDP ranks run the
    same number of steps; the noise depends on the seed, epoch and rank. Yields steps_per_rank_epoch batches.
    """
    per_rank = max(len(features) // world_size, 1)
    steps_per_epoch = steps_per_rank_epoch(len(features), world_size, train_config)
    epoch_generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + epoch)
    order = torch.randperm(len(features), generator=epoch_generator)
    if len(order) < per_rank * world_size:
        order = order.repeat(world_size)
    shard = order[rank * per_rank : (rank + 1) * per_rank]
    noise_generator = torch.Generator().manual_seed(train_config.seed * 7_919 + epoch * 104_729 + rank)
    for batch_indices in shard.split(train_config.batch_size)[:steps_per_epoch]:
        z0 = gather_rows(features, batch_indices).to(device, non_blocking=True)
        timesteps = torch.randint(1, num_timesteps + 1, (len(z0),), generator=noise_generator)
        noise = torch.randn(z0.shape, generator=noise_generator)
        yield z0, timesteps, noise
