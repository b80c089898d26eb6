"""The "How DLSR works" core: one image traced step by step, and the "what counts as OOD?" shift comparison."""

import numpy as np
import pytest
import shipped
import torch
from sklearn.metrics import roc_auc_score

from dlsr_core import explorer
from dlsr_core.data import open_dataset
from dlsr_core.diffusion import _denoise
from dlsr_core.metrics import ood_metrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def id_features(detector):
    return explorer.load_features(detector, shipped.ID_SET)


@pytest.fixture(scope="module")
def reference(detector, id_features):
    return explorer.score_matrix(detector, id_features.features, 5)


def test_the_noised_vector_is_the_one_the_reconstruction_starts_from(detector, id_features):
    z0 = id_features.features[:3]
    for timestep in (3, 20):
        noised = explorer.noised_features(detector, z0, timestep)
        # with one DDIM step the reconstruction is the model's x0 prediction from exactly that z_t
        expected = _denoise(detector.final.model, noised, timestep, 4096)
        torch.testing.assert_close(detector.reconstruct(z0, timestep, steps=1), expected)
        alpha_bar = float(detector.schedule.alpha_bar[timestep])
        noise = (noised - alpha_bar**0.5 * z0) / (1 - alpha_bar) ** 0.5
        assert noise.std().item() == pytest.approx(1.0, abs=0.08)


def test_trace_matches_the_core_scores_and_the_timestep_moves_it(detector, id_features, reference):
    row = 7
    trace = explorer.trace_image(detector, id_features.features[row], reference, "mfsim", 5)
    core = detector.score_features(id_features.features[[row]], 5)
    assert trace.score == pytest.approx(float(core.mfsim[0]), abs=1e-7)
    np.testing.assert_allclose(trace.stage_cos, core.stage_cos[0], atol=1e-7)
    np.testing.assert_allclose(trace.reconstruction, core.reconstruction[0].numpy(), atol=1e-7)
    assert [len(block) for block in trace.split(trace.features)] == list(detector.stage_dims)
    assert trace.threshold == explorer.id_threshold95(reference["mfsim"])
    assert trace.verdict == ("OOD" if trace.score > trace.threshold else "ID")
    # the image is one of the reference images: it ties with itself, and a tie counts half
    below, ties = np.sum(reference["mfsim"] < trace.score), np.sum(reference["mfsim"] == trace.score)
    assert ties >= 1 and trace.id_percentile == pytest.approx(100 * (below + 0.5 * ties) / len(reference["mfsim"]))
    assert trace.profile.names[0].label == "stage 1 · edges/colour · 16 ch"
    # same row scored in the reference: its per-stage percentile is computed against itself and its 1,999 peers
    assert trace.profile.reference_size == len(reference["mfsim"])
    later = explorer.trace_image(
        detector, id_features.features[row], explorer.score_matrix(detector, id_features.features, 30), "mfsim", 30
    )
    assert later.noise_scale > 3 * trace.noise_scale
    assert np.abs(later.noised - trace.noised).mean() > 0.1  # visibly different in the picture
    assert not np.allclose(later.reconstruction, trace.reconstruction)
    np.testing.assert_array_equal(later.features, trace.features)


def test_trace_follows_the_chosen_score(detector, id_features, reference):
    trace = explorer.trace_image(detector, id_features.features[3], reference, "mse", 5)
    assert trace.score == pytest.approx(float(trace.stage_sq_error.sum()), rel=1e-5)
    assert trace.profile.score == "mse" and trace.profile.quantity == "squared error"


def test_contrast_shift_halves_the_distance_to_the_mean_grey():
    original = np.asarray(open_dataset(shipped.ID_SET)[0].convert("L"), dtype=float)
    shifted = np.asarray(open_dataset(f"{shipped.ID_SET}+contrast")[0].convert("L"), dtype=float)
    assert shifted.std() == pytest.approx(original.std() / 2, rel=0.05)


def test_shift_comparison_auroc_equals_the_metrics_module(detector, id_features):
    from dlsr_core.backbones import create_feature_extractor

    rows = explorer.shift_rows(len(id_features), 120)
    positions = id_features.indices.numpy()[rows]
    extractor = create_feature_extractor(detector.backbone, detector.backbone_weights())
    shifted = explorer.shifted_features(extractor, detector.input_size, shipped.ID_SET, positions, "vflip")
    original = id_features.features[torch.as_tensor(rows)]
    comparison = explorer.compare_shift(detector, original, shifted, "vflip", "mfsim", 5)
    expected = detector.score_features(shifted, 5).mfsim
    np.testing.assert_allclose(comparison.shifted_scores, expected, atol=1e-7)
    assert comparison.metrics == ood_metrics(comparison.id_scores, comparison.shifted_scores)
    labels = np.r_[np.ones(len(rows)), np.zeros(len(rows))]
    assert comparison.metrics.auroc == pytest.approx(
        roc_auc_score(labels, -np.r_[comparison.id_scores, comparison.shifted_scores])
    )
    assert comparison.metrics.auroc > 0.8  # measured 0.92 on 500 images: upside-down clothes are flagged
    # Shifting nothing: the very same feature vectors get the very same scores, so the AUROC is exactly 0.5.
    unchanged = explorer.compare_shift(detector, original, original.clone(), "none", "mfsim", 5)
    assert unchanged.metrics.auroc == 0.5
    with pytest.raises(ValueError, match="unknown shift"):
        explorer.shifted_features(extractor, detector.input_size, shipped.ID_SET, positions[:2], "melt")
