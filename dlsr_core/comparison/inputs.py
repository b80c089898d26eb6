"""The inputs every compared method reads, for named datasets: DLSR features and pixels of the same rows.

Full sets come from the on-disk feature cache (extracted once). With `limit`, a fixed random subset of rows is used
and, when the set is not cached yet, only those images go through the backbone, so a small comparison stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlsr_core.comparison.methods import SetInputs
from dlsr_core.features import extract_features, subsample_rows
from dlsr_core.scoring import Detector


class _Subset:
    """The images of `dataset` at `positions`, as a sequence (what extract_features reads)."""

    def __init__(self, dataset, positions: np.ndarray) -> None:
        self.dataset, self.positions, self.name = dataset, positions, dataset.name

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        return self.dataset[int(self.positions[index])]


def _features_of(
    spec: str,
    dataset,
    positions: np.ndarray | None,
    cached: Callable[[bool], object | None],
    extractor: Callable[[], object],
    input_size: int,
) -> tuple[Tensor, Tensor]:
    """(features (N, D), dataset positions (N,)) of `spec`: the cached set (sliced to `positions`), else extracted —
    the whole set through the cache, or just `positions` directly."""
    full = cached(True)
    if full is None and positions is None:
        full = cached(False)
    if full is not None:
        if positions is None:
            return full.features, full.indices
        keep = torch.as_tensor(np.isin(full.indices.numpy(), positions))
        return full.features[keep], full.indices[keep]
    subset = extract_features(extractor(), _Subset(dataset, positions), input_size, dataset_name=spec)
    return subset.features, torch.as_tensor(positions)[subset.indices]


def load_inputs(
    detector: Detector,
    specs: list[str],
    *,
    pixels: bool = True,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    extractors: dict[str, object] | None = None,
) -> dict[str, SetInputs]:
    """Inputs of each dataset spec for `detector`'s backbone: features, and optionally the images as pixels.

    `extractors` ("features") reuse an already built backbone; it is built on demand otherwise.
    """
    from dlsr_core.backbones import create_feature_extractor
    from dlsr_core.baselines.pixel_ddpm import images_to_pixels
    from dlsr_core.cache import cached_features
    from dlsr_core.data import open_dataset

    built = dict(extractors or {})
    weights, size = detector.backbone_weights(), detector.input_size

    def extractor():
        if "features" not in built:
            # DLSR features are made the way the checkpoint's training features were.
            built["features"] = create_feature_extractor(detector.backbone, weights, options=detector.feature_options)
        return built["features"]

    def cached(spec: str, only: bool):
        return cached_features(
            spec,
            detector.backbone,
            weights=weights,
            input_size=size,
            cache_dir=cache_dir,
            cache_only=only,
            extractor=None if only else extractor(),
            options=detector.feature_options,
        )

    result: dict[str, SetInputs] = {}
    for spec in specs:
        dataset = open_dataset(spec)
        positions = None if limit is None else subsample_rows(len(dataset), limit, seed)
        from_cache = lambda only, s=spec: cached(s, only)  # noqa: E731
        features, indices = _features_of(spec, dataset, positions, from_cache, extractor, size)
        detector.check_features(features)
        pixel_input = images_to_pixels([dataset[int(i)] for i in indices]) if pixels else None
        result[spec] = SetInputs(features, indices, pixel_input)
    return result
