"""Reading a run while `train` saves it: every read sees the previous checkpoint or the new one, never an error.

Two kinds of test. In the first, a save lands at a chosen point of a read (right after the reader opens the
checkpoint or its `.sha256` file), the places where a reader that opens the file more than once mixes two versions;
these are deterministic. In the second, a real writer (another process, or a thread) saves the run's last checkpoint
over and over with save_checkpoint, the way training does at every epoch, while this process loads it in a loop; the
writer saves until the reader has made its reads and the writer its saves (bounded in seconds), so both overlap
however fast either side is on the machine, and each test asserts that not one read failed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import ID_SET, REPO

from dlsr_core.atomic import sha256_hex
from dlsr_core.checkpoint import (
    DIGEST_KEY,
    LAST_NAME,
    checksum_path,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from dlsr_core.scoring import Detector

MIN_OVERLAP, MAX_SECONDS = 20, 60  # at least this many saves and reads, side by side
FIRST_SAVED_EPOCH = 100  # the writer saves epochs 100, 101, ...; the copied run starts at epoch 2

WRITER = """
import sys, time
from dataclasses import replace
from pathlib import Path
from dlsr_core.checkpoint import load_checkpoint, save_checkpoint
run, min_saves, seconds, first = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
loaded = load_checkpoint(run / "last.safetensors")
(run / "writer.ready").write_text("")
deadline, done = time.monotonic() + seconds, 0
while time.monotonic() < deadline and (done < min_saves or not (run / "writer.stop").exists()):
    info = replace(loaded.info, epoch=first + done)
    loaded.model.output_projection.bias.data += 1e-3  # weights change at every epoch, as in training
    save_checkpoint(run / "last.safetensors", loaded.model, info, loaded.feature_mean, loaded.feature_std)
    done += 1
