"""Feature-space baselines on the same cached features as DLSR, scored "higher = more OOD".

- k-NN (Sun et al., ICML 2022): distance to the k-th nearest L2-normalised training feature.
- Mahalanobis (single Gaussian): squared Mahalanobis distance to the training mean under a shrunk covariance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class NotFittedError(RuntimeError):
    """A baseline was asked to score before `fit` was called."""


class KNNBaseline:
    """k-th nearest neighbour distance among L2-normalised training features."""

    def __init__(self, k: int = 50, chunk_size: int = 2048) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.chunk_size = chunk_size
        self.bank: Tensor | None = None

    def fit(self, train_features: Tensor) -> KNNBaseline:
        """Store normalised training features (N, D). k is capped at N."""
        self.bank = torch.nn.functional.normalize(train_features.float(), dim=1)
        return self

    def score(self, features: Tensor) -> np.ndarray:
        """Distance to the k-th neighbour: (M, D) -> (M,)."""
        if self.bank is None:
            raise NotFittedError("KNNBaseline.score called before fit")
        k = min(self.k, self.bank.shape[0])
        queries = torch.nn.functional.normalize(features.float(), dim=1)
        distances = []
        for chunk in queries.split(self.chunk_size):
            similarity = chunk @ self.bank.T
            kth_similarity = similarity.topk(k, dim=1).values[:, -1]
            distances.append((2.0 - 2.0 * kth_similarity).clamp(min=0.0).sqrt())
        return torch.cat(distances).numpy()


class MahalanobisBaseline:
    """Squared Mahalanobis distance to one Gaussian fitted to the training features."""

    def __init__(self, shrinkage: float = 1e-3) -> None:
        self.shrinkage = shrinkage
        self.mean: Tensor | None = None
        self.precision: Tensor | None = None

    def fit(self, train_features: Tensor) -> MahalanobisBaseline:
        """Fit mean (D,) and precision (D, D) to training features (N, D) in float64."""
        data = train_features.double()
        self.mean = data.mean(dim=0)
        centered = data - self.mean
        covariance = centered.T @ centered / max(data.shape[0] - 1, 1)
        # Shrinking towards a scaled identity keeps the covariance invertible when N is close to or below D.
        scale = covariance.diagonal().mean()
        covariance = (1 - self.shrinkage) * covariance + self.shrinkage * scale * torch.eye(data.shape[1]).double()
        self.precision = torch.linalg.pinv(covariance, hermitian=True)
        return self

    def score(self, features: Tensor) -> np.ndarray:
        """(M, D) -> (M,) squared distances."""
        if self.mean is None or self.precision is None:
            raise NotFittedError("MahalanobisBaseline.score called before fit")
        centered = features.double() - self.mean
        return ((centered @ self.precision) * centered).sum(dim=1).numpy()
