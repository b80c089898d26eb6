"""Training an LFDN on cached feature vectors, on one device or with DDP under `torchrun`.

x0-parameterization: the model sees z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps with t ~ U{1..T} and is trained
with the mean squared error to z0. Checkpoints hold the EMA weights; `resume.pt` holds everything needed to continue.
The features may be a memory-mapped tensor (cache.cached_features(..., memory_map=True)): statistics are taken in
chunks whose pages are released, and batches are read from the file (mapped.gather_rows), so a set larger than RAM
trains with bounded resident memory.
"""

from __future__ import annotations

import copy
import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from dlsr_core.atomic import atomic_write_bytes
from dlsr_core.checkpoint import FIRST_NAME, LAST_NAME, CheckpointError, CheckpointInfo, save_checkpoint
from dlsr_core.diffusion import LFDN, ConfigError, LFDNConfig, NoiseSchedule
from dlsr_core.mapped import gather_rows, release_pages
from dlsr_core.presets import DEFAULT_SCORING, ScoringOptions

RESUME_NAME = "resume.pt"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left in place."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. `checkpoint_every` is in epochs; epoch 1 and the last epoch are always saved.

    amp: fp16 autocast with a gradient scaler on CUDA (ignored elsewhere); drop_last: skip each epoch's last partial
    batch (both as in the authors' released code).
    """

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    checkpoint_every: int = 1
    seed: int = 0
    half_precision_checkpoints: bool = False
    amp: bool = False
    drop_last: bool = False


@dataclass(frozen=True)
class Provenance:
    """How the training features were made (backbone, input, presets.FeatureOptions fields); stored in every
    checkpoint with the preset's name."""

    backbone: str
    weights: str
    input_size: int
    stage_dims: tuple[int, ...]
    dataset: str
    preset: str = "paper"
    pooling: str = "gap"
    std_eps: float = 1e-6
    resize: str = "model"
    normalization: str = "model"
    same_padding: str = "dynamic"


@dataclass(frozen=True)
class EpochReport:
    """Progress after one finished epoch."""

    epoch: int
    epochs: int
    loss: float
    checkpoint_saved: bool


@dataclass(frozen=True)
class TrainResult:
    """Where the run stands when `train` returns."""

    epochs_done: int
    last_loss: float
    stopped_early: bool
    run_dir: Path


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


def _ema_update(ema_model: LFDN, model: LFDN, decay: float) -> None:
    with torch.no_grad():
        for ema_param, param in zip(ema_model.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param, 1.0 - decay)


# Rows per chunk when a pass over all features is needed (statistics, finiteness): bounded memory for mapped features.
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


def _validate(features: Tensor, model_config: LFDNConfig, train_config: TrainConfig, provenance: Provenance) -> None:
    if features.ndim != 2 or features.shape[0] == 0:
        raise ConfigError(f"training features must be a non-empty (N, D) matrix, got shape {tuple(features.shape)}")
    if features.shape[1] != model_config.feature_dim or sum(provenance.stage_dims) != model_config.feature_dim:
        raise ConfigError(
            f"feature size mismatch: features {features.shape[1]}-d, model {model_config.feature_dim}-d, "
            f"stages {provenance.stage_dims}"
        )
    if train_config.epochs < 1 or train_config.batch_size < 1 or train_config.checkpoint_every < 1:
        raise ConfigError(f"epochs, batch_size and checkpoint_every must be positive: {train_config}")
    if not 0.0 <= train_config.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1), got {train_config.ema_decay}")


