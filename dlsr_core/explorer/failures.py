"""Failure cases at the 95%-TPR threshold, each tagged with a measured reason (the paper's Figures 10-12).

The paper names three kinds of error: ID images flagged because they carry little semantic information, and OOD
images accepted because they resemble an ID class or because they share the ID data's colours. Here each is a
measurement, always against the ID set's own statistics:

- *little semantic content*: the image's contrast (grey-level standard deviation) or its texture (mean gradient
  inside the object) is below the ID set's 10th percentile;
- *atypical for its class* (ID, needs labels): its feature vector's cosine similarity to its own class's mean ID
  feature is below that class's 10th percentile;
- *resembles an ID class* (OOD, needs ID labels): its cosine similarity to the nearest ID class's mean feature is at
  least the 10th percentile of ID images' similarity to their own class — as close as a typical ID member;
- *shares ID intensity statistics* (OOD): brightness, contrast and inked area (and colour saturation, for colour ID
  sets) all lie within the ID set's 5-95 % range.

An error may carry several tags. Every tag also comes with its base rate (the share of all images of that kind that
meet the criterion), so a tag that is no more frequent among errors than overall is seen to explain nothing.

Without ID labels, the ID features are grouped into a few clusters (`id_clusters`) that stand in for the classes:
an OOD error then "resembles ID cluster k", shown with that cluster's most typical images.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

LOW_CONTENT = "little semantic content"
ATYPICAL = "atypical for its class"
RESEMBLES_CLASS = "resembles an ID class"
SHARES_STATISTICS = "shares ID intensity statistics"
UNEXPLAINED = "no measured reason"
ID_KIND = "ID flagged as OOD"
OOD_KIND = "OOD accepted as ID"
CATEGORY_HELP = {
    LOW_CONTENT: "contrast or texture below the ID set's 10th percentile",
    ATYPICAL: "feature vector farther from its own class's mean than 90 % of that class",
    RESEMBLES_CLASS: "as close to an ID class's mean feature as a typical ID image is to its own",
    SHARES_STATISTICS: "brightness, contrast and inked area within the ID set's 5-95 % range",
    UNEXPLAINED: "none of the measured criteria holds",
}
LOW_QUANTILE = 0.10
RANGE_QUANTILES = (0.05, 0.95)
INTENSITY_STATISTICS = ("brightness", "contrast", "ink")
INK_LEVEL = 0.1  # grey level (0-1) above which a pixel counts as part of the object (the sets are light on dark)
# Sets larger than this are analysed on a fixed random subset of this many images (each image is decoded to measure
# its statistics: minutes for tens of thousands of large images); the page states it.
ANALYSED_ROWS = 2000
STATISTICS_CHUNK = 256
MAX_CLUSTERS = 8
TYPICAL_PER_CLUSTER = 4


def image_statistics(images: Sequence[Image.Image | None]) -> dict[str, np.ndarray]:
    """Per image: brightness (mean grey level, 0-1), contrast (grey-level std), ink (share of pixels above
    INK_LEVEL), texture (mean absolute gradient over the inked pixels) and saturation (mean HSV saturation).

    Returns name -> (N,) float arrays; an unreadable image (None) gets NaN everywhere.
    """
    names = ("brightness", "contrast", "ink", "texture", "saturation")
    out = {name: np.full(len(images), np.nan) for name in names}
    for row, image in enumerate(images):
        if image is None:
            continue
        grey = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        inked = grey > INK_LEVEL
        gradient = np.zeros_like(grey)
        gradient[:, 1:] += np.abs(np.diff(grey, axis=1))
        gradient[1:, :] += np.abs(np.diff(grey, axis=0))
        out["brightness"][row] = grey.mean()
        out["contrast"][row] = grey.std()
        out["ink"][row] = inked.mean()
        out["texture"][row] = gradient[inked].mean() if inked.any() else 0.0
        out["saturation"][row] = np.asarray(image.convert("HSV"), dtype=np.float64)[..., 1].mean() / 255.0
    return out


def image_statistics_of(
    spec: str, indices: Sequence[int], progress: Callable[[int, int], None] | None = None
) -> dict[str, np.ndarray]:
    """image_statistics of the images at dataset positions `indices` of `spec`, decoded STATISTICS_CHUNK at a time
    (a large set never sits in memory decoded), with `progress(done, total)` after each chunk."""
    from dlsr_core.data import open_dataset

    dataset = open_dataset(spec)
    parts = []
    for start in range(0, len(indices), STATISTICS_CHUNK):
        chunk = [dataset[int(i)] for i in indices[start : start + STATISTICS_CHUNK]]
        parts.append(image_statistics(chunk))
        if progress is not None:
            progress(min(start + STATISTICS_CHUNK, len(indices)), len(indices))
    if not parts:
        return image_statistics([])
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


@dataclass(frozen=True)
class Clusters:
    """Groups of unlabelled ID features standing in for classes: labels (N,) in 0..k-1, names ("ID cluster 1", …)
    and, per cluster, the rows of its most typical members (closest to its mean direction), most typical first."""

    labels: np.ndarray
    names: tuple[str, ...]
    typical: dict[int, np.ndarray]


def id_clusters(features: np.ndarray, clusters: int = MAX_CLUSTERS, seed: int = 0) -> Clusters:
    """k-means (cosine: on unit vectors) of ID features (N, D) into at most `clusters` groups of 20+ images."""
    from sklearn.cluster import KMeans

    unit = _unit(features)
    k = int(max(1, min(clusters, len(unit) // 20)))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(unit) if k > 1 else np.zeros(len(unit))
    labels = np.asarray(labels, dtype=np.int64)
    typical = {}
    for cluster in range(k):
        rows = np.flatnonzero(labels == cluster)
        centre = _unit(unit[rows].mean(axis=0, keepdims=True))[0]
        typical[cluster] = rows[np.argsort(-(unit[rows] @ centre), kind="stable")[:TYPICAL_PER_CLUSTER]]
    return Clusters(labels, tuple(f"ID cluster {c + 1}" for c in range(k)), typical)


@dataclass(frozen=True)
class FailureCase:
    """One error at the threshold: an ID image scored above it or an OOD image at or below it."""

    kind: str  # ID_KIND | OOD_KIND
    dataset: str
    index: int  # position in the dataset
    score: float
    rank: int  # 1 = the most extreme error of its kind
    stage_cos: tuple[float, ...]
    categories: tuple[str, ...]  # measured reasons; (UNEXPLAINED,) when none holds
    true_class: str | None = None  # the image's own label name, where the set has labels
    nearest_class: str | None = None  # the nearest ID class in feature space (OOD errors), where ID has labels
    nearest_similarity: float | None = None


@dataclass(frozen=True)
class CategoryCount:
    """How many errors of one kind carry a tag, and how common the tag is among all images of that kind."""

    kind: str
    category: str
    errors: int
    share_of_errors: float
    base_rate: float | None  # share of all ID (or all OOD) images meeting the criterion


@dataclass(frozen=True)
class ErrorAnalysis:
    """Every error at `threshold`, most extreme first, with the true counts per set and per category."""

    threshold: float
    id_set: str
    id_errors: int
    id_total: int
    ood_errors: dict[str, int]
    ood_totals: dict[str, int]
    cases: list[FailureCase]
    counts: list[CategoryCount]

    def of_kind(self, kind: str) -> list[FailureCase]:
        return [case for case in self.cases if case.kind == kind]


@dataclass(frozen=True)
class SetData:
    """What the analysis needs of one set, row-aligned: scores (N,), stage_cos (N, S), dataset indices (N,),
    L2-normalisable features (N, D), image statistics (name -> (N,)), labels (N,) or None, class names or None."""

    scores: np.ndarray
    stage_cos: np.ndarray
    indices: np.ndarray
    features: np.ndarray
    statistics: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def class_name(self, row: int) -> str | None:
        if self.labels is None:
            return None
        label = int(self.labels[row])
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


class _Reference:
    """The ID set's own statistics that every criterion is measured against."""

    def __init__(self, data: SetData) -> None:
        stats = data.statistics
        self.low = {name: np.nanquantile(stats[name], LOW_QUANTILE) for name in ("contrast", "texture")}
        self.intensity = list(INTENSITY_STATISTICS)
        if np.nanquantile(stats["saturation"], RANGE_QUANTILES[1]) > 0.02:  # a colour ID set: colour matters too
            self.intensity.append("saturation")
        self.ranges = {name: np.nanquantile(stats[name], RANGE_QUANTILES) for name in self.intensity}
        self.centroids = None
        if data.labels is not None:
            unit = _unit(data.features)
            classes = np.unique(data.labels)
            self.classes = classes
            self.centroids = _unit(np.stack([unit[data.labels == c].mean(axis=0) for c in classes]))
            own = (unit * self.centroids[np.searchsorted(classes, data.labels)]).sum(axis=1)
            self.own_similarity = own
            self.class_low = {c: np.quantile(own[data.labels == c], LOW_QUANTILE) for c in classes}
            self.resemblance = np.quantile(own, LOW_QUANTILE)
            self.class_names = data.class_names

    def low_content(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        return (stats["contrast"] < self.low["contrast"]) | (stats["texture"] < self.low["texture"])

    def shares_statistics(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        inside = [(stats[n] >= self.ranges[n][0]) & (stats[n] <= self.ranges[n][1]) for n in self.intensity]
        return np.logical_and.reduce(inside)

    def atypical(self, data: SetData) -> np.ndarray | None:
        if self.centroids is None:
            return None
        thresholds = np.array([self.class_low[c] for c in data.labels])
        return self.own_similarity < thresholds

    def nearest(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(nearest class label (N,), cosine similarity to its mean (N,)), or None without ID labels."""
        if self.centroids is None:
            return None
        similarity = _unit(features) @ self.centroids.T
        return self.classes[similarity.argmax(axis=1)], similarity.max(axis=1)

    def class_label(self, label: int) -> str:
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)


def analyse_errors(id_set: str, sets: dict[str, SetData], threshold: float) -> ErrorAnalysis:
    """All errors at `threshold` (ID above it, OOD at or below it), tagged and counted; `sets` holds the ID set
    (`id_set`) and every OOD set."""
    reference = _Reference(sets[id_set])
    cases: list[FailureCase] = []
    tags_by_kind: dict[str, list[tuple[str, ...]]] = {ID_KIND: [], OOD_KIND: []}
    base: dict[tuple[str, str], float] = {}

    id_data = sets[id_set]
    flags = {LOW_CONTENT: reference.low_content(id_data.statistics)}
    atypical = reference.atypical(id_data)
    if atypical is not None:
        flags[ATYPICAL] = atypical
    for name, flag in flags.items():
        base[(ID_KIND, name)] = float(np.mean(flag))
    id_rows = np.flatnonzero(id_data.scores > threshold)
    id_rows = id_rows[np.argsort(-id_data.scores[id_rows], kind="stable")]
    for rank, row in enumerate(id_rows, 1):
        tags = tuple(name for name, flag in flags.items() if flag[row]) or (UNEXPLAINED,)
        tags_by_kind[ID_KIND].append(tags)
        cases.append(
            FailureCase(
                ID_KIND,
                id_set,
                int(id_data.indices[row]),
                float(id_data.scores[row]),
                rank,
                tuple(float(v) for v in id_data.stage_cos[row]),
                tags,
                id_data.class_name(row),
            )
        )

    ood_cases: list[FailureCase] = []
    ood_errors, ood_totals = {}, {}
    ood_flags: dict[str, list[np.ndarray]] = {RESEMBLES_CLASS: [], SHARES_STATISTICS: []}
    for name, data in sets.items():
        if name == id_set:
            continue
        nearest = reference.nearest(data.features)
        flags = {SHARES_STATISTICS: reference.shares_statistics(data.statistics)}
        if nearest is not None:
            flags[RESEMBLES_CLASS] = nearest[1] >= reference.resemblance
        for flag_name, flag in flags.items():
            ood_flags[flag_name].append(flag)
        rows = np.flatnonzero(data.scores <= threshold)
        ood_errors[name], ood_totals[name] = len(rows), len(data.scores)
        for row in rows:
            tags = tuple(n for n in (RESEMBLES_CLASS, SHARES_STATISTICS) if n in flags and flags[n][row])
            ood_cases.append(
                FailureCase(
                    OOD_KIND,
                    name,
                    int(data.indices[row]),
                    float(data.scores[row]),
                    0,
                    tuple(float(v) for v in data.stage_cos[row]),
                    tags or (UNEXPLAINED,),
                    data.class_name(row),
                    reference.class_label(int(nearest[0][row])) if nearest is not None else None,
                    float(nearest[1][row]) if nearest is not None else None,
                )
            )
    for flag_name, parts in ood_flags.items():
        if parts:
            base[(OOD_KIND, flag_name)] = float(np.mean(np.concatenate(parts)))
    ood_cases.sort(key=lambda case: case.score)
    for rank, case in enumerate(ood_cases, 1):
        cases.append(replace(case, rank=rank))
        tags_by_kind[OOD_KIND].append(case.categories)

    counts = _category_counts(tags_by_kind, base)
    return ErrorAnalysis(threshold, id_set, len(id_rows), len(id_data.scores), ood_errors, ood_totals, cases, counts)


def _category_counts(
    tags_by_kind: dict[str, list[tuple[str, ...]]], base: dict[tuple[str, str], float]
) -> list[CategoryCount]:
    """Errors per category and kind, with each category's base rate where it is measurable (not without labels)."""
    counts = []
    for kind, categories in (
        (ID_KIND, (LOW_CONTENT, ATYPICAL, UNEXPLAINED)),
        (OOD_KIND, (RESEMBLES_CLASS, SHARES_STATISTICS, UNEXPLAINED)),
    ):
        tagged = tags_by_kind[kind]
        for category in categories:
            if category != UNEXPLAINED and (kind, category) not in base:
                continue  # not measurable here (no labels)
            errors = sum(category in tags for tags in tagged)
            counts.append(
                CategoryCount(
                    kind, category, errors, errors / len(tagged) if tagged else 0.0, base.get((kind, category))
                )
            )
    return counts


def id_class_of(case: FailureCase) -> str | None:
    """The ID class an error is about: its own class (an ID image flagged) or the class it resembles (an OOD image
    accepted, the nearest ID class in feature space); None without ID labels."""
    return case.true_class if case.kind == ID_KIND else case.nearest_class


def filter_cases(
    cases: Sequence[FailureCase],
    sets: Collection[str] | None = None,
    categories: Collection[str] | None = None,
    classes: Collection[str] | None = None,
) -> list[FailureCase]:
    """The cases of `sets` that carry at least one of `categories` and are about one of the ID `classes`
    (id_class_of), in their order; None leaves that filter out."""
    return [
        case
        for case in cases
        if (sets is None or case.dataset in sets)
        and (categories is None or any(category in categories for category in case.categories))
        and (classes is None or id_class_of(case) in classes)
    ]


def failure_csv(
    cases: Sequence[FailureCase],
    score: str,
    threshold: float | None = None,
    settings: dict[str, object] | None = None,
) -> str:
    """CSV: kind, rank, dataset, index, classes, categories, score, threshold, per-stage cosine similarities, then
    one column per entry of `settings` (model id, t, steps, draws, …) repeated on every line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    stages = len(cases[0].stage_cos) if cases else 0
    settings = dict(settings or {})
    writer.writerow(
        [
            "kind",
            "rank",
            "dataset",
            "index",
            "true_class",
            "nearest_id_class",
            "categories",
            f"score_{score}",
            "threshold95",
            *(f"cos_stage{i + 1}" for i in range(stages)),
            *settings,
        ]
    )
    for case in cases:
        writer.writerow(
            [
                case.kind,
                case.rank,
                case.dataset,
                case.index,
                case.true_class or "",
                case.nearest_class or "",
                "; ".join(case.categories),
                f"{case.score:.6g}",
                "" if threshold is None else f"{threshold:.6g}",
                *(f"{v:.4f}" for v in case.stage_cos),
                *settings.values(),
            ]
        )
    return buffer.getvalue()


def set_labels(
    spec: str, indices: Sequence[int], class_names: Sequence[str] | None = None
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """(labels at dataset positions `indices` (N,), class names) of `spec`, or (None, None) without labels.

    `class_names` (the experiment's, for its ID set) name the labels when the dataset has none of its own or
    as many of them."""
    from dlsr_core.data import open_dataset

    dataset = open_dataset(spec)
    if dataset.labels is None:
        return None, None
    labels = np.asarray(dataset.labels, dtype=np.int64)[np.asarray(indices, dtype=np.int64)]
    names = tuple(dataset.class_names) if dataset.class_names is not None else None
    if class_names is not None and (names is None or len(names) == len(class_names)):
        names = tuple(class_names)
    return labels, names
