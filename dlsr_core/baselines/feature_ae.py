"""Feature autoencoder baseline: the paper's "AutoEncoder" column. Unsupervised, on the same cached DLSR features.

An MLP autoencoder (D -> hidden -> bottleneck -> hidden -> D, SiLU) is trained with the mean squared error to
reconstruct the ID training features; the score is the summed squared reconstruction error, like DLSR's MSE but
without noise or diffusion. Training follows dlsr_core.training: AdamW, a seeded permutation per epoch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlsr_core.baselines.store import (
    DEFAULT_BASELINES_DIR,
    BaselineKind,
    Header,
    TrainingRecord,
    bound_by_tensors,
    load_baseline,
    meta_shapes,
    save_baseline,
)
from dlsr_core.diffusion import ConfigError
from dlsr_core.presets import FeatureOptions

KIND = "feature_ae"
DEFAULT_PATH = DEFAULT_BASELINES_DIR / "feature_ae.safetensors"


@dataclass(frozen=True)
class AutoencoderConfig:
    """Layer sizes: feature_dim -> hidden -> bottleneck -> hidden -> feature_dim."""

    feature_dim: int = field(metadata={"range": (1, 1_000_000)})
    hidden: int = field(default=256, metadata={"range": (1, 1_000_000)})
    bottleneck: int = field(default=64, metadata={"range": (1, 1_000_000)})


@dataclass(frozen=True)
class AutoencoderRecord(TrainingRecord):
    """How the training features were made (backbone, weights, input size, stages, feature options), which images
    they came from, and the training record."""

    backbone: str | None = None
    weights: str | None = None
    input_size: int | None = None
    stage_dims: tuple[int, ...] | None = None
    feature_options: FeatureOptions | None = None
    final_loss: float | None = None
    train_features: int | None = None
    parameters: int | None = None


def _bound(config: AutoencoderConfig, header: Header) -> None:
    bound_by_tensors(asdict(config), header)


def _shapes(config: AutoencoderConfig) -> dict[str, tuple[int, ...]]:
    return meta_shapes(lambda: FeatureAutoencoder(config), "model.")


def _check_values(config: AutoencoderConfig, info: AutoencoderRecord, tensors: dict[str, Tensor]) -> None:
    if info.stage_dims is not None and sum(info.stage_dims) != config.feature_dim:
        raise ValueError(f"info.stage_dims {info.stage_dims} do not sum to the feature size {config.feature_dim}")


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


class FeatureAutoencoder(nn.Module):
    """MLP autoencoder: features (N, D) -> reconstructions (N, D)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if min(config.feature_dim, config.hidden, config.bottleneck) < 1:
            raise ConfigError(f"autoencoder sizes must be positive, got {config}")
        self.config = config
        self.encoder = nn.Sequential(
            nn.Linear(config.feature_dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.bottleneck)
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.bottleneck, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.feature_dim)
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(self.encoder(features))


class FeatureAEBaseline:
    """A trained feature autoencoder plus how its training features were made (backbone, input size, stages)."""

    def __init__(self, model: FeatureAutoencoder, info: AutoencoderRecord) -> None:
        self.model = model.eval().requires_grad_(False)
        self.info = info

    @property
    def feature_dim(self) -> int:
        return self.model.config.feature_dim

    def reconstruct(self, features: Tensor) -> Tensor:
        """Reconstructions (N, D) of features (N, D)."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ConfigError(
                f"the feature autoencoder was trained on {self.info.backbone or '?'} features "
                f"({self.feature_dim}-d), got features of shape {tuple(features.shape)}"
            )
        with torch.no_grad():
            return self.model(features.float())

    def score(self, features: Tensor) -> np.ndarray:
        """Summed squared reconstruction error (N,) of features (N, D); higher = more OOD."""
        return (self.reconstruct(features) - features.float()).pow(2).sum(dim=1).numpy()

    def save(self, path: str | Path) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        save_baseline(path, KIND, tensors, self.model.config, self.info, half_keys=("model.",))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> FeatureAEBaseline:
        """Check and rebuild a saved autoencoder; raises store.BaselineFileError for any bad file."""
        stored = load_baseline(path, FILE_KIND)
        model = FeatureAutoencoder(stored.config)
        model.load_state_dict({k.removeprefix("model."): v for k, v in stored.tensors.items()})
        return cls(model, stored.info)


def train_feature_ae(
    features: Tensor,
    config: AutoencoderConfig,
    train_config: AutoencoderTrainConfig = AutoencoderTrainConfig(),
    info: AutoencoderRecord | None = None,
) -> FeatureAEBaseline:
    """Train on ID features (N, D); `info` (backbone, input size, stage sizes, training data) is stored with the
    model, completed with the training record."""
    if features.ndim != 2 or features.shape[1] != config.feature_dim or len(features) == 0:
        raise ConfigError(f"training features must be (N, {config.feature_dim}), got {tuple(features.shape)}")
    torch.manual_seed(train_config.seed)
    model = FeatureAutoencoder(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    features = features.float()
    started, last_loss = time.perf_counter(), float("nan")
    for epoch in range(1, train_config.epochs + 1):
        generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + epoch)
        total = 0.0
        for rows in torch.randperm(len(features), generator=generator).split(train_config.batch_size):
            loss = nn.functional.mse_loss(model(features[rows]), features[rows])
            if not torch.isfinite(loss):
                raise ConfigError(f"autoencoder loss became {loss.item()} in epoch {epoch}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        last_loss = total / len(features)
    record = replace(
        info or AutoencoderRecord(),
        train=asdict(train_config),
        train_seconds=time.perf_counter() - started,
        final_loss=last_loss,
        train_features=len(features),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return FeatureAEBaseline(model, record)


FILE_KIND = BaselineKind(KIND, AutoencoderConfig, AutoencoderRecord, _bound, _shapes, _check_values)
