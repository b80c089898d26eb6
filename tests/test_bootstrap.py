"""Bootstrap intervals of AUROC and seed statistics, checked by hand and against scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dlsr_core.metrics import MetricInputError, auroc_from_ranks, bootstrap_aurocs, mean_std, ood_metrics


def test_rank_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=(4, 30)).astype(float)  # many ties
    oods = rng.integers(2, 8, size=(4, 20)).astype(float)
    for row in range(4):
        labels = np.r_[np.ones(30), np.zeros(20)]
        expected = roc_auc_score(labels, -np.r_[ids[row], oods[row]])
        assert auroc_from_ranks(ids[row : row + 1], oods[row : row + 1])[0] == pytest.approx(expected, abs=1e-12)


def test_hand_computed_auroc():
    # ID scores 1, 3; OOD scores 2, 3: pairs (1<2) (1<3) (3>2) (3=3) -> (1 + 1 + 0 + 0.5) / 4
    assert auroc_from_ranks(np.array([[1.0, 3.0]]), np.array([[2.0, 3.0]]))[0] == pytest.approx(0.625)
    assert ood_metrics([1.0, 3.0], [2.0, 3.0]).auroc == pytest.approx(0.625)


def test_bootstrap_matches_the_exact_bootstrap_distribution():
    """ID (1, 3) and OOD (2, 4): every resample of 2 from 2 is one of 4 ordered draws per set, 16 equally likely
    combinations. Their AUROCs, by hand: OOD {2,2}/{2,4}/{4,2}/{4,4} against ID {1,1}: 1; ID {3,3}: 0, .5, .5, 1;
    ID {1,3} or {3,1}: .5, .75, .75, 1. So the exact bootstrap mean is (4 + 2 + 2 * 3) / 16 and P(AUROC = 0) = 1/16."""
    ids, oods = np.array([1.0, 3.0]), np.array([2.0, 4.0])
    exact = []
    for id_draw, ood_draw in itertools.product(itertools.product(ids, repeat=2), itertools.product(oods, repeat=2)):
        exact.append(roc_auc_score(np.r_[1, 1, 0, 0], -np.r_[id_draw, ood_draw]))
    assert sum(exact) == pytest.approx(12.0) and exact.count(0.0) == 1
    result = bootstrap_aurocs(ids, {"ood": oods}, resamples=40_000, seed=1)
    assert result.point[0] == pytest.approx(0.75)  # pairs: 1<2, 1<4, 3>2, 3<4
    assert result.replicates.mean() == pytest.approx(12.0 / 16, abs=0.005)
    assert np.mean(result.replicates == 0.0) == pytest.approx(1 / 16, abs=0.005)
    estimate, low, high = result.interval()
    assert (estimate, low, high) == (0.75, 0.0, 1.0)  # 2.5 % of draws are 0, more than 2.5 % are 1


def test_interval_of_an_average_uses_the_mean_of_each_replicate():
    rng = np.random.default_rng(3)
    ids, a, b = rng.normal(0, 1, 300), rng.normal(1, 1, 200), rng.normal(2, 1, 100)
    result = bootstrap_aurocs(ids, {"a": a, "b": b}, resamples=500, seed=0)
    assert result.point[1] == pytest.approx(roc_auc_score(np.r_[np.ones(300), np.zeros(100)], -np.r_[ids, b]))
    estimate, low, high = result.interval()
    assert estimate == pytest.approx(result.point.mean())
    assert (low, high) == pytest.approx(tuple(np.percentile(result.replicates.mean(axis=1), [2.5, 97.5])))
    assert low < estimate < high
    only_b = result.interval(("b",), level=0.9)
    assert only_b[1:] == pytest.approx(tuple(np.percentile(result.replicates[:, 1], [5, 95])))
    # The ID draw is shared: the two sets' replicates move together.
    assert np.corrcoef(result.replicates.T)[0, 1] > 0
    # Same seed, same draws.
    assert np.array_equal(bootstrap_aurocs(ids, {"a": a, "b": b}, 500, 0).replicates, result.replicates)


def test_bad_inputs_are_refused():
    with pytest.raises(MetricInputError, match="resamples"):
        bootstrap_aurocs([0.0], {"x": [1.0]}, resamples=0)
    with pytest.raises(MetricInputError, match="NaN"):
        bootstrap_aurocs([0.0], {"x": [np.nan]})


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
