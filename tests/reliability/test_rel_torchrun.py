"""torchrun: ranks given different arguments (or seeing different data) refuse together before any work, and a fault on
one rank ends the way it ends in one process, on every rank: a cache that cannot be used is warned about and the run
goes on; a failed extraction or save is one `error:` line and exit 2 on each rank, never a traceback or a hang.

Every case is a real 2-process gloo run (rank_runs.py); a rank left waiting fails the case by timeout.
"""

from __future__ import annotations

import torch
from conftest import FEATURE_OPTIONS, TINY, TRAIN_SET, FakeExtractor, assert_clean_error, assert_loads
from PIL import Image
from rank_runs import FAKE_BACKBONE, rank_error_lines, run_ranks, run_torchrun

from dlsr_core import cache
from dlsr_core.checkpoint import LAST_NAME

IMAGES = 40
EXTRACT = ["extract", "--weights", "random", "--input-size", "32", "--quiet"]
SMALL_BLOCKS = ["--batch-size", "8"]  # 5 blocks of 8: rank 0 extracts rows 0-23, rank 1 rows 24-39


def _image_folder(root, name="imgs", shade=0):
    folder = root / name
    folder.mkdir(parents=True)
    for index in range(IMAGES):
        Image.new("L", (12, 12), (shade + 6 * index) % 256).save(folder / f"{index:02d}.png")
    return folder


def _reference(folder, cache_dir, batch_size=8):
    """The features one process extracts (and the name of its cache entry)."""
    features = cache.cached_features(
        f"folder:{folder}", "efficientnet_lite0", weights="random", input_size=32, cache_dir=cache_dir,
        extractor=FakeExtractor(), batch_size=batch_size,
    )  # fmt: skip
    (entry,) = cache_dir.glob("*.safetensors")
    return features, entry.name


def _entry(cache_dir, folder):
    """The entry the ranks stored for `folder` (None when there is none or it is damaged)."""
    return cache.cached_features(
        f"folder:{folder}", "efficientnet_lite0", weights="random", input_size=32, cache_dir=cache_dir, cache_only=True
    )


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _same_rows(ours, reference):
    assert torch.equal(ours.indices, reference.indices)
    assert torch.equal(ours.features, reference.features)


def _only_warning(outcome, *needles):
    lines = outcome.err.strip().splitlines()
    assert outcome.code == 0, outcome.err
    assert len(lines) == 1 and lines[0].startswith("warning: feature cache"), outcome.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- ranks that disagree ------------------------------------------------------------------------------------------


def test_ranks_with_different_batch_sizes_refuse_together(sandbox):
    """The issue's case: rows 24-31 would be extracted by no rank."""
    folder = _image_folder(sandbox.inputs)
    base = [*EXTRACT, "-d", f"folder:{folder}", "--cache-dir", sandbox.cache]
    ranks = run_ranks([[*base, "--batch-size", "8"], [*base, "--batch-size", "16"]])
    lines = [
        assert_clean_error(outcome, 2, "torchrun ranks disagree", "--batch-size (rank 0: 8, rank 1: 16)")
        for outcome in ranks
    ]
    assert lines[0] == lines[1]
    assert _files(sandbox.cache) == []  # nothing extracted, no part file


def test_ranks_with_different_training_options_refuse_together(sandbox, seeded_cache):
    base = ["train", "--out", sandbox.runs / "run", *TINY, *FEATURE_OPTIONS, "--cache-dir", seeded_cache, "--quiet"]
    ranks = run_ranks([[*base, "-d", TRAIN_SET, "--lr", "1e-3"], [*base, "-d", "demo:digits", "--lr", "1e-2"]])
    for outcome in ranks:
        assert_clean_error(
            outcome, 2, "--dataset (rank 0: 'demo:fashion_mnist_rotated', rank 1: 'demo:digits')", "--lr"
        )
    assert not (sandbox.runs / "run").exists()


def test_ranks_that_see_different_images_under_one_name_refuse_together(sandbox):
    """The same command line, but `folder:imgs` is another folder for each rank (different working folders)."""
    places = [sandbox.root / "host0", sandbox.root / "host1"]
    for shade, place in enumerate(places):
        _image_folder(place, shade=100 * shade)
    Image.new("L", (12, 12), 7).save(places[1] / "imgs" / "extra.png")
    argv = [*EXTRACT, "-d", "folder:imgs", *SMALL_BLOCKS, "--cache-dir", sandbox.cache]
    for outcome in run_ranks([argv, argv], cwds=places):
        line = assert_clean_error(outcome, 2, "disagree on the features of folder:imgs", "the cache key's dataset")
        assert "images (rank 0: 40, rank 1: 41)" in line
    assert _files(sandbox.cache) == []


