"""Reconstruction noise is a function of (row values, seed, draw): one image, one score."""

import numpy as np
import pytest
import torch
from scipy import stats

from dlsr_core.noise import keyed_standard_normal, row_noise_keys


def test_keyed_noise_is_standard_normal():
    keys = row_noise_keys(torch.randn(400, 8), seed=0)
    sample = keyed_standard_normal(keys, stream=0, dim=501).numpy().reshape(-1)  # odd dim: Box-Muller remainder
    assert sample.shape == (400 * 501,)
    assert abs(sample.mean()) < 0.01 and sample.std() == pytest.approx(1.0, abs=0.01)
    assert stats.kstest(sample, "norm").pvalue > 1e-3
    # dimensions are uncorrelated: the largest off-diagonal correlation of 2,000 rows x 6 dims is small
    block = keyed_standard_normal(row_noise_keys(torch.randn(2000, 3), 1), 0, 6).numpy()
    correlation = np.corrcoef(block, rowvar=False)
    assert np.abs(correlation - np.eye(6)).max() < 0.08


def test_identical_rows_get_identical_noise_wherever_they_are():
    rows = torch.randn(5, 16)
    batch = torch.cat([rows, rows[[3]], torch.randn(2, 16), rows[[3]]])
    noise = keyed_standard_normal(row_noise_keys(batch, seed=7), stream=2, dim=16)
    assert torch.equal(noise[3], noise[5]) and torch.equal(noise[3], noise[8])
    alone = keyed_standard_normal(row_noise_keys(rows[[3]], seed=7), stream=2, dim=16)
    assert torch.equal(alone[0], noise[3])
    assert not torch.equal(noise[0], noise[1])


def test_seed_stream_and_values_each_change_the_noise():
    rows = torch.randn(3, 10)
    base = keyed_standard_normal(row_noise_keys(rows, seed=0), 0, 10)
    other_seed = keyed_standard_normal(row_noise_keys(rows, seed=1), 0, 10)
    other_stream = keyed_standard_normal(row_noise_keys(rows, seed=0), 1, 10)
    nudged = rows.clone()
    nudged[0, 0] = torch.nextafter(nudged[0, 0], torch.tensor(10.0))
    other_values = keyed_standard_normal(row_noise_keys(nudged, seed=0), 0, 10)
    for changed in (other_seed, other_stream):
        assert (changed - base).abs().min() > 0  # every element differs
    assert not torch.equal(other_values[0], base[0]) and torch.equal(other_values[1:], base[1:])
    # uncorrelated across seeds
    many = torch.randn(3000, 4)
    a = keyed_standard_normal(row_noise_keys(many, 0), 0, 4).reshape(-1)
    b = keyed_standard_normal(row_noise_keys(many, 1), 0, 4).reshape(-1)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05


def test_negative_zero_hashes_like_zero_and_keys_accept_any_integer_seed():
    plus, minus = torch.zeros(1, 4), -torch.zeros(1, 4)
    assert row_noise_keys(plus, 3)[0] == row_noise_keys(minus, 3)[0]
    assert row_noise_keys(plus, -1)[0] != row_noise_keys(plus, 2**100)[0]
    assert row_noise_keys(torch.empty(0, 4), 0).shape == (0,)


def test_per_row_streams_equal_one_stream_at_a_time():
    keys = row_noise_keys(torch.randn(6, 5), seed=3)
    streams = np.array([0, 1, 2, 1 << 20, 7, 0], dtype=np.uint64)
    together = keyed_standard_normal(keys, streams, 9)
    for row, stream in enumerate(streams):
        assert torch.equal(together[row], keyed_standard_normal(keys[row : row + 1], int(stream), 9)[0])


@pytest.mark.parametrize("sampler", ["ddim", "official"])
def test_draws_in_one_batch_score_exactly_like_one_draw_at_a_time(detector, sampler):
    """score_features puts a few vectors' draws through the model together; the scores are bitwise those of the
    draws taken one after the other (each draw's reconstruction, summed in draw order)."""
    from dlsr_core.presets import ScoringOptions
    from dlsr_core.scoring import Detector, draw_groups, stage_cosine_similarity, stage_squared_error

    assert draw_groups(5, 2000, budget=4096) == [[0, 1], [2, 3], [4]]
    model = detector if sampler == "ddim" else Detector(detector.final, detector.early, ScoringOptions("official"))
    z0 = torch.randn(3, detector.info.config.feature_dim, generator=torch.Generator().manual_seed(0))
    result = model.score_features(z0, 5, 2, draws=6)
    errors = cosines = lr = None
    for draw in range(6):
        final = model.reconstruct(z0, 5, 2, draw=draw)
        early = model.reconstruct(z0, 5, 2, draw=draw, early=True)
        error = stage_squared_error(z0, final, detector.stage_dims)
        cosine = stage_cosine_similarity(z0, final, detector.stage_dims)
        gain = (z0 - early).pow(2).sum(dim=1) - error.sum(dim=1)
        errors = error if errors is None else errors + error
        cosines = cosine if cosines is None else cosines + cosine
        lr = gain if lr is None else lr + gain
    assert np.array_equal(result.stage_sq_error, (errors / 6).numpy())
    assert np.array_equal(result.stage_cos, (cosines / 6).numpy())
    assert np.array_equal(result.lr, (lr / 6).numpy())
    assert torch.equal(result.reconstruction, model.reconstruct(z0, 5, 2, draw=0))
