"""Signals during training, in real processes: SIGKILL at each critical point of a checkpoint save, and Ctrl-C /
SIGTERM through the CLI. Afterwards the run always loads, and training continues from it.

One launcher process imports torch and dlsr_core once and forks a worker per case (forking before any torch work is
safe), so the module costs one interpreter start-up instead of six. Each worker writes its output to its own files,
pauses at its point (or trains on), and the test sends the signal to that worker's pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import FEATURE_OPTIONS, REPO, TINY, TRAIN_SET

from dlsr_core.atomic import sha256_hex
from dlsr_core.checkpoint import FIRST_NAME, LAST_NAME, checksum_path, load_checkpoint
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.training import RESUME_NAME, Provenance, TrainConfig, read_resume_state, train

LAUNCHER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    import torch
    from dlsr_core import atomic, checkpoint
    from dlsr_core.cli import main
    from dlsr_core.diffusion import LFDNConfig
    from dlsr_core.training import Provenance, TrainConfig, train

    root, cli_argv, points = Path(sys.argv[1]), sys.argv[2].split("|"), sys.argv[3].split("|")

    def pause():
        print("PAUSED", flush=True)
        time.sleep(300)

    def toy_training(point):
        # 3 epochs of a toy model; pause at `point` while epoch 2 is saved (epoch 1 is the previous good checkpoint)
        saves = {"last": 0}
        real_write, real_replace = checkpoint.atomic_write_bytes, os.replace

        def write(path, data):
            second = Path(path).name == "last.safetensors" and saves["last"] == 1
            saves["last"] += Path(path).name == "last.safetensors"
            if second and point == "before-weights-rename":
                pause()  # the old checkpoint's .sha256 is already gone, the new weights not yet in place
            real_write(path, data)
            if second and point == "after-weights-rename":
                pause()  # new weights in place, their .sha256 not yet written (this lost runs before)

        def replace(source, target):
            watched = {("weights-temp-written", "last.safetensors"), ("before-resume-rename", "resume.pt")}
            if saves["last"] == 2 and (point, Path(target).name) in watched:
                pause()
            real_replace(source, target)

        checkpoint.atomic_write_bytes, atomic.os.replace = write, replace
        features = torch.randn(256, 12, generator=torch.Generator().manual_seed(0))
        train(features, root / point, LFDNConfig(12, 16, 1), TrainConfig(epochs=3, batch_size=64),
              Provenance("toy", "random", 32, (4, 4, 4), "toy"))
        return 0

    def cli_training(name):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
        return main([*cli_argv, "--out", str(root / name)])

    # Warm up once here (lazy imports, first backward pass), with one thread so no thread pool exists to be forked.
    torch.set_num_threads(1)
    train(torch.randn(8, 12), root / "warm-up", LFDNConfig(12, 16, 1), TrainConfig(epochs=1, batch_size=8),
          Provenance("toy", "random", 32, (4, 4, 4), "toy"))
    workers = {}
    for name in [*points, "SIGINT", "SIGTERM"]:
        pid = os.fork()
        if pid == 0:
            for fd, suffix in ((1, "out"), (2, "err")):
                os.dup2(os.open(root / f"{name}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.stdout, sys.stderr = open(1, "w", buffering=1, closefd=False), open(2, "w", buffering=1, closefd=False)
            os._exit(cli_training(name) if name.startswith("SIG") else toy_training(name))
        workers[pid] = name
        print(f"PID {name} {pid}", flush=True)
    while workers:
        pid, status = os.wait()
        print(f"STATUS {workers.pop(pid)} {os.waitstatus_to_exitcode(status)}", flush=True)
    """
)
# point -> epoch of last.safetensors after the kill
POINTS = {
    "before-weights-rename": 1,
    "weights-temp-written": 1,
    "after-weights-rename": 2,
    "before-resume-rename": 2,
}
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _wait_for_text(path: Path, marker: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and marker in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name} never showed {marker!r}: {path.with_suffix('.err').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def children(tmp_path_factory, seeded_cache):
    """Fork every worker, signal each at its point; return (run folder, exit code, stderr) per case."""
    root = tmp_path_factory.mktemp("signals")
    cli_argv = [
        "train",
        "-d",
        TRAIN_SET,
        *TINY,
        *FEATURE_OPTIONS,
        "--epochs",
        "100000",
        "--cache-dir",
        str(seeded_cache),
    ]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(root), "|".join(cli_argv), "|".join(POINTS)],
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
    )
    bad_value = subprocess.Popen(
        [sys.executable, "-m", "dlsr_core", "score", "-d", "digits", "--eta", "nan"],
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pids = {}
    while len(pids) < len(POINTS) + 2:
        _, name, pid = launcher.stdout.readline().split()
        pids[name] = int(pid)
    for name, pid in pids.items():
        if name in POINTS:
            _wait_for_text(root / f"{name}.out", "PAUSED")
            os.kill(pid, signal.SIGKILL)
        else:
            _wait_for_text(root / f"{name}.out", "epoch 2/")
            os.kill(pid, getattr(signal, name))
    codes = dict(line.split()[1:] for line in launcher.communicate(timeout=120)[0].splitlines())
    results = {name: (root / name, int(codes[name]), (root / f"{name}.err").read_text()) for name in pids}
    results["bad-value"] = (None, bad_value.wait(timeout=120), bad_value.communicate()[1])
    return results


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_during_checkpoint_save_leaves_a_loadable_run(point, children):
    run, code, _ = children[point]
    assert code == -signal.SIGKILL
    last = load_checkpoint(run / LAST_NAME)
    assert last.info.epoch == POINTS[point]
    assert load_checkpoint(run / FIRST_NAME).info.epoch == 1
    for name in (FIRST_NAME, LAST_NAME):  # a checksum file, when present, belongs to the file beside it
        if checksum_path(run / name).exists():
            assert checksum_path(run / name).read_text().split()[0] == sha256_hex((run / name).read_bytes())
    assert read_resume_state(run / RESUME_NAME).epoch == 1
    # and training simply continues from what is there
    features = torch.randn(256, 12, generator=torch.Generator().manual_seed(0))
    result = train(
        features,
        run,
        LFDNConfig(12, 16, 1),
        TrainConfig(epochs=3, batch_size=64),
        Provenance("toy", "random", 32, (4, 4, 4), "toy"),
    )
    assert result.epochs_done == 3 and load_checkpoint(run / LAST_NAME).info.epoch == 3


@pytest.mark.parametrize("name,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupting_cli_training_exits_cleanly_and_keeps_the_run(name, code, children):
    run, returncode, err = children[name]
    assert returncode == code, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    word = "interrupted" if name == "SIGINT" else "terminated"
    expected = f"error: {word}; {run} keeps any checkpoint it saved, and the same command continues from it"
    assert lines[0].startswith(expected), lines
    assert load_checkpoint(run / LAST_NAME).info.epoch >= 1
    assert not list(Path(run).glob("*.partial")), "an interrupted write must remove its temporary file"
    assert read_resume_state(run / RESUME_NAME).epoch >= 1


def test_bad_option_in_a_real_process_is_one_line_exit_2(children):
    _, code, err = children["bad-value"]
    assert code == 2 and err.strip().splitlines() == [
        "error: argument --eta: eta must be a finite number in [0, 1], got 'nan' "
        "(see `python -m dlsr_core score --help`)"
    ]
