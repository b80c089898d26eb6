"""The validation protocol: choices read validation sets only (checked with a source that records every set opened)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import protocol, sweep
from benchmarks.protocol import (
    FIT_SET,
    TEST_SETS,
    VALIDATION_ID,
    VALIDATION_OOD,
    VALIDATION_SETS,
    GuardedSource,
    SelectionLeak,
    choose,
    group_aurocs,
)
from dlsr_core.checkpoint import read_checkpoint_info


@dataclass(frozen=True)
class FakeFeatures:
    features: torch.Tensor
    stage_dims: tuple[int, ...] = (4, 4)


class RecordingSource:
    """Fake features for any set and backbone; every name asked for is recorded. OOD sets are shifted features."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, name: str, backbone: str = "b", input_size: int = 0) -> FakeFeatures:
        self.opened.append(name)
        rng = np.random.default_rng(abs(hash((name, backbone, input_size))) % 2**32)
        count = 300 if name == FIT_SET else 60
        shift = 0.0 if name in (FIT_SET, VALIDATION_ID, protocol.TEST_ID) else 1.5
        return FakeFeatures(torch.as_tensor(rng.normal(shift, 1.0, size=(count, 8)), dtype=torch.float32))


def test_guard_refuses_test_sets_and_records_the_rest():
    source = RecordingSource()
    guarded = GuardedSource(source)
    guarded(VALIDATION_ID)
    guarded(FIT_SET, "backbone", 64)
    for name in sorted(TEST_SETS):
        with pytest.raises(SelectionLeak, match="not a validation set"):
            guarded(name)
    with pytest.raises(SelectionLeak):
        guarded("fashion_mnist:test")  # not allowed either: only fit and validation sets
    assert guarded.opened == source.opened == [VALIDATION_ID, FIT_SET]


def test_validation_and_test_sets_are_disjoint_and_not_copies():
    assert not VALIDATION_SETS & TEST_SETS and FIT_SET not in TEST_SETS
    # no validation OOD set is a test set's transformation of validation images (rotation, inversion)
    assert not any(shift in name for name in VALIDATION_OOD for shift in ("+rot", "+invert", "+vflip"))


def test_group_aurocs_known_answer():
    ids = np.array([0.0, 1.0, 2.0, 3.0])
    result = group_aurocs(ids, {"a": np.array([4.0, 5.0]), "b": np.array([-1.0, 10.0])}, {"a": "far", "b": "near"})
    assert result["a"] == 1.0 and result["b"] == 0.5
    assert (result["far"], result["near"], result["objective"]) == (1.0, 0.5, 0.75)


def test_choose_takes_the_best_eligible_candidate_first_on_ties():
    def scores(candidate, guarded):
        ids = guarded(VALIDATION_ID).features[:, 0].numpy()
        return ids, {name: guarded(name).features[:, 0].numpy() * candidate for name in VALIDATION_OOD}

    source = RecordingSource()
    result = choose((0.0, 2.0, 1.0, 2.0), scores, source)
    assert result.best == 2.0 and result.best_index == 1
    assert result.validation[1]["objective"] > result.validation[2]["objective"] > result.validation[0]["objective"]
    assert choose((0.0, 2.0, 1.0), scores, source, eligible=lambda c: c < 2).best == 1.0
    with pytest.raises(ValueError, match="no candidate"):
        choose((2.0,), scores, source, eligible=lambda c: False)
    # A default is kept unless beaten by more than the margin.
    small = choose((0.0, 1.0, 1.01), scores, source, default=1.0, margin=0.01)
    gap = small.validation[2]["objective"] - small.validation[1]["objective"]
    assert 0 < gap <= 0.01 and small.best == 1.0
    assert choose((0.0, 1.0, 2.0), scores, source, default=1.0, margin=0.0001).best == 2.0
    with pytest.raises(SelectionLeak):
        choose((1.0,), lambda c, guarded: (guarded(protocol.TEST_ID).features[:, 0].numpy(), {}), source)
    with pytest.raises(SelectionLeak, match="not validation sets"):
        choose((1.0,), lambda c, guarded: (np.zeros(3), {"demo:digits": np.ones(3)}), lambda name: None)


