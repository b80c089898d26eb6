import json

import numpy as np
import pytest
import torch

from dlsr_core.checkpoint import (
    FIRST_NAME,
    LAST_NAME,
    CheckpointError,
    checksum_path,
    load_checkpoint,
)
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.metrics import ood_metrics
from dlsr_core.scoring import Detector
from dlsr_core.training import Provenance, TrainConfig, TrainingDivergedError, train

STAGES = (4, 4, 4)
PROVENANCE = Provenance("toy_backbone", "random", 32, STAGES, "toy:clusters")
MODEL = LFDNConfig(feature_dim=12, width=64, depth=2)


def clusters(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 12, generator=generator) * 3.0

    def draw(center, count):
        return centers[center] + 0.3 * torch.randn(count, 12, generator=generator)

    train_set = torch.cat([draw(0, 600), draw(1, 600)])
    id_test = torch.cat([draw(0, 100), draw(1, 100)])
    return train_set, id_test, draw(2, 200)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    train_set, id_test, ood_test = clusters()
    config = TrainConfig(epochs=12, batch_size=64, learning_rate=2e-3, ema_decay=0.99, checkpoint_every=5)
    result = train(train_set, run_dir, MODEL, config, PROVENANCE)
    return run_dir, result, id_test, ood_test


def test_two_clusters_trained_detector_flags_third_cluster(trained_run):
    run_dir, result, id_test, ood_test = trained_run
    assert result.epochs_done == 12 and not result.stopped_early
    detector = Detector.load(run_dir)
    id_scores = detector.score_features(id_test, t=10)
    ood_scores = detector.score_features(ood_test, t=10)
    assert ood_metrics(id_scores.mse, ood_scores.mse).auroc > 0.9
    assert ood_metrics(id_scores.mfsim, ood_scores.mfsim).auroc > 0.9


def test_lr_is_early_mse_minus_final_mse(trained_run):
    run_dir, _, id_test, _ = trained_run
    detector = Detector.load(run_dir)
    scores = detector.score_features(id_test, t=6, seed=2)
    early_only = Detector(detector.early).score_features(id_test, t=6, seed=2)
    assert np.allclose(scores.lr, early_only.mse - scores.mse, rtol=1e-5, atol=1e-5)


def test_first_and_last_checkpoints_are_kept(trained_run):
    run_dir, *_ = trained_run
    assert load_checkpoint(run_dir / FIRST_NAME).info.epoch == 1
    last = load_checkpoint(run_dir / LAST_NAME)
    assert last.info.epoch == 12
    assert last.info.backbone == "toy_backbone" and last.info.stage_dims == STAGES
    assert last.info.config == MODEL
    assert last.feature_mean.shape == (12,)


def test_save_load_round_trip_gives_identical_scores(trained_run, tmp_path):
    run_dir, _, id_test, _ = trained_run
    first = Detector.load(run_dir).score_features(id_test, t=7, seed=5)
    second = Detector.load(run_dir).score_features(id_test, t=7, seed=5)
    assert np.array_equal(first.mse, second.mse)
    assert np.array_equal(first.lr, second.lr)
    other_seed = Detector.load(run_dir).score_features(id_test, t=7, seed=6)
    assert not np.array_equal(first.mse, other_seed.mse)


