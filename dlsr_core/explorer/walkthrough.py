"""One image traced through DLSR step by step, for the teaching page "How DLSR works".

image -> stage feature vectors z0 (pooled, standardized) -> z_t, noised to timestep t -> DDIM reconstruction ẑ0 ->
per-stage similarity -> score among the ID reference scores -> verdict. `trace_image` computes every intermediate
in one call; the noised vector is exactly the one the reconstruction starts from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dlsr_core.explorer.explanation import (
    BAND_PERCENT,
    LayerProfile,
    StageName,
    layer_profiles,
    profile_arrays,
    stage_names,
    stage_reference,
    stage_values,
)
from dlsr_core.explorer.scores import id_threshold95, percent_below, score_arrays, verdict
from dlsr_core.noise import keyed_standard_normal, row_noise_keys
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

# ddim_reconstruct draws its start noise from stream draw * 2**20 (its first call of that draw); tests check that
# noised_features reproduces the reconstruction's starting point.
_DRAW_STREAM_STRIDE = 1 << 20


@dataclass(frozen=True)
class Trace:
    """Every intermediate of one image's DLSR score.

    features, noised, reconstruction (D,): z0, z_t and ẑ0 (of the first noise draw); stage_cos, stage_sq_error (S,)
    averaged over `draws`; stage_cos_band (2, S): the ID reference images' 5th and 95th percentile of each stage's
    cosine; id_scores (R,): the ID reference scores the threshold comes from.
    """

    names: tuple[StageName, ...]
    stage_dims: tuple[int, ...]
    features: np.ndarray
    noised: np.ndarray
    reconstruction: np.ndarray
    timestep: int
    steps: int
    draws: int
    signal_scale: float  # sqrt(alpha_bar_t): how much of z0 is left in z_t
    noise_scale: float  # sqrt(1 - alpha_bar_t): the standard deviation of the added noise
    stage_cos: np.ndarray
    stage_sq_error: np.ndarray
    stage_cos_band: np.ndarray
    score_name: str
    score: float
    id_scores: np.ndarray
    threshold: float
    verdict: str
    id_percentile: float
    profile: LayerProfile

    def split(self, vector: np.ndarray) -> list[np.ndarray]:
        """A (D,) vector cut into its S stage blocks (C_i,)."""
        return np.split(np.asarray(vector), np.cumsum(self.stage_dims)[:-1])


def noised_features(detector: Detector, z0: Tensor, timestep: int, seed: int = 0, draw: int = 0) -> Tensor:
    """z_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise for z0 (N, D) -> (N, D), with the very noise
    Detector.reconstruct(z0, timestep, seed=seed, draw=draw) starts from."""
    z0 = z0.detach().float().cpu()
    noise = keyed_standard_normal(row_noise_keys(z0, seed), draw * _DRAW_STREAM_STRIDE, z0.shape[1])
    alpha_bar = detector.schedule.alpha_bar[timestep].cpu()
    return alpha_bar.sqrt() * z0 + (1.0 - alpha_bar).sqrt() * noise


def trace_image(
    detector: Detector,
    features: Tensor,
    reference: Mapping[str, np.ndarray],
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> Trace:
    """Trace one image's features (D,) or (1, D) through DLSR under `score`.

    `reference` is explorer.score_matrix of the ID reference images at the same (timestep, steps, draws, seed).
    """
    z0 = features.reshape(1, -1).float().cpu()
    detector.check_features(z0)
    with torch.inference_mode():
        result = detector.score_features(z0, timestep, steps, 1.0, seed, with_lr=score == "lr", draws=draws)
    arrays = score_arrays(result)
    if score not in arrays or score not in reference:
        raise KeyError(f"score {score!r} is not available for this checkpoint")
    names = stage_names(detector.backbone, tuple(detector.stage_dims))
    profiled = stage_values(profile_arrays(detector, z0, score, timestep, steps, draws, seed), score)
    profile = layer_profiles(stage_reference(stage_values(reference, score), score, names), profiled)
    id_scores = np.asarray(reference[score], dtype=np.float64)
    value = float(arrays[score][0])
    threshold = id_threshold95(id_scores)
    alpha_bar = float(detector.schedule.alpha_bar[timestep])
    return Trace(
        names=names,
        stage_dims=tuple(detector.stage_dims),
        features=z0[0].numpy(),
        noised=noised_features(detector, z0, timestep, seed)[0].numpy(),
        reconstruction=result.reconstruction[0].float().numpy(),
        timestep=timestep,
        steps=min(steps or timestep, timestep),
        draws=draws,
        signal_scale=alpha_bar**0.5,
        noise_scale=(1.0 - alpha_bar) ** 0.5,
        stage_cos=np.asarray(arrays["stage_cos"][0], dtype=np.float64),
        stage_sq_error=np.asarray(arrays["stage_sq_error"][0], dtype=np.float64),
        stage_cos_band=np.percentile(np.asarray(reference["stage_cos"], dtype=np.float64), BAND_PERCENT, axis=0),
        score_name=score,
        score=value,
        id_scores=id_scores,
        threshold=threshold,
        verdict=verdict(value, threshold),
        id_percentile=float(percent_below(id_scores, value)[0]),
        profile=profile[0],
    )