print(done)
"""


class WriterProcess:
    """`save_checkpoint` in a loop in another process (as `train` does), started and waited for by `run_reads`."""

    def __init__(self, run):
        self.run = run

    def run_reads(self, read, reads_wanted: int = MIN_OVERLAP) -> tuple[int, int, list[str]]:
        """Call `read()` until the writer is done: it stops once `reads_wanted` reads are made and it has saved
        MIN_OVERLAP times; returns (saves made, reads made, errors)."""
        command = [
            sys.executable,
            "-c",
            WRITER,
            str(self.run),
            str(MIN_OVERLAP),
            str(MAX_SECONDS),
            str(FIRST_SAVED_EPOCH),
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            while not (self.run / "writer.ready").exists() and process.poll() is None:
                time.sleep(0.01)
            reads, errors = 0, []
            while process.poll() is None:
                try:
                    read()
                except Exception as error:  # every kind of failure counts, not only CheckpointError
                    errors.append(f"{type(error).__name__}: {error}")
                reads += 1
                if reads == reads_wanted:
                    (self.run / "writer.stop").write_text("")
            out, err = process.communicate(timeout=MAX_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, err[-2000:]
        return int(out.strip()), reads, errors


def _assert_concurrent(saves, reads, errors):
    assert not errors, f"{len(errors)} of {reads} reads failed during {saves} saves, e.g. {errors[:3]}"
    # the reads really overlapped a stream of saves
    assert saves >= MIN_OVERLAP and reads >= MIN_OVERLAP, (saves, reads)


@pytest.fixture
def run(sandbox, tiny_run):
    return sandbox.copy_run(tiny_run)


def _without_embedded_digest(path):
    """Rewrite `path` as checkpoints were written before the embedded digest (the shipped default): the `.sha256`
    file alone vouches for it."""
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != DIGEST_KEY}
    data = safetensors.torch.save(tensors, metadata=metadata)
    path.write_bytes(data)
    checksum_path(path).write_text(f"{sha256_hex(data)}  {path.name}\n")


@pytest.mark.parametrize("saves", [1, 2], ids=["one-save", "two-saves"])
@pytest.mark.parametrize("after_open", [1, 2, 3], ids=lambda n: f"after-open-{n}")
@pytest.mark.parametrize("embedded", [True, False], ids=["embedded-digest", "checksum-file-only"])
def test_a_save_landing_inside_a_read_never_fails_it(embedded, after_open, saves, run, monkeypatch):
    """`saves` saves land right after the reader's `after_open`-th opening of the checkpoint or its `.sha256` file
    (two saves: the first file's inode number may be reused by the second)."""
    path = run / LAST_NAME
    if not embedded:
        _without_embedded_digest(path)
    loaded = load_checkpoint(path)
    bias = loaded.model.output_projection.bias.detach().clone()
    versions = {2: bias, **{FIRST_SAVED_EPOCH + n: bias + 1e-3 * (n + 1) for n in range(saves)}}  # epoch -> weights
    real_open, opened = Path.open, []

    def open_then_save(self, *args, **kwargs):
        stream = real_open(self, *args, **kwargs)
        if self in (path, checksum_path(path)):
            opened.append(self.name)
            if len(opened) == after_open:
                for number in range(saves):
                    info = replace(loaded.info, epoch=FIRST_SAVED_EPOCH + number)
                    loaded.model.output_projection.bias.data += 1e-3  # new weights, as a training epoch makes
                    save_checkpoint(path, loaded.model, info, loaded.feature_mean, loaded.feature_std)
        return stream

    monkeypatch.setattr(Path, "open", open_then_save)
    read = load_checkpoint(path)
    monkeypatch.undo()
    epoch = read.info.epoch
    assert epoch in (2, FIRST_SAVED_EPOCH + saves - 1), (epoch, opened)  # the old file or the newest, whole
    assert torch.allclose(read.model.output_projection.bias, versions[epoch]), "weights of one file, info of another"
    assert load_checkpoint(path).info.epoch == (FIRST_SAVED_EPOCH + saves - 1 if len(opened) >= after_open else 2)


def test_checkpoint_loads_while_another_process_saves_never_fail(run):
    epochs = set()

    def read():
        epochs.add(load_checkpoint(run / LAST_NAME).info.epoch)

    saves, reads, errors = WriterProcess(run).run_reads(read)
    _assert_concurrent(saves, reads, errors)
    assert epochs <= {2, *range(FIRST_SAVED_EPOCH, FIRST_SAVED_EPOCH + saves)}  # an old or a new file, nothing else
    assert load_checkpoint(run / LAST_NAME).info.epoch == FIRST_SAVED_EPOCH + saves - 1


def test_detector_loads_of_a_run_being_saved_never_fail(run):
    """What `score --checkpoint RUN` and every app page do: resolve the run folder and load both checkpoints."""

    def read():
        detector = Detector.load(run, device="cpu")
        assert detector.early is not None and detector.final.info.epoch in (2, *range(FIRST_SAVED_EPOCH, 10**6))

    saves, reads, errors = WriterProcess(run).run_reads(read)
    _assert_concurrent(saves, reads, errors)


def test_metadata_reads_while_another_process_saves_never_fail(run):
    """The Home page and `extract` read only the header (read_checkpoint_info)."""
    saves, reads, errors = WriterProcess(run).run_reads(lambda: read_checkpoint_info(run / LAST_NAME))
    _assert_concurrent(saves, reads, errors)


def test_loads_while_a_thread_of_this_process_saves_never_fail(run):
    """The app case: the Train page's training thread saves while a page of the same process loads the run."""
    loaded = load_checkpoint(run / LAST_NAME)
    stop, saved, errors = threading.Event(), [], []

    def write():
        deadline = time.monotonic() + MAX_SECONDS
        while time.monotonic() < deadline and (len(saved) < MIN_OVERLAP or not stop.is_set()):
            info = replace(loaded.info, epoch=FIRST_SAVED_EPOCH + len(saved))
            loaded.model.output_projection.bias.data += 1e-3
            save_checkpoint(run / LAST_NAME, loaded.model, info, loaded.feature_mean, loaded.feature_std)
            saved.append(info.epoch)

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    try:
        while writer.is_alive():
            try:
                load_checkpoint(run / LAST_NAME)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
            reads += 1
            if reads == MIN_OVERLAP:
                stop.set()
    finally:
        stop.set()
        writer.join()
    _assert_concurrent(len(saved), reads, errors)


def test_score_runs_while_the_run_is_being_saved_exit_0(run, seeded_cache, sandbox, cli):
    """The issue's symptom: `score` during training exited 2 with "does not match the digest stored inside it"."""
    outcomes = []

    def read():
        output = sandbox.out / f"scores{len(outcomes)}.csv"
        outcomes.append(
            cli("score", "--checkpoint", run, "-d", ID_SET, "-o", output, "--cache-dir", seeded_cache, "--quiet")
        )

    saves, reads, _ = WriterProcess(run).run_reads(read, reads_wanted=15)
    assert reads >= 15 and saves >= MIN_OVERLAP, (saves, reads)
    failed = [o.err.strip() for o in outcomes if o.code != 0 or o.err.strip()]
    assert not failed, f"{len(failed)} of {reads} score runs failed, e.g. {failed[:2]}"
