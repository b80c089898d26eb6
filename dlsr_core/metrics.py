"""OOD detection metrics for scores oriented "higher = more OOD", with in-distribution as the positive class.

Computed in NumPy with scikit-learn's definitions (roc_curve, trapezoidal AUROC, step-wise average precision; tested
against scikit-learn): importing scikit-learn took a second on every start of the app.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# Printed under every table that shows FPR95 (CLI, benchmarks, app, README).
FPR95_CONVENTION = (
    "FPR95: the share of OOD images accepted as ID at the threshold that accepts 95% of the ID images, with ID as "
    "the positive class (the paper's and the DLSR authors' convention); tools that take OOD as positive, such as "
    "pytorch-ood's OODMetrics, report a different number."
)


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


def auroc_from_ranks(id_scores: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
    """AUROC (ID positive, higher score = more OOD) of each row pair: id_scores (B, N_id), ood_scores (B, N_ood)
    -> (B,). The Mann-Whitney form, P(OOD score > ID score) + P(tie) / 2, with average ranks for ties; it equals
    scikit-learn's roc_auc_score on every row."""
    from scipy.stats import rankdata

    n_id, n_ood = id_scores.shape[1], ood_scores.shape[1]
    ranks = rankdata(np.concatenate([id_scores, ood_scores], axis=1), axis=1)
    return (ranks[:, n_id:].sum(axis=1) - n_ood * (n_ood + 1) / 2) / (n_id * n_ood)


@dataclass(frozen=True)
class BootstrapAUROC:
    """AUROCs of one ID set against several OOD sets, with their bootstrap distribution.

    names: the OOD sets; point (S,): the AUROC of each on all images; replicates (B, S): the AUROC of each on B
    resamples. In each replicate the ID images are drawn once (with replacement) and shared by every OOD set, and
    each OOD set is drawn on its own, so the replicates of an average over sets carry the dependence through the
    shared ID set.
    """

    names: tuple[str, ...]
    point: np.ndarray
    replicates: np.ndarray

    def interval(self, names: tuple[str, ...] | None = None, level: float = 0.95) -> tuple[float, float, float]:
        """(estimate, low, high) of the mean AUROC over `names` (default: all sets): the estimate on all images and
        the percentile interval of the replicates' means (numpy's linear interpolation of percentiles)."""
        columns = [self.names.index(name) for name in (names or self.names)]
        means = self.replicates[:, columns].mean(axis=1)
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(means, [tail, 100 - tail])
        return float(self.point[columns].mean()), float(low), float(high)


def bootstrap_aurocs(
    id_scores: ArrayLike, ood_scores: dict[str, ArrayLike], resamples: int = 1000, seed: int = 0
) -> BootstrapAUROC:
    """Bootstrap the AUROC of `id_scores` (N_id,) against each of `ood_scores` {name: (N_ood,)}: `resamples` draws
    with replacement, ID drawn once per draw and shared by every OOD set (see :class:`BootstrapAUROC`). The draws
    are fixed by `seed`, so the same scores give the same intervals."""
    if resamples < 1:
        raise MetricInputError(f"resamples must be >= 1, got {resamples}")
    id_array = _as_scores(id_scores, "id_scores")
    rng = np.random.default_rng(seed)
    id_rows = rng.integers(0, len(id_array), size=(resamples, len(id_array)))
    id_draws = id_array[id_rows]
    names, point, replicates = [], [], []
    for name, values in ood_scores.items():
        ood_array = _as_scores(values, f"ood_scores[{name!r}]")
        ood_draws = ood_array[rng.integers(0, len(ood_array), size=(resamples, len(ood_array)))]
        names.append(name)
        point.append(auroc_from_ranks(id_array[None], ood_array[None])[0])
        replicates.append(auroc_from_ranks(id_draws, ood_draws))
    return BootstrapAUROC(tuple(names), np.asarray(point), np.stack(replicates, axis=1))


def mean_std(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of per-seed results, as papers report
    "mean ± std over runs"."""
    array = _as_scores(values, "values")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0
