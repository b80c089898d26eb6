"""OOD detection metrics for scores oriented "higher = more OOD", with in-distribution as the positive class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


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
    false_positive_rate, true_positive_rate, thresholds = roc_curve(is_id, -scores, drop_intermediate=False)
    first_at_95 = int(np.searchsorted(true_positive_rate, 0.95, side="left"))
    return OODMetrics(
        auroc=float(roc_auc_score(is_id, -scores)),
        fpr95=float(false_positive_rate[first_at_95]),
        aupr_in=float(average_precision_score(is_id, -scores)),
        aupr_out=float(average_precision_score(1 - is_id, scores)),
        threshold95=float(-thresholds[first_at_95]),
    )
