"""Inputs of the feature map: subsampled features, their reconstructions and scores, as one matrix to embed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dlsr_core.explorer.sets import subsample_rows
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector


@dataclass(frozen=True)
class MapPoints:
    """Rows to embed: original features and (optionally) their reconstructions, with labels for each row.

    matrix (P, D); sets, kinds ("original" | "reconstructed"), dataset indices and scores are length P.
    """

    matrix: np.ndarray
    sets: list[str]
    kinds: list[str]
    indices: np.ndarray
    scores: np.ndarray


def map_points(
    detector: Detector,
    features: dict[str, Tensor],
    dataset_indices: dict[str, np.ndarray],
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    per_set: int = 200,
    with_reconstructions: bool = True,
    seed: int = 0,
    draws: int = DEFAULT_DRAWS,
) -> MapPoints:
    """Subsample each set to `per_set` rows, score them and stack originals (+ reconstructions) for a 2-D map."""
    blocks, sets, kinds, indices, scores = [], [], [], [], []
    for name, matrix in features.items():
        rows = subsample_rows(len(matrix), per_set, seed)
        chosen = matrix[torch.as_tensor(rows)]
        with torch.inference_mode():
            result = detector.score_features(chosen, timestep, steps, 1.0, seed, with_lr=score == "lr", draws=draws)
        values = result.get(score)
        parts = [("original", chosen)] + ([("reconstructed", result.reconstruction)] if with_reconstructions else [])
        for kind, block in parts:
            blocks.append(block.float().cpu().numpy())
            sets += [name] * len(rows)
            kinds += [kind] * len(rows)
            indices.append(np.asarray(dataset_indices[name])[rows])
            scores.append(values)
    return MapPoints(np.concatenate(blocks), sets, kinds, np.concatenate(indices), np.concatenate(scores))
