"""Bad option values: refused when the command line is parsed (exit 2, one line, nothing done), and the few checks
that need the model or the data done before any slow step."""

from __future__ import annotations

import errno

import pytest
from conftest import ID_SET, OOD_SET, TRAIN_SET, FakeExtractor, assert_clean_error

from dlsr_core import atomic


def _never_extract(*args, **kwargs):
    raise AssertionError("a backbone was built although the command should have stopped before extracting")


@pytest.fixture
def no_backbone(monkeypatch):
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", _never_extract)


SCORE = ["score", "-d", ID_SET]
EVALUATE = ["evaluate", "--id", ID_SET, "--ood", OOD_SET]
TRAIN = ["train", "-d", TRAIN_SET, "--out", "<runs>/r"]
# (kind, argv, needle); <folder> is an existing folder, <file> an existing file, <runs> the sandbox's runs folder.
PARSE_CASES = [
    ("input-size-0", ["extract", "-d", ID_SET, "--input-size", "0"], "input size must be in 16..1024, got 0"),
    ("input-size-negative", ["extract", "-d", ID_SET, "--input-size", "-5"], "got -5"),
    ("input-size-huge", ["extract", "-d", ID_SET, "--input-size", "100000"], "got 100000"),
    ("input-size-text", ["extract", "-d", ID_SET, "--input-size", "big"], "whole number"),
    ("train-batch-0", [*TRAIN, "--train-batch-size", "0"], "batch size must be in 1.."),
    ("lr-negative", [*TRAIN, "--lr", "-1"], "learning rate must be a finite number in (0, 1000]"),
    ("lr-nan", [*TRAIN, "--lr", "nan"], "learning rate must be a finite number"),
    ("lr-inf", [*TRAIN, "--lr", "inf"], "learning rate must be a finite number"),
    ("lr-zero", [*TRAIN, "--lr", "0"], "learning rate must be a finite number"),
    ("width-float", [*TRAIN, "--width", "512.0"], "width must be a whole number"),
    ("depth-0", [*TRAIN, "--depth", "0"], "depth must be in 1.."),
    ("epochs-0", [*TRAIN, "--epochs", "0"], "epochs must be in 1.."),
    ("ema-decay-1", [*TRAIN, "--ema-decay", "1"], "EMA decay must be a finite number in [0, 1)"),
    ("weight-decay-negative", [*TRAIN, "--weight-decay", "-0.1"], "weight decay"),
    ("checkpoint-every-0", [*TRAIN, "--checkpoint-every", "0"], "checkpoint interval"),
    ("seed-1e23", [*SCORE, "--seed", "1e23"], "seed must be a whole number, got '1e23'"),
    ("seed-negative", [*SCORE, "--seed", "-1"], "seed must be in 0..2**63-1"),
    ("seed-2-63", [*SCORE, "--seed", str(2**63)], "seed must be in 0..2**63-1"),
    ("knn-k-0", [*EVALUATE, "--knn-k", "0"], "k must be in 1.."),
    ("eta-nan", [*EVALUATE, "--eta", "nan"], "eta must be a finite number in [0, 1]"),
    ("eta-inf", [*SCORE, "--eta", "inf"], "eta must be a finite number"),
    ("eta-negative", [*SCORE, "--eta", "-0.5"], "eta must be a finite number"),
    ("timestep-0", [*SCORE, "-t", "0"], "timestep must be in 1.."),
    ("std-eps-1", ["extract", "-d", ID_SET, "--std-eps", "1"], "--std-eps must be a finite number in (0, 1)"),
    ("steps-negative", [*SCORE, "--steps", "-1"], "steps must be in 0.."),
    ("draws-0", [*SCORE, "--draws", "0"], "draws must be in 1.."),
    ("output-is-a-folder", [*SCORE, "-o", "<folder>"], "is a folder"),
    ("output-under-a-file", [*SCORE, "-o", "<file>/x.csv"], "is a file, not a folder"),
    ("json-is-a-folder", [*EVALUATE, "--json", "<folder>"], "is a folder"),
    ("csv-is-a-folder", [*EVALUATE, "--csv", "<folder>"], "is a folder"),
    ("json-under-a-file", [*EVALUATE, "--json", "<file>/r.json"], "is a file, not a folder"),
    ("out-is-a-file", ["train", "-d", TRAIN_SET, "--out", "<file>"], "is a file; give a folder"),
    ("skipped-csv-is-a-folder", [*SCORE, "--skipped-csv", "<folder>"], "is a folder"),
    ("explain-empty", [*SCORE, "--explain", ""], "argument --explain: an empty ID set name"),
    ("explain-blank", [*SCORE, "--explain", "   "], "argument --explain: an empty ID set name"),
    ("explain-equals-empty", [*SCORE, "--explain="], "argument --explain: an empty ID set name"),
    ("unknown-option", [*SCORE, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("missing-required", ["train", "--out", "<folder>"], "the following arguments are required: --dataset"),
]


@pytest.mark.parametrize("argv,needle", [case[1:] for case in PARSE_CASES], ids=[case[0] for case in PARSE_CASES])
def test_bad_value_is_refused_at_parse_time(argv, needle, sandbox, cli, no_backbone):
    a_file = sandbox.inputs / "a_file.txt"
    a_file.write_text("x")
    places = {"<folder>": str(sandbox.out), "<file>": str(a_file), "<runs>": str(sandbox.runs)}
    for placeholder, path in places.items():
        argv = [arg.replace(placeholder, path) for arg in argv]
    before = sandbox.snapshot()
    line = assert_clean_error(cli(*argv), 2, needle)
    assert line.endswith("--help`)"), f"not a parse-time error: {line}"
    sandbox.assert_only_changed(before)


@pytest.fixture
def model_args(tiny_run, seeded_cache):
    return ["--checkpoint", str(tiny_run), "--cache-dir", str(seeded_cache), "--quiet"]


def test_knn_k_above_the_fit_set_is_refused_before_extraction(sandbox, cli, model_args, no_backbone):
    before = sandbox.snapshot()
    outcome = cli("evaluate", "--id", ID_SET, "--ood", OOD_SET, "--train", TRAIN_SET, "--knn-k", "5000", *model_args)
    assert_clean_error(outcome, 2, "--knn-k 5000 is larger than demo:fashion_mnist_rotated (1000 images)")
    sandbox.assert_only_changed(before)


def test_timestep_above_the_models_schedule_is_refused_before_extraction(sandbox, cli, model_args, no_backbone):
    outcome = cli("score", "-d", "demo:textures", "-t", "500", *model_args)
    assert_clean_error(outcome, 2, "1..100 for this checkpoint")


@pytest.mark.parametrize("timestep", ["1", "2"])
def test_official_sampler_below_its_first_network_step_is_refused(sandbox, cli, model_args, no_backbone, timestep):
    outcome = cli("score", "-d", "demo:textures", "-t", timestep, "--sampler", "official", *model_args)
    assert_clean_error(outcome, 2, f"at least 3 with --sampler official, got {timestep}")


def test_missing_training_set_is_found_before_any_extraction(sandbox, cli, tiny_run, no_backbone):
    empty = sandbox.inputs / "no_data"
    empty.mkdir()
    before = sandbox.snapshot()
    outcome = cli(
        "evaluate",
        "--checkpoint",
        tiny_run,
        "--id",
        "demo:textures",
        "--ood",
        "demo:fashion_mnist_test",
        "--train",
        "fashion_mnist:train",
        "--data-root",
        empty,
        "--quiet",
    )
    assert_clean_error(outcome, 2, "Fashion-MNIST train files", "not found")
    sandbox.assert_only_changed(before)  # not one feature set was extracted into the (empty) cache


def test_unwritable_report_is_one_line_and_leaves_no_partial_file(sandbox, cli, model_args, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    before = sandbox.snapshot()
    target = sandbox.out / "report.json"
    outcome = cli("evaluate", "--id", ID_SET, "--ood", OOD_SET, "--json", target, *model_args)
    assert_clean_error(outcome, 2, "No space left on device")
    assert "AUROC" in outcome.out  # the table was still printed
    sandbox.assert_only_changed(before)


def test_extract_defaults_to_the_models_input_size(sandbox, cli, tiny_run, monkeypatch):
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", lambda *a, **k: FakeExtractor())
    outcome = cli("extract", "-d", "demo:textures", "--checkpoint", tiny_run, "--quiet")
    assert outcome.code == 0 and "(efficientnet_lite0 @ 32 px)" in outcome.out
    shipped = cli("extract", "-d", "demo:textures", "--quiet", "--weights", "random")
    assert shipped.code == 0 and "@ 80 px" in shipped.out  # the shipped model's size, not 224


def test_a_log_gets_a_few_progress_lines_not_bars(sandbox, cli, tiny_run, seeded_cache, monkeypatch):
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", lambda *a, **k: FakeExtractor())
    extract = cli("extract", "-d", "demo:textures", "--checkpoint", tiny_run, "--batch-size", "50")
    lines = extract.err.strip().splitlines()
    assert "\r" not in extract.err and len(lines) == 4 and lines[-1] == "features demo:textures: 1000/1000 images"
    train = cli(
        "train",
        "-d",
        TRAIN_SET,
        "--out",
        sandbox.runs / "log",
        "--width",
        "16",
        "--depth",
        "1",
        "--epochs",
        "2",
        "--weights",
        "random",
        "--input-size",
        "32",
        "--cache-dir",
        seeded_cache,
    )
    assert train.code == 0 and "\r" not in train.err + train.out
    out = train.out.splitlines()
    assert [line.split(":")[0] for line in out[:2]] == ["epoch 1/2", "epoch 2/2"] and out[2].startswith("trained 2/2")


def test_every_numeric_option_is_range_checked_at_parse_time():
    """A plain `type=int`/`type=float` accepts 0, -5, 1e23 or nan: every number goes through dlsr_core.options."""
    import argparse

    from dlsr_core.cli import build_parser

    unchecked = []
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.type in (int, float):
                unchecked.append(f"{parser.prog} {action.option_strings}")
    assert not unchecked, f"use a dlsr_core.options type for {unchecked}"
