"""Classifier-based detectors from pytorch-ood on a linear head trained with the ID labels. They need labels; DLSR
does not.

The head is one linear layer on the backbone's pooled pre-logit features (dlsr_core.baselines.prelogits), trained
with cross-entropy on Fashion-MNIST train. Each detector is pytorch-ood's own implementation, fitted on the same
training features and called through its public API:

| name | pytorch-ood | input | fitted state kept here |
|---|---|---|---|
| msp | MaxSoftmax | logits | none |
| energy | EnergyBased (EBO) | logits | none |
| dice | DICE (energy of the sparsified head) | pre-logits | mean training activation (C,) |
| ash_s | ASH, variant ash-s (energy) | pre-logits as (B, C, 1, 1) maps | none |
| react | ReAct (energy of the clipped activations) | pre-logits as (B, C, 1, 1) maps | clipping threshold |
| vim | ViM | pre-logits | principal subspace (C, d) and alpha |

Hyperparameters are the papers' or pytorch-ood's defaults, fixed before looking at any OOD data (not tuned).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlsr_core import tv_compat  # noqa: F401  (pytorch_ood imports torchvision)
from dlsr_core.baselines.distance import NotFittedError
from dlsr_core.baselines.store import DEFAULT_BASELINES_DIR, load_baseline, save_baseline
from dlsr_core.diffusion import ConfigError

KIND = "classifier"
DEFAULT_PATH = DEFAULT_BASELINES_DIR / "classifier.safetensors"
DETECTOR_NAMES = ("msp", "energy", "dice", "ash_s", "react", "vim")


@dataclass(frozen=True)
class HeadTrainConfig:
    """Cross-entropy training of the linear head on cached pre-logit features."""

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class DetectorSettings:
    """DICE keeps the top 10% of weight contributions (p = 0.9, the DICE paper's CIFAR setting); ASH-S prunes the
    lowest 90% of activations (the ASH paper's ASH-S@90); ReAct clips at the 90th percentile of ID activations (its
    paper's default); ViM uses a d-dimensional principal subspace of the C-dimensional features."""

    dice_p: float = 0.9
    ash_percentile: float = 0.9
    react_percentile: float = 0.9
    vim_dim: int = 256


def train_linear_head(
    features: Tensor, labels: Tensor, num_classes: int, config: HeadTrainConfig = HeadTrainConfig()
) -> tuple[nn.Linear, dict]:
    """A linear classifier (C -> num_classes) trained on features (N, C) and labels (N,); returns it and a record
    of the training (time, final loss, training accuracy)."""
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ConfigError(f"need features (N, C) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"labels must be in 0..{num_classes - 1}")
    torch.manual_seed(config.seed)
    head = nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    features, labels = features.float(), labels.long()
    started, last_loss = time.perf_counter(), float("nan")
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        total = 0.0
        for rows in order.split(config.batch_size):
            loss = nn.functional.cross_entropy(head(features[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        last_loss = total / len(features)
    with torch.no_grad():
        accuracy = (head(features).argmax(dim=1) == labels).float().mean().item()
    record = {
        "train": asdict(config),
        "train_seconds": time.perf_counter() - started,
        "final_loss": last_loss,
        "train_accuracy": accuracy,
        "train_features": len(features),
    }
    return head.requires_grad_(False).eval(), record


def _as_maps(features: Tensor) -> Tensor:
    """Pooled features (B, C) as the (B, C, 1, 1) feature maps ASH and ReAct act on."""
    return features[:, :, None, None]


@dataclass
class ClassifierBaselines:
    """A trained linear head and the fitted state of every pytorch-ood detector on top of it."""

    head: nn.Linear
    settings: DetectorSettings
    mean_activation: Tensor  # (C,) DICE
    react_threshold: float
    vim_principal: Tensor  # (C, d) principal subspace of the centred training features
    vim_alpha: float
    info: dict = field(default_factory=dict)
    _detectors: dict | None = field(default=None, repr=False)

    @classmethod
    def fit(
        cls,
        head: nn.Linear,
        features: Tensor,
        labels: Tensor,
        settings: DetectorSettings = DetectorSettings(),
        info: dict | None = None,
    ) -> ClassifierBaselines:
        """Fit DICE, ReAct and ViM (pytorch-ood's `fit_features` / `fit_feature_maps`) on training pre-logits
        (N, C) with their labels (N,) and keep only the state they learned."""
        from pytorch_ood.detector import DICE, ReAct, ViM

        features, labels = features.float(), labels.long()
        dice = DICE(None, head.weight, head.bias, p=settings.dice_p).fit_features(features, labels)
        react = ReAct(None, head, percentile=settings.react_percentile).fit_feature_maps(_as_maps(features), labels)
        vim = ViM(None, settings.vim_dim, head.weight, head.bias).fit_features(features, labels)
        # pytorch-ood keeps the (C, C - d) residual basis; its complement, the (C, d) principal basis, is smaller.
        principal = _orthogonal_complement(vim.principal_subspace)
        return cls(
            head=head.requires_grad_(False).eval(),
            settings=DetectorSettings(**{**asdict(settings), "vim_dim": vim.d}),
            mean_activation=dice.mean_activation.clone(),
            react_threshold=float(react.threshold),
            vim_principal=principal,
            vim_alpha=float(vim.alpha),
            info=info or {},
        )

    def logits(self, features: Tensor) -> Tensor:
        """Head outputs (N, K) for pre-logits (N, C)."""
        with torch.no_grad():
            return self.head(features.float())

    def detectors(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """name -> function pre-logits (N, C) -> scores (N,), each a pytorch-ood detector's public predict method."""
        if self._detectors is None:
            self._detectors = self._build_detectors()
        return self._detectors

    def _build_detectors(self) -> dict[str, Callable[[Tensor], Tensor]]:
        from pytorch_ood.detector import ASH, DICE, EnergyBased, MaxSoftmax, ReAct, ViM

        head = self.head
        on_maps = lambda maps: head(maps.flatten(1))  # noqa: E731  (ASH and ReAct call the head on (B, C, 1, 1))
        msp, energy = MaxSoftmax(None), EnergyBased(None)
        # DICE's fitted state is the mean training activation: fitting on that one vector reproduces it exactly.
        dice = DICE(None, head.weight, head.bias, p=self.settings.dice_p)
        dice.fit_features(self.mean_activation[None, :], torch.zeros(1, dtype=torch.long))
        ash = ASH(backbone=None, head=on_maps, variant="ash-s", percentile=self.settings.ash_percentile)
        react = ReAct(None, on_maps, threshold=self.react_threshold)
        vim = ViM(None, self.settings.vim_dim, head.weight, head.bias)
        # ViM scores with the residual outside the principal subspace; any orthonormal basis of that residual space
        # gives the same norms, so it is rebuilt from the stored principal directions instead of being stored.
        vim.principal_subspace = _orthogonal_complement(self.vim_principal)
        vim.alpha = self.vim_alpha
        return {
            "msp": lambda z: msp.predict_logits(head(z)),
            "energy": lambda z: energy.predict_logits(head(z)),
            "dice": dice.predict_features,
            "ash_s": lambda z: ash.predict_feature_maps(_as_maps(z)),
            "react": lambda z: react.predict_feature_maps(_as_maps(z)),
            "vim": vim.predict_features,
        }

    def score(self, name: str, features: Tensor) -> np.ndarray:
        """Scores (N,) of detector `name` for pre-logits (N, C); higher = more OOD."""
        if name not in DETECTOR_NAMES:
            raise KeyError(f"unknown classifier detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}")
        if features.ndim != 2 or features.shape[1] != self.head.in_features:
            raise ConfigError(f"pre-logits must be (N, {self.head.in_features}), got {tuple(features.shape)}")
        with torch.no_grad():
            return self.detectors()[name](features.float()).double().numpy()

    def save(self, path: str | Path) -> None:
        """Everything in float32 (the head is tiny, and ViM's fitted origin -W⁺b would move with a float16 head);
        settings and training record in the metadata."""
        tensors = {
            "head.weight": self.head.weight,
            "head.bias": self.head.bias,
            "dice.mean_activation": self.mean_activation,
            "vim.principal": self.vim_principal,
        }
        config = {
            "in_features": self.head.in_features,
            "num_classes": self.head.out_features,
            "settings": asdict(self.settings),
            "react_threshold": self.react_threshold,
            "vim_alpha": self.vim_alpha,
        }
        save_baseline(path, KIND, tensors, config, self.info)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> ClassifierBaselines:
        """Verify and rebuild saved classifier baselines (see `save`)."""
        stored = load_baseline(path, KIND)
        config = stored.config
        head = nn.Linear(config["in_features"], config["num_classes"])
        head.load_state_dict({"weight": stored.tensors["head.weight"], "bias": stored.tensors["head.bias"]})
        return cls(
            head=head.requires_grad_(False).eval(),
            settings=DetectorSettings(**config["settings"]),
            mean_activation=stored.tensors["dice.mean_activation"],
            react_threshold=float(config["react_threshold"]),
            vim_principal=stored.tensors["vim.principal"],
            vim_alpha=float(config["vim_alpha"]),
            info=stored.info,
        )


def _orthogonal_complement(basis: Tensor) -> Tensor:
    """An orthonormal basis (C, C - d) of the space orthogonal to the orthonormal columns of `basis` (C, d)."""
    if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
        raise NotFittedError(f"a ViM subspace basis must be (C, d) with d <= C, got {tuple(basis.shape)}")
    complete, _ = torch.linalg.qr(basis.double(), mode="complete")
    return complete[:, basis.shape[1] :].float().contiguous()
