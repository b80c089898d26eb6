"""resume.pt faults, options given on resume, divergence: clear outcome, and the existing checkpoints never touched."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import FEATURE_OPTIONS, REPO, TINY, TRAIN_SET, FakeExtractor, assert_clean_error, assert_loads

from dlsr_core.cache import cached_features
from dlsr_core.checkpoint import LAST_NAME, load_checkpoint
from dlsr_core.diffusion import ConfigError, LFDNConfig
from dlsr_core.training import RESUME_NAME, Provenance, TrainConfig, train


def _resume_state(run):
    return torch.load(run / RESUME_NAME, weights_only=True)


def _save_state(run, state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (run / RESUME_NAME).write_bytes(buffer.getvalue())


def edited_state(change):
    def edit(run):
        state = _resume_state(run)
        change(state)
        _save_state(run, state)

    return edit


class _Payload:
    """Unpickling this would run a shell command; weights_only loading must refuse it without running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (__import__("os").system, (f"touch {self.marker}",))


def malicious(run):
    state = _resume_state(run)
    state["epoch"] = _Payload(run.parent / "PWNED")
    (run / RESUME_NAME).write_bytes(pickle.dumps(state, protocol=2))


def nan_weights(state):
    next(iter(state["model"].values())).fill_(float("nan"))


def wrong_shape(state):
    state["model"]["input_projection.weight"] = torch.zeros(3, 3)


RESUME_CORPUS = {
    "truncated": (lambda run: (run / RESUME_NAME).write_bytes((run / RESUME_NAME).read_bytes()[:500]), "truncated"),
    "empty": (lambda run: (run / RESUME_NAME).write_bytes(b""), "empty"),
    "text-file": (lambda run: (run / RESUME_NAME).write_text("resume me\n"), "not a resume file"),
    "not-a-dict": (lambda run: _save_state(run, [1, 2, 3]), "not a dictionary"),
    "wrong-keys": (lambda run: _save_state(run, {"weights": torch.zeros(2)}), "wrong keys"),
    "pickled-code": (malicious, "refused"),
    "epoch-as-text": (edited_state(lambda s: s.update(epoch="two")), "epoch must be a whole number"),
    "config-width-as-text": (edited_state(lambda s: s["model_config"].update(width="16")), "width must be an integer"),
    "nan-weights": (edited_state(nan_weights), "NaN/Inf"),
    "weights-wrong-shape": (edited_state(wrong_shape), "do not fit the model"),
}


def _train(cli, sandbox, run, *extra):
    return cli("train", "-d", TRAIN_SET, "--out", run, *TINY, *FEATURE_OPTIONS, "--quiet", *extra)


@pytest.fixture
def resumable(sandbox, tiny_run, seeded_cache):
    """A copy of the 2-epoch tiny run, and the seeded cache as the feature source."""
    run = sandbox.copy_run(tiny_run)
    return run, ["--cache-dir", str(seeded_cache)]


@pytest.mark.parametrize("kind", list(RESUME_CORPUS))
def test_bad_resume_file_is_refused_and_nothing_is_touched(kind, resumable, sandbox, cli):
    run, cache = resumable
    damage, needle = RESUME_CORPUS[kind]
    damage(run)
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", "3", *cache)
    line = assert_clean_error(outcome, 2, needle, str(run / RESUME_NAME))
    assert "--restart" in line
    sandbox.assert_only_changed(before)
    assert_loads(run, epoch=2)
    assert not (run.parent / "PWNED").exists()


@pytest.mark.parametrize(
    "options,needle",
    [
        (["--width", "32"], "--width (32 now, 16 in the run)"),
        (["--seed", "5"], "--seed (5 now, 0 in the run)"),
        (["--train-batch-size", "128"], "--train-batch-size (128 now, 256 in the run)"),
        (["-d", "demo:digits"], "--dataset (demo:digits now, demo:fashion_mnist_rotated in the run)"),
    ],
    ids=["width", "seed", "batch-size", "dataset"],
)
def test_options_that_cannot_change_on_resume_are_refused_by_name(options, needle, resumable, sandbox, cli):
    run, cache = resumable
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", "3", *cache, *options)
    assert_clean_error(outcome, 2, needle)
    sandbox.assert_only_changed(before)
    assert_loads(run, epoch=2)


