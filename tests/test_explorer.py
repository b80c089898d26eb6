"""The explorer façade: upload decoding and scoring, thresholds, evaluation, failure cases, background training.

Uses the shipped default model (checkpoints/default, or $DLSR_RUN_DIR) and the cached demo features.
"""

import io

import numpy as np
import pytest
import shipped
import torch
from PIL import Image

from dlsr_core import explorer
from dlsr_core.checkpoint import LAST_NAME, CheckpointError
from dlsr_core.metrics import ood_metrics
from dlsr_core.scoring import Detector

torch.set_num_threads(1)


def _png(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bad_and_odd_files() -> dict[str, bytes]:
    """Every awkward upload the Score page must survive, keyed by file name."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    full_png = _png(photo)
    frames = [Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)) for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "not_an_image.png": b"this is plain text, not a picture",
        "truncated.png": full_png[: len(full_png) // 2],
        "zero.jpg": b"",
        "bomb.png": _png(Image.new("1", (9000, 9000))),  # 81 M pixels, a few kB on disk
        "deep16.tiff": _png(Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)), "TIFF"),
        "animated.gif": gif.getvalue(),
        "rgba.png": _png(Image.new("RGBA", (20, 20), (200, 10, 10, 128))),
        "photo.webp": _png(photo, "WEBP"),
        "photo.bmp": _png(photo, "BMP"),
        "photo.jpg": _png(photo, "JPEG"),
        "gray.png": _png(photo.convert("L")),
    }


BAD = {"not_an_image.png", "truncated.png", "zero.jpg", "bomb.png"}


@pytest.fixture(scope="module")
def id_features(detector):
    return explorer.load_features(detector, shipped.ID_SET)


def test_decode_uploads_reports_each_bad_file_and_keeps_the_rest():
    files = bad_and_odd_files()
    good, errors, notes = explorer.decode_uploads(list(files.items()))
    assert {name for name, _ in errors} == BAD
    assert {name for name, _ in good} == set(files) - BAD
    reasons = dict(errors)
    assert "not a recognised image format" in reasons["not_an_image.png"]
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert "0 bytes" in reasons["zero.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert all(image.mode == "RGB" for _, image in good)
    assert "first frame" in dict(notes)["animated.gif"]
    assert "16-bit" in dict(notes)["deep16.tiff"]


def test_uploads_are_never_written_to_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    explorer.decode_uploads(list(bad_and_odd_files().items()))
    assert list(tmp_path.iterdir()) == []


def test_id_threshold_matches_the_metrics_threshold():
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(0, 1, 999), rng.normal(2, 1, 500)
    assert explorer.id_threshold95(id_scores) == pytest.approx(ood_metrics(id_scores, ood_scores).threshold95)
    assert explorer.verdict(5.0, 1.0) == "OOD" and explorer.verdict(1.0, 1.0) == "ID"


def test_uploads_are_scored_like_the_core_scores_their_features(detector, id_features):
    extractor = explorer_extractor(detector)
    files = bad_and_odd_files()
    batch = explorer.prepare_uploads(extractor, detector.input_size, list(files.items()))
    assert batch.features.shape == (len(files) - len(BAD), detector.info.config.feature_dim)
    reference = explorer.score_matrix(detector, id_features.features, 5)
    id_scores = reference["mfsim"]
    results = explorer.score_uploads(detector, batch.features, batch.names, reference, "mfsim", 5)
    core = detector.score_features(batch.features, 5)
    assert [r.name for r in results] == batch.names
    np.testing.assert_allclose([r.score for r in results], core.mfsim, rtol=1e-5)
    np.testing.assert_allclose([r.stage_cos for r in results], core.stage_cos, rtol=1e-5)
    threshold = explorer.id_threshold95(id_scores)
    assert all(r.verdict == ("OOD" if r.score > threshold else "ID") for r in results)
    # Random-noise pictures are far from Fashion-MNIST: the detector should call at least one of them OOD.
    assert any(r.verdict == "OOD" for r in results)


def explorer_extractor(detector):
    from dlsr_core.backbones import create_feature_extractor

    return create_feature_extractor(detector.backbone, detector.backbone_weights())


def test_id_features_score_mostly_in_distribution(detector, id_features):
    scores = explorer.score_matrix(detector, id_features.features, 5)
    threshold = explorer.id_threshold95(scores["mfsim"])
    assert np.mean(scores["mfsim"] <= threshold) >= 0.95
    assert scores["stage_cos"].shape == (len(id_features), len(detector.stage_dims))


def test_wrong_backbone_checkpoint_gets_a_clear_error(wrong_backbone_run):
    detector = Detector.load(wrong_backbone_run, device="cpu")
    with pytest.raises(CheckpointError, match="720-d.*512-d|512-d.*720-d"):
        explorer.load_features(detector, shipped.ID_SET)
    assert explorer.cached_features_only(detector, shipped.ID_SET) is None


def test_list_run_dirs_finds_trained_runs(tmp_path, monkeypatch, wrong_backbone_run):
    (tmp_path / "empty").mkdir()
    target = tmp_path / "mine"
    target.mkdir()
    for name in ("last.safetensors", "first.safetensors"):
        (target / name).write_bytes((wrong_backbone_run / name).read_bytes())
    monkeypatch.setenv("DLSR_CHECKPOINTS_DIR", str(tmp_path))
    runs = explorer.list_run_dirs()
    assert target in runs and tmp_path / "empty" not in runs
    before = explorer.run_fingerprint(target)
    (target / "last.safetensors").write_bytes((wrong_backbone_run / "last.safetensors").read_bytes() + b"")
    import os

    os.utime(target / "last.safetensors", ns=(1, 1))
    assert explorer.run_fingerprint(target) != before


def test_training_job_trains_and_can_be_stopped(tmp_path):
    request = explorer.TrainRequest(
        dataset="demo:fashion_mnist_rotated", run_dir=tmp_path / "job", width=32, depth=1, epochs=2, batch_size=250
    )
    job = explorer.TrainingJob(request).start()
    job.join(timeout=240)
    state = job.snapshot()
    assert state.phase == "finished", state.message
    assert (tmp_path / "job" / LAST_NAME).is_file() and len(state.epoch_losses) == 2
    assert Detector.load(tmp_path / "job", device="cpu").info.epoch == 2

    stopping = explorer.TrainingJob(
        explorer.TrainRequest(
            dataset="demo:fashion_mnist_rotated",
            run_dir=tmp_path / "stopped",
            width=32,
            depth=1,
            epochs=500,
            batch_size=100,
        )
    ).start()
    import time

    deadline = time.time() + 120
    while stopping.snapshot().epoch_losses == [] and time.time() < deadline:
        time.sleep(0.2)
    stopping.stop()
    stopping.join(timeout=60)
    state = stopping.snapshot()
    assert state.phase == "stopped", state.message
    # The checkpoint of the last finished epoch survives the stop and loads.
    assert Detector.load(tmp_path / "stopped", device="cpu").info.epoch >= 1
