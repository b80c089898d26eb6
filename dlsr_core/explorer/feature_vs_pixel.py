"""The paper's argument on a handful of images: the pixel DDPM must rebuild every pixel from several noise levels,
DLSR only reconstructs a short feature vector — compare what each reconstructs, how well, and how long it takes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dlsr_core.explorer.scores import id_threshold95
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector


@dataclass(frozen=True)
class FeatureVsPixel:
    """Both methods on the same N images.

    originals (N, S, S) uint8 ((N, S, S, 3) for an RGB model): the images as the pixel DDPM sees them (S x S);
    reconstructions (L, N, S, S) uint8 (or (L, N, S, S, 3)): its reconstruction from each noise level `levels`;
    pixel_errors (N, L): mean squared pixel error per level (pixels in [-1, 1]); pixel_scores (N,) and
    pixel_threshold95: its score and the value 95% of held-out ID images stay below. stage_cos (N, K): cosine similarity
    of each DLSR stage's features with their reconstruction; dlsr_scores (N,) MFsim and dlsr_threshold95 (from
    `id_features`, NaN without). Times in seconds: pixel_seconds (all levels), backbone_seconds and diffusion_seconds
    (DLSR = their sum).
    """

    originals: np.ndarray
    reconstructions: np.ndarray
    levels: tuple[int, ...]
    pixel_errors: np.ndarray
    pixel_scores: np.ndarray
    pixel_threshold95: float
    stage_cos: np.ndarray
    dlsr_scores: np.ndarray
    dlsr_threshold95: float
    pixel_seconds: float
    backbone_seconds: float
    diffusion_seconds: float

    @property
    def dlsr_seconds(self) -> float:
        return self.backbone_seconds + self.diffusion_seconds

    @property
    def speed_ratio(self) -> float:
        """How many times faster DLSR (backbone + diffusion) scored these images than the pixel DDPM."""
        return self.pixel_seconds / max(self.dlsr_seconds, 1e-9)


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (..., C, S, S) -> uint8 (..., S, S) for C = 1, (..., S, S, 3) for C = 3."""
    pictures = pixels.squeeze(-3) if pixels.shape[-3] == 1 else pixels.movedim(-3, -1)
    return ((pictures.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def feature_vs_pixel(
    detector: Detector,
    pixel_model,
    extractor,
    images: Sequence[Image.Image],
    timestep: int = 5,
    steps: int | None = DEFAULT_STEPS,
    seed: int = 0,
    id_features: torch.Tensor | None = None,
    draws: int = DEFAULT_DRAWS,
) -> FeatureVsPixel:
    """Score `images` (PIL) with the pixel DDPM (a baselines.pixel_ddpm.PixelDDPM) and with DLSR (MFsim), timing both.

    `extractor` is the detector's backbone (backbones.FeatureExtractor). `id_features` (M, D), e.g. the demo ID
    set's cached features, give DLSR's 95%-TPR threshold as the reference for its scores; `draws` noise draws are
    averaged per DLSR score (for images and reference alike).
    """
    from dlsr_core.baselines.pixel_ddpm import images_to_pixels

    if not images:
        raise ValueError("pick at least one image")
    with torch.inference_mode():
        started = time.perf_counter()
        pixels = images_to_pixels(images, pixel_model.config.image_size, pixel_model.config.channels)
        reconstructions = pixel_model.reconstructions(pixels, seed)
        errors = (reconstructions - pixels).pow(2).flatten(2).mean(dim=2).T
        pixel_scores = pixel_model.normalise(errors)
        pixel_seconds = time.perf_counter() - started

        started = time.perf_counter()
        features = extractor(extractor.preprocess(list(images), detector.input_size))
        backbone_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result = detector.score_features(features, timestep, steps, seed=seed, with_lr=False, draws=draws)
        diffusion_seconds = time.perf_counter() - started
        threshold = float("nan")
        if id_features is not None and len(id_features):
            id_scores = detector.score_features(id_features, timestep, steps, seed=seed, with_lr=False, draws=draws)
            threshold = id_threshold95(id_scores.mfsim)
    return FeatureVsPixel(
        originals=_to_uint8(pixels),
        reconstructions=_to_uint8(reconstructions),
        levels=tuple(pixel_model.setting.levels),
        pixel_errors=errors.numpy(),
        pixel_scores=pixel_scores,
        pixel_threshold95=float(pixel_model.id_threshold95),
        stage_cos=result.stage_cos,
        dlsr_scores=result.mfsim,
        dlsr_threshold95=threshold,
        pixel_seconds=pixel_seconds,
        backbone_seconds=backbone_seconds,
        diffusion_seconds=diffusion_seconds,
    )


def pixel_model_path() -> Path:
    """Where the app's pixel DDPM lives: baselines_dir() ($DLSR_BASELINES_DIR or checkpoints/baselines)."""
    from dlsr_core.baselines.store import baselines_dir

    return baselines_dir() / "pixel_ddpm.safetensors"


def load_pixel_model(path: str | Path | None = None):
    """The pixel DDPM at `path` (default pixel_model_path()), checked before it is built. Raises
    baselines.store.BaselineFileError (one line: the file and what is wrong, or how to train it when missing)."""
    from dlsr_core.baselines.pixel_ddpm import PixelDDPM

    return PixelDDPM.load(path or pixel_model_path())


def pixel_reference_images(pixel_model) -> str:
    """Which held-out ID images the pixel DDPM's scores and 95% threshold are measured on, in words."""
    calibration, trained = pixel_model.info.calibration, pixel_model.info.training_set
    if calibration is None:
        return "held-out images of its training set" + ("" if trained is None else f" {trained.dataset}")
    count = "" if calibration.images is None else f"{calibration.images:,} "
    rule = "" if calibration.subset is None else f" ({calibration.subset})"
    return f"{count}held-out images of {calibration.dataset}{rule}, none of them trained on"