def test_damaged_checkpoint_is_refused(trained_run, tmp_path):
    run_dir, *_ = trained_run
    copy = tmp_path / LAST_NAME
    data = (run_dir / LAST_NAME).read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    checksum_path(copy).write_bytes(checksum_path(run_dir / LAST_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="truncated or was altered"):
        load_checkpoint(copy)
    checksum_path(copy).unlink()  # without a checksum file the parse error is still caught
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(copy)


def test_wrong_feature_size_names_both_sides(trained_run):
    run_dir, *_ = trained_run
    detector = Detector.load(run_dir)
    with pytest.raises(CheckpointError, match=r"toy_backbone features \(12-d\).*resnet50 \(1792-d\)"):
        detector.check_features(torch.zeros(2, 1792), backbone="resnet50")


def test_resume_continues_to_the_same_weights(tmp_path):
    train_set, *_ = clusters(1)
    config = TrainConfig(epochs=4, batch_size=128, learning_rate=1e-3)
    straight = tmp_path / "straight"
    train(train_set, straight, MODEL, config, PROVENANCE)

    interrupted = tmp_path / "interrupted"
    calls = {"steps": 0}

    def stop_during_epoch_three() -> bool:
        calls["steps"] += 1
        return calls["steps"] == 2 * 10 + 3  # 10 steps per epoch: stop in the middle of epoch 3

    partial = train(train_set, interrupted, MODEL, config, PROVENANCE, should_stop=stop_during_epoch_three)
    assert partial.stopped_early and partial.epochs_done == 2
    assert load_checkpoint(interrupted / LAST_NAME).info.epoch == 2
    resumed = train(train_set, interrupted, MODEL, config, PROVENANCE)
    assert resumed.epochs_done == 4
    a = load_checkpoint(straight / LAST_NAME).model.state_dict()
    b = load_checkpoint(interrupted / LAST_NAME).model.state_dict()
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    train_set, *_ = clusters(2)
    train(train_set, tmp_path, MODEL, TrainConfig(epochs=1, batch_size=128), PROVENANCE)
    good = (tmp_path / LAST_NAME).read_bytes()
    # Resuming on features this large makes the squared error overflow to Inf in epoch 2.
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 1.*last good checkpoint"):
        train(train_set * 1e30, tmp_path, MODEL, TrainConfig(epochs=3, batch_size=128), PROVENANCE)
    assert (tmp_path / LAST_NAME).read_bytes() == good
    assert load_checkpoint(tmp_path / LAST_NAME).info.epoch == 1


def test_half_precision_checkpoint_is_smaller_and_close(tmp_path):
    train_set, id_test, _ = clusters(3)
    full, half = tmp_path / "full", tmp_path / "half"
    train(train_set, full, MODEL, TrainConfig(epochs=1), PROVENANCE)
    train(train_set, half, MODEL, TrainConfig(epochs=1, half_precision_checkpoints=True), PROVENANCE)
    assert (half / LAST_NAME).stat().st_size < 0.6 * (full / LAST_NAME).stat().st_size
    a = Detector.load(full).score_features(id_test).mse
    b = Detector.load(half).score_features(id_test).mse
    assert np.allclose(a, b, rtol=1e-2)


def test_checkpoint_metadata_is_plain_json(trained_run):
    import safetensors

    run_dir, *_ = trained_run
    with safetensors.safe_open(str(run_dir / LAST_NAME), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "dlsr-lfdn" and metadata["format_version"] == "1"
    assert json.loads(metadata["info"])["stage_dims"] == list(STAGES)


def test_missing_default_model_says_how_to_recreate(monkeypatch, tmp_path):
    from dlsr_core import checkpoint

    default, other = tmp_path / "default", tmp_path / "other"
    default.mkdir()
    other.mkdir()
    monkeypatch.setattr(checkpoint, "DEFAULT_RUN_DIR", default.resolve())
    with pytest.raises(CheckpointError, match="python -m dlsr_core train -d fashion_mnist:fit"):
        Detector.load(default)
    with pytest.raises(CheckpointError, match="holds no last.safetensors"):
        Detector.load(other)  # any other empty run directory gets the generic advice


def test_evaluate_and_sweep_agree_with_direct_metrics(trained_run):
    from dlsr_core.evaluation import EvaluationSettings, evaluate, timestep_sweep

    run_dir, result, id_test, ood_test = trained_run
    detector = Detector.load(run_dir)
    report = evaluate(
        detector, "id", id_test, {"ood": ood_test}, EvaluationSettings(timestep=4, seed=1), train_features=id_test
    )
    direct = ood_metrics(
        detector.score_features(id_test, 4, seed=1).mfsim, detector.score_features(ood_test, 4, seed=1).mfsim
    )
    assert report.metric("ood", "mfsim") == direct
    assert set(report.score_names) == {"mse", "mfsim", "lr", "knn", "mahalanobis"}
    assert "average" in report.to_table() and report.to_csv().count("\n") == 1 + 5
    curves = timestep_sweep(detector, id_test, {"ood": ood_test}, [2, 4], score="mfsim", seed=1)
    assert curves["ood"][1] == pytest.approx(direct.auroc)
