"""ID vs OOD evaluation for the Score-distributions page: any number of methods, wide tables, exports, the sweep.

A *method* is anything that gives each image a score, higher = more OOD: the three DLSR scores, the feature-space
baselines, or methods added later (pixel-space models, classifier-based detectors). Each arrives as a
`MethodScores` (per-set score arrays plus a note on how it was fitted), so adding one to the page's table and
histograms is `with_methods(evaluation, [MethodScores(...)])` — no DLSR-specific code involved.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from dlsr_core.evaluation import timestep_sweep
from dlsr_core.explorer.sets import SCORE_LABELS, subsample_rows
from dlsr_core.metrics import OODMetrics, ood_metrics
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

METRIC_LABELS = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
# Row-passes through the LFDN (rows x DDIM steps x draws x models) that the page spends per setting. The default
# view (all 7,000 demo images, 1 step, 1 draw, final + early model for LR) is exactly EVALUATION_BUDGET, about 3 s on
# one core of the 2-core test machine (4 s while other jobs ran). A costlier setting scores a fixed random subset of
# each set, sized to SUBSET_BUDGET so that it answers in about 2 s (see `budget_rows`).
EVALUATION_BUDGET = 14_000
SUBSET_BUDGET = 10_000
MINIMUM_ROWS = 200
# Sets larger than this are scored in chunks, so a progress bar moves every second or so even with a large LFDN
# (smaller sets are scored in one batch, as always).
CHUNK_ROWS = 4096
# A sweep whose average AUROC varies less than this (percentage points) is described as flat, not as peaking.
FLAT_SWEEP_POINTS = 0.5

ProgressCallback = Callable[[int, int, str], None]  # (done, total, what is being scored)


@dataclass(frozen=True)
class MethodScores:
    """One method's scores (higher = more OOD) on each set, keyed by set name: scores[set] (N_set,)."""

    name: str  # key: "mfsim", "knn", …
    label: str  # shown in tables and legends
    family: str  # "DLSR", "baseline", or another group name
    scores: dict[str, np.ndarray]
    note: str = ""  # how it was fitted or sampled, when that matters for comparing its numbers


@dataclass(frozen=True)
class Evaluation:
    """Metrics of every method on every OOD set against one ID set.

    groups: OOD set -> "far" | "near" (any label works); metrics[(method, OOD set)]; settings: what produced the
    scores (model id, t, steps, draws, seed, …) — carried into every export; names: set -> display name (the
    experiment's), used for table rows.
    """

    id_set: str
    groups: dict[str, str]
    methods: dict[str, MethodScores]
    metrics: dict[tuple[str, str], OODMetrics]
    settings: dict[str, object] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def name_of(self, dataset: str) -> str:
        return self.names.get(dataset, dataset)

    @property
    def ood_sets(self) -> list[str]:
        return list(self.groups)

    @property
    def method_names(self) -> list[str]:
        return list(self.methods)

    def metric(self, method: str, ood_set: str) -> OODMetrics:
        """Metrics of `method` on `ood_set`; KeyError naming both when there is none."""
        try:
            return self.metrics[(method, ood_set)]
        except KeyError:
            raise KeyError(f"no metrics for method {method!r} on OOD set {ood_set!r}") from None

    def average(self, method: str, group: str | None = None) -> OODMetrics:
        """Mean of each metric over the OOD sets of `group` (all sets when None)."""
        chosen = [s for s in self.ood_sets if group is None or self.groups[s] == group]
        if not chosen:
            raise KeyError(f"no OOD set in group {group!r}")
        values = [self.metric(method, s) for s in chosen]
        return OODMetrics(**{key: float(np.mean([getattr(v, key) for v in values])) for key in asdict(values[0])})

    def scores(self, method: str, dataset: str) -> np.ndarray:
        """The per-image scores of `method` on `dataset` (the ID set or an OOD set)."""
        return self.methods[method].scores[dataset]


