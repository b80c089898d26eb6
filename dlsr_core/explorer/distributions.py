"""ID vs OOD evaluation of the demo sets for the Score-distributions page: metrics, baselines, timestep sweep."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dlsr_core.evaluation import EvaluationReport, EvaluationSettings, evaluate, timestep_sweep
from dlsr_core.explorer.sets import BASELINE_TRAIN_SET, SCORE_LABELS, subsample_rows
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector


@dataclass(frozen=True)
class Evaluation:
    """An evaluation report plus which ID rows were evaluated and where the baselines' training data came from."""

    report: EvaluationReport
    id_rows: np.ndarray  # rows of the ID feature matrix that were scored
    baseline_note: str


def baseline_split(
    id_features: Tensor, train_features: Tensor | None, max_train: int = 5000, seed: int = 0
) -> tuple[Tensor, np.ndarray, str]:
    """(baseline training features, ID rows to evaluate, note) for k-NN / Mahalanobis.

    With cached ID training features, a random subset of at most `max_train` of them is used and all ID rows are
    evaluated. Without, the ID set is split deterministically: even rows fit the baselines, odd rows are evaluated.
    """
    if train_features is not None and len(train_features) > 0:
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(train_features), generator=generator)[:max_train]
        note = f"k-NN and Mahalanobis fitted on {len(chosen)} cached {BASELINE_TRAIN_SET} features"
        return train_features[chosen.sort().values], np.arange(len(id_features)), note
    rows = np.arange(len(id_features))
    note = (
        f"no cached {BASELINE_TRAIN_SET} features: k-NN and Mahalanobis fitted on the even rows of the ID set "
        f"({len(rows[0::2])} images); every score is evaluated on the odd rows ({len(rows[1::2])} images)"
    )
    return id_features[rows[0::2]], rows[1::2], note


def evaluate_sets(
    detector: Detector,
    id_name: str,
    id_features: Tensor,
    ood_features: dict[str, Tensor],
    settings: EvaluationSettings,
    train_features: Tensor | None = None,
    with_baselines: bool = True,
) -> Evaluation:
    """AUROC/FPR95/AUPR of every DLSR score and, optionally, the k-NN and Mahalanobis baselines."""
    if with_baselines:
        train, id_rows, note = baseline_split(id_features, train_features)
    else:
        train, id_rows, note = None, np.arange(len(id_features)), "baselines not computed"
    report = evaluate(detector, id_name, id_features[torch.as_tensor(id_rows)], ood_features, settings, train)
    return Evaluation(report, id_rows, note)


def metrics_rows(report: EvaluationReport) -> list[dict[str, object]]:
    """Table rows (percent) per OOD set and score, then the average over OOD sets."""
    rows = []
    for ood_set in [*report.ood_sets, "average"]:
        for score in report.score_names:
            m = report.average(score) if ood_set == "average" else report.metric(ood_set, score)
            rows.append(
                {
                    "OOD set": ood_set,
                    "score": SCORE_LABELS.get(score, score),
                    "AUROC %": 100 * m.auroc,
                    "FPR95 %": 100 * m.fpr95,
                    "AUPR-In %": 100 * m.aupr_in,
                    "AUPR-Out %": 100 * m.aupr_out,
                }
            )
    return rows


def sweep(
    detector: Detector,
    id_features: Tensor,
    ood_features: dict[str, Tensor],
    timesteps: Sequence[int],
    score: str,
    steps: int | None = DEFAULT_STEPS,
    max_per_set: int | None = 500,
    progress: Callable[[int, int], None] | None = None,
    draws: int = DEFAULT_DRAWS,
) -> dict[str, list[float]]:
    """AUROC per OOD set at each timestep (Figure 4), on at most `max_per_set` rows per set for speed."""
    pick = lambda matrix: matrix[torch.as_tensor(subsample_rows(len(matrix), max_per_set))]  # noqa: E731
    with torch.inference_mode():
        return timestep_sweep(
            detector,
            pick(id_features),
            {name: pick(m) for name, m in ood_features.items()},
            list(timesteps),
            score=score,
            steps=steps,
            progress=progress,
            draws=draws,
        )
