"""Paper-style evaluation: one ID set against several OOD sets, every score, with speed, as a table/JSON/CSV."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from torch import Tensor

from dlsr_core.baselines import KNNBaseline, MahalanobisBaseline
from dlsr_core.metrics import FPR95_CONVENTION, OODMetrics, ood_metrics
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

BASELINE_NAMES = ("knn", "mahalanobis")


@dataclass(frozen=True)
class EvaluationSettings:
    """How DLSR scores are computed. Paper: small t (3-10); `steps` None means one DDIM step per timestep."""

    timestep: int | None = (
        None  # None: the model's own scoring timestep (detector.scoring.timestep: paper 5, official 4)
    )
    steps: int | None = DEFAULT_STEPS
    eta: float = 1.0
    seed: int = 0
    knn_k: int = 50
    draws: int = DEFAULT_DRAWS  # noise draws averaged per score


@dataclass(frozen=True)
class EvaluationRow:
    """Metrics of one score on one OOD set."""

    ood_set: str
    score: str
    metrics: OODMetrics


@dataclass(frozen=True)
class EvaluationReport:
    """All rows, plus score throughput on cached features (images/s) and backbone throughput when measured."""

    id_set: str
    rows: list[EvaluationRow]
    settings: EvaluationSettings
    score_images_per_second: dict[str, float]
    backbone_images_per_second: float | None = None
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def score_names(self) -> list[str]:
        return list(dict.fromkeys(row.score for row in self.rows))

    @property
    def ood_sets(self) -> list[str]:
        return list(dict.fromkeys(row.ood_set for row in self.rows))

    def metric(self, ood_set: str, score: str) -> OODMetrics:
        """Metrics of `score` on `ood_set`."""
        for row in self.rows:
            if row.ood_set == ood_set and row.score == score:
                return row.metrics
        raise KeyError(f"no row for OOD set {ood_set!r} and score {score!r}")

    def average(self, score: str, ood_sets: list[str] | None = None) -> OODMetrics:
        """Mean of each metric over `ood_sets` (default: all) for one score."""
        chosen = [self.metric(name, score) for name in (ood_sets or self.ood_sets)]
        return OODMetrics(**{key: float(np.mean([getattr(m, key) for m in chosen])) for key in asdict(chosen[0])})

    def end_to_end_images_per_second(self, score: str) -> float | None:
        """Images/s from pixels to score: backbone time plus scoring time per image."""
        if self.backbone_images_per_second is None:
            return None
        return 1.0 / (1.0 / self.backbone_images_per_second + 1.0 / self.score_images_per_second[score])

    def to_table(self) -> str:
        """Fixed-width text table: AUROC / FPR95 (percent) per OOD set and score, the average, and speed."""
        names = self.score_names
        header = f"{'OOD set':<28}" + "".join(f"{name:>20}" for name in names)
        lines = [f"ID: {self.id_set}   t={self.settings.timestep}   cells: AUROC / FPR95 (%)", header]
        for ood_set in [*self.ood_sets, "average"]:
            cells = []
            for name in names:
                m = self.average(name) if ood_set == "average" else self.metric(ood_set, name)
                cells.append(f"{100 * m.auroc:>10.2f} / {100 * m.fpr95:>6.2f}")
            lines.append(f"{ood_set:<28}" + "".join(cells))
        lines.append(
            f"{'score img/s (cached feats)':<28}"
            + "".join(f"{self.score_images_per_second[name]:>20.0f}" for name in names)
        )
        if self.backbone_images_per_second is not None:
            lines.append(
                f"{'end-to-end img/s':<28}"
                + "".join(f"{self.end_to_end_images_per_second(name):>20.1f}" for name in names)
            )
        lines.append(FPR95_CONVENTION)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-sample scores)."""
        return {
            "id_set": self.id_set,
            "settings": asdict(self.settings),
            "rows": [{"ood_set": r.ood_set, "score": r.score, **asdict(r.metrics)} for r in self.rows],
            "average": {name: asdict(self.average(name)) for name in self.score_names},
            "score_images_per_second": self.score_images_per_second,
            "backbone_images_per_second": self.backbone_images_per_second,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id_set", "ood_set", "score", "auroc", "fpr95", "aupr_in", "aupr_out", "threshold95"])
        for r in self.rows:
            m = r.metrics
            writer.writerow([self.id_set, r.ood_set, r.score, m.auroc, m.fpr95, m.aupr_in, m.aupr_out, m.threshold95])
        return buffer.getvalue()


def score_all(
    detector: Detector,
    features: dict[str, Tensor],
    settings: EvaluationSettings,
    train_features: Tensor | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Every available score for every named feature matrix, and each score's images/s on cached features.

    Each model reconstructs each set once: MSE and MFsim share the final model's reconstruction; LR adds the early
    model's reconstruction (same noise), so its speed counts both.
    """
    scores: dict[str, dict[str, np.ndarray]] = {name: {} for name in features}
    count = sum(len(matrix) for matrix in features.values())
    early = Detector(detector.early, scoring=detector.scoring) if detector.early is not None else None
    final_seconds = early_seconds = 0.0
    sampling = (settings.timestep, settings.steps, settings.eta, settings.seed)
    for name, matrix in features.items():
        started = time.perf_counter()
        result = detector.score_features(matrix, *sampling, with_lr=False, draws=settings.draws)
        final_seconds += time.perf_counter() - started
        scores[name].update(mse=result.mse, mfsim=result.mfsim)
        if early is not None:
            started = time.perf_counter()
            early_mse = early.score_features(matrix, *sampling, with_lr=False, draws=settings.draws).mse
            scores[name]["lr"] = early_mse - result.mse
            early_seconds += time.perf_counter() - started
    seconds = {"mse": final_seconds, "mfsim": final_seconds}
    if early is not None:
        seconds["lr"] = final_seconds + early_seconds
    if train_features is not None:
        for baseline_name, baseline in (
            ("knn", KNNBaseline(settings.knn_k)),
            ("mahalanobis", MahalanobisBaseline(detector.stage_dims)),
        ):
            baseline.fit(train_features)
            started = time.perf_counter()
            for name, matrix in features.items():
                scores[name][baseline_name] = baseline.score(matrix)
            seconds[baseline_name] = time.perf_counter() - started
    return scores, {name: count / max(value, 1e-9) for name, value in seconds.items()}


def evaluate(
    detector: Detector,
    id_name: str,
    id_features: Tensor,
    ood_features: dict[str, Tensor],
    settings: EvaluationSettings = EvaluationSettings(),
    train_features: Tensor | None = None,
    backbone_images_per_second: float | None = None,
) -> EvaluationReport:
    """Score the ID set and each OOD set (features (N, D) each) and compute metrics for every score.

    Baselines (k-NN, Mahalanobis) are included when `train_features` (the ID training features) are given.
    """
    if not ood_features:
        raise ValueError("evaluate needs at least one OOD set")
    if settings.timestep is None:  # the report states the timestep actually used
        settings = replace(settings, timestep=detector.scoring.timestep)
    all_features = {id_name: id_features, **ood_features}
    for matrix in all_features.values():
        detector.check_features(matrix)
    scores, speed = score_all(detector, all_features, settings, train_features)
    rows = [
        EvaluationRow(ood_name, score_name, ood_metrics(scores[id_name][score_name], scores[ood_name][score_name]))
        for ood_name in ood_features
        for score_name in scores[id_name]
    ]
    return EvaluationReport(id_name, rows, settings, speed, backbone_images_per_second, scores)


def timestep_sweep(
    detector: Detector,
    id_features: Tensor,
    ood_features: dict[str, Tensor],
    timesteps: list[int],
    score: str = "mfsim",
    steps: int | None = DEFAULT_STEPS,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    draws: int = DEFAULT_DRAWS,
) -> dict[str, list[float]]:
    """AUROC of `score` at each start timestep for each OOD set (the paper's Figure 4): name -> [AUROC per t].

    `steps` None means one DDIM step per timestep.
    """
    curves: dict[str, list[float]] = {name: [] for name in ood_features}
    with_lr = score == "lr"

    def scores_of(matrix: Tensor, timestep: int) -> np.ndarray:
        return detector.score_features(matrix, timestep, steps, seed=seed, with_lr=with_lr, draws=draws).get(score)

    for position, timestep in enumerate(timesteps):
        id_scores = scores_of(id_features, timestep)
        for name, matrix in ood_features.items():
            ood_scores = scores_of(matrix, timestep)
            curves[name].append(ood_metrics(id_scores, ood_scores).auroc)
        if progress is not None:
            progress(position + 1, len(timesteps))
    return curves
