"""What counts as OOD? Apply a shift (flip, rotation, blur, inversion, contrast) to ID images and compare scores.

A horizontally flipped shirt is still a shirt (a covariate shift the detector should mostly accept); an upside-down
shoe or an inverted image changes what the features encode (closer to a semantic shift). The same ID images are
scored before and after the shift, so the AUROC measures the shift alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from dlsr_core.explorer.scores import score_matrix
from dlsr_core.explorer.sets import subsample_rows
from dlsr_core.metrics import OODMetrics, ood_metrics
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

# Shifts of dlsr_core.data (spec suffixes), in the order the panel offers them, with words for students.
SHIFT_LABELS = {
    "hflip": "horizontal flip",
    "vflip": "vertical flip",
    "rot90": "rotation by 90°",
    "rot180": "rotation by 180°",
    "blur": "blur",
    "invert": "inversion (negative)",
    "contrast": "half the contrast",
}

# Images per shift: extracting a few hundred 64-px images takes about a second on a laptop CPU.
SHIFT_SAMPLE = 500


def shift_rows(count: int, limit: int = SHIFT_SAMPLE, seed: int = 0) -> np.ndarray:
    """Sorted feature-row positions of the ID images the panel shifts (the same rows for every shift)."""
    return subsample_rows(count, limit, seed)


def shifted_features(extractor, input_size: int, spec: str, positions: np.ndarray, shift: str, progress=None) -> Tensor:
    """Backbone features (n, D) of the images at dataset `positions` of `spec` after `shift` (a SHIFT_LABELS key);
    `progress(done, total)` as the images go through the backbone."""
    from dlsr_core.data import open_dataset
    from dlsr_core.features import extract_features

    if shift not in SHIFT_LABELS:
        raise ValueError(f"unknown shift {shift!r}; choose one of {', '.join(SHIFT_LABELS)}")
    dataset = open_dataset(f"{spec}+{shift}")
    images = [dataset[int(position)] for position in positions]
    return extract_features(extractor, images, input_size, progress=progress, dataset_name=f"{spec}+{shift}").features


@dataclass(frozen=True)
class ShiftComparison:
    """Scores (n,) of n ID images before and after a shift, and the metrics of telling them apart."""

    shift: str
    score: str
    id_scores: np.ndarray
    shifted_scores: np.ndarray
    metrics: OODMetrics


def compare_shift(
    detector: Detector,
    id_features: Tensor,
    shifted: Tensor,
    shift: str,
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> ShiftComparison:
    """Score ID features (n, D) and their shifted versions (n, D); AUROC etc. with the originals as ID."""
    with_lr = score == "lr"
    original = score_matrix(detector, id_features, timestep, steps, seed, with_lr, draws)
    moved = score_matrix(detector, shifted, timestep, steps, seed, with_lr, draws)
    if score not in original:
        raise KeyError(f"score {score!r} is not available for this checkpoint")
    return ShiftComparison(shift, score, original[score], moved[score], ood_metrics(original[score], moved[score]))
