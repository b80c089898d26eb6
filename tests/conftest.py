import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dlsr_core import explorer
from dlsr_core.checkpoint import LAST_NAME, load_checkpoint, save_checkpoint
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.scoring import Detector
from dlsr_core.training import Provenance, TrainConfig, train

# Two cores are shared by the whole suite; one thread per test process keeps timings predictable.
torch.set_num_threads(1)
# Uploaded sets and edits of the shipped model's experiment go to a throwaway user data folder, never the user's own
# (set before any test reads it; the browser test's server inherits it).
os.environ["DLSR_DATA_DIR"] = tempfile.mkdtemp(prefix="dlsr-test-data-")


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


@pytest.fixture(scope="session")
def wrong_backbone_run(tmp_path_factory) -> Path:
    """A run that says efficientnet_lite0 (512-d) but was trained on 720-d (EfficientNet-B4-sized) features.

    It is the only run in its parent folder, so tests can point DLSR_CHECKPOINTS_DIR there. It is studied on the
    shipped model's sets (its experiment file), whose cached features are 512-d.
    """
    import shipped

    from dlsr_core.data import EXPERIMENT_NAME, save_experiment

    run = tmp_path_factory.mktemp("wrong") / "wrong_backbone"
    dims = (24, 32, 56, 160, 448)
    train(
        torch.randn(64, sum(dims)),
        run,
        LFDNConfig(feature_dim=sum(dims), width=16, depth=1),
        TrainConfig(epochs=1, batch_size=32),
        Provenance("efficientnet_b4", "pretrained", 64, dims, "fake"),
    )
    # train() refuses stage sizes that are not the backbone's, so the wrong name is written afterwards, as a file
    # relabelled by hand (or by an older version) would carry it.
    for path in run.glob("*.safetensors"):
        loaded = load_checkpoint(path)
        info = replace(loaded.info, backbone="efficientnet_lite0")
        save_checkpoint(path, loaded.model, info, loaded.feature_mean, loaded.feature_std)
    save_experiment(run / EXPERIMENT_NAME, shipped.EXPERIMENT)
    return run
