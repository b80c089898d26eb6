"""The Score-distributions core: any method's scores -> metrics, wide table, CSV; budgets; the sweep's sentence."""

import csv
import io

import numpy as np
import pytest
import shipped
import torch

from dlsr_core import explorer
from dlsr_core.metrics import ood_metrics


def method(name: str, scores: dict[str, list[float]], note: str = "") -> explorer.MethodScores:
    return explorer.MethodScores(name, name.upper(), "test", {k: np.asarray(v, float) for k, v in scores.items()}, note)


SCORES = {
    "id": [0.0, 0.1, 0.2, 0.3],
    "far": [0.9, 1.0, 0.05, 1.2],  # one OOD image among the ID scores
    "near": [0.25, 0.15, 0.35, 0.5],
}
GROUPS = {"far": "far", "near": "near"}


def test_metrics_match_the_core_metrics_and_averages_follow_the_groups():
    evaluation = explorer.evaluate_methods("id", GROUPS, [method("a", SCORES)], {"t": 3})
    for ood_set in GROUPS:
        assert evaluation.metric("a", ood_set) == ood_metrics(SCORES["id"], SCORES[ood_set])
    assert evaluation.average("a", "far").auroc == evaluation.metric("a", "far").auroc
    both = (evaluation.metric("a", "far").auroc + evaluation.metric("a", "near").auroc) / 2
    assert evaluation.average("a").auroc == pytest.approx(both)
    with pytest.raises(KeyError, match="no metrics for method 'b'"):
        evaluation.metric("b", "far")


def test_extra_methods_join_an_evaluation_and_replace_by_name():
    evaluation = explorer.evaluate_methods("id", GROUPS, [method("a", SCORES)])
    flipped = {name: [-v for v in values] for name, values in SCORES.items()}
    extended = explorer.with_methods(evaluation, [method("pixel", flipped, "fitted elsewhere")])
    assert extended.method_names == ["a", "pixel"] and evaluation.method_names == ["a"]  # the input is unchanged
    assert extended.metric("pixel", "far").auroc == pytest.approx(1 - evaluation.metric("a", "far").auroc)
    replaced = explorer.with_methods(extended, [method("a", flipped)])
    assert replaced.metric("a", "far").auroc == extended.metric("pixel", "far").auroc
    with pytest.raises(ValueError, match="no scores for near"):
        explorer.with_methods(evaluation, [method("bad", {"id": [0.0], "far": [1.0]})])


def test_wide_table_has_a_row_per_set_and_average_and_a_column_group_per_method():
    evaluation = explorer.evaluate_methods("id", GROUPS, [method("a", SCORES), method("b", SCORES)])
    labels, columns, values = explorer.wide_table(evaluation, metrics=("auroc", "fpr95"))
    assert labels == ["far (far)", "near (near)", "average far", "average near", "average all"]
    assert columns == [("A", "AUROC"), ("A", "FPR95"), ("B", "AUROC"), ("B", "FPR95")]
    assert values[0][0] == pytest.approx(100 * evaluation.metric("a", "far").auroc)
    assert values[4][1] == pytest.approx(100 * evaluation.average("a").fpr95)


def test_metrics_csv_carries_the_settings_on_every_line():
    settings = {"model_id": "default@abc", "t": 5, "steps": 2, "draws": 4, "seed": 0}
    evaluation = explorer.evaluate_methods("id", GROUPS, [method("a", SCORES, "half of ID")], settings)
    rows = list(csv.DictReader(io.StringIO(explorer.metrics_csv(evaluation))))
    assert [r["ood_set"] for r in rows] == ["far", "near", "average far", "average near", "average all"]
    assert all(r["model_id"] == "default@abc" and (r["t"], r["steps"], r["draws"]) == ("5", "2", "4") for r in rows)
    assert float(rows[0]["auroc"]) == pytest.approx(evaluation.metric("a", "far").auroc)
    assert rows[0]["note"] == "half of ID" and rows[0]["id_images"] == "4" and rows[0]["ood_images"] == "4"


def test_budget_rows_cut_every_set_by_the_same_share_and_are_nested():
    sizes = {"id": 2000, "ood": 1000}
    assert explorer.budget_rows(sizes, passes_per_row=1, budget=3000) is None
    rows = explorer.budget_rows(sizes, passes_per_row=4, budget=3000, minimum=10)
    assert {name: len(r) for name, r in rows.items()} == {"id": 500, "ood": 250}
    assert all(np.all(np.diff(r) > 0) and r.max() < sizes[name] for name, r in rows.items())
    assert explorer.budget_rows(sizes, 4, budget=3000, minimum=10) is not None  # deterministic
    np.testing.assert_array_equal(rows["id"], explorer.budget_rows(sizes, 4, budget=3000, minimum=10)["id"])
    tiny = explorer.budget_rows(sizes, passes_per_row=100, budget=3000, minimum=300)
    assert len(tiny["ood"]) == 300
    # Over the budget, a subset is sized to the (smaller) subset budget so that costly settings answer faster.
    smaller = explorer.budget_rows(sizes, passes_per_row=2, budget=3000, minimum=10, subset_budget=1500)
    assert {name: len(r) for name, r in smaller.items()} == {"id": 500, "ood": 250}


