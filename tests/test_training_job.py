"""The Train page's job: GUI wording of core errors, kept intermediate epochs, start over, polling, default set."""

import numpy as np
import pytest
import shipped

from dlsr_core import explorer
from dlsr_core.explorer import epochs
from dlsr_core.scoring import Detector

TINY = dict(dataset="demo:fashion_mnist_rotated", width=32, depth=1, batch_size=250)


def run(request: explorer.TrainRequest) -> explorer.TrainState:
    job = explorer.TrainingJob(request).start()
    job.join(timeout=240)
    assert explorer.poll_interval(job) is None  # a finished job is not polled
    return job.snapshot()


def test_snapshot_epochs_roughly_double():
    assert [e for e in range(1, 50) if epochs.is_snapshot_epoch(e)] == [2, 3, 4, 6, 8, 12, 16, 24, 32, 48]


def test_gui_message_rewords_command_line_advice():
    conflict = "resume.pt was written with a different configuration; use another --out directory or pass --no-resume"
    assert explorer.gui_message(conflict).endswith("choose another run name, or tick **Start over**")
    assert "Lower the **Learning rate**" in explorer.gui_message("Lower --lr or check the features.")
    text = explorer.gui_message("Pass --download to fetch it or point --data-root at a folder that holds it.")
    assert text == "Tick **Allow download** to fetch it or enter a folder that holds it in the **Data folder** field."
    assert explorer.gui_message("use --weights random") == "use the command-line option --weights random"


def test_intermediate_epochs_are_kept_and_scored_like_their_checkpoint(tmp_path):
    state = run(explorer.TrainRequest(run_dir=tmp_path / "run", epochs=4, **TINY))
    assert state.phase == "finished", state.message
    assert sorted(p.name for p in (tmp_path / "run" / "epochs").glob("*.safetensors")) == [
        "epoch_0002.safetensors",
        "epoch_0003.safetensors",
        "epoch_0004.safetensors",
    ]
    detector = Detector.load(tmp_path / "run", device="cpu")
    saved = explorer.epoch_checkpoints(detector)
    assert [c.epoch for c in saved] == [1, 2, 3, 4] and saved[-1].label == "epoch 4 (final)"
    assert saved[-1].path == detector.final.path and saved[0].path == detector.early.path
    features = {"x": explorer.load_features(detector, "demo:digits").features[:50]}
    second = explorer.detector_at(detector, saved[1])
    assert second.info.epoch == 2
    scores = explorer.epoch_scores(second, features, "mfsim", 3)["x"]
    np.testing.assert_allclose(scores, second.score_features(features["x"], 3).mfsim)
    assert not np.allclose(scores, explorer.epoch_scores(detector, features, "mfsim", 3)["x"])
    with pytest.raises(ValueError, match="LR compares two checkpoints"):
        explorer.epoch_scores(detector, features, "lr", 3)


def test_a_changed_run_asks_in_gui_words_and_start_over_retrains(tmp_path):
    assert run(explorer.TrainRequest(run_dir=tmp_path / "r", epochs=2, **TINY)).phase == "finished"
    changed = {**TINY, "width": 48}
    state = run(explorer.TrainRequest(run_dir=tmp_path / "r", epochs=2, **changed))
    assert state.phase == "failed" and "Start over" in state.message and "--" not in state.message
    state = run(explorer.TrainRequest(run_dir=tmp_path / "r", epochs=2, resume=False, **changed))
    assert state.phase == "finished", state.message
    assert Detector.load(tmp_path / "r", device="cpu").info.config.width == 48
    assert [p.name for p in (tmp_path / "r" / "epochs").glob("*.safetensors")] == ["epoch_0002.safetensors"]


def test_default_training_set_is_not_the_evaluation_set_when_fashion_mnist_is_installed():
    training = shipped.EXPERIMENT.training_set
    expected = training if explorer.dataset_available(training) else shipped.ID_SET
    assert explorer.default_training_set(shipped.EXPERIMENT) == expected
    assert not explorer.dataset_available("folder:/no/such/folder")


def test_stopping_during_the_first_epoch_says_nothing_was_saved(tmp_path):
    """It said "final loss nan; checkpoints in …/walk_stop", a folder that did not exist, beside a curve at 0.22."""
    request = explorer.TrainRequest(
        dataset="demo:fashion_mnist_rotated", run_dir=tmp_path / "walk_stop", width=1024, depth=4, batch_size=16
    )
    job = explorer.TrainingJob(request).start()
    while job.running and not job.snapshot().losses:
        job.join(timeout=0.05)
    job.stop()
    job.join(timeout=240)
    state = job.snapshot()
    assert state.phase == "stopped" and state.epoch == 1 and state.checkpoints == 0, state.message
    assert "nan" not in state.message and "walk_stop" not in state.message and not request.run_dir.exists()
    assert "nothing was saved" in state.message and f"{state.losses[-1]:.4f}" in state.message


def test_the_end_message_names_the_checkpoints_and_both_losses(tmp_path):
    state = run(explorer.TrainRequest(run_dir=tmp_path / "run", epochs=1, **TINY))
    assert state.phase == "finished"
    assert f"after 1/1 epochs (mean loss of the last whole epoch {state.epoch_losses[-1]:.4f}" in state.message
    assert f"last step's loss {state.losses[-1]:.4f}); checkpoints in {tmp_path / 'run'}" in state.message
