import numpy as np
import pytest
import torch

from dlsr_core.baselines import KNNBaseline, MahalanobisBaseline, NotFittedError
from dlsr_core.checkpoint import CheckpointError
from dlsr_core.scoring import mfsim_score, mse_score, stage_cosine_similarity, stage_squared_error

STAGES = (3, 5, 4)


def test_mfsim_of_identical_vectors_is_minus_one():
    z = torch.randn(6, 12)
    assert torch.allclose(mfsim_score(z, z.clone(), STAGES), torch.full((6,), -1.0), atol=1e-6)


def test_mfsim_is_per_stage_not_global():
    z = torch.ones(1, 12)
    reconstruction = z.clone()
    reconstruction[0, :3] = -1.0  # first stage flipped: cos -1, the other two stages +1
    assert torch.allclose(stage_cosine_similarity(z, reconstruction, STAGES), torch.tensor([[-1.0, 1.0, 1.0]]))
    assert mfsim_score(z, reconstruction, STAGES).item() == pytest.approx(-1.0 / 3.0)


def test_mse_is_summed_squared_error():
    z = torch.zeros(2, 12)
    reconstruction = torch.zeros(2, 12)
    reconstruction[0, 0], reconstruction[1] = 3.0, 1.0
    assert mse_score(z, reconstruction).tolist() == [9.0, 12.0]


def test_stage_sizes_must_cover_features():
    with pytest.raises(CheckpointError, match="sum to 11"):
        stage_cosine_similarity(torch.ones(1, 12), torch.ones(1, 12), (3, 4, 4))


def brute_force_knn(train, queries, k):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    distances = np.linalg.norm(queries[:, None, :] - train[None, :, :], axis=2)
    return np.sort(distances, axis=1)[:, k - 1]


def test_knn_matches_brute_force():
    rng = np.random.default_rng(0)
    train, queries = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    knn = KNNBaseline(k=5, chunk_size=3).fit(torch.tensor(train))
    assert np.allclose(knn.score(torch.tensor(queries)), brute_force_knn(train, queries, 5), atol=1e-5)


def test_mahalanobis_matches_numpy_and_orders_outliers():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(500, 4)) * [1.0, 2.0, 0.5, 1.0]
    detector = MahalanobisBaseline().fit(torch.tensor(train))
    queries = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    # pytorch-ood's convention: half the squared distance under the scatter matrix (covariance x (N - 1))
    inverse = np.linalg.inv(np.cov(train, rowvar=False) * (len(train) - 1))
    centered = queries - train.mean(axis=0)
    expected = 0.5 * np.einsum("nd,de,ne->n", centered, inverse, centered)
    scores = detector.score(torch.tensor(queries))
    assert np.allclose(scores, expected, rtol=1e-4)
    assert scores[1] > scores[0]


def test_baselines_refuse_to_score_before_fit():
    with pytest.raises(NotFittedError):
        KNNBaseline().score(torch.ones(1, 3))
    with pytest.raises(NotFittedError):
        MahalanobisBaseline().score(torch.ones(1, 3))


def test_stage_squared_error_sums_to_the_mse():
    z, reconstruction = torch.randn(4, 12), torch.randn(4, 12)
    per_stage = stage_squared_error(z, reconstruction, STAGES)
    assert per_stage.shape == (4, 3)
    assert torch.allclose(per_stage.sum(dim=1), mse_score(z, reconstruction))
    assert torch.allclose(per_stage[:, 0], (z[:, :3] - reconstruction[:, :3]).pow(2).sum(dim=1))


def test_same_image_same_score_in_any_batch(detector):
    """Duplicates in one batch score identically; batches of 1, 7 and 4096 give identical scores."""
    features = torch.randn(100, detector.info.config.feature_dim, generator=torch.Generator().manual_seed(5))
    batch = torch.cat([features, features[[10, 10, 42]]])
    together = detector.score_features(batch, t=5, steps=2)
    for name in ("mse", "mfsim", "lr"):
        values = together.get(name)
        assert values[100] == values[101] == values[10] and values[102] == values[42]
    reference = detector.score_features(features, t=5, steps=2)
    for size in (1, 7, 4096):
        parts = [detector.score_features(part, t=5, steps=2) for part in features.split(size)]
        for name in ("mse", "mfsim", "lr"):
            assert np.array_equal(np.concatenate([p.get(name) for p in parts]), reference.get(name)), (size, name)


def test_draws_average_independent_noise(detector):
    features = torch.randn(40, detector.info.config.feature_dim, generator=torch.Generator().manual_seed(6))
    single = detector.score_features(features, t=5, seed=3, draws=1, with_lr=False)
    averaged = detector.score_features(features, t=5, seed=3, draws=3, with_lr=False)
    per_draw = np.stack(
        [(features - detector.reconstruct(features, 5, seed=3, draw=d)).pow(2).sum(dim=1).numpy() for d in range(3)]
    )
    assert np.allclose(averaged.mse, per_draw.mean(axis=0), rtol=1e-5)
    assert np.allclose(single.mse, per_draw[0], rtol=1e-6)  # stage-wise vs whole-vector summation order
    assert not np.allclose(per_draw[0], per_draw[1])
    assert averaged.draws == 3 and averaged.stage_sq_error.shape == (40, len(detector.stage_dims))
    other_seed = detector.score_features(features, t=5, seed=4, draws=1, with_lr=False)
    assert not np.allclose(other_seed.mse, single.mse)
