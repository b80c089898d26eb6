"""An image's backbone features do not depend on what it is batched with (dlsr_core.fixed_batches)."""

import numpy as np
import pytest
import torch
from PIL import Image

from dlsr_core.backbones import create_feature_extractor
from dlsr_core.features import extract_features
from dlsr_core.fixed_batches import fixed_chunk_forward


def _batch_dependent(images: torch.Tensor) -> torch.Tensor:
    """A stand-in for oneDNN: each row's output carries the batch size and the thread count of its pass."""
    return images.flatten(1).sum(1, keepdim=True) + 1000.0 * len(images) + 1e6 * torch.get_num_threads()


def test_every_pass_has_exactly_the_chunk_size_and_rows_keep_their_order():
    images = torch.arange(7, dtype=torch.float32).reshape(7, 1)
    sizes = []

    def forward(x):
        sizes.append(len(x))
        return x * 2

    out = fixed_chunk_forward(forward, images, chunk=3, pin_cpu_threads=False)
    assert sizes == [3, 3, 3]  # 7 rows padded to 9
    torch.testing.assert_close(out, images * 2)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_is_the_same_alone_and_in_any_batch_on_any_thread_count(threads):
    torch.set_num_threads(threads)
    try:
        images = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
        alone = fixed_chunk_forward(_batch_dependent, images[5:6], chunk=4)
        in_two = fixed_chunk_forward(_batch_dependent, images[4:6], chunk=4)[1]
        in_all = fixed_chunk_forward(_batch_dependent, images, chunk=4)[5]
        assert torch.equal(alone[0], in_two) and torch.equal(alone[0], in_all)
        assert alone[0, 0] == pytest.approx(images[5].sum().item() + 4000.0 + 1e6, abs=1e-3)  # one thread, 4 rows
        assert torch.get_num_threads() == threads  # the caller's setting is given back
    finally:
        torch.set_num_threads(1)


def test_no_rows_and_bad_chunk():
    assert fixed_chunk_forward(lambda x: x[:, :2], torch.zeros(0, 3), chunk=4).shape == (0, 2)
    with pytest.raises(ValueError, match="chunk"):
        fixed_chunk_forward(lambda x: x, torch.zeros(2, 3), chunk=0)


class _Images(list):
    name = "pictures"


@pytest.fixture(scope="module")
def lite0():
    return create_feature_extractor("efficientnet_lite0", weights="random", device="cpu")


def test_real_backbone_bits_do_not_depend_on_batch_or_threads(lite0):
    """One pass per batch differed by ~7e-6 between batch sizes and thread counts (benchmarks/batch_invariance.py);
    fixed chunks give the same bits alone, in a batch of 2, of 9, and in a dataset extraction, on 1 and 2 threads."""
    rng = np.random.default_rng(0)
    pictures = _Images(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(40))
    target = 33  # in the second block of 32 of a dataset extraction
    features = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            features[threads, "alone"] = lite0(lite0.preprocess([pictures[target]], 64))[0]
            features[threads, "of 2"] = lite0(lite0.preprocess([pictures[0], pictures[target]], 64))[1]
            features[threads, "of 9"] = lite0(lite0.preprocess([*pictures[1:9], pictures[target]], 64))[8]
            features[threads, "dataset"] = extract_features(lite0, pictures, 64).features[target]
        finally:
            torch.set_num_threads(1)
    reference = features[1, "alone"]
    assert all(torch.equal(value, reference) for value in features.values()), {
        key: float((value - reference).abs().max()) for key, value in features.items()
    }


def test_cpu_chunks_follow_the_measured_optimum():
    from dlsr_core.fixed_batches import cpu_chunk

    assert [cpu_chunk(size) for size in (28, 64, 96, 224, 380)] == [64, 32, 8, 2, 2]
