"""Fashion-MNIST, the shipped in-distribution data: idx files from Debian's dataset-fashion-mnist (or --data-root)."""

from __future__ import annotations

import gzip
import struct
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dlsr_core.data.dataset import DatasetError, ImageDataset, array_loader, sha

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(source: str | Path | bytes) -> np.ndarray:
    """Parse an idx file (MNIST format; ``.gz`` or raw, or its bytes) into an array of its shape.

    Raises DatasetError if the header or length is inconsistent.
    """
    if isinstance(source, (bytes, bytearray)):
        raw, what = bytes(source), "idx data"
    else:
        raw, what = Path(source).read_bytes(), str(source)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{what}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{what}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{what}: idx header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{what}: expected {expected} data bytes for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@lru_cache(maxsize=4)
def _read_fashion_mnist(images_path: Path, labels_path: Path, _mtimes: tuple[int, int]) -> tuple:
    image_bytes, label_bytes = images_path.read_bytes(), labels_path.read_bytes()
    images, labels = read_idx(image_bytes), read_idx(label_bytes)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DatasetError(f"{images_path}: images {images.shape} and labels {labels.shape} do not match")
    return images.astype(np.uint8), labels.astype(np.int64), sha(image_bytes, label_bytes)


def load_fashion_mnist(split: str, data_root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as arrays: images (N,28,28) uint8, labels (N,) int64; N = 60000 train / 10000 test."""
    images, labels, _ = _fashion_mnist_arrays(split, Path(data_root).expanduser() if data_root else None)
    return images, labels


def _fashion_mnist_arrays(split: str, root: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    prefix = "train" if split == "train" else "t10k"
    folder = root if root is not None else FASHION_MNIST_DIR
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise DatasetError(
            f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], {prefix}-labels-idx1-ubyte[.gz]) "
            f"not found in {folder}. Install them with `sudo apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu) or pass --data-root pointing at a folder that holds them."
        )
    mtimes = (images_path.stat().st_mtime_ns, labels_path.stat().st_mtime_ns)
    return _read_fashion_mnist(images_path, labels_path, mtimes)


def open_fashion_mnist(spec: DatasetSpec, root: Path | None) -> ImageDataset:
    images, labels, digest = _fashion_mnist_arrays(spec.split or "test", root)
    return ImageDataset(
        str(spec), f"{spec}|{digest}", len(images), array_loader(images), labels.tolist(), FASHION_MNIST_CLASSES
    )


def fashion_mnist_identity(split: str, root: Path | None = None) -> str | None:
    """The identity open_dataset gives `fashion_mnist:<split>` (a hash of its files' bytes), read without decoding
    the images (60 ms instead of about a second for the training split); None when the files are not there."""
    prefix = "train" if split == "train" else "t10k"
    folder = root if root is not None else FASHION_MNIST_DIR
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        return None
    return f"fashion_mnist:{split}|{sha(images_path.read_bytes(), labels_path.read_bytes())}"
