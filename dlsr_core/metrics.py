"""OOD detection metrics for scores oriented "higher = more OOD", with in-distribution as the positive class.

Computed in NumPy with scikit-learn's definitions (roc_curve, trapezoidal AUROC, step-wise average precision; tested
against scikit-learn): importing scikit-learn took a second on every start of the app.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


class MetricInputError(ValueError):
    """Score arrays that cannot produce a metric (empty, non-finite, wrong shape)."""


@dataclass(frozen=True)
class OODMetrics:
    """All values are fractions in [0, 1]; `threshold95` is the score below or at which 95% of ID samples fall."""

    auroc: float
    fpr95: float
    aupr_in: float
    aupr_out: float
    threshold95: float


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise MetricInputError(f"{name} is empty: need at least one score")
    if not np.all(np.isfinite(array)):
        raise MetricInputError(f"{name} contains {int((~np.isfinite(array)).sum())} NaN/Inf values")
    return array


def _ranking_curve(positive: np.ndarray, ranking: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, thresholds) at each distinct value of `ranking`, highest first: a sample
    is called positive when its ranking is at or above the threshold (scikit-learn's _binary_clf_curve)."""
    order = np.argsort(ranking, kind="mergesort")[::-1]
    ranking, positive = ranking[order], positive[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(ranking)), ranking.size - 1]
    true_positives = np.cumsum(positive)[last_of_value]
    return true_positives, 1 + last_of_value - true_positives, ranking[last_of_value]


def _average_precision(positive: np.ndarray, ranking: np.ndarray) -> float:
    """Sum over thresholds of (recall step) x precision, as scikit-learn's average_precision_score."""
    true_positives, false_positives, _ = _ranking_curve(positive, ranking)
    recall = true_positives / true_positives[-1]
    precision = true_positives / (true_positives + false_positives)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> OODMetrics:
    """AUROC, FPR at 95% TPR, AUPR-In, AUPR-Out and the 95%-TPR threshold.

    id_scores (N_id,), ood_scores (N_ood,). ID is the positive class: a sample is called ID when its score is at or
    below the threshold; TPR is the fraction of ID called ID and FPR the fraction of OOD called ID.
    """
    id_array = _as_scores(id_scores, "id_scores")
    ood_array = _as_scores(ood_scores, "ood_scores")
    scores = np.concatenate([id_array, ood_array])
    is_id = np.concatenate([np.ones_like(id_array), np.zeros_like(ood_array)])
    # The classifiers rank "ID-ness", which is the negated OOD score.
    true_positives, false_positives, thresholds = _ranking_curve(is_id, -scores)
    true_positive_rate = np.r_[0.0, true_positives / id_array.size]
    false_positive_rate = np.r_[0.0, false_positives / ood_array.size]
    first_at_95 = int(np.searchsorted(true_positive_rate, 0.95, side="left"))
    return OODMetrics(
        auroc=float(np.trapezoid(true_positive_rate, false_positive_rate)),
        fpr95=float(false_positive_rate[first_at_95]),
        aupr_in=_average_precision(is_id, -scores),
        aupr_out=_average_precision(1 - is_id, scores),
        threshold95=float(-np.r_[np.inf, thresholds][first_at_95]),
    )