def evaluate_methods(
    id_set: str,
    groups: dict[str, str],
    methods: Sequence[MethodScores],
    settings: dict[str, object] | None = None,
    names: dict[str, str] | None = None,
) -> Evaluation:
    """Metrics of each method on each OOD set of `groups`; every method must score the ID set and each OOD set.
    `names` (set -> display name) label the table's rows."""
    if not groups:
        raise ValueError("need at least one OOD set")
    evaluation = Evaluation(id_set, dict(groups), {}, {}, dict(settings or {}), dict(names or {}))
    return with_methods(evaluation, methods)


def with_methods(evaluation: Evaluation, methods: Sequence[MethodScores]) -> Evaluation:
    """The evaluation plus `methods` (a method of the same name is replaced), with their metrics computed."""
    table = dict(evaluation.methods)
    metrics = dict(evaluation.metrics)
    for method in methods:
        missing = [s for s in [evaluation.id_set, *evaluation.ood_sets] if s not in method.scores]
        if missing:
            raise ValueError(f"method {method.name!r} has no scores for {', '.join(missing)}")
        table[method.name] = method
        id_scores = method.scores[evaluation.id_set]
        for ood_set in evaluation.ood_sets:
            metrics[(method.name, ood_set)] = ood_metrics(id_scores, method.scores[ood_set])
    return replace(evaluation, methods=table, metrics=metrics)


def budget_rows(
    sizes: dict[str, int],
    passes_per_row: int,
    budget: int = EVALUATION_BUDGET,
    minimum: int = MINIMUM_ROWS,
    subset_budget: int = SUBSET_BUDGET,
) -> dict[str, np.ndarray] | None:
    """Rows to score per set: None (all of them) when rows x `passes_per_row` fits `budget`, else subsets costing
    about `subset_budget` (at most `budget`).

    Every set is cut by the same fraction (never below `minimum` rows), using a fixed random subset, so the same
    setting always scores the same images and a cheaper setting scores a superset of a costlier one's.
    """
    total = sum(sizes.values())
    if total * max(passes_per_row, 1) <= budget:
        return None
    fraction = min(subset_budget, budget) / (total * max(passes_per_row, 1))
    return {name: subsample_rows(size, max(minimum, int(size * fraction))) for name, size in sizes.items()}


def dlsr_methods(
    detector: Detector,
    features: dict[str, Tensor],
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    with_lr: bool = True,
    rows: dict[str, np.ndarray] | None = None,
    progress: ProgressCallback | None = None,
    names: dict[str, str] | None = None,
) -> list[MethodScores]:
    """MSE, MFsim and (with `with_lr` and an early checkpoint) LR on every set (features (N, D) each).

    With `rows`, only those rows of each set are scored (and the note says how many, by the sets' display `names`).
    `progress(done, total, what)` counts rows; sets above CHUNK_ROWS are scored (and reported) in chunks.
    """
    with_lr = with_lr and detector.has_early
    names = names or {}
    per_set: dict[str, dict[str, np.ndarray]] = {}
    chosen = {name: m if rows is None else m[torch.as_tensor(rows[name])] for name, m in features.items()}
    total, done = sum(len(matrix) for matrix in chosen.values()), 0
    for name, matrix in chosen.items():
        parts = []
        for start in range(0, max(len(matrix), 1), CHUNK_ROWS):
            if progress is not None:
                progress(done, total, names.get(name, name))
            with torch.inference_mode():
                parts.append(
                    detector.score_features(
                        matrix[start : start + CHUNK_ROWS], timestep, steps, 1.0, seed, with_lr=with_lr, draws=draws
                    )
                )
            done += len(matrix[start : start + CHUNK_ROWS])
        scores = ("mse", "mfsim", *(("lr",) if with_lr else ()))
        per_set[name] = {score: np.concatenate([part.get(score) for part in parts]) for score in scores}
    if progress is not None:
        progress(total, total, "")
    note = ""
    if rows is not None:
        counts = ", ".join(f"{names.get(name, name)} {len(r)}/{len(features[name])}" for name, r in rows.items())
        note = f"a fixed random subset of each set is scored at this setting ({counts})"
    return dlsr_method_scores(per_set, with_lr, note)


