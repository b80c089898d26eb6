"""The comparison as a table: AUROC / FPR95 per OOD set and averaged (far, near, all), speed and training time per
method, as Markdown, CSV and JSON. All metrics come from dlsr_core.metrics (ID = positive class)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from dlsr_core.comparison.methods import METHODS
from dlsr_core.metrics import OODMetrics, ood_metrics

FPR95_NOTE = (
    "FPR95 = false-positive rate at 95% true-positive rate with **ID as the positive class** (the paper's and the "
    "DLSR authors' convention): the share of OOD images accepted as ID when 95% of ID images are accepted. "
    "pytorch-ood's `OODMetrics` takes OOD as the positive class and gives a different FPR95; it is not used here."
)


@dataclass
class ComparisonReport:
    """Per-method scores of one ID set and several OOD sets, with speeds and training times.

    scores: method -> set -> (N,) scores; ood_groups: OOD set -> "far" or "near"; feature_speed: images/s from
    the method's cached input; end_to_end_speed: images/s from decoded images to scores; training: model name ->
    {"seconds", "what"}.
    """

    id_set: str
    ood_groups: dict[str, str]
    scores: dict[str, dict[str, np.ndarray]] = field(repr=False)
    feature_speed: dict[str, float] = field(default_factory=dict)
    end_to_end_speed: dict[str, float] = field(default_factory=dict)
    training: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _metrics: dict[tuple[str, str], OODMetrics] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for method, by_set in self.scores.items():
            for ood_set in self.ood_groups:
                self._metrics[method, ood_set] = ood_metrics(by_set[self.id_set], by_set[ood_set])

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    @property
    def ood_sets(self) -> list[str]:
        return list(self.ood_groups)

    def group(self, name: str) -> list[str]:
        """OOD sets of group "far", "near" or "all"."""
        return self.ood_sets if name == "all" else [s for s, g in self.ood_groups.items() if g == name]

    def metric(self, method: str, ood_set: str) -> OODMetrics:
        return self._metrics[method, ood_set]

    def average(self, method: str, group: str = "all") -> OODMetrics:
        """Mean of each metric over the sets of `group` ("far", "near", "all")."""
        chosen = [self.metric(method, s) for s in self.group(group)]
        return OODMetrics(**{key: float(np.mean([getattr(m, key) for m in chosen])) for key in asdict(chosen[0])})

    def groups(self) -> list[str]:
        return [g for g in ("far", "near") if self.group(g)] + ["all"]

    def to_markdown(self) -> str:
        """Rows = methods; AUROC / FPR95 (%) per OOD set and group average; images/s; labels needed."""
        set_names = [s.removeprefix("demo:") for s in self.ood_sets]
        header = ["method", *set_names, *(f"avg {g}" for g in self.groups()), "img/s cached", "img/s images", "labels"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in self.methods:
            cells = [METHODS[method].label]
            cells += [_cell(self.metric(method, s)) for s in self.ood_sets]
            cells += [f"**{_cell(self.average(method, g))}**" for g in self.groups()]
            cells += [_speed(self.feature_speed.get(method)), _speed(self.end_to_end_speed.get(method))]
            cells.append("yes" if METHODS[method].needs_labels else "no")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Cells: AUROC / FPR95 in %. ID: {self.id_set}. {FPR95_NOTE}"]
        return "\n".join(lines)

    def training_markdown(self) -> str:
        """Training time of each trained model (`training`: model name -> {"seconds", "what"})."""
        lines = ["| model | training time | what was trained |", "|---|---|---|"]
        for name, record in self.training.items():
            lines.append(f"| {name} | {record['seconds'] / 60:.1f} min | {record['what']} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-sample scores)."""
        return {
            "id_set": self.id_set,
            "ood_groups": self.ood_groups,
            "fpr95_convention": "ID is the positive class (paper convention)",
            "methods": {
                method: {
                    "label": METHODS[method].label,
                    "family": METHODS[method].family,
                    "needs_labels": METHODS[method].needs_labels,
                    "per_set": {s: asdict(self.metric(method, s)) for s in self.ood_sets},
                    "average": {g: asdict(self.average(method, g)) for g in self.groups()},
                    "images_per_second_cached_input": self.feature_speed.get(method),
                    "images_per_second_end_to_end": self.end_to_end_speed.get(method),
                }
                for method in self.methods
            },
            "training": self.training,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One row per method and OOD set (and group average), all metrics as fractions."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id_set", "method", "ood_set", "auroc", "fpr95_id_positive", "aupr_in", "aupr_out"])
        for method in self.methods:
            rows = [(s, self.metric(method, s)) for s in self.ood_sets]
            rows += [(f"average_{g}", self.average(method, g)) for g in self.groups()]
            for name, m in rows:
                writer.writerow([self.id_set, method, name, m.auroc, m.fpr95, m.aupr_in, m.aupr_out])
        return buffer.getvalue()


def _cell(metrics: OODMetrics) -> str:
    return f"{100 * metrics.auroc:.2f} / {100 * metrics.fpr95:.1f}"


def _speed(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
