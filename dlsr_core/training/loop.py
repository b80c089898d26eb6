"""The training loop: every step of a run in order, each piece named for what it does (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from dlsr_core.checkpoint import CheckpointError
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.presets import DEFAULT_SCORING, ScoringOptions
from dlsr_core.ranks import check_same, one_line, raise_together
from dlsr_core.training.batches import checked_statistics, checked_steps_per_epoch, epoch_batches
from dlsr_core.training.checkpointing import CheckpointWriter, checkpoint_due
from dlsr_core.training.config import EpochReport, Provenance, TrainConfig, TrainResult, validate
from dlsr_core.training.distributed import distributed_context, mean_over_ranks, wait_for_all_ranks, wrap_for_ranks
from dlsr_core.training.ema import ema_decay_at, ema_update
from dlsr_core.training.guard import DivergenceGuard, untrained_loss
from dlsr_core.training.locking import run_lock
from dlsr_core.training.resume import resume_or_start
from dlsr_core.training.step import build_model, denoising_loss, optimiser_step


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
    distributed_context()
    check_same(_settings(features, model_config, train_config, provenance, scoring), "the training settings")
    validate(features, model_config, train_config, provenance)
    configs = (model_config, train_config, provenance, scoring)
    with run_lock(run_dir):
        return _train_locked(features, Path(run_dir), configs, resume, (on_step, on_epoch, should_stop))


def _settings(features: Tensor, model_config, train_config, provenance, scoring) -> dict[str, str]:
    """Everything a rank trains with, as {name: text}: torchrun ranks must agree on all of it (dlsr_core.ranks)."""
    fields = {"features": str(tuple(features.shape))}
    for group in (model_config, train_config, provenance, scoring):
        fields.update({name: repr(value) for name, value in asdict(group).items()})
    return fields


def _train_locked(
    features: Tensor,
    run_dir: Path,
    configs: tuple[LFDNConfig, TrainConfig, Provenance, ScoringOptions],
    resume: bool,
    callbacks: tuple,
) -> TrainResult:
    """train() once the run's lock is held; `callbacks` = (on_step, on_epoch, should_stop)."""
    model_config, train_config, provenance, scoring = configs
    on_step, on_epoch, should_stop = callbacks
    rank, world_size, device = distributed_context()
    torch.manual_seed(train_config.seed)
    model, ema_model, optimizer, schedule = build_model(model_config, train_config, device)
    start_epoch, global_step = _agreed_start(
        run_dir, resume, model, ema_model, optimizer, model_config, train_config, provenance, device
    )
    if start_epoch >= train_config.epochs:
        return TrainResult(start_epoch, float("nan"), False, run_dir, nothing_to_do=True)
    trainable = wrap_for_ranks(model, world_size, device)
    features = features.float()
    statistics = checked_statistics(features)  # (mean, std) per dimension
    writer = CheckpointWriter(run_dir, model_config, train_config, provenance, scoring, world_size, *statistics)
    steps_per_epoch = checked_steps_per_epoch(len(features), world_size, train_config)
    untrained = untrained_loss(*statistics, len(features))
    guard = DivergenceGuard(untrained, steps_per_epoch, run_dir, train_config.learning_rate)
    use_amp = train_config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    last_loss, stopped, epochs_done = float("nan"), False, start_epoch

    for epoch in range(start_epoch + 1, train_config.epochs + 1):
        model.train()
        guard.start_epoch()
        running, counted = 0.0, 0
        batches = epoch_batches(features, model_config.num_timesteps, train_config, epoch, rank, world_size, device)
        for step, (z0, timesteps, noise) in enumerate(batches, start=1):
            loss = denoising_loss(trainable, schedule, z0, timesteps, noise, use_amp)
            loss_value = mean_over_ranks(loss.detach(), world_size)  # every rank takes the same decision
            guard.check_loss(loss_value, epoch, step)
            optimiser_step(loss, optimizer, scaler)
            global_step += 1
            ema_update(ema_model, model, ema_decay_at(train_config.ema_decay, global_step))
            running, counted = running + loss_value, counted + 1
            if on_step is not None and rank == 0:
                on_step(epoch, step, loss_value)
            if should_stop is not None and should_stop():
                stopped = True
                break
        if stopped and counted < steps_per_epoch:
            break  # an unfinished epoch is dropped; the previous checkpoint stays the newest
        last_loss, epochs_done = running / max(counted, 1), epoch
        guard.check_weights(ema_model, epoch, counted)
        stopped = stopped or (should_stop is not None and should_stop())
        report = EpochReport(epoch, train_config.epochs, last_loss, checkpoint_due(epoch, train_config, stopped))
        _end_epoch(writer, report, (model, ema_model, optimizer, global_step), on_epoch, rank)
        if stopped:
            stopped = epoch < train_config.epochs
            break
    wait_for_all_ranks(world_size)
    return TrainResult(epochs_done=epochs_done, last_loss=last_loss, stopped_early=stopped, run_dir=run_dir)


def _agreed_start(run_dir: Path, resume: bool, *state_and_settings) -> tuple[int, int]:
    """resume_or_start() on every rank; a refusal on any rank is raised on all of them, and ranks that see different
    states of `run_dir` (a folder that is not shared) are refused too."""
    error, start = None, (0, 0)
    try:
        start = resume_or_start(run_dir, resume, *state_and_settings)
    except CheckpointError as caught:
        error = caught
    raise_together(error, one_line(error))
    done = {"epochs done": str(start[0]), "steps done": str(start[1])}
    check_same(done, f"how far {run_dir} has trained (--out must be one folder that every rank reads)")
    return start


def _end_epoch(writer: CheckpointWriter, report: EpochReport, state: tuple, on_epoch, rank: int) -> None:
    """Rank 0 saves the epoch when due and reports it; a fault there (a full disk) is raised on every rank."""
    error = None
    if rank == 0:
        try:
            if report.checkpoint_saved:
                writer.save(report.epoch, *state)
            if on_epoch is not None:
                on_epoch(report)
        except Exception as caught:  # every rank must learn of it, or the others would wait at the next step
            error = caught
    raise_together(error, f"rank 0 could not save epoch {report.epoch}: {one_line(error)}")
