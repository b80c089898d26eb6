"""A box or lasso selection on the feature map, as the images it holds: which rows of the map's points the selected
markers are, each image once with its score and verdict, and the selection as CSV.

The page draws one trace per (set, kind) in the order `map_traces` gives; a selection event names each selected
marker by its trace (`curve_number`) and its position in that trace (`point_index`), which `selected_rows` maps back
to rows of `MapPoints`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dlsr_core.explorer.maps import MapPoints
from dlsr_core.explorer.references import ImageRef
from dlsr_core.explorer.scores import percent_below, verdict


@dataclass(frozen=True)
class MapTrace:
    """One trace of the map: the points of `spec` of one kind ("original" | "reconstructed"); rows (n,) are their
    rows in MapPoints, in the trace's point order."""

    spec: str
    kind: str
    rows: np.ndarray


def map_traces(points: MapPoints, specs: Sequence[str]) -> list[MapTrace]:
    """The map's data traces in drawing order: for each set, its originals then its reconstructions (empty ones
    left out). Traces the page adds after these (legend entries) hold no selectable points."""
    traces = []
    for spec in specs:
        for kind in ("original", "reconstructed"):
            rows = np.flatnonzero(points.mask(spec, kind))
            if len(rows):
                traces.append(MapTrace(spec, kind, rows))
    return traces


def selected_rows(traces: Sequence[MapTrace], selected_points: Sequence[Mapping]) -> np.ndarray:
    """MapPoints rows (K,) of the points of a Plotly selection event (`event.selection.points` of st.plotly_chart),
    in the order they come, each once. A point outside the data traces (a legend entry) is ignored."""
    rows: list[int] = []
    seen: set[int] = set()
    for point in selected_points:
        curve = point.get("curve_number")
        position = point.get("point_index", point.get("point_number"))
        if curve is None or position is None or not 0 <= int(curve) < len(traces):
            continue
        trace_rows = traces[int(curve)].rows
        if not 0 <= int(position) < len(trace_rows):
            continue
        row = int(trace_rows[int(position)])
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return np.asarray(rows, dtype=np.int64)


@dataclass(frozen=True)
class SelectedImage:
    """One image of a selection: its reference, the row of its original features in MapPoints, its score against the
    ID reference, and which of its points were selected (its features, its reconstruction, or both)."""

    ref: ImageRef
    row: int
    score: float
    verdict: str
    id_percentile: float
    kinds: tuple[str, ...]


def selected_images(
    points: MapPoints, rows: np.ndarray, score: str, id_reference: np.ndarray, threshold: float
) -> list[SelectedImage]:
    """The images behind selected rows, each once in the order first selected (a selected reconstruction stands for
    its image), scored under `score` and placed among the ID reference scores (R,) at `threshold`."""
    original_row = {
        (s, int(i)): row
        for row, (s, i, k) in enumerate(zip(points.sets, points.indices, points.kinds, strict=True))
        if k == "original"
    }
    kinds: dict[tuple[str, int], list[str]] = {}
    for row in rows:
        key = (points.sets[int(row)], int(points.indices[int(row)]))
        kinds.setdefault(key, []).append(points.kinds[int(row)])
    originals = [original_row[key] for key in kinds]
    values = np.asarray(points.scores[score], dtype=np.float64)[originals] if originals else np.empty(0)
    percents = percent_below(id_reference, values)
    return [
        SelectedImage(
            ImageRef.of_set(spec, index),
            int(row),
            float(value),
            verdict(float(value), threshold),
            float(percent),
            tuple(dict.fromkeys(kinds[(spec, index)])),
        )
        for (spec, index), row, value, percent in zip(kinds, originals, values, percents, strict=True)
    ]


def selection_csv(
    images: Sequence[SelectedImage],
    names: Mapping[str, str],
    files: Sequence[str],
    score: str,
    threshold: float,
    settings: Mapping[str, object] | None = None,
) -> str:
    """CSV of a selection, one line per image: set (name and spec), index, file (the source file of a folder set,
    else empty; `files` is row-aligned with `images`), score, threshold, verdict, ID percentile, which of its points
    were selected, then one column per entry of `settings` (model id, t, steps, draws)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    settings = dict(settings or {})
    writer.writerow(
        ["set", "spec", "index", "file", f"score_{score}", "threshold95", "verdict", "id_percent_below", "selected"]
        + list(settings)
    )
    for image, file in zip(images, files, strict=True):
        writer.writerow(
            [
                names.get(image.ref.spec, image.ref.spec),
                image.ref.spec,
                image.ref.index,
                file,
                f"{image.score:.6g}",
                f"{threshold:.6g}",
                image.verdict,
                f"{image.id_percentile:.2f}",
                "+".join(image.kinds),
                *settings.values(),
            ]
        )
    return buffer.getvalue()
