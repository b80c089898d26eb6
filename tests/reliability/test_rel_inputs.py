"""Bad and awkward images (CLI files, folder datasets, uploads) and run names: the good inputs of a batch are always
processed, every bad one is named with its reason, memory stays bounded, and nothing is written where it should not."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest
from conftest import FakeExtractor, assert_clean_error
from PIL import Image

from dlsr_core.checkpoint import DEFAULT_RUN_DIR, CheckpointError, run_dir_for_name
from dlsr_core.explorer import uploads


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_corpus(folder):
    """Good and bad image files in `folder`; returns (good names, {bad name: expected reason})."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    good = {
        "photo.png": _png(photo),
        "gray.jpg": _png(photo.convert("L"), "JPEG"),
        "wide_150x1.png": _png(Image.new("RGB", (150, 1), (200, 0, 0))),
        "wide_10000x1.png": _png(Image.new("L", (10000, 1), 255)),
        "tall_1x10000.png": _png(Image.new("L", (1, 10000), 255)),
        "big_3000x2000.jpg": _png(Image.new("RGB", (3000, 2000), (0, 90, 200)), "JPEG"),
    }
    full = _png(photo)
    bad = {
        "text.png": (b"plain text, not a picture", "not a recognised image format"),
        "truncated.png": (full[: len(full) // 2], "runcated"),
        "empty.jpg": (b"", "empty file (0 bytes)"),
        "bomb.png": (_png(Image.new("1", (9000, 9000))), "decompression bomb"),
    }
    for name, data in good.items():
        (folder / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    return sorted(good), {name: reason for name, (_, reason) in bad.items()}


@pytest.fixture
def fake_backbone(monkeypatch):
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", lambda *a, **k: FakeExtractor())


def test_score_image_files_keeps_the_good_ones_and_names_each_bad_one(sandbox, cli, tiny_run):
    good, bad = _write_corpus(sandbox.inputs)
    (sandbox.inputs / "a_folder.png").mkdir()
    files = [sandbox.inputs / name for name in [*good, *bad, "missing.png", "a_folder.png"]]
    before = sandbox.snapshot()
    outcome = cli("score", "--checkpoint", tiny_run, "--images", *files, "-o", sandbox.out / "scores.csv")
    assert outcome.code == 0, outcome.err
    rows = list(csv.DictReader((sandbox.out / "scores.csv").open()))
    assert [os.path.basename(row["item"]) for row in rows] == good  # extreme aspect ratios and big files included
    assert all(np.isfinite(float(row["mfsim"])) for row in rows)
    skipped = outcome.err.strip().splitlines()
    assert len(skipped) == len(bad) + 2 and "Traceback" not in outcome.err
    for name, reason in {**bad, "missing.png": "cannot read file", "a_folder.png": "not a regular file"}.items():
        assert any(line.startswith(f"skipped {sandbox.inputs / name}: ") and reason in line for line in skipped), name
    sandbox.assert_only_changed(before, sandbox.out / "scores.csv")


def test_folder_rows_are_file_paths_and_skipped_files_are_reported(sandbox, cli, tiny_run, fake_backbone):
    good, bad = _write_corpus(sandbox.inputs)
    spec = f"folder:{sandbox.inputs}"
    plain = cli("score", "--checkpoint", tiny_run, "-d", spec, "--quiet", "-o", sandbox.out / "a.csv")
    assert plain.code == 0
    assert (
        plain.err.strip()
        == f"{spec}: {len(bad)} unreadable file(s) skipped (name them with --verbose or --skipped-csv FILE)"
    )
    rows = list(csv.DictReader((sandbox.out / "a.csv").open()))
    assert [row["item"] for row in rows] == [str(sandbox.inputs / name) for name in good]

    verbose = cli(
        "score",
        "--checkpoint",
        tiny_run,
        "-d",
        spec,
        "--quiet",
        "--verbose",
        "--skipped-csv",
        sandbox.out / "skipped.csv",
    )
    lines = verbose.err.strip().splitlines()
    assert lines[0] == f"{spec}: {len(bad)} unreadable file(s) skipped" and len(lines) == 1 + len(bad)
    for name, reason in bad.items():
        assert any(line.startswith(f"  skipped {sandbox.inputs / name}: ") and reason in line for line in lines[1:])
    table = list(csv.reader((sandbox.out / "skipped.csv").open()))
    assert table[0] == ["dataset", "item", "reason"] and len(table) == 1 + len(bad)
    assert {os.path.basename(row[1]) for row in table[1:]} == set(bad)


def test_uploads_are_decoded_one_at_a_time_downscaled_and_bounded(monkeypatch):
    huge = _png(Image.new("L", (6000, 6000), 90))  # 36 MP from a few kB on disk
    monkeypatch.setattr(uploads, "MAX_BATCH_PIXELS", 2_500_000)  # room for two 1024 x 1024 decoded copies
    files = [("a.png", huge), ("b.png", huge), ("c.png", huge), ("small.png", _png(Image.new("RGB", (30, 20))))]
    good, errors, notes = uploads.decode_uploads(files)
    assert [name for name, _ in good] == ["a.png", "b.png", "small.png"]
    assert all(max(image.size) <= 1024 for _, image in good)
    assert dict(notes)["a.png"].startswith("downscaled from 6000×6000 to 1024×1024 px")
    assert "small.png" not in dict(notes)
    assert errors == [
        ("c.png", "not scored: the batch already holds 2 MP of decoded images; score it in a smaller batch")
    ]


def test_big_jpeg_is_reduced_while_decoding():
    from dlsr_core.data import load_image

    image = load_image(_png(Image.new("RGB", (6000, 4000), (1, 2, 3)), "JPEG"))
    assert image.size == (1024, 683)
    assert load_image(_png(Image.new("RGB", (1500, 10)), "PNG"), max_side=None).size == (1500, 10)


@pytest.mark.parametrize("size", [(150, 1), (10000, 1), (1, 10000), (1, 1), (256, 255)])
def test_previews_of_any_aspect_ratio_stay_valid(size):
    preview = uploads._preview(Image.new("RGB", size, (255, 255, 255)))
    width, height = preview.size
    assert 1 <= width <= 256 and 1 <= height <= 256
    assert max(width, height) <= uploads.MAX_PREVIEW_ASPECT * min(width, height)
    assert preview.resize((96, max(1, round(96 * height / width)))).size[1] >= 1


@pytest.mark.parametrize(
    "name,needle",
    [
        ("..", "not allowed"),
        (".", "not allowed"),
        ("a/b", "not allowed"),
        ("../escape", "not allowed"),
        ("/tmp/abs", "not allowed"),
        ("", "not allowed"),
        (".hidden", "not allowed"),
        ("with space", "not allowed"),
        ("x" * 65, "not allowed"),
        ("nul\x00byte", "not allowed"),
        # `$` matches before a final newline: a name ending in one must still be refused (issue 17, defect 9)
        ("default\n", "not allowed"),
        ("my_run\n", "not allowed"),
        ("my_run\r\n", "not allowed"),
        ("..\n", "not allowed"),
        ("run\n\n", "not allowed"),
        ("default", "shipped default model"),
        ("a_file", "exists and is not a run folder"),
        ("a_link", "directly inside"),
        ("other_stuff", "already holds other files"),
    ],
)
def test_run_names_never_leave_the_checkpoints_folder(name, needle, tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "a_file").write_text("x")
    (root / "a_link").symlink_to(tmp_path)
    (root / "other_stuff").mkdir()
    (root / "other_stuff" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=needle):
        run_dir_for_name(name, root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_good_run_names_map_to_a_folder_directly_inside(tmp_path):
    (tmp_path / "resumable").mkdir()
    (tmp_path / "resumable" / "resume.pt").write_bytes(b"")
    for name in ("my_run", "run-2.v1", "resumable"):
        assert run_dir_for_name(name, tmp_path) == tmp_path / name
    assert not (tmp_path / "my_run").exists()  # naming a run creates nothing
    with pytest.raises(CheckpointError):
        run_dir_for_name(DEFAULT_RUN_DIR.name, DEFAULT_RUN_DIR.parent)


def test_all_images_unreadable_is_one_error_line(sandbox, cli, tiny_run):
    (sandbox.inputs / "a.png").write_bytes(b"nope")
    outcome = cli("score", "--checkpoint", tiny_run, "--images", sandbox.inputs / "a.png")
    assert_clean_error(outcome, 2, "none of the given files could be read", alone=False)  # after the skip line


@pytest.mark.parametrize("name", ["epoch_0001.safetensors\n", "epoch_\u0660\u0660\u0660\u0661.safetensors"])
def test_only_plain_snapshot_names_are_listed_as_epochs(name, tiny_run, sandbox):
    """A file whose name merely starts like a snapshot (a trailing newline, non-ASCII digits) is not an epoch."""
    from dlsr_core.checkpoint import FIRST_NAME
    from dlsr_core.explorer import epoch_checkpoints
    from dlsr_core.explorer.epochs import SNAPSHOT_DIR
    from dlsr_core.scoring import Detector

    run = sandbox.copy_run(tiny_run)
    (run / SNAPSHOT_DIR).mkdir()
    (run / FIRST_NAME).rename(run / SNAPSHOT_DIR / name)  # epoch 1 now exists only under the odd name
    epochs = epoch_checkpoints(Detector.load(run, device="cpu"))
    assert [(c.epoch, c.path.name) for c in epochs] == [(2, "last.safetensors")]
