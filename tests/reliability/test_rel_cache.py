"""Feature-cache faults: the command warns once, carries on without the cache and still delivers the features."""

from __future__ import annotations

import errno

import pytest
from conftest import FakeExtractor, assert_clean_error
from PIL import Image

from dlsr_core import atomic, cache


@pytest.fixture
def fake_backbone(monkeypatch):
    """The backbone is not what is tested here: a fake one keeps every case well under a second."""
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", lambda *a, **k: FakeExtractor())
    monkeypatch.setattr(cache, "_warned_folders", set())


@pytest.fixture
def two_folders(sandbox):
    folders = []
    for name in ("a", "b"):
        folder = sandbox.inputs / name
        folder.mkdir()
        for index in range(3):
            Image.new("L", (12, 12), 40 * index).save(folder / f"{index}.png")
        folders.append(f"folder:{folder}")
    return folders


def _extract(cli, folders, *extra):
    return cli(
        "extract",
        *(arg for spec in folders for arg in ("-d", spec)),
        "--weights",
        "random",
        "--input-size",
        "64",
        "--quiet",
        *extra,
    )


def _cache_file_name(sandbox, spec) -> str:
    probe = sandbox.root / "probe"
    cache.cached_features(
        spec, "efficientnet_lite0", weights="random", input_size=64, cache_dir=probe, extractor=FakeExtractor()
    )
    (name,) = [p.name for p in probe.iterdir()]
    for path in probe.iterdir():
        path.unlink()
    probe.rmdir()
    return name


def cache_dir_is_a_file(sandbox, monkeypatch, folders):
    (sandbox.root / "cache-file").write_text("I am a file")
    monkeypatch.setenv("DLSR_CACHE_DIR", str(sandbox.root / "cache-file"))
    return []


def cache_option_is_a_file(sandbox, monkeypatch, folders):
    (sandbox.root / "cache-file").write_text("I am a file")
    return ["--cache-dir", str(sandbox.root / "cache-file")]


def cache_file_is_a_folder(sandbox, monkeypatch, folders):
    for spec in folders:
        (sandbox.cache / _cache_file_name(sandbox, spec)).mkdir(parents=True)
    return []


def read_only_cache(sandbox, monkeypatch, folders):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs.get("dir", "")))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)  # root ignores chmod, so the refusal is simulated
    return []


def disk_full(sandbox, monkeypatch, folders):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    return []


FAULTS = {
    "DLSR_CACHE_DIR-is-a-file": (cache_dir_is_a_file, "it is a file, not a folder"),
    "cache-dir-option-is-a-file": (cache_option_is_a_file, "it is a file, not a folder"),
    "cache-file-name-is-a-folder": (cache_file_is_a_folder, "a folder has taken the cache file's name"),
    "read-only-cache": (read_only_cache, "Permission denied"),
    "disk-full": (disk_full, "No space left on device"),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_cache_fault_warns_once_and_keeps_the_features(kind, sandbox, monkeypatch, cli, fake_backbone, two_folders):
    make_fault, reason = FAULTS[kind]
    extra = make_fault(sandbox, monkeypatch, two_folders)
    before = sandbox.snapshot()
    outcome = _extract(cli, two_folders, *extra)
    assert outcome.code == 0, outcome.err
    warnings = outcome.err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: feature cache"), outcome.err
    assert reason in warnings[0] and "carrying on without caching" in warnings[0]
    assert outcome.out.count("3 vectors of 512 dims") == 2  # both sets were computed and reported
    sandbox.assert_only_changed(before)  # nothing was stored anywhere, and no temporary file was left behind


def test_unwritable_cache_still_returns_computed_features(sandbox, monkeypatch, fake_backbone, two_folders):
    disk_full(sandbox, monkeypatch, two_folders)
    features = cache.cached_features(
        two_folders[0],
        "efficientnet_lite0",
        weights="random",
        input_size=64,
        cache_dir=sandbox.cache,
        extractor=FakeExtractor(),
    )
    assert features.features.shape == (3, 512) and features.seconds > 0
    assert not any(sandbox.cache.rglob("*"))


def test_damaged_cache_file_is_recomputed_and_replaced(sandbox, cli, fake_backbone, two_folders):
    name = _cache_file_name(sandbox, two_folders[0])
    sandbox.cache.mkdir()
    (sandbox.cache / name).write_bytes(b"\x00garbage" * 100)
    outcome = _extract(cli, two_folders[:1], "--cache-dir", sandbox.cache)
    assert outcome.code == 0 and "3 vectors" in outcome.out
    assert "ignoring damaged feature cache" in outcome.err
    assert "from cache" in _extract(cli, two_folders[:1], "--cache-dir", sandbox.cache).out


def test_no_readable_image_at_all_is_an_error(sandbox, cli, fake_backbone):
    folder = sandbox.inputs / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    before = sandbox.snapshot()
    assert_clean_error(_extract(cli, [f"folder:{folder}"], "--cache-dir", sandbox.cache), 2, "none of its 1 images")
    sandbox.assert_only_changed(before, sandbox.cache)
