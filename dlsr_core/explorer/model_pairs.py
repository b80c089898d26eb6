"""Two models on the same images: which second models there are (other runs, a run's first epoch and its kept
snapshots), and both models' scores side by side — each model's AUROC on the same sets, and the images whose
verdicts the two disagree on.

Each model scores with its own features (a model of another backbone or feature options gets its own, extracted and
cached like any set's) and is judged at its own 95%-TPR threshold, exactly as `evaluate` would judge it alone.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlsr_core.checkpoint import FIRST_NAME, LAST_NAME, CheckpointError, read_checkpoint_info
from dlsr_core.explorer.epochs import snapshot_files
from dlsr_core.explorer.references import ImageRef
from dlsr_core.explorer.scores import id_threshold95, percent_below, verdict
from dlsr_core.metrics import ood_metrics


@dataclass(frozen=True)
class ModelChoice:
    """A model to compare with: a run folder (its final model) or one saved epoch's checkpoint file of a run."""

    path: Path
    label: str
    run_dir: Path
    epoch: int | None  # None when its checkpoint cannot be read (loading it then says why)


def _describe(path: Path, run_dir: Path, which: str) -> ModelChoice:
    try:
        info = read_checkpoint_info(path if path.is_file() else path / LAST_NAME)
    except (CheckpointError, OSError, ValueError) as error:
        return ModelChoice(path, f"{run_dir.name} · {which} (cannot be read: {str(error)[:80]})", run_dir, None)
    label = (
        f"{run_dir.name} · epoch {info.epoch} ({which}) · {info.backbone} @ {info.input_size}px · {info.preset} · "
        f"trained on {info.dataset}"
    )
    return ModelChoice(path, label, run_dir, info.epoch)


def model_choices(runs: Sequence[Path]) -> list[ModelChoice]:
    """Every model of `runs` (the Home picker's run folders): each run's final model, then its first epoch (kept for
    LR) and the snapshots it kept in between, oldest first."""
    choices = []
    for run in runs:
        run = Path(run)
        choices.append(_describe(run, run, "final"))
        for epoch, path in snapshot_files(run):
            choices.append(_describe(path, run, f"snapshot {epoch}"))
        if (run / FIRST_NAME).is_file():
            choices.append(_describe(run / FIRST_NAME, run, "first"))
    return choices


def aligned_rows(indices_a: np.ndarray, indices_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of A, rows of B, dataset indices) of the images both feature sets hold, by ascending dataset index:
    the two models' features of one set may come from two extractions that skipped different unreadable files."""
    common, rows_a, rows_b = np.intersect1d(np.asarray(indices_a), np.asarray(indices_b), return_indices=True)
    return rows_a, rows_b, common


@dataclass(frozen=True)
class Disagreement:
    """An image the two models give different verdicts, with both scores and both ID percentiles."""

    ref: ImageRef
    score_a: float
    score_b: float
    verdict_a: str
    verdict_b: str
    percent_a: float  # percent of the model's own ID scores below this image's
    percent_b: float


@dataclass(frozen=True)
class ModelPair:
    """Both models on the same sets: thresholds (a, b), AUROC per OOD set {spec: (a, b)}, their means, and the
    disagreements, most different ID percentiles first."""

    id_set: str
    thresholds: tuple[float, float]
    aurocs: dict[str, tuple[float, float]]
    disagreements: list[Disagreement]
    images: int

    @property
    def mean_aurocs(self) -> tuple[float, float]:
        values = np.array(list(self.aurocs.values()))
        return float(values[:, 0].mean()), float(values[:, 1].mean())

    def disagreement_counts(self, spec: str) -> tuple[int, int]:
        """(A says OOD and B says ID, A says ID and B says OOD) among the images of `spec`."""
        mine = [d for d in self.disagreements if d.ref.spec == spec]
        return sum(d.verdict_a == "OOD" for d in mine), sum(d.verdict_b == "OOD" for d in mine)


def compare_models(
    id_spec: str,
    scores_a: Mapping[str, np.ndarray],
    scores_b: Mapping[str, np.ndarray],
    indices: Mapping[str, np.ndarray],
) -> ModelPair:
    """Compare two models' scores of the same images: scores_a / scores_b map each set (the ID set `id_spec` and the
    OOD sets) to (N,) scores of the images at dataset positions indices[set] (N,), in the same order for both."""
    threshold_a = id_threshold95(np.asarray(scores_a[id_spec], dtype=np.float64))
    threshold_b = id_threshold95(np.asarray(scores_b[id_spec], dtype=np.float64))
    aurocs = {
        spec: (
            ood_metrics(scores_a[id_spec], scores_a[spec]).auroc,
            ood_metrics(scores_b[id_spec], scores_b[spec]).auroc,
        )
        for spec in scores_a
        if spec != id_spec
    }
    disagreements = []
    for spec, values_a in scores_a.items():
        values_a = np.asarray(values_a, dtype=np.float64)
        values_b = np.asarray(scores_b[spec], dtype=np.float64)
        percent_a = percent_below(np.asarray(scores_a[id_spec]), values_a)
        percent_b = percent_below(np.asarray(scores_b[id_spec]), values_b)
        for row, index in enumerate(np.asarray(indices[spec])):
            verdicts = verdict(values_a[row], threshold_a), verdict(values_b[row], threshold_b)
            if verdicts[0] != verdicts[1]:
                disagreements.append(
                    Disagreement(
                        ImageRef.of_set(spec, int(index)),
                        float(values_a[row]),
                        float(values_b[row]),
                        *verdicts,
                        float(percent_a[row]),
                        float(percent_b[row]),
                    )
                )
    disagreements.sort(key=lambda d: -abs(d.percent_a - d.percent_b))
    images = sum(len(values) for values in scores_a.values())
    return ModelPair(id_spec, (threshold_a, threshold_b), aurocs, disagreements, images)


def pair_csv(
    scores_a: Mapping[str, np.ndarray],
    scores_b: Mapping[str, np.ndarray],
    indices: Mapping[str, np.ndarray],
    pair: ModelPair,
    names: Mapping[str, str],
    settings: Mapping[str, object] | None = None,
) -> str:
    """CSV of every image: set, spec, index, both scores and both verdicts (each at its model's own threshold), then
    one column per entry of `settings` (the two model ids, score, t, steps, draws)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    settings = dict(settings or {})
    writer.writerow(["set", "spec", "index", "score_a", "score_b", "verdict_a", "verdict_b", *settings])
    for spec, values_a in scores_a.items():
        for index, a, b in zip(indices[spec], values_a, scores_b[spec], strict=True):
            writer.writerow(
                [
                    names.get(spec, spec),
                    spec,
                    int(index),
                    f"{a:.6g}",
                    f"{b:.6g}",
                    verdict(float(a), pair.thresholds[0]),
                    verdict(float(b), pair.thresholds[1]),
                    *settings.values(),
                ]
            )
    return buffer.getvalue()
