"""What a training run is given and what it reports: its settings, the features' provenance, progress, result."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from dlsr_core.diffusion import ConfigError, LFDNConfig
from dlsr_core.features import stage_dims_problem


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


def validate(features: Tensor, model_config: LFDNConfig, train_config: TrainConfig, provenance: Provenance) -> None:
    """Refuse features and settings that cannot train, before anything is built or written."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ConfigError(f"training features must be a non-empty (N, D) matrix, got shape {tuple(features.shape)}")
    if features.shape[1] != model_config.feature_dim or sum(provenance.stage_dims) != model_config.feature_dim:
        raise ConfigError(
            f"feature size mismatch: features {features.shape[1]}-d, model {model_config.feature_dim}-d, "
            f"stages {provenance.stage_dims}"
        )
    problem = stage_dims_problem(provenance.backbone, provenance.stage_dims, model_config.feature_dim)
    if problem:  # checkpoints recording it could not be loaded, or would split MFsim's stages wrongly
        raise ConfigError(f"the training features' {problem}")
    if train_config.epochs < 1 or train_config.batch_size < 1 or train_config.checkpoint_every < 1:
        raise ConfigError(f"epochs, batch_size and checkpoint_every must be positive: {train_config}")
    if not 0.0 <= train_config.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1), got {train_config.ema_decay}")
    if not (math.isfinite(train_config.learning_rate) and train_config.learning_rate > 0):
        raise ConfigError(f"learning_rate must be a finite number > 0, got {train_config.learning_rate}")
    if not (math.isfinite(train_config.weight_decay) and train_config.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {train_config.weight_decay}")
