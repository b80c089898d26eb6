import os
import subprocess
import sys

from dlsr_core.scoring import Detector


def test_torchrun_two_cpu_processes_train_with_ddp(tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dlsr_core",
        "train",
        "-d",
        "digits",
        "--out",
        str(run),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--weights",
        "random",
        "--input-size",
        "32",
        "--width",
        "32",
        "--depth",
        "1",
        "--epochs",
        "2",
        "--train-batch-size",
        "64",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 2/2 epochs on 1797 vectors" in result.stdout
    detector = Detector.load(run)
    assert detector.info.train_settings["world_size"] == 2
    assert detector.info.epoch == 2 and detector.has_early
    scores = detector.score_features(detector.final.feature_mean[None].repeat(3, 1))
    assert scores.mse.shape == (3,)
