"""End-to-end throughput of each compared method on the same decoded images: preprocessing, its backbone (if any)
and its scoring, timed one method after another in one process (fitting excluded, one warm-up batch first)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dlsr_core.comparison.methods import CLASSIFIER_METHODS, DLSR_METHODS, METHODS, Baselines, MissingInputError
from dlsr_core.evaluation import EvaluationSettings
from dlsr_core.scoring import Detector


def _embed(extractor, images: Sequence[Image.Image], input_size: int) -> Tensor:
    batch = extractor.batch_size_for(input_size)
    parts = [
        extractor(extractor.preprocess(list(images[start : start + batch]), input_size))
        for start in range(0, len(images), batch)
    ]
    return torch.cat(parts)


def pipelines(
    methods: Sequence[str],
    detector: Detector,
    baselines: Baselines,
    settings: EvaluationSettings,
    extractors: dict[str, object],
) -> dict[str, Callable[[Sequence[Image.Image]], np.ndarray]]:
    """method -> function(images) -> scores (N,), running the method's whole pipeline from decoded images."""
    from dlsr_core.baselines.distance import KNNBaseline, MahalanobisBaseline

    size = detector.input_size
    sampling = (settings.timestep, settings.steps, settings.eta, settings.seed)
    features_of = lambda images: _embed(extractors["features"], images, size)  # noqa: E731
    fitted = {}
    if baselines.distance_train is not None:
        fitted["knn"] = KNNBaseline(settings.knn_k).fit(baselines.distance_train)
        fitted["mahalanobis"] = MahalanobisBaseline(detector.stage_dims).fit(baselines.distance_train)
    result: dict[str, Callable[[Sequence[Image.Image]], np.ndarray]] = {}
    for name in methods:
        if name in DLSR_METHODS:
            with_lr = name == "lr"
            result[name] = lambda images, n=name, lr=with_lr: detector.score_features(
                features_of(images), *sampling, with_lr=lr, draws=settings.draws
            ).get(n)
        elif name == "pixel_ddpm" and baselines.pixel_ddpm is not None:
            result[name] = lambda images: baselines.pixel_ddpm.score_images(images, settings.seed)
        elif name == "feature_ae" and baselines.feature_ae is not None:
            result[name] = lambda images: baselines.feature_ae.score(features_of(images))
        elif name in CLASSIFIER_METHODS and baselines.classifier is not None:
            result[name] = lambda images, n=name: baselines.classifier.score_images(n, images)
        elif name in fitted:
            result[name] = lambda images, n=name: fitted[n].score(features_of(images))
        else:
            raise MissingInputError(f"{METHODS[name].label}: its trained model or training features are missing")
    return result


def end_to_end_images_per_second(
    methods: Sequence[str],
    images: Sequence[Image.Image],
    detector: Detector,
    baselines: Baselines,
    settings: EvaluationSettings | None = None,
    extractors: dict[str, object] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Images/s of each method from decoded images (PIL) to scores, measured on the same `images`."""
    from dlsr_core.backbones import create_feature_extractor

    settings = settings or EvaluationSettings()
    extractors = dict(extractors or {})
    weights = detector.backbone_weights()
    if "features" not in extractors:
        extractors["features"] = create_feature_extractor(detector.backbone, weights, options=detector.feature_options)
    runs = pipelines(methods, detector, baselines, settings, extractors)
    warm_up = list(images[: min(len(images), 32)])
    speeds = {}
    with torch.inference_mode():
        for name, run in runs.items():
            if progress:
                progress(METHODS[name].label)
            run(warm_up)
            started = time.perf_counter()
            run(images)
            speeds[name] = len(images) / max(time.perf_counter() - started, 1e-9)
    return speeds
