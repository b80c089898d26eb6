"""Reconstruction noise that belongs to the feature vector, not to its place in a batch.

DLSR scores a feature vector by noising it and reconstructing it, so the score depends on the noise drawn. Drawing
that noise for a whole batch from one generator made a vector's score depend on its row and on what else was in
the batch (the same file twice in one upload scored 309.28 and 310.00). Here every row gets its own random stream,
keyed by a hash of the row's float32 bytes and the seed: identical vectors always receive identical noise, whatever
batch, batch size or device they are scored on, and distinct vectors receive independent noise.

The stream is a counter-based generator (SplitMix64 over (row key, stream index, element index), then Box-Muller),
vectorized in NumPy, so drawing noise for 10,000 vectors of 512 dimensions takes milliseconds and never needs a
per-row Python generator object.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_TWO_TO_MINUS_53 = 1.0 / float(1 << 53)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array (wrapping arithmetic), same shape."""
    z = values + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def row_noise_keys(z0: Tensor, seed: int) -> np.ndarray:
    """One 64-bit key per row of z0 (N, D) -> (N,) uint64, from the row's float32 bytes and `seed`.

    -0.0 and 0.0 hash alike; any other change to a row's values gives an unrelated key.
    """
    rows = (z0.detach().to("cpu", torch.float32) + 0.0).contiguous().numpy()
    salt = (int(seed) & (1 << 128) - 1).to_bytes(16, "little")  # any integer seed, negative ones included
    keys = [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, salt=salt).digest(), "little") for row in rows]
    return np.asarray(keys, dtype=np.uint64).reshape(len(rows))


def keyed_standard_normal(keys: np.ndarray, stream: int | np.ndarray, dim: int) -> Tensor:
    """Standard normal noise (N, dim) float32 where row i depends only on (keys[i], stream or stream[i]).

    `stream` (one for all rows, or (N,) per row) separates independent draws for the same rows (the start noise, each
    DDIM step, each repeated draw); per-row streams let several draws of a vector go through the model in one batch.
    """
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    streams = np.broadcast_to(np.asarray(stream, dtype=np.uint64).reshape(-1), keys.shape)
    with np.errstate(over="ignore"):
        row_state = _splitmix64(keys ^ _splitmix64(streams))
        pairs = (dim + 1) // 2
        counters = np.arange(2 * pairs, dtype=np.uint64)[None, :] * _GOLDEN
        bits = _splitmix64(row_state[:, None] + counters)
    uniform = (bits >> np.uint64(11)).astype(np.float64) * _TWO_TO_MINUS_53  # [0, 1)
    first, second = 1.0 - uniform[:, :pairs], uniform[:, pairs:]  # first in (0, 1]: log is finite
    radius = np.sqrt(-2.0 * np.log(first))
    angle = 2.0 * np.pi * second
    normal = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :dim]
    return torch.from_numpy(np.ascontiguousarray(normal, dtype=np.float32))
