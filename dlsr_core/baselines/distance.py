"""Distance baselines on the same cached DLSR features as DLSR itself, scored "higher = more OOD". Unsupervised.

- k-NN (Sun et al., ICML 2022): distance to the k-th nearest L2-normalised training feature. This implementation is
  kept instead of pytorch-ood's `KNN` because it gives the same distances (tests/test_baselines_distance.py: within
  1e-5 relative) several times faster (one matrix product + top-k instead of scikit-learn's neighbour search).
- Mahalanobis: pytorch-ood's `Mahalanobis` with a single class, i.e. one Gaussian fitted to the unlabelled training
  features (the unsupervised variant, as DLSR is unsupervised). Its score is half the squared Mahalanobis distance
  under the scatter matrix (covariance times N - 1).

DLSR features are standardized per stage, so within each stage the channels sum to zero: the covariance of the full
vector is singular and pytorch-ood's plain inverse of it is dominated by rounding noise. The last channel of each
stage is a linear function of the others, so dropping it loses nothing and makes the covariance invertible; that is
what `stage_dims` is for.
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


def independent_columns(stage_dims: tuple[int, ...] | None, feature_dim: int) -> Tensor:
    """Boolean mask (D,) that drops the last channel of every stage (all of them kept when stage_dims is None)."""
    keep = torch.ones(feature_dim, dtype=torch.bool)
    if stage_dims is not None:
        if sum(stage_dims) != feature_dim:
            raise ValueError(f"stage sizes {stage_dims} sum to {sum(stage_dims)}, features have {feature_dim}")
        keep[torch.as_tensor(stage_dims).cumsum(0) - 1] = False
    return keep


class MahalanobisBaseline:
    """pytorch-ood's Mahalanobis detector with one class: a single Gaussian fitted to unlabelled training features."""

    def __init__(self, stage_dims: tuple[int, ...] | None = None) -> None:
        self.stage_dims = stage_dims
        self.keep: Tensor | None = None
        self.detector = None

    def fit(self, train_features: Tensor) -> MahalanobisBaseline:
        """Fit mean and precision to training features (N, D) (labels are not used: one class)."""
        from pytorch_ood.detector import Mahalanobis  # imports torchvision: only when a baseline is fitted

        if train_features.ndim != 2 or len(train_features) < 2:
            raise ValueError(f"need at least two (N, D) training features, got shape {tuple(train_features.shape)}")
        self.keep = independent_columns(self.stage_dims, train_features.shape[1])
        one_class = torch.zeros(len(train_features), dtype=torch.long)
        self.detector = Mahalanobis(None).fit_features(train_features.float()[:, self.keep], one_class)
        return self

    def score(self, features: Tensor) -> np.ndarray:
        """(M, D) -> (M,) half squared distances under the training scatter matrix."""
        if self.detector is None or self.keep is None:
            raise NotFittedError("MahalanobisBaseline.score called before fit")
        return self.detector.predict_features(features.float()[:, self.keep]).numpy()
