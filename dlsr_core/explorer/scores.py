"""Scores of cached feature sets and the 95%-TPR threshold that turns a score into a verdict."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector


def score_matrix(
    detector: Detector,
    features: Tensor,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    seed: int = 0,
    with_lr: bool = True,
    draws: int = DEFAULT_DRAWS,
) -> dict[str, np.ndarray]:
    """DLSR scores (N,) for features (N, D) plus 'stage_cos' and 'stage_sq_error' (N, S); only the cheap diffusion
    step runs, `draws` times.

    'lr' is included when `with_lr` and the detector has an early checkpoint (it doubles the cost).
    """
    with torch.inference_mode():
        result = detector.score_features(
            features, timestep, steps, 1.0, seed, with_lr=with_lr and detector.has_early, draws=draws
        )
    out = {
        "mse": result.mse,
        "mfsim": result.mfsim,
        "stage_cos": result.stage_cos,
        "stage_sq_error": result.stage_sq_error,
    }
    if result.lr is not None:
        out["lr"] = result.lr
    return out


def id_threshold95(id_scores: np.ndarray) -> float:
    """The score at or below which 95% of ID samples fall (equals ood_metrics(...).threshold95 for ties-free data)."""
    scores = np.asarray(id_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("need at least one ID score for a threshold")
    return float(np.quantile(scores, 0.95, method="inverted_cdf"))


NO_VERDICT = "no verdict"


def verdict(score: float, threshold: float) -> str:
    """'OOD' above the 95%-TPR threshold, else 'ID' (higher score = more OOD); NO_VERDICT when either is NaN/Inf."""
    if not (math.isfinite(score) and math.isfinite(threshold)):
        return NO_VERDICT
    return "OOD" if score > threshold else "ID"
