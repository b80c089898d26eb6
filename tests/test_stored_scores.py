"""k-NN and Mahalanobis scores are fitted once per model and data and stored; nothing else ever reuses them."""

import numpy as np
import pytest
import shipped
import torch

from dlsr_core import explorer
from dlsr_core.explorer import stored_scores

torch.set_num_threads(1)
SPECS = [shipped.ID_SET, *shipped.OOD_SETS]


@pytest.fixture(scope="module")
def demo(detector):
    return {spec: explorer.load_features(detector, spec).features for spec in SPECS}


def test_store_round_trip_and_key_check(tmp_path):
    methods = [explorer.MethodScores("knn", "k-NN", "baseline", {"a": np.arange(3.0), "b": np.ones(2)}, "note")]
    path = tmp_path / "s.npz"
    stored_scores.save_method_scores(path, "key-1", methods)
    back = stored_scores.load_method_scores(path, "key-1")
    assert back[0].name == "knn" and back[0].note == "note" and np.array_equal(back[0].scores["a"], [0, 1, 2])
    assert stored_scores.load_method_scores(path, "key-2") is None  # another model or set
    path.write_bytes(b"damaged")
    assert stored_scores.load_method_scores(path, "key-1") is None


def test_fitted_once_then_read_back_and_never_shared_across_models(detector, demo, tmp_path, monkeypatch):
    monkeypatch.setenv("DLSR_CACHE_DIR", str(tmp_path / "cache"))
    small = {spec: matrix[:60] for spec, matrix in demo.items()}
    train = demo[shipped.ID_SET][1000:1400]  # a stand-in training set keeps the test fast
    calls = []

    def training():
        calls.append(1)
        return train

    absent = tmp_path / "none.npz"
    args = (small, shipped.ID_SET, tuple(detector.stage_dims), shipped.EXPERIMENT.training_set, training)
    first, on_train = explorer.distance_scores("model@a", *args, shipped=absent)
    assert on_train and calls == [1] and "fitted on all 400" in first[0].note
    expected = explorer.baseline_methods(shipped.ID_SET, small, tuple(detector.stage_dims), train)
    for got, want in zip(first, expected, strict=True):
        assert all(np.array_equal(got.scores[s], want.scores[s]) for s in small)
    monkeypatch.setattr(stored_scores, "baseline_methods", lambda *a, **k: pytest.fail("refitted"))
    again, on_train = explorer.distance_scores("model@a", *args, shipped=absent)
    assert on_train and calls == [1]
    assert all(np.array_equal(a.scores[s], b.scores[s]) for a, b in zip(again, first, strict=True) for s in small)
    with pytest.raises(pytest.fail.Exception, match="refitted"):
        explorer.distance_scores("model@b", *args, shipped=absent)  # another model: never the stored scores
    with pytest.raises(pytest.fail.Exception, match="refitted"):
        explorer.distance_scores("model@a", {**small, "demo:digits": small["demo:digits"][:5]}, *args[1:])


def test_without_training_features_they_are_fitted_on_half_the_id_set(detector, demo, tmp_path, monkeypatch):
    monkeypatch.setenv("DLSR_CACHE_DIR", str(tmp_path / "cache"))
    small = {spec: matrix[:40] for spec, matrix in demo.items()}
    methods, on_train = explorer.distance_scores(
        "model@a",
        small,
        shipped.ID_SET,
        tuple(detector.stage_dims),
        shipped.EXPERIMENT.training_set,
        lambda: None,
        shipped=tmp_path / "no",
    )
    assert not on_train and "even rows of the ID set" in methods[0].note
    assert len(methods[0].scores[shipped.ID_SET]) == 20


def test_the_shipped_scores_are_those_of_a_fresh_fit(detector, demo):
    """assets/distance_scores_default.npz (scripts/make_distance_scores_asset.py) holds this model's scores."""
    train = explorer.cached_features_only(detector, shipped.EXPERIMENT.training_set)
    if train is None:
        pytest.skip("fashion_mnist:train features are not cached here")
    train_identity = stored_scores.dataset_identity(shipped.EXPERIMENT.training_set)
    key = stored_scores.scores_key(explorer.model_id(detector), demo, train_identity)
    stored = stored_scores.load_method_scores(explorer.SHIPPED_DISTANCE_SCORES, key)
    assert stored is not None, "re-run python scripts/make_distance_scores_asset.py"
    fresh = explorer.baseline_methods(shipped.ID_SET, demo, tuple(detector.stage_dims), train.features)
    for got, want in zip(stored, fresh, strict=True):
        for spec in SPECS:
            # k-NN distances come from 1 - cosine near 1: float32 matrix products on other thread counts move
            # them by ~1e-5
            np.testing.assert_allclose(got.scores[spec], want.scores[spec], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("spec", ["fashion_mnist:train", "demo:letters"])
def test_dataset_identity_is_the_feature_cache_s(spec):
    from dlsr_core.data import DatasetError, open_dataset

    try:
        expected = open_dataset(spec).identity
    except DatasetError:
        pytest.skip(f"{spec} is not installed here")
    assert stored_scores.dataset_identity(spec) == expected
    assert stored_scores.dataset_identity("folder:/no/such/folder") is None
