"""Saving a finished epoch: the EMA model as the run's last (and first) checkpoint, and the resume file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from dlsr_core.checkpoint import FIRST_NAME, LAST_NAME, CheckpointInfo, save_checkpoint
from dlsr_core.diffusion import LFDN, LFDNConfig
from dlsr_core.presets import ScoringOptions
from dlsr_core.training.config import Provenance, TrainConfig
from dlsr_core.training.resume import RESUME_NAME, save_resume_state


def checkpoint_due(epoch: int, train_config: TrainConfig, stopped: bool) -> bool:
    """Whether `epoch` is saved: epoch 1, every `checkpoint_every`-th, the last one, and the one a stop ends."""
    return epoch == 1 or epoch % train_config.checkpoint_every == 0 or epoch == train_config.epochs or stopped


class CheckpointWriter:
    """Writes a run's checkpoints (safetensors + JSON metadata) and resume file into `run_dir` (rank 0 only)."""

    def __init__(
        self,
        run_dir: Path,
        model_config: LFDNConfig,
        train_config: TrainConfig,
        provenance: Provenance,
        scoring: ScoringOptions,
        world_size: int,
        feature_mean: Tensor,
        feature_std: Tensor,
    ) -> None:
        self.run_dir = run_dir
        self.model_config = model_config
        self.train_config = train_config
        self.provenance = provenance
        self.feature_mean = feature_mean
        self.feature_std = feature_std
        self.info_base = dict(
            config=model_config,
            **{**asdict(provenance), "stage_dims": tuple(provenance.stage_dims)},
            train_settings={**asdict(train_config), "world_size": world_size},
            **asdict(scoring),
        )

    def save(
        self, epoch: int, model: LFDN, ema_model: LFDN, optimizer: torch.optim.Optimizer, global_step: int
    ) -> None:
        """Save `epoch`: the EMA weights as last (and first, at epoch 1 or when missing), then the resume file."""
        info = CheckpointInfo(epoch=epoch, **self.info_base)
        half = self.train_config.half_precision_checkpoints
        mean, std = self.feature_mean, self.feature_std
        # last before first: a kill between the two (possible when --restart trains over an older run) leaves a
        # first checkpoint no newer than the last one, which the LR score then ignores instead of mixing runs.
        save_checkpoint(self.run_dir / LAST_NAME, ema_model, info, mean, std, half)
        if epoch == 1 or not (self.run_dir / FIRST_NAME).exists():
            save_checkpoint(self.run_dir / FIRST_NAME, ema_model, info, mean, std, half)
        save_resume_state(
            self.run_dir / RESUME_NAME,
            model,
            ema_model,
            optimizer,
            self.model_config,
            self.train_config,
            self.provenance,
            epoch,
            global_step,
        )
