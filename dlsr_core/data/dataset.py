"""The type every source returns (a lazily decoded, indexable sequence of RGB images) and how items are named."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image

from dlsr_core.data.images import ImageLoadError, load_image

# Generated sources (digits, letters, textures): fixed sizes and seeds so that an index always means the same image.
GENERATED_SIZE = 28
GENERATOR_VERSION = "1"


class DatasetError(ValueError):
    """A dataset spec is malformed or its data cannot be found or read."""


class ImageDataset(Sequence[Image.Image | None]):
    """A lazily decoded, indexable sequence of RGB images (``None`` for unreadable files).

    name: canonical spec string. identity: stable string for cache keys; it changes when the
    underlying data does. labels: one int per item, or None. class_names: label names or None.
    paths: source file per item (folder datasets only), else None.
    """

    def __init__(
        self,
        name: str,
        identity: str,
        length: int,
        loader: Callable[[int], Image.Image | None],
        labels: list[int] | None = None,
        class_names: tuple[str, ...] | None = None,
        paths: tuple[Path, ...] | None = None,
    ) -> None:
        self.name = name
        self.identity = identity
        self.labels = labels
        self.class_names = class_names
        self.paths = paths
        self._length = length
        self._loader = loader

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Image.Image | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[Image.Image | None]: ...
    def __getitem__(self, index: int | slice) -> Image.Image | None | list[Image.Image | None]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        i = int(index)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"index {index} out of range for {self.name} ({self._length} images)")
        return self._loader(i)

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {self._length} images)"


def array_loader(images: np.ndarray) -> Callable[[int], Image.Image]:
    """images: (N,H,W) or (N,H,W,3) uint8 -> loader giving RGB PIL images."""

    def load(i: int) -> Image.Image:
        return Image.fromarray(images[i]).convert("RGB")

    return load


def sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


def item_name(dataset: ImageDataset, index: int) -> str:
    """How a row is named in outputs: the file path for folder datasets, else `<dataset>#<index>`."""
    if dataset.paths is not None:
        return str(dataset.paths[index])
    return f"{dataset.name}#{index}"


def describe_skipped(dataset: ImageDataset, kept: Sequence[int]) -> list[tuple[str, str]]:
    """(item, reason) for each position of `dataset` not in `kept` — the items feature extraction skipped.

    Folder files are decoded again to recover the reason (only the skipped ones, so this is cheap).
    """
    kept_positions = {int(i) for i in kept}
    skipped = []
    for index in range(len(dataset)):
        if index in kept_positions:
            continue
        reason = "could not be decoded"
        if dataset.paths is not None:
            path = dataset.paths[index]
            try:
                load_image(path)
                reason = "could not be read when its features were extracted (it reads now: re-extract to use it)"
            except ImageLoadError as error:
                reason = str(error).removeprefix(f"{path}: ")
        skipped.append((item_name(dataset, index), reason))
    return skipped