def test_baselines_without_training_features_use_halves_of_the_id_set_and_say_so():
    rng = np.random.default_rng(0)
    features = {"id": torch.tensor(rng.normal(size=(40, 6)), dtype=torch.float32)}
    features["far"] = features["id"][:10] + 5.0
    seen = []
    knn, mahalanobis = explorer.baseline_methods(
        "id", features, None, None, knn_k=3, progress=lambda *a: seen.append(a)
    )
    assert seen[0] == (0, 6, "fitting k-NN on 20 features") and seen[-1] == (6, 6, "")
    assert len(knn.scores["id"]) == 20 and len(knn.scores["far"]) == 10
    assert "even rows" in knn.note and "differ" in knn.note
    fitted = explorer.baseline_methods("id", features, None, features["id"], knn_k=3)[0]
    assert len(fitted.scores["id"]) == 40 and "all 40" in fitted.note
    assert mahalanobis.scores["far"].min() > np.median(mahalanobis.scores["id"])


def test_dlsr_methods_equal_the_detector_scores_on_the_chosen_rows(detector):
    id_features = explorer.load_features(detector, shipped.ID_SET).features[:64]
    ood = explorer.load_features(detector, "demo:digits").features[:32]
    rows = {"id": np.arange(0, 64, 2), "digits": np.arange(32)}
    seen = []
    methods = explorer.dlsr_methods(
        detector, {"id": id_features, "digits": ood}, 3, 1, 2, rows=rows, progress=lambda *a: seen.append(a)
    )
    assert [m.name for m in methods] == ["mse", "mfsim", "lr"] and "32/64" in methods[0].note
    reference = detector.score_features(id_features[0::2], 3, 1, draws=2)
    np.testing.assert_allclose(methods[1].scores["id"], reference.mfsim, rtol=1e-5)
    np.testing.assert_allclose(methods[2].scores["id"], reference.lr, rtol=1e-4, atol=1e-4)
    assert seen[0] == (0, 64, "id") and seen[1] == (32, 64, "digits") and seen[-1] == (64, 64, "")  # rows scored


def test_dlsr_methods_score_large_sets_in_chunks_with_the_same_scores(detector, monkeypatch):
    from dlsr_core.explorer import distributions

    features = {"id": explorer.load_features(detector, shipped.ID_SET).features[:50]}
    whole = explorer.dlsr_methods(detector, features, 5, with_lr=False)
    monkeypatch.setattr(distributions, "CHUNK_ROWS", 16)
    seen = []
    chunked = explorer.dlsr_methods(detector, features, 5, with_lr=False, progress=lambda *a: seen.append(a))
    assert [done for done, _, _ in seen] == [0, 16, 32, 48, 50]
    np.testing.assert_allclose(chunked[1].scores["id"], whole[1].scores["id"], rtol=1e-5)


def test_sweep_summary_reads_the_measured_curve():
    curves = {"demo:a": [0.90, 0.99, 0.95, 0.80], "demo:b": [0.95, 0.97, 0.97, 0.96]}
    text = explorer.sweep_summary([1, 3, 10, 20], curves, "MFsim")
    assert "peaks at t = 3 (98.0 %)" in text and "falls to 88.0 % at t = 20" in text
    assert "a loses most (99.0 → 80.0 %)" in text and "rising from 92.5 % at t = 1" in text
    rising = explorer.sweep_summary([20, 1], {"x": [0.9, 0.8]}, "MSE")  # unsorted input is sorted
    assert "still rising at the largest t tried" in rising and "t = 20 (90.0 %)" in rising
    flat = explorer.sweep_summary([1, 5, 20], {"x": [0.990, 0.991, 0.989]}, "MFsim")
    assert "nearly flat here: between 98.9 % and 99.1 % for t = 1–20 (highest at t = 5)" in flat


def test_page_mahalanobis_drops_the_redundant_stage_channels_like_the_evaluation(detector):
    """Per-stage-standardized features have a singular covariance; the page's Mahalanobis must use the stage dims."""
    from dlsr_core.baselines import MahalanobisBaseline

    id_features = explorer.load_features(detector, shipped.ID_SET).features
    rotated = explorer.load_features(detector, "demo:fashion_mnist_rotated").features
    features = {"id": id_features, "rotated": rotated}
    page = explorer.baseline_methods("id", features, tuple(detector.stage_dims))[1]
    reference = MahalanobisBaseline(detector.stage_dims).fit(id_features[0::2])
    np.testing.assert_allclose(page.scores["rotated"], reference.score(rotated), rtol=1e-5)
    np.testing.assert_allclose(page.scores["id"], reference.score(id_features[1::2]), rtol=1e-5)