@pytest.mark.parametrize(
    "options,needle",
    [
        (["--std-eps", "1e-5"], "--std-eps (1e-05 now, 1e-06 in the run)"),
        (["--pooling", "stride16-grid"], "--pooling (stride16-grid now, gap in the run)"),
        (["--input-size", "64"], "--input-size (64 now, 32 in the run)"),
        (["--resize", "bilinear"], "--resize (bilinear now, model in the run)"),
        (["--input-activation", "silu"], "--input-activation (silu now, none in the run)"),
        (["--time-mlp-width", "64"], "--time-mlp-width (64 now, 0 in the run)"),
        (["--width", "32"], "--width (32 now, 16 in the run)"),
        (["-d", "demo:digits"], "--dataset (demo:digits now, demo:fashion_mnist_rotated in the run)"),
    ],
    ids=["std-eps", "pooling", "input-size", "resize", "input-activation", "time-mlp-width", "width", "dataset"],
)
def test_fixed_settings_are_refused_before_any_extraction(options, needle, resumable, sandbox, cli, monkeypatch):
    """The features of none of these are cached: extracting them first (minutes on a real set) would be wasted."""
    run, _ = resumable

    def never(*args, **kwargs):
        raise AssertionError("a backbone was built: the refusal came after extraction started")

    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", never)
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", "3", "--cache-dir", sandbox.cache, *options)
    assert_clean_error(outcome, 2, needle, "cannot change on resume")
    sandbox.assert_only_changed(before)
    assert_loads(run, epoch=2)


def _pickled(protocol):
    def write(run):
        (run / RESUME_NAME).write_bytes(pickle.dumps({"epoch": 2, "model": {}}, protocol=protocol))

    return write


def _archived(protocol):
    def write(run):
        buffer = io.BytesIO()
        torch.save(_resume_state(run), buffer, pickle_protocol=protocol)
        (run / RESUME_NAME).write_bytes(buffer.getvalue())

    return write


@pytest.mark.parametrize(
    "damage,protocol",
    [(_pickled(3), 3), (_pickled(4), 4), (_pickled(5), 5), (_archived(4), 4), (_archived(5), 5)],
    ids=["pickle-3", "pickle-4", "pickle-5", "torch-archive-4", "torch-archive-5"],
)
def test_resume_file_of_another_pickle_protocol_is_refused_without_a_warning(
    damage, protocol, resumable, sandbox, cli, recwarn
):
    run, cache = resumable
    damage(run)
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", "3", *cache)
    assert_clean_error(outcome, 2, f"pickled with protocol {protocol}", str(run / RESUME_NAME), "--restart")
    assert [str(warning.message) for warning in recwarn] == []  # torch.load never saw it
    sandbox.assert_only_changed(before)
    assert_loads(run, epoch=2)


