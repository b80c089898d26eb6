"""Files a kill or a failed run leaves behind (`.partial` temporaries, torchrun `.partNofM` part files) are removed by
later writes, and never while another live writer is still using them. (A failed or unjoinable sharded run removing
its own part files is tested with real ranks in test_rel_torchrun.py.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import BACKBONE, TRAIN_SET, WEIGHTS, FakeExtractor, PausedProcess

from dlsr_core import atomic, cache
from dlsr_core.checkpoint import LAST_NAME, load_checkpoint, save_checkpoint

WRITER = """
import os, sys, time
from pathlib import Path
from dlsr_core import atomic
target, ready, go = map(Path, sys.argv[1:4])

def paused_fsync(descriptor):  # the data are written; the writer now waits (a slow disk, or a kill coming)
    ready.write_text("")
    while not go.exists():
        time.sleep(0.01)

atomic.os.fsync = paused_fsync
atomic.atomic_write_bytes(target, b"from the other writer" * 50_000)
"""
AN_HOUR_AGO = time.time() - 3600


def _partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.partial"))


def _age(path: Path, when: float = AN_HOUR_AGO) -> None:
    os.utime(path, (when, when))


def _save_over(run: Path) -> None:
    loaded = load_checkpoint(run / LAST_NAME)
    save_checkpoint(run / LAST_NAME, loaded.model, loaded.info, loaded.feature_mean, loaded.feature_std)


def test_a_killed_saves_temporary_is_removed_by_the_next_save(sandbox, tiny_run):
    run = sandbox.copy_run(tiny_run)
    PausedProcess(WRITER, run / LAST_NAME, sandbox.root).kill()
    (left,) = _partials(run)
    assert left.stat().st_size >= 1_000_000  # a full-size temporary, as the issue found
    _age(left)
    _save_over(run)
    assert _partials(run) == [] and load_checkpoint(run / LAST_NAME).info.epoch == 2


def test_a_killed_extractions_temporary_is_removed_when_the_entry_is_written(sandbox, monkeypatch):
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", lambda *a, **k: FakeExtractor())

    def features():
        return cache.cached_features(TRAIN_SET, BACKBONE, weights=WEIGHTS, input_size=32, cache_dir=sandbox.cache)

    features()
    (entry,) = sandbox.cache.glob("*.safetensors")
    entry.unlink()  # as on a first extraction: killed while storing the entry
    PausedProcess(WRITER, entry, sandbox.root).kill()
    for left in _partials(sandbox.cache):
        _age(left)
    assert len(features()) == 1000
    assert _partials(sandbox.cache) == [] and [p.name for p in sandbox.cache.iterdir()] == [entry.name]


def test_a_live_writers_temporary_is_never_removed(sandbox, tiny_run):
    """Even an old-looking temporary stays while its writer lives (it holds a lock), and that writer then finishes."""
    run = sandbox.copy_run(tiny_run)
    writer = PausedProcess(WRITER, run / LAST_NAME, sandbox.root)
    try:
        (live,) = _partials(run)
        _age(live)
        _save_over(run)  # a second writer of the same file
        assert live.exists()
    finally:
        code = writer.finish()
    assert code == 0, writer.process.stderr.read()
    assert (run / LAST_NAME).read_bytes() == b"from the other writer" * 50_000
    assert _partials(run) == []


def test_young_and_foreign_temporaries_are_left_alone(sandbox, tiny_run):
    run = sandbox.copy_run(tiny_run)
    young = run / f".{LAST_NAME}.abcd1234.partial"  # its writer may not have locked it yet
    young.write_bytes(b"x")
    other = run / ".notes.txt.abcd1234.partial"  # another file's temporary: removed only by that file's writes
    other.write_bytes(b"x")
    _age(other)
    _save_over(run)
    assert young.exists() and other.exists()
    atomic.atomic_write_bytes(run / "notes.txt", b"notes")
    assert young.exists() and not other.exists()


def test_stale_torchrun_part_files_are_swept_at_the_next_cache_write(sandbox, monkeypatch):
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", lambda *a, **k: FakeExtractor())
    sandbox.cache.mkdir()
    stale = sandbox.cache / "demo_letters-efficientnet_lite0-32px-0123456789abcdef0123.safetensors.part1of4"
    stale.write_bytes(b"x" * 1000)
    _age(stale, time.time() - 7 * 3600)  # from a run killed hours ago
    fresh = sandbox.cache / "demo_letters-efficientnet_lite0-32px-0123456789abcdef0123.safetensors.part0of2"
    fresh.write_bytes(b"x" * 1000)  # a live sharded run may still join this one
    cache.cached_features(TRAIN_SET, BACKBONE, weights=WEIGHTS, input_size=32, cache_dir=sandbox.cache)
    assert not stale.exists() and fresh.exists()