def test_ranks_that_see_different_run_folders_refuse_together(sandbox, tiny_run, seeded_cache):
    """`--out run` is a resumable run for rank 0 and a new folder for rank 1 (not one shared folder)."""
    places = [sandbox.root / "host0", sandbox.root / "host1"]
    for place in places:
        place.mkdir()
    sandbox.copy_run(tiny_run)
    (places[0] / "run").symlink_to(sandbox.runs / "run")
    argv = [
        "train",
        "-d",
        TRAIN_SET,
        "--out",
        "run",
        *TINY,
        *FEATURE_OPTIONS,
        "--cache-dir",
        seeded_cache,
        "--epochs",
        "3",
        "--quiet",
    ]
    for outcome in run_ranks([argv, argv], cwds=places):
        line = assert_clean_error(outcome, 2, "disagree on how far run has trained", alone=False)  # after a resume note
        assert "epochs done (rank 0: 2, rank 1: 0)" in line
    assert_loads(sandbox.runs / "run", epoch=2)
    assert not (places[1] / "run").exists()


def test_ranks_whose_devices_choose_different_batch_sizes_use_the_smallest(sandbox):
    """Without --batch-size each rank's default depends on its device; the ranks agree on the smallest."""
    folder = _image_folder(sandbox.inputs)
    setup = FAKE_BACKBONE + "FakeExtractor.batch_size_for = lambda self, size: 8 if rank == 0 else 16\n"
    argv = [*EXTRACT, "-d", f"folder:{folder}", "--cache-dir", sandbox.cache]
    ranks = run_ranks([argv, argv], setup=setup)
    assert [outcome.code for outcome in ranks] == [0, 0], ranks
    assert "40 vectors of 512 dims" in ranks[0].out and "with 2 processes" in ranks[0].out
    reference, name = _reference(folder, sandbox.root / "single", batch_size=8)
    assert _files(sandbox.cache) == [name]
    _same_rows(_entry(sandbox.cache, folder), reference)


def test_torchrun_ranks_given_different_arguments_refuse_together(sandbox):
    folder = _image_folder(sandbox.inputs)
    setup = FAKE_BACKBONE + "if rank == 1:\n    sys.argv[sys.argv.index('8')] = '16'\n"
    argv = [*EXTRACT, "-d", f"folder:{folder}", *SMALL_BLOCKS, "--cache-dir", sandbox.cache]
    outcome = run_torchrun(argv, setup=setup, cwd=sandbox.root)
    lines = rank_error_lines(outcome.err)
    assert len(lines) == 2 and lines[0] == lines[1] and "--batch-size (rank 0: 8, rank 1: 16)" in lines[0], outcome.err
    # torchrun stops the other rank once one exits, so it reports 2 for one or both; never a rank's traceback
    assert "exitcode  : 2" in outcome.err and "dlsr_core/" not in outcome.err


# --- faults on one rank -------------------------------------------------------------------------------------------


def test_a_folder_squatting_on_the_entry_is_warned_about_on_every_rank(sandbox):
    folder = _image_folder(sandbox.inputs)
    reference, name = _reference(folder, sandbox.root / "single")
    (sandbox.cache / name).mkdir(parents=True)
    argv = [*EXTRACT, "-d", f"folder:{folder}", *SMALL_BLOCKS, "--cache-dir", sandbox.cache]
    ranks = run_ranks([argv, argv])
    for outcome in ranks:
        _only_warning(outcome, f"a folder has taken the cache file's name {name}", "carrying on without caching")
    assert "40 vectors of 512 dims" in ranks[0].out and ranks[1].out == ""
    assert _files(sandbox.cache) == [name]  # no part file left; the folder is not ours to remove


def test_torchrun_trains_past_a_folder_squatting_on_the_entry(sandbox, tiny_run):
    folder = _image_folder(sandbox.inputs)
    _, name = _reference(folder, sandbox.root / "single")
    (sandbox.cache / name).mkdir(parents=True)
    run = sandbox.runs / "run"
    argv = [
        "train",
        "-d",
        f"folder:{folder}",
        "--out",
        run,
        *TINY,
        *FEATURE_OPTIONS,
        *SMALL_BLOCKS,
        "--cache-dir",
        sandbox.cache,
    ]
    outcome = run_torchrun([*argv, "--epochs", "2", "--quiet"], cwd=sandbox.root)
    assert outcome.code == 0, outcome.err
    assert outcome.err.count(f"a folder has taken the cache file's name {name}") == 2  # once on each rank
    assert "Traceback" not in outcome.err and "trained 2/2 epochs on 40 vectors" in outcome.out
    assert_loads(run, epoch=2)
    assert _files(sandbox.cache) == [name]