def test_the_issues_protocol_4_resume_file_prints_one_line(resumable, sandbox):
    """As a user sees it (a separate process, real stderr): the error line and nothing before it."""
    run, cache = resumable
    _pickled(4)(run)
    command = [sys.executable, "-m", "dlsr_core", "train", "-d", TRAIN_SET, "--out", run, *TINY, *FEATURE_OPTIONS]
    result = subprocess.run([*map(str, command), "--quiet", *cache], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: cannot resume")


@pytest.mark.parametrize(
    "stages,needle",
    [((320, 112, 40, 24, 16), "are not those of efficientnet_lite0"), ((-16, 48, 40, 112, 328), ">= 1")],
    ids=["permuted", "negative"],
)
def test_stage_sizes_that_are_not_the_backbones_are_refused_by_train(stages, needle, sandbox, seeded_cache):
    """train() itself refuses them (not only the cache reader): a checkpoint recording them would mislead MFsim."""
    features = cached_features(
        TRAIN_SET, "efficientnet_lite0", weights="random", input_size=32, cache_dir=seeded_cache, cache_only=True
    )
    run = sandbox.runs / "permuted"
    with pytest.raises(ConfigError, match=needle):
        train(
            features.features,
            run,
            LFDNConfig(feature_dim=512, width=16, depth=1),
            TrainConfig(epochs=1),
            Provenance("efficientnet_lite0", "random", 32, stages, TRAIN_SET),
        )
    assert not run.exists()


@pytest.mark.parametrize("epochs", ["1", "2"])
def test_resuming_a_finished_run_says_there_is_nothing_to_do(epochs, resumable, sandbox, cli):
    run, cache = resumable
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", epochs, *cache)
    assert outcome.code == 0 and outcome.err == ""
    assert outcome.out.startswith(f"nothing to do: {run} has already trained 2 epochs (asked for {epochs})")
    assert "nan" not in outcome.out
    sandbox.assert_only_changed(before)


def test_learning_rate_and_epochs_given_on_resume_are_honoured(resumable, sandbox, cli):
    run, cache = resumable
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", "3", "--lr", "5e-4", "--ema-decay", "0.9", *cache)
    assert outcome.code == 0, outcome.err
    assert "learning_rate 0.0005 (was 0.001)" in outcome.err and "ema_decay 0.9 (was 0.999)" in outcome.err
    assert "trained 3/3 epochs" in outcome.out
    sandbox.assert_only_changed(before, run)
    settings = load_checkpoint(run / LAST_NAME).info.train_settings
    assert settings["learning_rate"] == 5e-4 and settings["epochs"] == 3
    assert _resume_state(run)["optimizer"]["param_groups"][0]["lr"] == 5e-4


def test_checkpoints_without_resume_file_need_restart(resumable, sandbox, cli):
    run, cache = resumable
    (run / RESUME_NAME).unlink()
    before = sandbox.snapshot()
    assert_clean_error(_train(cli, sandbox, run, "--epochs", "3", *cache), 2, "--restart")
    sandbox.assert_only_changed(before)
    outcome = _train(cli, sandbox, run, "--epochs", "1", "--restart", *cache)
    assert outcome.code == 0 and "trained 1/1 epochs" in outcome.out
    assert_loads(run, epoch=1)
    assert _train(cli, sandbox, run, "--epochs", "2", "--no-resume", *cache).code == 0  # the old spelling still works


def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(sandbox, seeded_cache, cli):
    run = sandbox.runs / "fresh"
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", "2", "--lr", "1e3", "--cache-dir", seeded_cache)
    assert_clean_error(outcome, 3, "training diverged", "no checkpoint was written", "100x")
    assert "kept" not in outcome.err
    sandbox.assert_only_changed(before)
    assert not (run / LAST_NAME).exists()


def test_divergence_on_resume_keeps_the_last_good_checkpoint(resumable, sandbox, cli):
    run, cache = resumable
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, run, "--epochs", "4", "--lr", "1e3", *cache)
    kept = f"last good checkpoint (epoch 2) is kept in {run / LAST_NAME}"
    assert_clean_error(outcome, 3, "diverged at epoch 3", kept, alone=False)  # after the note on the new --lr
    sandbox.assert_only_changed(before)
    assert_loads(run, epoch=2)


def test_non_finite_features_are_refused_before_training(sandbox, cli):
    class NanExtractor(FakeExtractor):
        def __call__(self, batch):
            features = super().__call__(batch)
            features[0, 0] = float("nan")
            return features

    cached_features(
        TRAIN_SET,
        "efficientnet_lite0",
        weights="random",
        input_size=32,
        cache_dir=sandbox.cache,
        extractor=NanExtractor(),
    )
    before = sandbox.snapshot()
    outcome = _train(cli, sandbox, sandbox.runs / "nan", "--epochs", "1", "--cache-dir", sandbox.cache)
    assert_clean_error(outcome, 2, "NaN/Inf")
    sandbox.assert_only_changed(before)
