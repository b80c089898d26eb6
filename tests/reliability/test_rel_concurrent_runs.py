"""Two `train` runs on one run folder: the second refuses at once (exit 2, one line naming the running one), a lock
left by a killed run or a silent host does not block forever, readers need no lock, and the Train page and torchrun
refuse the same way."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FEATURE_OPTIONS, ID_SET, REPO, TINY, TRAIN_SET, PausedProcess, assert_clean_error, assert_loads
from rank_runs import rank_error_lines, run_torchrun

from dlsr_core import explorer
from dlsr_core.checkpoint import LAST_NAME, run_dir_for_name
from dlsr_core.explorer.epochs import SNAPSHOT_DIR
from dlsr_core.training import LOCK_NAME, RESUME_NAME, RunInUseError, locking, read_resume_state, run_lock

HOLDER = """
import sys, time
from pathlib import Path
from dlsr_core.training import run_lock
run, ready, go = map(Path, sys.argv[1:4])
with run_lock(run, "a test holder"):
    ready.write_text("")
    while not go.exists():
        time.sleep(0.01)
"""


@pytest.fixture
def held(sandbox, tiny_run):
    """A copy of the tiny run whose lock another live process holds."""
    run = sandbox.copy_run(tiny_run)
    holder = PausedProcess(HOLDER, run, sandbox.root)
    yield run, holder
    if holder.process.poll() is None:
        holder.finish()


def _train(cli, run, *extra):
    return cli("train", "-d", TRAIN_SET, "--out", run, *TINY, *FEATURE_OPTIONS, "--quiet", *extra)


def _no_backbone(monkeypatch):
    """Building a backbone fails the test: a refusal must come before any extraction."""

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was built: the refusal came after extraction started")

    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", refuse)


@pytest.mark.parametrize("extra", [[], ["--lr", "0.01", "--epochs", "3"], ["--restart"]], ids=["same", "lr", "restart"])
def test_a_second_train_on_a_locked_run_is_refused_naming_the_holder(
    held, sandbox, seeded_cache, cli, monkeypatch, extra
):
    run, holder = held
    _no_backbone(monkeypatch)
    sandbox.cache.mkdir()  # an empty cache: the refusal must not wait for an extraction
    before = sandbox.snapshot()
    line = assert_clean_error(_train(cli, run, "--cache-dir", sandbox.cache, *extra), 2, "is being trained by another")
    assert f"process {holder.process.pid} on host {socket.gethostname()}, started " in line
    assert "(a test holder)" in line and "choose another --out" in line
    sandbox.assert_only_changed(before)  # the running run's folder and everything else untouched
    assert holder.finish() == 0
    assert not (run / LOCK_NAME).exists()  # released: the next run goes ahead
    assert _train(cli, run, "--epochs", "3", "--cache-dir", seeded_cache).code == 0
    assert_loads(run, epoch=3)


def _epoch_one_saved(run: Path) -> bool:
    """Epoch 1's files are written: checkpoints, resume file, and (the last) the run's experiment file."""
    return (run / RESUME_NAME).exists() and (run / "experiment.json").exists() and not list(run.glob(".*.partial"))


def test_a_real_train_in_progress_refuses_a_second_one(sandbox, tiny_run, seeded_cache, cli):
    """The issue's case: a second train with another lr while the first one trains; the second changes nothing."""
    run = sandbox.runs / "busy"
    command = [sys.executable, "-m", "dlsr_core", "train", "-d", TRAIN_SET, "--out", run, *TINY, *FEATURE_OPTIONS]
    command += ["--cache-dir", seeded_cache, "--epochs", "50000", "--checkpoint-every", "50000", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(list(map(str, command)), cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not _epoch_one_saved(run):  # the first epoch is always saved; then it trains on
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        before = sandbox.snapshot()
        outcome = _train(cli, run, "--cache-dir", seeded_cache, "--lr", "0.01", "--epochs", "2")
        line = assert_clean_error(outcome, 2, f"process {first.pid} on host", "python -m dlsr_core train")
        assert "started 20" in line  # its start time
        sandbox.assert_only_changed(before)
        assert read_resume_state(run / RESUME_NAME).train_config.learning_rate == 1e-4  # still the first run's
    finally:
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=120)
    assert code == 143, first.stderr.read()
    assert not (run / LOCK_NAME).exists()
    finished = _train(cli, run, "--cache-dir", seeded_cache, "--epochs", "1")
    assert finished.code == 0 and "nothing to do" in finished.out


def test_a_lock_left_by_a_killed_run_is_taken_over(held, sandbox, cli):
    run, holder = held
    pid = holder.process.pid
    holder.kill()  # SIGKILL: no clean-up ran, the lock file and its record stay
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == pid
    outcome = _train(cli, run, "--epochs", "3")
    assert outcome.code == 0, outcome.err
    assert f"taking over the lock of {run}: process {pid} on host" in outcome.err
    assert "Traceback" not in outcome.err and not (run / LOCK_NAME).exists()
    assert_loads(run, epoch=3)


def _foreign_lock(run: Path, age: float) -> None:
    record = {"pid": 4242, "host": "another-host.example", "started": time.time() - age - 5, "by": "a test"}
    (run / LOCK_NAME).write_text(json.dumps(record))
    os.utime(run / LOCK_NAME, (time.time() - age, time.time() - age))


def test_a_lock_from_another_host_is_honoured_while_fresh(sandbox, tiny_run, cli, monkeypatch):
    run = sandbox.copy_run(tiny_run)
    _no_backbone(monkeypatch)
    _foreign_lock(run, age=30)  # its holder touched it 30 s ago
    before = sandbox.snapshot()
    line = assert_clean_error(_train(cli, run), 2, "process 4242 on host another-host.example")
    assert f"taken over after {locking.STALE_SECONDS:.0f} s" in line
    sandbox.assert_only_changed(before)


def test_a_silent_lock_from_another_host_is_taken_over(sandbox, tiny_run, cli):
    run = sandbox.copy_run(tiny_run)
    _foreign_lock(run, age=locking.STALE_SECONDS + 60)  # its host went silent
    outcome = _train(cli, run, "--epochs", "3")
    assert outcome.code == 0 and "taking over the lock" in outcome.err and "another-host.example" in outcome.err
    assert not (run / LOCK_NAME).exists()
    assert_loads(run, epoch=3)


def test_a_live_holder_keeps_its_lock_fresh(sandbox, monkeypatch):
    monkeypatch.setattr(locking, "HEARTBEAT_SECONDS", 0.05)
    run = sandbox.runs / "fresh"
    with run_lock(run):
        lock = run / LOCK_NAME
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
        deadline = time.monotonic() + 30
        while time.time() - lock.stat().st_mtime > 60:
            assert time.monotonic() < deadline, "the heartbeat never touched the lock"
            time.sleep(0.02)
    assert not run.exists()  # the folder the lock created is removed again when nothing was written into it


def test_readers_need_no_lock(held, sandbox, cli):
    run, _ = held
    scored = cli("score", "--checkpoint", run, "-d", ID_SET, "--quiet", "--output", sandbox.out / "s.csv")
    assert scored.code == 0, scored.err
    evaluated = cli("evaluate", "--checkpoint", run, "--id", ID_SET, "--ood", "demo:letters", "--quiet")
    assert evaluated.code == 0, evaluated.err


def test_one_process_cannot_take_a_run_twice_but_may_nest(sandbox):
    run = sandbox.runs / "nested"
    with run_lock(run):
        with run_lock(run):  # train() inside the CLI's lock: the same thread may
            pass
        errors = []

        def other_thread():
            try:
                with run_lock(run):
                    pass
            except RunInUseError as error:
                errors.append(str(error))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert errors and f"process {os.getpid()}" in errors[0]
        assert (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()


def test_the_train_page_shows_the_refusal(held, sandbox, seeded_cache):
    run, holder = held
    (run / SNAPSHOT_DIR).mkdir()
    (run / SNAPSHOT_DIR / "epoch_0002.safetensors").write_bytes(b"kept")  # Start over would clear these
    before = sandbox.snapshot()
    request = explorer.TrainRequest(
        dataset=TRAIN_SET,
        run_dir=run,
        weights="random",
        input_size=32,
        width=16,
        depth=1,
        epochs=3,
        cache_dir=str(seeded_cache),
        resume=False,
    )
    job = explorer.TrainingJob(request).start()
    job.join(timeout=120)
    state = job.snapshot()
    assert state.phase == "failed", state.message
    assert state.message.startswith(f"{run} is being trained by another run: process {holder.process.pid}")
    assert "choose another run name" in state.message and "--" not in state.message
    sandbox.assert_only_changed(before)


def test_the_train_page_may_continue_a_run_a_killed_train_left_locked(sandbox, tiny_run):
    root = sandbox.runs
    run = sandbox.copy_run(tiny_run, "killed")
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "started": 0}))
    assert run_dir_for_name("killed", root) == root / "killed"


def test_torchrun_ranks_refuse_a_locked_run_together(held, sandbox, seeded_cache):
    run, holder = held
    argv = ["train", "-d", TRAIN_SET, "--out", run, *TINY, *FEATURE_OPTIONS, "--cache-dir", seeded_cache, "--quiet"]
    outcome = run_torchrun(argv, cwd=sandbox.root)
    lines = rank_error_lines(outcome.err)
    assert len(lines) == 2 and lines[0] == lines[1], outcome.err  # every rank, the same one line
    assert f"process {holder.process.pid} on host" in lines[0] and "is being trained by another run" in lines[0]
    # torchrun stops the other rank once one exits, so it reports 2 for one or both; never a rank's traceback
    assert "exitcode  : 2" in outcome.err and "dlsr_core/" not in outcome.err
    assert (run / LAST_NAME).exists() and holder.finish() == 0
