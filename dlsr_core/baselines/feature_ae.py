"""Feature autoencoder baseline: the paper's "AutoEncoder" column. Unsupervised, on the same cached DLSR features.

An MLP autoencoder (D -> hidden -> bottleneck -> hidden -> D, SiLU) is trained with the mean squared error to
reconstruct the ID training features; the score is the summed squared reconstruction error, like DLSR's MSE but
without noise or diffusion. Training follows dlsr_core.training: AdamW, a seeded permutation per epoch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlsr_core.baselines.store import DEFAULT_BASELINES_DIR, load_baseline, save_baseline
from dlsr_core.diffusion import ConfigError

KIND = "feature_ae"
DEFAULT_PATH = DEFAULT_BASELINES_DIR / "feature_ae.safetensors"


@dataclass(frozen=True)
class AutoencoderConfig:
    """Layer sizes: feature_dim -> hidden -> bottleneck -> hidden -> feature_dim."""

    feature_dim: int
    hidden: int = 256
    bottleneck: int = 64


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

    def __init__(self, model: FeatureAutoencoder, info: dict) -> None:
        self.model = model.eval().requires_grad_(False)
        self.info = info

    @property
    def feature_dim(self) -> int:
        return self.model.config.feature_dim

    def reconstruct(self, features: Tensor) -> Tensor:
        """Reconstructions (N, D) of features (N, D)."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ConfigError(
                f"the feature autoencoder was trained on {self.info.get('backbone', '?')} features "
                f"({self.feature_dim}-d), got features of shape {tuple(features.shape)}"
            )
        with torch.no_grad():
            return self.model(features.float())

    def score(self, features: Tensor) -> np.ndarray:
        """Summed squared reconstruction error (N,) of features (N, D); higher = more OOD."""
        return (self.reconstruct(features) - features.float()).pow(2).sum(dim=1).numpy()

    def save(self, path: str | Path) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        save_baseline(path, KIND, tensors, asdict(self.model.config), self.info, half_keys=("model.",))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> FeatureAEBaseline:
        stored = load_baseline(path, KIND)
        model = FeatureAutoencoder(AutoencoderConfig(**stored.config))
        model.load_state_dict({k.removeprefix("model."): v for k, v in stored.tensors.items()}, strict=True)
        return cls(model, stored.info)


def train_feature_ae(
    features: Tensor,
    config: AutoencoderConfig,
    train_config: AutoencoderTrainConfig = AutoencoderTrainConfig(),
    info: dict | None = None,
) -> FeatureAEBaseline:
    """Train on ID features (N, D); `info` (backbone, input size, stage sizes, dataset) is stored with the model."""
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
    record = {
        **(info or {}),
        "train": asdict(train_config),
        "train_seconds": time.perf_counter() - started,
        "final_loss": last_loss,
        "train_features": len(features),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return FeatureAEBaseline(model, record)
