"""Beyond one process and beyond RAM: sharded extraction under torchrun, memory-mapped features for training."""

import os
import subprocess
import sys

import pytest
import safetensors
import safetensors.torch
import torch

from dlsr_core.cache import cache_key, load_feature_set, save_feature_set
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.features import FeatureSet, extract_features
from dlsr_core.mapped import gather_rows, is_mapped, release_pages
from dlsr_core.training import Provenance, TrainConfig, train


class BatchSensitiveExtractor:
    """A fake backbone whose output for an image depends on the rest of its batch (like last-bit BLAS effects, but
    large), so features equal a full run's only when every image is processed in the same batch."""

    name = "batch-sensitive"
    stage_dims = (2, 1)
    feature_dim = 3

    def batch_size_for(self, input_size):
        return 4

    def preprocess(self, images, input_size):
        return torch.tensor([[float(image), float(image) ** 2, 1.0] for image in images])

    def __call__(self, batch):
        return batch + batch.mean(dim=0, keepdim=True)


def test_shards_of_whole_batches_equal_a_full_run():
    dataset = [None if position in (2, 9) else position for position in range(14)]  # two unreadable items
    extractor = BatchSensitiveExtractor()
    full = extract_features(extractor, dataset, 8)
    shards = [extract_features(extractor, dataset, 8, positions=range(a, b)) for a, b in ((0, 8), (8, 12), (12, 14))]
    torch.testing.assert_close(torch.cat([s.features for s in shards]), full.features, rtol=0, atol=0)
    assert torch.equal(torch.cat([s.indices for s in shards]), full.indices)
    assert sum(s.skipped for s in shards) == full.skipped == 2
    try:
        extract_features(extractor, dataset, 8, positions=range(2, 8))
    except ValueError as error:
        assert "whole batches" in str(error)
    else:
        raise AssertionError("a shard starting inside a batch must be refused")


EXTRACT = ["extract", "-d", "digits", "--weights", "random", "--input-size", "32", "--preset", "official", "--quiet"]


def test_torchrun_sharded_extraction_equals_single_process_bit_for_bit(tmp_path):
    from dlsr_core.cli import main

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dlsr_core"]
    # One thread per process, as in this test process (conftest): the backbone's arithmetic is the same everywhere.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    command = [*launcher, *EXTRACT, "--cache-dir", str(tmp_path / "sharded")]
    sharded = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "1797 vectors of 512 dims" in sharded.stdout and "0 unreadable skipped" in sharded.stdout
    assert "with 2 processes" in sharded.stdout
    assert torch.get_num_threads() == 1
    assert main([*EXTRACT, "--cache-dir", str(tmp_path / "single")]) == 0
    (sharded_file,) = (tmp_path / "sharded").iterdir()  # one entry, no part files left behind
    (single_file,) = (tmp_path / "single").iterdir()
    assert sharded_file.name == single_file.name  # the same cache key
    ours, reference = safetensors.torch.load_file(sharded_file), safetensors.torch.load_file(single_file)
    assert torch.equal(ours["indices"], reference["indices"])
    assert ours["features"].shape == (1797, 512)
    assert torch.equal(ours["features"], reference["features"])  # bit for bit


def _cached_set(tmp_path, count=300, dim=12) -> tuple:
    generator = torch.Generator().manual_seed(3)
    features = FeatureSet(torch.randn(count, dim, generator=generator), (4, 8), torch.arange(count), 0, "fake", "fake")
    key = cache_key("fake", "fake", "random", 32)
    path = tmp_path / "fake.safetensors"
    save_feature_set(path, features, key)
    return path, key, features


def test_memory_mapped_load_equals_in_memory_and_detects_damage(tmp_path):
    path, key, original = _cached_set(tmp_path)
    mapped = load_feature_set(path, key, memory_map=True)
    in_memory = load_feature_set(path, key)
    assert is_mapped(mapped.features) and not is_mapped(in_memory.features)
    assert torch.equal(mapped.features, original.features) and torch.equal(mapped.indices, original.indices)
    release_pages(mapped.features)  # the pages are dropped from this process, not the data
    assert torch.equal(mapped.features, in_memory.features)
    rows = torch.tensor([299, 0, 17, 17, 150])
    assert torch.equal(gather_rows(mapped.features, rows), original.features[rows])  # read from the file
    assert torch.equal(gather_rows(mapped.indices, rows), rows)  # an in-memory tensor: plain indexing
    try:
        gather_rows(mapped.features, torch.tensor([300]))
    except IndexError:
        pass
    else:
        raise AssertionError("a row past the end must be refused")
    assert load_feature_set(path, {**key, "input_size": "64"}, memory_map=True) is None
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the stored features
    path.write_bytes(bytes(data))
    assert load_feature_set(path, key, memory_map=True) is None
    path.write_bytes(bytes(data[:50]))  # truncated inside the header
    assert load_feature_set(path, key, memory_map=True) is None


def test_memory_mapped_training_gives_the_same_loss_curve(tmp_path):
    path, key, _ = _cached_set(tmp_path)
    losses = {}
    for name, memory_map in (("in_memory", False), ("mapped", True)):
        features = load_feature_set(path, key, memory_map=memory_map).features
        curve = []
        train(
            features,
            tmp_path / name,
            LFDNConfig(feature_dim=12, width=16, depth=1),
            TrainConfig(epochs=3, batch_size=64, learning_rate=1e-3, drop_last=True),
            Provenance("fake", "random", 32, (4, 8), "fake"),
            on_step=lambda epoch, step, loss, curve=curve: curve.append(loss),
        )
        losses[name] = curve
    assert len(losses["mapped"]) == 3 * (300 // 64)  # drop_last: 4 full batches per epoch
    assert losses["mapped"] == losses["in_memory"]
    weights = [safetensors.torch.load_file(tmp_path / name / "last.safetensors") for name in losses]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.parametrize("damage", ["no skipped", "stage_dims not JSON", "dataset name missing"])
def test_a_cache_file_with_damaged_metadata_is_recomputed_by_both_loaders(tmp_path, damage):
    path, key, _ = _cached_set(tmp_path)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    if damage == "no skipped":
        del metadata["skipped"]
    elif damage == "stage_dims not JSON":
        metadata["stage_dims"] = "[4, 8"
    else:
        del metadata["dataset_name"]
    safetensors.torch.save_file(tensors, path, metadata=metadata)  # checksum intact: only the description is bad
    assert load_feature_set(path, key) is None
    assert load_feature_set(path, key, memory_map=True) is None