@pytest.fixture
def tiny_sweep(tmp_path, monkeypatch):
    """The sweep's stages on fake features with tiny LFDNs, a fixed speed and a recording source."""
    monkeypatch.setattr(sweep, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(sweep, "STAGE1", (sweep.FeatureCandidate("fake_a", 32), sweep.FeatureCandidate("fake_b", 48)))
    monkeypatch.setattr(sweep, "STAGE1_LFDN", sweep.LFDNCandidate(16, 1, 2))
    monkeypatch.setattr(sweep, "STAGE2_SHAPES", ((16, 1), (24, 1)))
    monkeypatch.setattr(sweep, "STAGE2_EPOCHS", (1, 2))
    monkeypatch.setattr(sweep, "STAGE3", (sweep.ScoringCandidate(3, 1), sweep.ScoringCandidate(5, None)))
    monkeypatch.setattr(sweep, "KNN_KS", (1, 5))
    monkeypatch.setattr(sweep, "upload_images_per_second", lambda detector: 300.0)
    return RecordingSource()


def test_the_sweep_never_opens_a_test_set_while_choosing(tiny_sweep):
    source = tiny_sweep
    stage1 = sweep.run_stage1(source)
    stage2 = sweep.run_stage2(sweep.FeatureCandidate(**stage1["chosen"]), source)
    where, shape = sweep.FeatureCandidate(**stage1["chosen"]), sweep.LFDNCandidate(**stage2["chosen"])
    stage3 = sweep.run_stage3(where, shape, source)
    assert source.opened and not set(source.opened) & TEST_SETS
    assert set(source.opened) == VALIDATION_SETS | {FIT_SET}
    assert len(stage2["rows"]) == 4 and all(row["eligible"] for row in stage2["rows"])
    assert stage3["knn_k"] in (1, 5) and len(stage3["rows"]) == 2
    # The 1-epoch snapshot of a 2-epoch run is kept beside it, and the run itself went on to 2 epochs.
    assert read_checkpoint_info(sweep.stage2_run(sweep.LFDNCandidate(16, 1, 1)) / "last.safetensors").epoch == 1
    assert read_checkpoint_info(sweep.stage2_run(sweep.LFDNCandidate(16, 1, 2)) / "last.safetensors").epoch == 2
    seeds = sweep.run_seeds(where, shape, source)
    assert len(seeds["dlsr"]) == 3 and all(Path(path).is_file() for path in seeds["feature_ae"])
    assert not set(source.opened) & TEST_SETS
    # Only the report, after every choice, reads the test table.
    before = len(source.opened)
    results = sweep.report({"features": stage1, "lfdn": stage2, "scoring": stage3}, source)
    assert set(source.opened[before:]) == TEST_SETS
    assert all("test" in row for stage in ("features", "lfdn", "scoring") for row in results[stage]["rows"])
    assert "**(chosen)**" in sweep.markdown(results)
    shipped = sweep.ship(results, sweep.RUNS / "shipped")
    chosen_t = stage3["chosen"]["timestep"]
    assert read_checkpoint_info(shipped / "last.safetensors").timestep == chosen_t
    assert read_checkpoint_info(shipped / "first.safetensors").epoch == 1


def test_slow_candidates_cannot_win(tiny_sweep, monkeypatch):
    monkeypatch.setattr(sweep, "upload_images_per_second", lambda detector: 150.0)
    with pytest.raises(ValueError, match="no candidate"):
        sweep.run_stage1(tiny_sweep)


def test_evidence_intervals_and_paired_differences():
    from benchmarks.evidence import paired_difference, summarize

    rng = np.random.default_rng(0)
    ids = rng.normal(0, 1, 400)
    groups = {"a": "far", "b": "near"}
    strong = summarize(ids, {"a": rng.normal(3, 1, 200), "b": rng.normal(2, 1, 200)}, groups, seed=0)
    weak = summarize(ids, {"a": rng.normal(1, 1, 200), "b": rng.normal(2, 1, 200)}, groups, seed=0)
    assert strong["a"]["low"] < strong["a"]["auroc"] < strong["a"]["high"]
    assert strong["all"]["auroc"] == pytest.approx((strong["a"]["auroc"] + strong["b"]["auroc"]) / 2)
    difference, low, high = paired_difference(strong, weak, "far")
    assert difference == pytest.approx(strong["far"]["auroc"] - weak["far"]["auroc"]) and 0 < low < high
    same, low, high = paired_difference(strong, strong, "near")
    assert same == 0 and low == high == 0  # the same resamples for both: no spread at all


def test_evidence_rewrites_only_the_marked_readme_blocks(tmp_path):
    from benchmarks.evidence import update_readme

    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- evidence:main:start -->\nold table\n<!-- evidence:main:end -->\nmiddle\n"
        "<!-- evidence:seeds:start -->\nold\n<!-- evidence:seeds:end -->\nend\n"
    )
    replaced = update_readme(readme, {"main": ["| new |", "|---|", ""], "heldout": ["not in the file"]})
    assert replaced == ["main"]
    assert readme.read_text() == (
        "intro\n<!-- evidence:main:start -->\n| new |\n|---|\n<!-- evidence:main:end -->\nmiddle\n"
        "<!-- evidence:seeds:start -->\nold\n<!-- evidence:seeds:end -->\nend\n"
    )


def test_speed_board_measures_in_interleaved_rounds_and_takes_medians(monkeypatch):
    calls = []
    readings = iter([100.0, 300.0, 400.0, 200.0, 250.0, 350.0])  # rounds of (a, b)

    def fake_speed(detector):
        calls.append(detector)
        return next(readings)

    monkeypatch.setattr(sweep, "upload_images_per_second", fake_speed)
    board = sweep.SpeedBoard()
    board.add("a", "detector a")
    board.add("b", "detector b")
    assert board.speeds() == {"a": 250.0, "b": 300.0}
    assert calls == ["detector a", "detector b"] * 3 and board.speeds() is board.speeds()  # measured once
    readings = iter([100.0, 300.0, 200.0])
    shared = sweep.SpeedBoard()
    shared.add(("w", 10), "first", architecture="w")
    shared.add(("w", 20), "second", architecture="w")  # same architecture: measured once, same speed
    assert shared.speeds() == {("w", 10): 200.0, ("w", 20): 200.0} and calls[-3:] == ["first"] * 3
    # A reference measured before at 300 and now at 150: every reading is doubled onto the earlier footing.
    readings = iter([80.0, 150.0, 90.0, 150.0, 100.0, 150.0])
    scaled = sweep.SpeedBoard(reference=("ref", 300.0))
    scaled.add("c", "candidate")
    assert scaled.speeds() == {"c": 180.0} and scaled.scale == 2.0
