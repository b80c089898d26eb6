"""Failure cases: the ID images scored most OOD-like and the OOD images scored most ID-like."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FailureCase:
    """An ID image scored OOD-like or an OOD image scored ID-like."""

    kind: str  # "ID scored as OOD" | "OOD scored as ID"
    dataset: str
    index: int  # position in the dataset
    score: float
    rank: int  # 1 = worst
    stage_cos: tuple[float, ...]


def failure_cases(
    id_name: str,
    scores: dict[str, np.ndarray],
    stage_cos: dict[str, np.ndarray],
    indices: dict[str, np.ndarray],
    k: int = 12,
) -> list[FailureCase]:
    """The k ID rows with the highest score and the k OOD rows (over all OOD sets) with the lowest.

    scores[set] (N,), stage_cos[set] (N, S), indices[set] (N,) dataset positions; `id_name` is one of the sets.
    """
    cases: list[FailureCase] = []
    order = np.argsort(-scores[id_name], kind="stable")[:k]
    for rank, row in enumerate(order, 1):
        cases.append(
            FailureCase(
                "ID scored as OOD",
                id_name,
                int(indices[id_name][row]),
                float(scores[id_name][row]),
                rank,
                tuple(float(v) for v in stage_cos[id_name][row]),
            )
        )
    pooled = [(float(value), name, row) for name in scores if name != id_name for row, value in enumerate(scores[name])]
    pooled.sort(key=lambda item: item[0])
    for rank, (value, name, row) in enumerate(pooled[:k], 1):
        cases.append(
            FailureCase(
                "OOD scored as ID",
                name,
                int(indices[name][row]),
                value,
                rank,
                tuple(float(v) for v in stage_cos[name][row]),
            )
        )
    return cases


def failure_csv(cases: Sequence[FailureCase], score: str, threshold: float | None = None) -> str:
    """CSV: kind, rank, dataset, index, score, verdict at the threshold, per-stage cosine similarities."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    stages = len(cases[0].stage_cos) if cases else 0
    writer.writerow(
        [
            "kind",
            "rank",
            "dataset",
            "index",
            f"score_{score}",
            "threshold95",
            *(f"cos_stage{i + 1}" for i in range(stages)),
        ]
    )
    for case in cases:
        writer.writerow(
            [
                case.kind,
                case.rank,
                case.dataset,
                case.index,
                f"{case.score:.6g}",
                "" if threshold is None else f"{threshold:.6g}",
                *(f"{v:.4f}" for v in case.stage_cos),
            ]
        )
    return buffer.getvalue()
