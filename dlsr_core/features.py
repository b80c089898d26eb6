"""Images -> DLSR feature vectors with a frozen backbone (the slow step, run once and cached)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ProgressCallback = Callable[[int, int], None]

# Channels of each pooled stage of the registered backbones (dlsr_core.backbones.BACKBONES), so stored metadata (cache
# entries, checkpoints) can be checked without importing timm or building a model; tests compare it with the models.
KNOWN_STAGE_DIMS: dict[str, tuple[int, ...]] = {
    "efficientnet_b4": (24, 32, 56, 160, 448),
    "resnet50": (256, 512, 1024),
    "efficientnet_lite0": (16, 24, 40, 112, 320),
    "efficientnet_lite1": (16, 24, 40, 112, 320),
    "efficientnet_lite2": (16, 24, 48, 120, 352),
}
MAX_STAGES = 64


def stage_dims_problem(backbone: str, stage_dims: object, feature_dim: int | None = None, exact: bool = True) -> str:
    """What is wrong with `stage_dims` as the stage sizes of `backbone` (features of `feature_dim` columns), or "".

    Stage sizes are 1..MAX_STAGES whole numbers >= 1 that sum to the feature width; a registered backbone's must be
    exactly its own (a permuted or re-split list of the right width would silently misassign the MFsim stages). With
    `exact` False, only a list of the backbone's own width is compared (another width cannot go unnoticed: it fails
    where the features meet the model, with a message naming both widths).
    """
    if not isinstance(stage_dims, (list, tuple)) or not 1 <= len(stage_dims) <= MAX_STAGES:
        return f"stage sizes must be a list of 1..{MAX_STAGES} whole numbers, got {str(stage_dims)[:60]}"
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in stage_dims):
        return f"stage sizes must be whole numbers >= 1, got {str(list(stage_dims))[:60]}"
    if feature_dim is not None and sum(stage_dims) != feature_dim:
        return f"stage sizes {tuple(stage_dims)} sum to {sum(stage_dims)}, the features have {feature_dim} columns"
    known = KNOWN_STAGE_DIMS.get(backbone)
    if known is not None and tuple(stage_dims) != known and (exact or sum(stage_dims) == sum(known)):
        return f"stage sizes {tuple(stage_dims)} are not those of {backbone} {known}"
    return ""


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
    positions: range | None = None,
) -> FeatureSet:
    """Run every readable image of `dataset` through `extractor` (a backbones.FeatureExtractor).

    `progress(done, total)` is called after each batch. Items that are None (unreadable files) are skipped.
    A row's features never depend on its batch (backbones.FeatureExtractor.forward), so extracting `positions` (a range
    of whole blocks [0, B), [B, 2B), ... of dataset positions) gives exactly the rows a full run gives for them (how
    torchrun ranks split an extraction, see cache.py).
    """
    batch_size = batch_size or extractor.batch_size_for(input_size)
    positions = range(len(dataset)) if positions is None else positions
    on_boundary = positions.start % batch_size == 0 and (
        positions.stop % batch_size == 0 or positions.stop == len(dataset)
    )
    if positions.step != 1 or not (on_boundary or len(positions) == 0):
        raise ValueError(f"positions must be a range of whole batches of {batch_size}, got {positions}")
    total = len(positions)
    # A CPU backbone runs its fixed-size passes side by side, one per allowed thread (dlsr_core.fixed_batches), so
    # it is handed that many blocks at once; the rows do not depend on how many.
    on_cpu = getattr(getattr(extractor, "device", None), "type", "cpu") == "cpu"
    step = batch_size * (max(1, torch.get_num_threads()) if on_cpu else 1)
    rows: list[Tensor] = []
    kept: list[int] = []
    skipped = 0
    started = time.perf_counter()
    for block_start in range(positions.start, positions.stop, step):
        batch_images: list[Image.Image] = []
        for position in range(block_start, min(block_start + step, positions.stop)):
            image = dataset[position]
            if image is None:
                skipped += 1
            else:
                batch_images.append(image)
                kept.append(position)
        if batch_images:
            rows.append(extractor(extractor.preprocess(batch_images, input_size)).float().cpu())
        if progress is not None:
            progress(min(block_start + step, positions.stop) - positions.start, total)
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


def subsample_rows(count: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row positions of a set of `count` rows: all of them, or `limit` drawn without replacement (fixed by
    `seed`, so the same subset comes back every time)."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
