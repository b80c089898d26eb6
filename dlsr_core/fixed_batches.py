"""Backbone passes whose result for an image does not depend on what it is batched with.

oneDNN, which runs the backbone's convolutions on CPU, picks its kernels by batch size and thread count, and the
kernels round differently: the same image gave features 7e-6 apart alone and beside a second image (two threads), or
in a batch of 8 and of 32 (one thread). DLSR's noise is keyed by the feature vector's bits (dlsr_core.noise), so such
an image drew other noise and got another score and layer profile depending on how it was batched.

Measured on the shipped backbone (`python -m benchmarks.batch_invariance`): with the batch size *and* the thread count
fixed, a row's output is bitwise independent of its position and of its batch-mates (zero images included). So every
pass here sees exactly `chunk` images (the last chunk padded with zero images) and, on CPU, runs on one intra-op
thread; when more threads are allowed, chunks run side by side on a pool of that many Python threads instead (a
chunk's result does not depend on which thread ran it). The result for an image is then the same in a batch of 1, 2,
9 or 60,000, in the CLI (all cores) and in the app (DLSR_TORCH_THREADS), on the same machine.

torch's thread count is process-wide, so the pin is taken under a lock and restored afterwards: concurrent
extractions in one process run one after the other, and other torch work in the process runs single-threaded for that
time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

# Part of the feature cache key (cache.PREPROCESSING_VERSION): features made before fixed chunks differ in their last
# bits, and so draw other noise. Bump it when `cpu_chunk` or the pinning change.
EXTRACTION_VERSION = "fixed-chunks-v3"
_PIN_LOCK = threading.Lock()


def cpu_chunk(input_size: int) -> int:
    """Images per backbone pass on CPU for (input_size x input_size) inputs: 32 at 64 px, scaled by the pixel count,
    a power of two in 2..64 (96 px -> 8, 224 px -> 2).

    Measured on the project's 2-core CPU, one thread, efficientnet_lite0, interleaved runs, best of 10 (CPU time,
    images/s): 64 px chunk 8 547, 16 599, 32 677, 64 534; 224 px chunk 1 52, 2 60, 4 58, 8 53. A single upload
    pays for one padded pass: 58 ms of CPU at 64 px.
    """
    scaled = 32 * (64 / max(int(input_size), 1)) ** 2
    return max(2, min(64, 1 << max(0, int(scaled).bit_length() - 1)))


def _padded(images: Tensor, chunk: int) -> Tensor:
    """images (B, ...) with zero rows appended up to a multiple of `chunk`."""
    missing = -len(images) % chunk
    if missing == 0:
        return images
    return torch.cat([images, images.new_zeros((missing, *images.shape[1:]))])


def fixed_chunk_forward(
    forward: Callable[[Tensor], Tensor], images: Tensor, chunk: int, pin_cpu_threads: bool = True
) -> Tensor:
    """forward(images) for images (B, ...) -> (B, F), computed in passes of exactly `chunk` rows.

    `forward` must treat rows independently (a frozen network in eval mode). With `pin_cpu_threads` (CPU backbones),
    each pass runs on one torch thread and up to torch.get_num_threads() passes run at once; without it (GPU), the
    passes run one after the other. The result for a row is bitwise the same whatever else `images` holds.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    count = len(images)
    if count == 0:
        return forward(images[:0])
    pieces = list(_padded(images, chunk).split(chunk))
    if not pin_cpu_threads:
        return torch.cat([forward(piece) for piece in pieces])[:count]
    with _PIN_LOCK:
        allowed = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            workers = min(allowed, len(pieces))
            if workers <= 1:
                outputs = [forward(piece) for piece in pieces]
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="dlsr-backbone") as pool:
                    outputs = list(pool.map(forward, pieces))
        finally:
            torch.set_num_threads(allowed)
    return torch.cat(outputs)[:count]