def train(
    features: Tensor,
    run_dir: str | Path,
    model_config: LFDNConfig,
    train_config: TrainConfig,
    provenance: Provenance,
    resume: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    scoring: ScoringOptions = DEFAULT_SCORING,
) -> TrainResult:
    """Train on features (N, D) (in memory or memory-mapped) and write checkpoints to `run_dir`.

    `scoring` is recorded in the checkpoints as the scoring defaults the model is meant for.
    With `resume`, an existing `resume.pt` whose configs match continues from its epoch. `on_step(epoch, step,
    loss)` and `on_epoch(report)` report progress (rank 0 only); `should_stop()` is polled between steps and ends
    training after saving the current state. Raises TrainingDivergedError on a NaN/Inf loss.
    """
    _validate(features, model_config, train_config, provenance)
    run_dir = Path(run_dir)
    rank, world_size, device = distributed_context()
    torch.manual_seed(train_config.seed)

    model = LFDN(model_config).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    schedule = NoiseSchedule(model_config).to(device)
    start_epoch, global_step = 0, 0

    resume_path = run_dir / RESUME_NAME
    if resume and resume_path.exists():
        state = torch.load(resume_path, map_location=device, weights_only=True)
        saved_model, saved_train = LFDNConfig(**state["model_config"]), TrainConfig(**state["train_config"])
        if saved_model != model_config or saved_train.batch_size != train_config.batch_size:
            raise CheckpointError(
                f"{resume_path} was written with a different configuration ({saved_model}, batch "
                f"{saved_train.batch_size}); use another --out directory or pass --no-resume"
            )
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema_model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, global_step = state["epoch"], state["global_step"]

    trainable: torch.nn.Module = model
    if world_size > 1:
        trainable = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    features = features.float()
    feature_mean, feature_std, finite = feature_statistics(features)
    if not finite:
        raise ConfigError("training features contain NaN/Inf; re-extract them")
    info_base = dict(
        config=model_config,
        **{**asdict(provenance), "stage_dims": tuple(provenance.stage_dims)},
        train_settings={**asdict(train_config), "world_size": world_size},
        **asdict(scoring),
    )
    # Every rank takes an equal share of each epoch's permutation so DDP ranks run the same number of steps.
    per_rank = max(len(features) // world_size, 1)
    steps_per_epoch = steps_per_rank_epoch(len(features), world_size, train_config)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{per_rank} feature vectors per process are fewer than one batch of {train_config.batch_size}, and "
            "drop_last drops partial batches: lower the batch size or turn drop_last off"
        )
    use_amp = train_config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    last_loss, stopped, epochs_done = float("nan"), False, start_epoch

    for epoch in range(start_epoch + 1, train_config.epochs + 1):
        epoch_generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(features), generator=epoch_generator)
        if len(order) < per_rank * world_size:
            order = order.repeat(world_size)
        shard = order[rank * per_rank : (rank + 1) * per_rank]
        noise_generator = torch.Generator().manual_seed(train_config.seed * 7_919 + epoch * 104_729 + rank)
        model.train()
        running, counted = 0.0, 0
        for step, batch_indices in enumerate(shard.split(train_config.batch_size)[:steps_per_epoch]):
            z0 = gather_rows(features, batch_indices).to(device, non_blocking=True)
            timesteps = torch.randint(1, model_config.num_timesteps + 1, (len(z0),), generator=noise_generator)
            noise = torch.randn(z0.shape, generator=noise_generator)
            z_t = schedule.q_sample(z0, timesteps.to(device), noise.to(device))
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                prediction = trainable(z_t, timesteps.to(device))
            loss = torch.nn.functional.mse_loss(prediction.float(), z0)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch}, step {step + 1}; training stopped. The last good "
                    f"checkpoint is kept in {run_dir}. Lower --lr or check the features for extreme values."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            # Warm-up keeps the early EMA (used by LR) from being dominated by the untrained initial weights.
            _ema_update(ema_model, model, min(train_config.ema_decay, (1 + global_step) / (10 + global_step)))
            running, counted = running + loss.item(), counted + 1
            if on_step is not None and rank == 0:
                on_step(epoch, step + 1, loss.item())
            if should_stop is not None and should_stop():
                stopped = True
                break
        if stopped and counted < steps_per_epoch:
            break  # an unfinished epoch is dropped; the previous checkpoint stays the newest
        last_loss, epochs_done = running / max(counted, 1), epoch
        stopped = stopped or (should_stop is not None and should_stop())
        is_checkpoint = (
            epoch == 1 or epoch % train_config.checkpoint_every == 0 or epoch == train_config.epochs or stopped
        )
        if is_checkpoint and rank == 0:
            info = CheckpointInfo(epoch=epoch, **info_base)
            half = train_config.half_precision_checkpoints
            if epoch == 1 or not (run_dir / FIRST_NAME).exists():
                save_checkpoint(run_dir / FIRST_NAME, ema_model, info, feature_mean, feature_std, half)
            save_checkpoint(run_dir / LAST_NAME, ema_model, info, feature_mean, feature_std, half)
            _save_resume_state(resume_path, model, ema_model, optimizer, model_config, train_config, epoch, global_step)
        if on_epoch is not None and rank == 0:
            on_epoch(EpochReport(epoch, train_config.epochs, last_loss, is_checkpoint))
        if stopped:
            stopped = epoch < train_config.epochs
            break
    if world_size > 1:
        dist.barrier()
    return TrainResult(epochs_done=epochs_done, last_loss=last_loss, stopped_early=stopped, run_dir=run_dir)


def steps_per_rank_epoch(count: int, world_size: int, train_config: TrainConfig) -> int:
    """Optimiser steps per epoch and process for `count` training vectors (the last partial batch counts unless
    drop_last)."""
    per_rank = max(count // world_size, 1)
    if train_config.drop_last:
        return per_rank // train_config.batch_size
    return math.ceil(per_rank / train_config.batch_size)


def _save_resume_state(
    path: Path,
    model: LFDN,
    ema_model: LFDN,
    optimizer: torch.optim.Optimizer,
    model_config: LFDNConfig,
    train_config: TrainConfig,
    epoch: int,
    global_step: int,
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "ema_model": ema_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "model_config": asdict(model_config),
            "train_config": asdict(train_config),
            "epoch": epoch,
            "global_step": global_step,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())
