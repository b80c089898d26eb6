"""The official preset's test-time items: fp16 autocast when scoring (not in training) and LR's separate noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlsr_core.diffusion import LFDNConfig, reconstruct
from dlsr_core.presets import DEFAULT_TEST_TIME, TestTimeOptions, get_preset, with_overrides
from dlsr_core.scoring import SEPARATE_LR_DRAW_OFFSET, Detector, mse_score
from dlsr_core.training import Provenance, TrainConfig, train

DIMS = (4, 6)


@pytest.fixture(scope="module")
def official_run(tmp_path_factory):
    """A tiny LFDN trained 3 epochs (first + last checkpoints) under the official preset's name."""
    run = tmp_path_factory.mktemp("official") / "run"
    torch.manual_seed(0)
    train(
        torch.randn(96, sum(DIMS)),
        run,
        LFDNConfig(feature_dim=sum(DIMS), width=16, depth=1),
        TrainConfig(epochs=3, batch_size=32, learning_rate=1e-2),
        Provenance("toy_backbone", "random", 64, DIMS, "fake", preset="official"),
    )
    return run


def test_presets_autocast_at_test_time_only():
    official, paper = get_preset("official"), get_preset("paper")
    assert official.training.amp is False  # the released engine.py trains without autocast
    assert official.test_time == TestTimeOptions(autocast=True, lr_noise="separate")
    assert paper.test_time == DEFAULT_TEST_TIME == TestTimeOptions(autocast=False, lr_noise="shared")
    with pytest.raises(Exception, match="lr_noise"):
        with_overrides(DEFAULT_TEST_TIME, lr_noise="fresh")


def test_a_checkpoint_scores_with_its_presets_test_time_options(official_run):
    detector = Detector.load(official_run, device="cpu")
    assert detector.preset == "official" and detector.test_time == get_preset("official").test_time
    assert detector.with_scoring(detector.scoring).test_time == detector.test_time  # kept unless replaced


def test_separate_lr_noise_is_the_early_models_own_draw(official_run):
    detector = Detector.load(official_run, device="cpu").with_scoring(
        get_preset("paper").scoring, TestTimeOptions(autocast=False, lr_noise="separate")
    )
    shared = detector.with_scoring(detector.scoring, TestTimeOptions(autocast=False, lr_noise="shared"))
    z0 = torch.randn(20, sum(DIMS))
    separate_lr, shared_lr = detector.score_features(z0, t=5).lr, shared.score_features(z0, t=5).lr
    final = reconstruct(detector.final.model, detector.schedule, z0, 5, 1, 1.0, 0, draw=0)
    early_own = reconstruct(detector.early.model, detector.schedule, z0, 5, 1, 1.0, 0, draw=SEPARATE_LR_DRAW_OFFSET)
    early_same = reconstruct(detector.early.model, detector.schedule, z0, 5, 1, 1.0, 0, draw=0)
    np.testing.assert_allclose(separate_lr, (mse_score(z0, early_own) - mse_score(z0, final)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(shared_lr, (mse_score(z0, early_same) - mse_score(z0, final)).numpy(), rtol=1e-5)
    assert not np.allclose(separate_lr, shared_lr)


def test_test_time_autocast_rounds_like_fp16(official_run):
    base = Detector.load(official_run, device="cpu")
    plain = base.with_scoring(base.scoring, TestTimeOptions(autocast=False))
    autocast = base.with_scoring(base.scoring, TestTimeOptions(autocast=True))
    z0 = torch.randn(16, sum(DIMS))
    with torch.autocast("cpu", dtype=torch.float16):
        expected = reconstruct(base.final.model, base.schedule, z0, 5, 1, 1.0, 0, sampler=base.scoring.sampler).float()
    got = autocast.reconstruct(z0)
    torch.testing.assert_close(got, expected)
    assert got.dtype == torch.float32
    difference = (got - plain.reconstruct(z0)).abs().max().item()
    assert 0 < difference < 0.05  # fp16 rounding: different, and small


def test_cli_test_time_flags_override_the_preset(official_run, tmp_path, monkeypatch):
    import argparse

    from dlsr_core.cli.sampling import add_sampling_options, load_detector

    parser = argparse.ArgumentParser()
    add_sampling_options(parser)
    args = parser.parse_args(["--checkpoint", str(official_run)])
    assert load_detector(args).test_time == TestTimeOptions(autocast=True, lr_noise="separate")
    args = parser.parse_args(["--checkpoint", str(official_run), "--no-test-autocast", "--lr-noise", "shared"])
    assert load_detector(args).test_time == DEFAULT_TEST_TIME
    args = parser.parse_args(["--checkpoint", str(official_run), "--preset", "paper"])
    assert load_detector(args).test_time == DEFAULT_TEST_TIME
