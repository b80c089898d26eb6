"""Feature-map inputs: points, projection keys (what positions depend on), the shipped map, rank colouring."""

import numpy as np
import pytest
import shipped

from dlsr_core import explorer
from dlsr_core.explorer import maps
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS


@pytest.fixture(scope="module")
def id_features(detector):
    return explorer.load_features(detector, shipped.ID_SET)


def test_map_points_stack_originals_and_reconstructions_with_every_score(detector, id_features):
    points = explorer.map_points(
        detector, {"id": id_features.features}, {"id": id_features.indices.numpy()}, 3, per_set=20
    )
    assert points.matrix.shape == (40, detector.info.config.feature_dim)
    assert points.kinds.count("reconstructed") == 20 and set(points.scores) == {"mse", "mfsim", "lr"}
    originals = points.mask("id", "original")
    reference = detector.score_features(id_features.features[explorer.subsample_rows(len(id_features), 20)], 3)
    np.testing.assert_allclose(points.scores["mfsim"][originals], reference.mfsim, rtol=1e-5)
    # A reconstruction carries its original's score.
    np.testing.assert_array_equal(points.scores["mse"][~originals], points.scores["mse"][originals])


def test_projection_key_ignores_t_steps_and_draws_only_without_reconstructions():
    sizes = {"id": 100, "ood": 50}
    key = lambda recon, t, steps=1, draws=1: explorer.map_setting("m@1", sizes, 20, recon, t, steps, draws)  # noqa: E731
    assert key(False, 3) == key(False, 8, 5, 4)
    assert key(True, 3) != key(True, 8) and key(True, 3) != key(True, 3, draws=4)
    assert key(True, 3) != explorer.map_setting("m@2", sizes, 20, True, 3, 1, 1)
    assert key(True, 3) != explorer.map_setting("m@1", sizes, 50, True, 3, 1, 1)
    assert hash(key(True, 3)) == hash(key(True, 3))  # usable as a cache key


def test_shipped_projection_round_trip_and_mismatch(tmp_path):
    setting = explorer.map_setting("m@1", {"id": 10}, 10, True, 5, 1, 1)
    coordinates = np.arange(20, dtype=np.float32).reshape(10, 2) / 4
    explorer.save_projection(setting, coordinates, tmp_path / "map.npz")
    np.testing.assert_allclose(explorer.load_shipped_projection(setting, tmp_path / "map.npz"), coordinates)
    other = explorer.map_setting("m@1", {"id": 10}, 10, True, 6, 1, 1)
    assert explorer.load_shipped_projection(other, tmp_path / "map.npz") is None
    assert explorer.load_shipped_projection(setting, tmp_path / "missing.npz") is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert explorer.load_shipped_projection(setting, tmp_path / "bad.npz") is None


def test_the_shipped_map_matches_the_feature_map_pages_first_view(detector):
    """scripts/make_feature_map_asset.py must be re-run when the shipped model or the page's defaults change."""
    from pages.shared import DEFAULT_TIMESTEP

    assert maps.DEFAULT_TIMESTEP == DEFAULT_TIMESTEP == detector.scoring.timestep  # pages open at the model's own t
    specs = [shipped.ID_SET, *shipped.OOD_SETS]
    sizes = {spec: len(explorer.load_features(detector, spec)) for spec in specs}
    setting = explorer.map_setting(
        explorer.model_id(detector), sizes, maps.DEFAULT_PER_SET, True, DEFAULT_TIMESTEP, DEFAULT_STEPS, DEFAULT_DRAWS
    )
    coordinates = explorer.load_shipped_projection(setting)
    assert coordinates is not None, "re-run python scripts/make_feature_map_asset.py"
    assert coordinates.shape == (2 * maps.DEFAULT_PER_SET * len(specs), 2) and np.isfinite(coordinates).all()
    assert maps.SHIPPED_MAP.stat().st_size < 50_000


def test_rank_percentiles_spread_colours_and_share_ties():
    values = np.array([5.0, 1000.0, 1.0, 5.0, 2.0])
    np.testing.assert_allclose(explorer.rank_percentiles(values), [62.5, 100.0, 0.0, 62.5, 25.0])
    assert explorer.rank_percentiles(np.array([3.0])).tolist() == [50.0]


def test_share_among_id_counts_ood_points_inside_the_id_area():
    rng = np.random.default_rng(0)
    id_points = rng.uniform(0, 10, (200, 2))
    inside, outside = rng.uniform(2, 8, (10, 2)), rng.uniform(50, 60, (10, 2))
    coordinates = np.vstack([id_points, inside, outside, inside])
    sets = ["id"] * 200 + ["a"] * 10 + ["b"] * 10 + ["a"] * 10
    kinds = ["original"] * 220 + ["reconstructed"] * 10  # reconstructions do not count
    assert explorer.share_among_id(coordinates, sets, kinds, "id") == {"a": 1.0, "b": 0.0}