def dlsr_method_scores(per_set: dict[str, dict[str, np.ndarray]], with_lr: bool, note: str = "") -> list[MethodScores]:
    """MSE, MFsim and (with `with_lr`) LR as MethodScores from each set's score arrays (explorer.score_matrix)."""
    names = ("mse", "mfsim", *(("lr",) if with_lr else ()))
    by_score = {score: {spec: arrays[score] for spec, arrays in per_set.items()} for score in names}
    return [MethodScores(score, SCORE_LABELS[score], "DLSR", values, note) for score, values in by_score.items()]


def baseline_methods(
    id_set: str,
    features: dict[str, Tensor],
    stage_dims: tuple[int, ...] | None,
    train_features: Tensor | None = None,
    train_name: str = "the training set",
    knn_k: int = 50,
    progress: ProgressCallback | None = None,
) -> list[MethodScores]:
    """k-NN and Mahalanobis on every set, fitted on `train_features` (N_train, D).

    `stage_dims` (the detector's) lets Mahalanobis drop each per-stage-standardized stage's redundant channel, without
    which its covariance is singular (None: features that are not standardized per stage).

    Without training features they are fitted on the even rows of the ID set and score only its odd rows as ID
    (the note says so: their numbers then differ from a table fitted on the training split). `progress(done, total,
    what)` is called before each fit and each set scored.
    """
    from dlsr_core.baselines import KNNBaseline, MahalanobisBaseline

    id_features = features[id_set]
    if train_features is not None and len(train_features) > 0:
        fit, id_rows = train_features, np.arange(len(id_features))
        note = f"fitted on all {len(train_features):,} {train_name} features"
    else:
        fit, id_rows = id_features[0::2], np.arange(1, len(id_features), 2)
        note = (
            f"no {train_name} features here, so fitted on the even rows of the ID set ({len(fit)} images) and "
            f"evaluated on its odd rows ({len(id_rows)}): expect different numbers from a table fitted on {train_name}"
        )
    methods = []
    total, done = 2 * (1 + len(features)), 0

    def report(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, what)
        done += 1

    for name, baseline in (("knn", KNNBaseline(knn_k)), ("mahalanobis", MahalanobisBaseline(stage_dims))):
        report(f"fitting {SCORE_LABELS[name]} on {len(fit):,} features")
        baseline.fit(fit)
        scores = {}
        for set_name, matrix in features.items():
            report(f"{SCORE_LABELS[name]}: {set_name}")
            scores[set_name] = baseline.score(matrix[torch.as_tensor(id_rows)] if set_name == id_set else matrix)
        methods.append(MethodScores(name, SCORE_LABELS[name], "baseline", scores, note))
    if progress is not None:
        progress(total, total, "")
    return methods


def summary_rows(evaluation: Evaluation) -> list[tuple[str, str | None]]:
    """(row label, group) of the wide table: each OOD set, then the average per group and over all sets."""
    rows: list[tuple[str, str | None]] = [(name, "set") for name in evaluation.ood_sets]
    groups = list(dict.fromkeys(evaluation.groups.values()))
    rows += [(f"average {group}", group) for group in groups]
    if len(groups) > 1:
        rows.append(("average all", None))
    return rows


def wide_table(
    evaluation: Evaluation, methods: Sequence[str] | None = None, metrics: Sequence[str] = ("auroc", "fpr95")
) -> tuple[list[str], list[tuple[str, str]], list[list[float]]]:
    """(row labels, (method label, metric label) column pairs, values in percent): one row per OOD set and per
    average, a group of columns per method — the layout of the paper's tables."""
    methods = list(methods or evaluation.method_names)
    columns = [(evaluation.methods[m].label, METRIC_LABELS[k]) for m in methods for k in metrics]
    labels, values = [], []
    for label, group in summary_rows(evaluation):
        row = []
        for method in methods:
            if group == "set":
                m = evaluation.metric(method, label)
            else:
                m = evaluation.average(method, group)
            row += [100.0 * getattr(m, key) for key in metrics]
        labels.append(evaluation.name_of(label) + (f" ({evaluation.groups[label]})" if group == "set" else ""))
        values.append(row)
    return labels, columns, values