def test_a_full_disk_on_one_rank_is_warned_about_and_the_features_are_kept(sandbox):
    folder = _image_folder(sandbox.inputs)
    setup = FAKE_BACKBONE + (
        "import errno\n"
        "from dlsr_core import cache\n"
        "store = cache.save_feature_set\n"
        "def full(path, *args):\n"
        "    if rank == 1 and '.part' in path.name:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "    return store(path, *args)\n"
        "cache.save_feature_set = full\n"
    )
    argv = [*EXTRACT, "-d", f"folder:{folder}", *SMALL_BLOCKS, "--cache-dir", sandbox.cache]
    ranks = run_ranks([argv, argv], setup=setup)
    for outcome in ranks:
        _only_warning(outcome, "(rank 1: No space left on device: ", ".part1of2)")
    assert "40 vectors of 512 dims" in ranks[0].out
    reference, name = _reference(folder, sandbox.root / "single")
    assert _files(sandbox.cache) == [name]  # rank 0 stored the whole set; no part file left
    _same_rows(_entry(sandbox.cache, folder), reference)


def test_out_of_memory_on_one_rank_is_one_line_on_every_rank(sandbox):
    folder = _image_folder(sandbox.inputs)
    setup = FAKE_BACKBONE + (
        "from dlsr_core import cache\n"
        "def exhausted(*args, **kwargs):\n"
        "    raise MemoryError('simulated: 512 GiB asked')\n"
        "if rank == 1:\n"
        "    cache.extract_features = exhausted\n"
    )
    argv = [*EXTRACT, "-d", f"folder:{folder}", *SMALL_BLOCKS, "--cache-dir", sandbox.cache]
    own, other = run_ranks([argv, argv], setup=setup)[::-1]
    assert_clean_error(own, 2, "not enough memory (simulated: 512 GiB asked)", "smaller --batch-size")
    assert_clean_error(other, 2, "rank 1 of 2 could not extract its part of", "not enough memory (simulated")
    assert _files(sandbox.cache) == []  # rank 0's part was removed, nothing was joined


def test_an_os_error_while_extracting_on_one_rank_is_one_line_on_every_rank(sandbox):
    folder = _image_folder(sandbox.inputs)
    setup = FAKE_BACKBONE + (
        "import errno\n"
        "from dlsr_core import cache\n"
        "def unreadable(*args, **kwargs):\n"
        "    raise OSError(errno.EIO, 'Input/output error', '/mnt/data/07.png')\n"
        "if rank == 0:\n"
        "    cache.extract_features = unreadable\n"
    )
    argv = [*EXTRACT, "-d", f"folder:{folder}", *SMALL_BLOCKS, "--cache-dir", sandbox.cache]
    own, other = run_ranks([argv, argv], setup=setup)
    assert_clean_error(own, 2, "Input/output error: /mnt/data/07.png")
    assert_clean_error(other, 2, "rank 0 of 2 could not extract its part of", "OSError", "Input/output error")
    assert _files(sandbox.cache) == []


def test_a_cache_folder_the_ranks_do_not_share_is_warned_about_and_leaves_no_part_file(sandbox):
    """Each rank's DLSR_CACHE_DIR is its own folder (as on two hosts): rank 0 cannot join; the parts travel through
    the process group instead, and rank 0 stores the whole set in its own cache."""
    folder = _image_folder(sandbox.inputs)
    caches = [sandbox.root / "cache0", sandbox.root / "cache1"]
    argv = [*EXTRACT, "-d", f"folder:{folder}", *SMALL_BLOCKS]
    ranks = run_ranks([argv, argv], envs=[{"DLSR_CACHE_DIR": str(place)} for place in caches])
    for outcome in ranks:
        _only_warning(
            outcome, "rank 0 cannot read every rank's part file in it (is it one folder shared by all ranks?)"
        )
    reference, name = _reference(folder, sandbox.root / "single")
    assert _files(caches[0]) == [name] and _files(caches[1]) == []
    _same_rows(_entry(caches[0], folder), reference)


def test_a_full_disk_while_rank_0_saves_a_checkpoint_is_one_line_on_every_rank(sandbox, seeded_cache):
    setup = FAKE_BACKBONE + (
        "import errno\n"
        "from dlsr_core.training import checkpointing\n"
        "save = checkpointing.save_checkpoint\n"
        "def full(path, model, info, *args):\n"
        "    if rank == 0 and info.epoch == 2:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "    return save(path, model, info, *args)\n"
        "checkpointing.save_checkpoint = full\n"
    )
    run = sandbox.runs / "run"
    argv = [
        "train",
        "-d",
        TRAIN_SET,
        "--out",
        run,
        *TINY,
        *FEATURE_OPTIONS,
        "--cache-dir",
        seeded_cache,
        "--epochs",
        "3",
        "--quiet",
    ]
    own, other = run_ranks([argv, argv], setup=setup)
    assert_clean_error(own, 2, f"No space left on device: {run / LAST_NAME}")
    assert_clean_error(other, 2, "rank 0 could not save epoch 2", "No space left on device")
    assert_loads(run, epoch=1)  # the last good checkpoint is kept
    assert not (run / "train.lock").exists()
