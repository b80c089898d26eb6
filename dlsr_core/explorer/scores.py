"""Scores of cached feature sets and the 95%-TPR threshold that turns a score into a verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import torch
from torch import Tensor

from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector, ScoreResult


def score_arrays(result: ScoreResult) -> dict[str, np.ndarray]:
    """A ScoreResult as arrays by name: 'mse', 'mfsim' and ('lr') (N,); 'stage_cos', 'stage_sq_error' and
    ('stage_lr') (N, S). LR entries are present only when the result has them."""
    out = {
        "mse": result.mse,
        "mfsim": result.mfsim,
        "stage_cos": result.stage_cos,
        "stage_sq_error": result.stage_sq_error,
    }
    if result.lr is not None:
        out["lr"] = result.lr
        out["stage_lr"] = result.stage_lr
    return out


def score_matrix(
    detector: Detector,
    features: Tensor,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    seed: int = 0,
    with_lr: bool = True,
    draws: int = DEFAULT_DRAWS,
) -> dict[str, np.ndarray]:
    """score_arrays of features (N, D); only the cheap diffusion step runs, `draws` times.

    'lr' and 'stage_lr' are included when `with_lr` and the detector has an early checkpoint (it doubles the cost).
    """
    with torch.inference_mode():
        result = detector.score_features(
            features, timestep, steps, 1.0, seed, with_lr=with_lr and detector.has_early, draws=draws
        )
    return score_arrays(result)


def id_threshold95(id_scores: np.ndarray) -> float:
    """The score at or below which 95% of ID samples fall (equals ood_metrics(...).threshold95 for ties-free data)."""
    scores = np.asarray(id_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("need at least one ID score for a threshold")
    return float(np.quantile(scores, 0.95, method="inverted_cdf"))


def percent_below(reference: np.ndarray, values: np.ndarray | float) -> np.ndarray:
    """Percent of `reference` values (R,) below each of `values` (M,) -> (M,) in [0, 100], ties counting half.

    The one "percent of ID images below" of the app and the CLI: a score's place among the ID reference scores, a
    stage's place in a layer profile, a point's on the feature map. An image tied with every reference value sits at
    50; one above all of them at 100.
    """
    ordered = np.sort(np.asarray(reference, dtype=np.float64).reshape(-1))
    if ordered.size == 0:
        raise ValueError("need at least one reference value")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    below = np.searchsorted(ordered, values, side="left")
    ties = np.searchsorted(ordered, values, side="right") - below
    return 100.0 * (below + 0.5 * ties) / ordered.size


def percent_text(percent: float, decimals: int = 1) -> str:
    """How every page and the CLI write a percent_below value: '99.6' for 1,991 of 2,000 (half up, from the
    shortest decimal that reads back as `percent`, so 99.55 is not taken for 99.5499…); never '100' for an image
    that is not above every reference value, nor '0' for one that is above some; '100' and '0' without decimals."""
    step = Decimal(1).scaleb(-decimals)
    rounded = Decimal(repr(float(percent))).quantize(step, rounding=ROUND_HALF_UP)
    if rounded >= 100 and percent < 100.0:
        rounded = Decimal(100) - step
    elif rounded <= 0 and percent > 0.0:
        rounded = step
    elif percent >= 100.0 or percent <= 0.0:
        return f"{max(min(percent, 100.0), 0.0):.0f}"
    return f"{rounded:.{decimals}f}"


NO_VERDICT = "no verdict"


def verdict(score: float, threshold: float) -> str:
    """'OOD' above the 95%-TPR threshold, else 'ID' (higher score = more OOD); NO_VERDICT when either is NaN/Inf."""
    if not (math.isfinite(score) and math.isfinite(threshold)):
        return NO_VERDICT
    return "OOD" if score > threshold else "ID"


def marker_rows(positions: Sequence[float], min_gap: float) -> np.ndarray:
    """Row (0, 1, ...) for each marker on an axis so that markers sharing a row are at least `min_gap` apart.

    Greedy from left to right, each marker into the lowest row whose last marker is far enough: markers that pile up
    (near the threshold, say) stack in a few rows instead of overprinting. positions (M,) -> rows (M,) int.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    rows = np.zeros(len(positions), dtype=int)
    row_ends: list[float] = []
    for index in np.argsort(positions, kind="stable"):
        value = positions[index]
        free = next((row for row, end in enumerate(row_ends) if value - end >= min_gap), None)
        if free is None:
            row_ends.append(value)
            free = len(row_ends) - 1
        row_ends[free] = value
        rows[index] = free
    return rows
