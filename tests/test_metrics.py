import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from dlsr_core.metrics import MetricInputError, ood_metrics


def reference_fpr95(id_scores, ood_scores):
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    fpr, tpr, _ = roc_curve(labels, -np.r_[id_scores, ood_scores], drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(0, 1, 300)
    ood_scores = rng.normal(1.2, 1.5, 200)
    metrics = ood_metrics(id_scores, ood_scores)
    labels = np.r_[np.ones(300), np.zeros(200)]
    scores = np.r_[id_scores, ood_scores]
    assert metrics.auroc == pytest.approx(roc_auc_score(1 - labels, scores))
    assert metrics.aupr_in == pytest.approx(average_precision_score(labels, -scores))
    assert metrics.aupr_out == pytest.approx(average_precision_score(1 - labels, scores))
    assert metrics.fpr95 == pytest.approx(reference_fpr95(id_scores, ood_scores))
    # the threshold keeps at least 95% of ID samples, and FPR is the share of OOD at or below it
    assert np.mean(id_scores <= metrics.threshold95) >= 0.95
    assert metrics.fpr95 == pytest.approx(np.mean(ood_scores <= metrics.threshold95))


def test_known_answers():
    perfect = ood_metrics([0.0, 0.1, 0.2], [1.0, 2.0])
    assert (perfect.auroc, perfect.fpr95, perfect.aupr_in, perfect.aupr_out) == (1.0, 0.0, 1.0, 1.0)
    reversed_ = ood_metrics([1.0, 2.0], [0.0, 0.1])
    assert reversed_.auroc == 0.0 and reversed_.fpr95 == 1.0
    # 20 ID scores 1..20: 95% TPR is reached at 19; OOD scores 18.5 and 30 -> one of two below
    m = ood_metrics(np.arange(1, 21), [18.5, 30.0])
    assert m.threshold95 == 19.0
    assert m.fpr95 == 0.5


def test_bad_inputs_raise():
    with pytest.raises(MetricInputError, match="empty"):
        ood_metrics([], [1.0])
    with pytest.raises(MetricInputError, match="NaN"):
        ood_metrics([1.0, float("nan")], [1.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_ties_and_roc_points_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    id_scores = rng.integers(0, 12, 250).astype(float)  # many ties inside and across the two sets
    ood_scores = rng.integers(4, 20, 90).astype(float)
    metrics = ood_metrics(id_scores, ood_scores)
    labels = np.r_[np.ones(250), np.zeros(90)]
    scores = np.r_[id_scores, ood_scores]
    fpr, tpr, thresholds = roc_curve(labels, -scores, drop_intermediate=False)
    first = int(np.searchsorted(tpr, 0.95, side="left"))
    assert metrics.auroc == pytest.approx(roc_auc_score(labels, -scores), abs=1e-12)
    assert metrics.aupr_in == pytest.approx(average_precision_score(labels, -scores), abs=1e-12)
    assert metrics.aupr_out == pytest.approx(average_precision_score(1 - labels, scores), abs=1e-12)
    assert (metrics.fpr95, metrics.threshold95) == (pytest.approx(fpr[first]), -thresholds[first])


def test_the_app_does_not_import_scikit_learn():
    import subprocess
    import sys

    code = "import sys, dlsr_core.explorer, dlsr_core.metrics; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
