"""Features (cached on disk) and images of the sets a page works on; which sets those are is the loaded
experiment's business (explorer.experiments)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from dlsr_core.checkpoint import CheckpointError
from dlsr_core.features import FeatureSet, ProgressCallback, subsample_rows  # noqa: F401 - re-exported
from dlsr_core.scoring import Detector

# ID reference images a score is placed among (Score images, How DLSR works, `score --explain`): all of them up to
# this many, else this many fixed random ones — enough for percentiles to 0.1 %, and re-scoring them at a new
# timestep stays within a few seconds with a large model.
REFERENCE_LIMIT = 5000

SCORE_LABELS = {"mse": "MSE", "mfsim": "MFsim", "lr": "LR", "knn": "k-NN", "mahalanobis": "Mahalanobis"}


def load_features(
    detector: Detector,
    spec: str,
    *,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    extractor=None,
    cache_only: bool = False,
    download: bool = False,
) -> FeatureSet | None:
    """Features (N, D) of dataset `spec` under the detector's backbone, from the disk cache or extracted once.

    With `cache_only`, None instead of an extraction when they are not cached yet; `download` lets torchvision fetch
    a missing set. Raises CheckpointError when the features do not fit the detector (a wrong-backbone checkpoint).
    """
    from dlsr_core.cache import cached_features

    features = cached_features(
        spec,
        detector.backbone,
        weights=detector.backbone_weights(),
        input_size=detector.input_size,
        cache_dir=cache_dir,
        progress=progress,
        extractor=extractor,
        cache_only=cache_only,
        download=download,
        options=detector.feature_options,
    )
    if features is not None:
        detector.check_features(features.features, features.backbone)
    return features


def reference_subset(features: FeatureSet, limit: int | None = None) -> FeatureSet:
    """`features` itself when it has at most `limit` (default REFERENCE_LIMIT) rows, else a fixed random `limit` of
    them (the same rows every time), named `<set>#reference<limit>` so that caches keyed by the set name keep the two
    apart."""
    limit = REFERENCE_LIMIT if limit is None else limit
    if len(features) <= limit:
        return features
    rows = torch.as_tensor(subsample_rows(len(features), limit))
    return replace(
        features,
        features=features.features[rows],
        indices=features.indices[rows],
        dataset=f"{features.dataset}#reference{limit}",
    )


def cached_features_only(detector: Detector, spec: str, cache_dir: str | Path | None = None) -> FeatureSet | None:
    """The detector-compatible features of `spec` if they are already on disk; None (never extracts) otherwise."""
    try:
        return load_features(detector, spec, cache_dir=cache_dir, cache_only=True)
    except (CheckpointError, ValueError, OSError):  # dataset absent here, or features from another backbone
        return None


def dataset_images(spec: str, indices: Sequence[int]) -> list[Image.Image | None]:
    """Images at dataset positions `indices` of `spec`."""
    from dlsr_core.data import open_dataset

    dataset = open_dataset(spec)
    return [dataset[int(i)] for i in indices]