def metrics_csv(evaluation: Evaluation, methods: Sequence[str] | None = None) -> str:
    """Long-format CSV: one line per method and OOD set (and per average), with the settings in every line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    setting_keys = list(evaluation.settings)
    writer.writerow(
        [
            "id_set",
            "ood_set",
            "group",
            "method",
            "family",
            "auroc",
            "fpr95",
            "aupr_in",
            "aupr_out",
            "threshold95",
            "id_images",
            "ood_images",
            *setting_keys,
            "note",
        ]
    )
    for method in methods or evaluation.method_names:
        entry = evaluation.methods[method]
        for label, group in summary_rows(evaluation):
            if group == "set":
                m, count, group_name = (
                    evaluation.metric(method, label),
                    len(entry.scores[label]),
                    evaluation.groups[label],
                )
            else:
                m, count, group_name = evaluation.average(method, group), "", group or "all"
            writer.writerow(
                [
                    evaluation.id_set,
                    label,
                    group_name,
                    method,
                    entry.family,
                    f"{m.auroc:.6f}",
                    f"{m.fpr95:.6f}",
                    f"{m.aupr_in:.6f}",
                    f"{m.aupr_out:.6f}",
                    f"{m.threshold95:.6g}" if group == "set" else "",
                    len(entry.scores[evaluation.id_set]),
                    count,
                    *(evaluation.settings[key] for key in setting_keys),
                    entry.note,
                ]
            )
    return buffer.getvalue()


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


def sweep_summary(
    timesteps: Sequence[int], curves: dict[str, list[float]], score_label: str, names: dict[str, str] | None = None
) -> str:
    """One sentence reading the measured AUROC-vs-t curve: where the average peaks, how it falls, which set moves
    most (by its display name in `names`) — and why, in the paper's terms."""
    order = np.argsort(timesteps)
    ts = np.asarray(timesteps)[order]
    per_set = {name: np.asarray(values, dtype=np.float64)[order] * 100 for name, values in curves.items()}
    mean = np.mean(list(per_set.values()), axis=0)
    if len(ts) == 1:
        return f"At t = {ts[0]} the average {score_label} AUROC is {mean[0]:.1f} %; pick more timesteps to see a trend."
    peak = int(mean.argmax())
    if mean.max() - mean.min() < FLAT_SWEEP_POINTS:
        return (
            f"Averaged over the OOD sets, {score_label} AUROC is nearly flat here: between {mean.min():.1f} % and "
            f"{mean.max():.1f} % for t = {ts[0]}–{ts[-1]} (highest at t = {ts[peak]}), so this model separates ID "
            "from OOD about equally well at every timestep tried; the choice of t matters little in this range."
        )
    text = f"Averaged over the OOD sets, {score_label} AUROC peaks at t = {ts[peak]} ({mean[peak]:.1f} %)"
    if peak == len(ts) - 1:
        return text + (
            f" and is still rising at the largest t tried (from {mean[0]:.1f} % at t = {ts[0]}): try larger t."
        )
    drops = {name: values[peak] - values[-1] for name, values in per_set.items()}
    worst = max(drops, key=drops.get)
    text += f" and falls to {mean[-1]:.1f} % at t = {ts[-1]}"
    if drops[worst] > 0.5:
        label = (names or {}).get(worst, worst)
        text += f"; {label} loses most ({per_set[worst][peak]:.1f} → {per_set[worst][-1]:.1f} %)"
    if peak > 0 and mean[peak] - mean[0] > 0.2:
        text += f", after rising from {mean[0]:.1f} % at t = {ts[0]}"
    return text + (
        ". A small t leaves enough of each vector for ID features to come back intact while unfamiliar ones do not; "
        "a large t erases ID detail too, so ID and OOD reconstruct equally badly (the paper picks t in 3–10)."
    )
