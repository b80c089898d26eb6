"""Training an LFDN on cached feature vectors, on one device or with DDP under `torchrun`.

x0-parameterization: the model sees z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps with t ~ U{1..T} and is trained
with the mean squared error to z0. Checkpoints hold the EMA weights; `resume.pt` holds everything needed to continue.

Faults: a resume file that cannot be trusted (truncated, empty, wrong keys, pickled code) is refused with
CheckpointError before anything is written. Divergence stops training with TrainingDivergedError and keeps the last
good checkpoint: the loss is NaN/Inf, or the mean loss of the last DIVERGENCE_WINDOW steps exceeds DIVERGENCE_FACTOR
times the loss of an untrained model (which predicts z0 = 0, the zero-initialised output layer's answer, so that loss
is mean(z0^2) of the training features and is known before the first step, also when a run is resumed).

The features may be a memory-mapped tensor (cache.cached_features(..., memory_map=True)): statistics are taken in
chunks whose pages are released, and batches are read from the file (mapped.gather_rows), so a set larger than RAM
trains with bounded resident memory.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from dlsr_core.atomic import atomic_write_bytes
from dlsr_core.checkpoint import (
    FIRST_NAME,
    LAST_NAME,
    CheckpointError,
    CheckpointInfo,
    read_checkpoint_info,
    save_checkpoint,
)
from dlsr_core.diffusion import LFDN, ConfigError, LFDNConfig, NoiseSchedule
from dlsr_core.mapped import gather_rows, release_pages
from dlsr_core.presets import DEFAULT_SCORING, ScoringOptions
from dlsr_core.schema import SchemaError, from_json

RESUME_NAME = "resume.pt"
# Divergence rule (see the module docstring): mean loss over this many steps above this many times the untrained loss.
DIVERGENCE_WINDOW = 20
DIVERGENCE_FACTOR = 100.0
logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/Inf or far above an untrained model's; the last good checkpoint is left in place."""


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
    nothing_to_do: bool = False  # a resumed run had already trained the epochs asked for


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
    if not (math.isfinite(train_config.learning_rate) and train_config.learning_rate > 0):
        raise ConfigError(f"learning_rate must be a finite number > 0, got {train_config.learning_rate}")
    if not (math.isfinite(train_config.weight_decay) and train_config.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {train_config.weight_decay}")


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

    With `resume`, an existing `resume.pt` continues from its epoch: settings that only steer the rest of the run
    (epochs, learning rate, weight decay, EMA decay, checkpoint interval, half precision) take the new values (logged),
    the others (architecture, batch size, seed, features) must match or CheckpointError names them. A damaged
    resume file raises CheckpointError before anything is written; so does a `run_dir` that holds checkpoints but no
    resume file (pass resume=False to train over it). With resume=False training starts from scratch and each saved
    epoch replaces the old checkpoints. `on_step(epoch, step, loss)` and `on_epoch(report)` report progress (rank 0
    only); `should_stop()` is polled between steps and ends training after saving the current state. Raises
    TrainingDivergedError when the loss diverges (module docstring), keeping the last good checkpoint.
    `scoring` is recorded in the checkpoints as the scoring defaults the model is meant for.
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
        start_epoch, global_step = _resume_into(
            resume_path, model, ema_model, optimizer, model_config, train_config, provenance, device
        )
    elif resume and (run_dir / LAST_NAME).exists():
        raise CheckpointError(
            f"{run_dir} already holds a trained model but no {RESUME_NAME} to continue it; pass --restart to train a "
            "new model over it (its checkpoints are replaced from the first saved epoch) or choose another --out"
        )
    if start_epoch >= train_config.epochs:
        return TrainResult(start_epoch, float("nan"), False, run_dir, nothing_to_do=True)

    trainable: torch.nn.Module = model
    if world_size > 1:
        trainable = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    features = features.float()
    # Chunked float64 statistics: the same numbers for an in-memory and a memory-mapped matrix; one vector gives std 0.
    feature_mean, feature_std, finite = feature_statistics(features)
    if not finite:
        raise ConfigError("training features contain NaN/Inf; re-extract them")
    # mean(z0^2) over all entries = mean over dimensions of (biased variance + mean^2), from the same statistics.
    count = len(features)
    untrained_loss = float((feature_std.double().pow(2) * (count - 1) / count + feature_mean.double().pow(2)).mean())
    divergence_limit = DIVERGENCE_FACTOR * max(untrained_loss, 1e-8)
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
    window = min(DIVERGENCE_WINDOW, steps_per_epoch)
    use_amp = train_config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    last_loss, stopped, epochs_done = float("nan"), False, start_epoch

    def diverged(epoch: int, step: int, what: str) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"training diverged at epoch {epoch}, step {step}: {what}. {_kept_checkpoint_message(run_dir)} Lower "
            f"--lr (it was {train_config.learning_rate:g}) or check the features for extreme values."
        )

    for epoch in range(start_epoch + 1, train_config.epochs + 1):
        epoch_generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(features), generator=epoch_generator)
        if len(order) < per_rank * world_size:
            order = order.repeat(world_size)
        shard = order[rank * per_rank : (rank + 1) * per_rank]
        noise_generator = torch.Generator().manual_seed(train_config.seed * 7_919 + epoch * 104_729 + rank)
        model.train()
        running, counted, recent = 0.0, 0, deque(maxlen=window)
        for step, batch_indices in enumerate(shard.split(train_config.batch_size)[:steps_per_epoch]):
            z0 = gather_rows(features, batch_indices).to(device, non_blocking=True)
            timesteps = torch.randint(1, model_config.num_timesteps + 1, (len(z0),), generator=noise_generator)
            noise = torch.randn(z0.shape, generator=noise_generator)
            z_t = schedule.q_sample(z0, timesteps.to(device), noise.to(device))
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                prediction = trainable(z_t, timesteps.to(device))
            loss = torch.nn.functional.mse_loss(prediction.float(), z0)
            loss_value = _mean_over_ranks(loss.detach(), world_size)  # every rank takes the same decision
            if not math.isfinite(loss_value):
                raise diverged(epoch, step + 1, f"the loss became {loss_value}")
            recent.append(loss_value)
            if len(recent) == window and sum(recent) / window > divergence_limit:
                raise diverged(
                    epoch,
                    step + 1,
                    f"the mean loss of the last {window} step(s) is {sum(recent) / window:.3g}, more than "
                    f"{DIVERGENCE_FACTOR:g}x the {untrained_loss:.3g} of an untrained model",
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            # Warm-up keeps the early EMA (used by LR) from being dominated by the untrained initial weights.
            _ema_update(ema_model, model, min(train_config.ema_decay, (1 + global_step) / (10 + global_step)))
            running, counted = running + loss_value, counted + 1
            if on_step is not None and rank == 0:
                on_step(epoch, step + 1, loss_value)
            if should_stop is not None and should_stop():
                stopped = True
                break
        if stopped and counted < steps_per_epoch:
            break  # an unfinished epoch is dropped; the previous checkpoint stays the newest
        last_loss, epochs_done = running / max(counted, 1), epoch
        if not all(torch.isfinite(p).all() for p in ema_model.parameters()):
            raise diverged(epoch, counted, "the averaged (EMA) weights hold NaN/Inf values")
        stopped = stopped or (should_stop is not None and should_stop())
        is_checkpoint = (
            epoch == 1 or epoch % train_config.checkpoint_every == 0 or epoch == train_config.epochs or stopped
        )
        if is_checkpoint and rank == 0:
            info = CheckpointInfo(epoch=epoch, **info_base)
            half = train_config.half_precision_checkpoints
            # last before first: a kill between the two (possible when --restart trains over an older run) leaves a
            # first checkpoint no newer than the last one, which the LR score then ignores instead of mixing runs.
            save_checkpoint(run_dir / LAST_NAME, ema_model, info, feature_mean, feature_std, half)
            if epoch == 1 or not (run_dir / FIRST_NAME).exists():
                save_checkpoint(run_dir / FIRST_NAME, ema_model, info, feature_mean, feature_std, half)
            _save_resume_state(
                resume_path, model, ema_model, optimizer, model_config, train_config, provenance, epoch, global_step
            )
        if on_epoch is not None and rank == 0:
            on_epoch(EpochReport(epoch, train_config.epochs, last_loss, is_checkpoint))
        if stopped:
            stopped = epoch < train_config.epochs
            break
    if world_size > 1:
        dist.barrier()
    return TrainResult(epochs_done=epochs_done, last_loss=last_loss, stopped_early=stopped, run_dir=run_dir)


def _mean_over_ranks(loss: Tensor, world_size: int) -> float:
    if world_size > 1:
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world_size
    return float(loss)


def _kept_checkpoint_message(run_dir: Path) -> str:
    last = run_dir / LAST_NAME
    if not last.exists():
        return f"No checkpoint was written: {run_dir} holds no usable model."
    try:
        epoch = read_checkpoint_info(last).epoch
    except CheckpointError:
        return f"{last} was left as it was, but it cannot be loaded either."
    return f"The last good checkpoint (epoch {epoch}) is kept in {last}."


# Settings a resumed run may change (they only steer the rest of the run) and those it must keep; the CLI options
# named in messages.
_RESUMABLE_CHANGES = ("epochs", "learning_rate", "weight_decay", "ema_decay", "checkpoint_every", "amp")
# drop_last changes the steps per epoch, so a run keeps it.
_FIXED_SETTINGS = {"batch_size": "--train-batch-size", "seed": "--seed", "drop_last": "--drop-last"}
_FIXED_ARCHITECTURE = {"feature_dim": "the feature size", "width": "--width", "depth": "--depth"}
_FIXED_PROVENANCE = {
    "backbone": "--backbone",
    "weights": "--weights",
    "input_size": "--input-size",
    "stage_dims": "the backbone's stages",
    "dataset": "--dataset",
    "pooling": "--pooling",
    "std_eps": "--std-eps",
    "resize": "--resize",
    "normalization": "--normalization",
    "same_padding": "--same-padding",
}
RESUME_KEYS = frozenset(
    {"model", "ema_model", "optimizer", "model_config", "train_config", "epoch", "global_step", "provenance"}
)
_OPTIONAL_RESUME_KEYS = frozenset({"provenance"})  # resume files written before it was stored lack it


@dataclass(frozen=True)
class ResumeState:
    """A validated `resume.pt`: configs rebuilt from their dataclasses, tensors not yet loaded into a model."""

    path: Path
    model_config: LFDNConfig
    train_config: TrainConfig
    provenance: Provenance | None
    epoch: int
    global_step: int
    raw: dict


def _resume_error(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"cannot resume from {path}: {reason}. Nothing was changed; start over with --restart (the run's "
        "checkpoints are then replaced from the first saved epoch) or delete that file"
    )


def read_resume_state(path: str | Path) -> ResumeState:
    """Read and check `resume.pt` (never executes code: weights_only); raises CheckpointError saying what is wrong."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise _resume_error(path, "the file is empty (0 bytes)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            reason = "it holds objects other than tensors and numbers (refused; nothing in it was run)"
            raise _resume_error(path, reason) from error
        raise _resume_error(path, "the file is truncated or not a resume file") from error
    except Exception as error:  # torch.load raises many types for truncated or foreign files
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise _resume_error(path, f"the file is truncated or not a resume file ({first_line})") from error
    if not isinstance(state, dict):
        raise _resume_error(path, f"it holds a {type(state).__name__}, not a dictionary")
    missing = sorted(RESUME_KEYS - _OPTIONAL_RESUME_KEYS - set(state))
    unknown = sorted(set(state) - RESUME_KEYS)
    if missing or unknown:
        raise _resume_error(path, f"wrong keys (missing {missing or 'none'}, unknown {unknown or 'none'})")
    try:
        model_config = from_json(LFDNConfig, state["model_config"], "model_config")
        train_config = from_json(TrainConfig, state["train_config"], "train_config")
        provenance = from_json(Provenance, state["provenance"], "provenance") if "provenance" in state else None
    except SchemaError as error:
        raise _resume_error(path, str(error)) from error
    for key in ("epoch", "global_step"):
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _resume_error(path, f"{key} must be a whole number >= 0, got {value!r}")
    for key in ("model", "ema_model"):
        weights = state[key]
        if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
            raise _resume_error(path, f"{key} is not a dictionary of tensors")
        if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
            raise _resume_error(path, f"{key} holds NaN/Inf weights")
    if not isinstance(state["optimizer"], dict):
        raise _resume_error(path, "optimizer is not a dictionary")
    return ResumeState(path, model_config, train_config, provenance, state["epoch"], state["global_step"], state)


def _resume_into(
    path: Path,
    model: LFDN,
    ema_model: LFDN,
    optimizer: torch.optim.Optimizer,
    model_config: LFDNConfig,
    train_config: TrainConfig,
    provenance: Provenance,
    device: torch.device,
) -> tuple[int, int]:
    """Load a checked resume file into the model, EMA and optimizer; returns (epoch, global step)."""
    saved = read_resume_state(path)
    refused = [
        f"{option} ({getattr(model_config, key)} now, {getattr(saved.model_config, key)} in the run)"
        for key, option in _FIXED_ARCHITECTURE.items()
        if getattr(model_config, key) != getattr(saved.model_config, key)
    ]
    if saved.model_config != model_config and not refused:
        refused.append(f"the model configuration ({model_config} now, {saved.model_config} in the run)")
    refused += [
        f"{option} ({getattr(train_config, key)} now, {getattr(saved.train_config, key)} in the run)"
        for key, option in _FIXED_SETTINGS.items()
        if getattr(train_config, key) != getattr(saved.train_config, key)
    ]
    if saved.provenance is not None:
        now, then = asdict(provenance), asdict(saved.provenance)
        refused += [
            f"{option} ({now[key]} now, {then[key]} in the run)"
            for key, option in _FIXED_PROVENANCE.items()
            if key in now and key in then and now[key] != then[key]
        ]
    if refused:
        raise CheckpointError(
            f"{path.parent} was trained with other settings that cannot change on resume: {'; '.join(refused)}. "
            "Use the run's settings, another --out folder, or --restart"
        )
    raw = saved.raw
    try:
        model.load_state_dict({k: v.to(device) for k, v in raw["model"].items()})
        ema_model.load_state_dict({k: v.to(device) for k, v in raw["ema_model"].items()})
        optimizer.load_state_dict(raw["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise _resume_error(path, f"its weights do not fit the model ({first_line})") from error
    changes = [
        f"{key} {getattr(train_config, key)} (was {getattr(saved.train_config, key)})"
        for key in _RESUMABLE_CHANGES
        if getattr(train_config, key) != getattr(saved.train_config, key)
    ]
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = train_config.learning_rate, train_config.weight_decay
    if changes:
        logger.info("resuming %s from epoch %d with %s", path.parent, saved.epoch, ", ".join(changes))
    return saved.epoch, saved.global_step


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
    provenance: Provenance,
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
            "provenance": {**asdict(provenance), "stage_dims": list(provenance.stage_dims)},
            "epoch": epoch,
            "global_step": global_step,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())
