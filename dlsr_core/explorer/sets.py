"""The demo sets the app works on, their features (cached on disk) and their images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from dlsr_core.checkpoint import CheckpointError
from dlsr_core.features import FeatureSet, ProgressCallback, subsample_rows  # noqa: F401 - re-exported
from dlsr_core.scoring import Detector

DEMO_ID_SET = "demo:fashion_mnist_test"

# Far OOD first, then near OOD (the paper's order of difficulty).
DEMO_OOD_SETS: dict[str, str] = {
    "demo:digits": "far",
    "demo:letters": "far",
    "demo:textures": "far",
    "demo:fashion_mnist_inverted": "near",
    "demo:fashion_mnist_rotated": "near",
}

BASELINE_TRAIN_SET = "fashion_mnist:train"

SCORE_LABELS = {"mse": "MSE", "mfsim": "MFsim", "lr": "LR", "knn": "k-NN", "mahalanobis": "Mahalanobis"}


def load_features(
    detector: Detector,
    spec: str,
    *,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    extractor=None,
    cache_only: bool = False,
) -> FeatureSet | None:
    """Features (N, D) of dataset `spec` under the detector's backbone, from the disk cache or extracted once.

    With `cache_only`, None instead of an extraction when they are not cached yet. Raises CheckpointError when the
    features do not fit the detector (a wrong-backbone checkpoint).
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
        options=detector.feature_options,
    )
    if features is not None:
        detector.check_features(features.features, features.backbone)
    return features


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
