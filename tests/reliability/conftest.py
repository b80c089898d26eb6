"""Shared pieces of the reliability suite: a sandbox that notices stray writes, a tiny trained run, a feature cache
seeded without a backbone, and a CLI runner that checks the one-line-error contract.

The corpus (one parametrized case per kind of bad input or fault) lives in the test modules beside this file; each case
asserts the exit code, a single `error: …` line without a traceback, that good inputs in the same batch were still
processed, that no file outside the folders the command may write changed, and that the last good checkpoint loads.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dlsr_core.cache import cached_features
from dlsr_core.checkpoint import DEFAULT_RUN_DIR, LAST_NAME, load_checkpoint
from dlsr_core.cli import main
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.training import Provenance, TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
BACKBONE, WEIGHTS, INPUT_SIZE = "efficientnet_lite0", "random", 32
STAGES = (16, 24, 40, 112, 320)
TRAIN_SET, ID_SET, OOD_SET = "demo:fashion_mnist_rotated", "demo:digits", "demo:letters"
FEATURE_OPTIONS = ["--weights", WEIGHTS, "--input-size", str(INPUT_SIZE), "--backbone", BACKBONE]
TINY = ["--width", "16", "--depth", "1", "--train-batch-size", "256"]


class FakeExtractor:
    """Stands in for the backbone when seeding the cache: features are a fixed function of each image's pixels."""

    name = BACKBONE
    stage_dims = STAGES
    feature_dim = sum(STAGES)

    def __init__(self, shift: float = 0.0) -> None:
        self.projection = torch.randn(28 * 28, self.feature_dim, generator=torch.Generator().manual_seed(0)) / 28
        self.shift = shift

    def batch_size_for(self, input_size: int) -> int:
        return 256

    def preprocess(self, images, input_size: int) -> torch.Tensor:
        return torch.stack(
            [torch.from_numpy(np.asarray(image.convert("L").resize((28, 28)), np.float32)) / 255 for image in images]
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.reshape(len(batch), -1) @ self.projection + self.shift


@pytest.fixture(scope="session")
def seeded_cache(tmp_path_factory) -> Path:
    """A feature cache holding the train, ID and OOD demo sets under the tiny run's backbone key."""
    cache = tmp_path_factory.mktemp("seeded_cache")
    for spec, shift in ((TRAIN_SET, 0.0), (ID_SET, 0.0), (OOD_SET, 3.0)):
        cached_features(
            spec, BACKBONE, weights=WEIGHTS, input_size=INPUT_SIZE, cache_dir=cache, extractor=FakeExtractor(shift)
        )
    return cache


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, seeded_cache) -> Path:
    """A width-16, depth-1 run trained for 2 epochs on the seeded train features: first, last and resume.pt."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    features = cached_features(
        TRAIN_SET, BACKBONE, weights=WEIGHTS, input_size=INPUT_SIZE, cache_dir=seeded_cache, cache_only=True
    )
    train(
        features.features,
        run,
        LFDNConfig(feature_dim=sum(STAGES), width=16, depth=1),
        TrainConfig(epochs=2, batch_size=256, learning_rate=1e-3),
        Provenance(BACKBONE, WEIGHTS, INPUT_SIZE, STAGES, TRAIN_SET),
    )
    return run


def _fingerprint(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


@dataclass
class Sandbox:
    """Folders a case works in, and a record of every file under the watched places to detect stray writes."""

    root: Path
    watched: tuple[Path, ...]

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def copy_run(self, source: Path, name: str = "run") -> Path:
        target = self.runs / name
        shutil.copytree(source, target)
        return target

    def snapshot(self) -> dict[Path, tuple[int, str]]:
        files = {}
        for place in (self.root, *self.watched):
            if place.is_file():
                files[place] = _fingerprint(place)
            elif place.is_dir():
                for path in place.rglob("*"):
                    if path.is_file() and not path.is_symlink():
                        files[path] = _fingerprint(path)
        return files

    def changed_since(self, before: dict[Path, tuple[int, str]]) -> set[Path]:
        after = self.snapshot()
        return {p for p in set(before) | set(after) if before.get(p) != after.get(p)}

    def assert_only_changed(self, before, *allowed: Path) -> None:
        stray = {p for p in self.changed_since(before) if not any(p.is_relative_to(a) for a in allowed)}
        assert not stray, f"files outside {[str(a) for a in allowed]} changed: {sorted(map(str, stray))}"


@pytest.fixture
def sandbox(tmp_path, monkeypatch, seeded_cache) -> Sandbox:
    """A fresh working folder (also the cwd and $DLSR_CACHE_DIR); the seeded cache and the repository's
    checkpoints/ folder are watched too and must never change."""
    box = Sandbox(tmp_path / "box", (seeded_cache, REPO / "checkpoints", DEFAULT_RUN_DIR))
    for folder in (box.runs, box.out, box.inputs, box.root / "cwd"):
        folder.mkdir(parents=True)
    monkeypatch.chdir(box.root / "cwd")
    monkeypatch.setenv("DLSR_CACHE_DIR", str(box.cache))
    return box


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `python -m dlsr_core` in-process; returns the exit code and what it printed."""

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def assert_clean_error(outcome: Outcome, code: int, *needles: str, alone: bool = True) -> str:
    """Exit `code`, one stderr line starting 'error:' containing every needle (the only line unless `alone` is
    False: then notes may come before it), and no traceback anywhere."""
    lines = outcome.err.strip().splitlines()
    assert outcome.code == code, (outcome.code, outcome.err)
    assert lines and lines[-1].startswith("error: "), outcome.err
    assert sum(line.startswith("error:") for line in lines) == 1 and (len(lines) == 1 or not alone), outcome.err
    assert "Traceback" not in outcome.err + outcome.out
    for needle in needles:
        assert needle.lower() in lines[-1].lower(), (needle, lines[-1])
    return lines[-1]


def assert_loads(run: Path, epoch: int | None = None) -> None:
    """The run's last checkpoint (and first, when present) load; optionally the last is at `epoch`."""
    last = load_checkpoint(run / LAST_NAME)
    if epoch is not None:
        assert last.info.epoch == epoch
    if (run / "first.safetensors").exists():
        load_checkpoint(run / "first.safetensors")


class PausedProcess:
    """`script` (Python) run in another process with the arguments target, ready, go: it creates `ready` when it has
    reached the moment under test (a write not yet renamed, a lock taken) and waits there until `go` exists."""

    def __init__(self, script: str, target: Path, scratch: Path) -> None:
        self.ready, self.go = scratch / "paused.ready", scratch / "paused.go"
        command = [sys.executable, "-c", script, str(target), str(self.ready), str(self.go)]
        self.process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not self.ready.exists():
            assert self.process.poll() is None and time.monotonic() < deadline, self.process.stderr.read()
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: it stops where it is, no clean-up runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def finish(self) -> int:
        """Let it go on; its exit code."""
        self.go.write_text("")
        return self.process.wait(timeout=60)
