from pathlib import Path

import pytest
import torch

from dlsr_core import explorer
from dlsr_core.checkpoint import LAST_NAME
from dlsr_core.scoring import Detector

# Two cores are shared by the whole suite; one thread per test process keeps timings predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """The shipped default run (or $DLSR_RUN_DIR)."""
    path = explorer.default_run_dir()
    if not (path / LAST_NAME).is_file():
        pytest.skip(f"no shipped model at {path} (train it, or set DLSR_RUN_DIR)")
    return path


@pytest.fixture(scope="session")
def detector(run_dir) -> Detector:
    return Detector.load(run_dir, device="cpu")
