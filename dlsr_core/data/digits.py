"""The ``digits`` source: scikit-learn's 8x8 digits upscaled to MNIST's 28x28 layout (far OOD)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dlsr_core.data.dataset import GENERATED_SIZE, GENERATOR_VERSION, ImageDataset, array_loader, sha

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as MNIST-like images: (N,28,28) uint8 light-on-dark, labels (N,).

    Each 8x8 digit (values 0-16) is scaled to 0-255, resized to 20x20 and centred in a 28x28 frame,
    the layout MNIST uses.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.zeros((len(small), GENERATED_SIZE, GENERATED_SIZE), dtype=np.uint8)
    for i, digit in enumerate(small):
        big = Image.fromarray(digit, "L").resize((20, 20), Image.Resampling.BICUBIC)
        out[i, 4:24, 4:24] = np.asarray(big)
    return out, bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def _digits_cached() -> tuple[np.ndarray, np.ndarray]:
    return digits_images()


def open_digits(spec: DatasetSpec) -> ImageDataset:
    images, labels = _digits_cached()
    return ImageDataset(
        str(spec),
        f"digits|v{GENERATOR_VERSION}|{sha(images.tobytes())}",
        len(images),
        array_loader(images),
        labels.tolist(),
        tuple(str(d) for d in range(10)),
    )
