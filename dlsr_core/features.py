"""Images -> DLSR feature vectors with a frozen backbone (the slow step, run once and cached)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class FeatureSet:
    """Feature vectors of one dataset.

    features (N, D) float32; indices (N,) int64: the dataset position of each row (unreadable images are skipped
    and counted in `skipped`); seconds: wall time of the extraction that produced them (0 when read from cache).
    """

    features: Tensor
    stage_dims: tuple[int, ...]
    indices: Tensor
    skipped: int
    dataset: str
    backbone: str
    seconds: float = 0.0

    def __len__(self) -> int:
        return self.features.shape[0]


def extract_features(
    extractor,
    dataset: Sequence[Image.Image | None],
    input_size: int,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    dataset_name: str | None = None,
) -> FeatureSet:
    """Run every readable image of `dataset` through `extractor` (a backbones.FeatureExtractor).

    `progress(done, total)` is called after each batch. Items that are None (unreadable files) are skipped.
    """
    batch_size = batch_size or extractor.batch_size_for(input_size)
    total = len(dataset)
    rows: list[Tensor] = []
    kept: list[int] = []
    skipped = 0
    started = time.perf_counter()
    batch_images: list[Image.Image] = []
    batch_indices: list[int] = []

    def flush() -> None:
        if batch_images:
            rows.append(extractor(extractor.preprocess(batch_images, input_size)).float().cpu())
            kept.extend(batch_indices)
            batch_images.clear()
            batch_indices.clear()

    for position in range(total):
        image = dataset[position]
        if image is None:
            skipped += 1
        else:
            batch_images.append(image)
            batch_indices.append(position)
        if len(batch_images) == batch_size or position == total - 1:
            flush()
            if progress is not None:
                progress(position + 1, total)
    flush()
    features = torch.cat(rows) if rows else torch.empty(0, extractor.feature_dim)
    return FeatureSet(
        features=features,
        stage_dims=tuple(extractor.stage_dims),
        indices=torch.tensor(kept, dtype=torch.long),
        skipped=skipped,
        dataset=dataset_name or getattr(dataset, "name", "images"),
        backbone=extractor.name,
        seconds=time.perf_counter() - started,
    )
