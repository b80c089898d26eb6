"""Compare models' scatter of score A against score B. This is not a page: app.py routes only to the pages it lists."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from pages.map_figure import PALETTE, SYMBOLS


def pair_scatter(
    scores_a: Mapping[str, np.ndarray],
    scores_b: Mapping[str, np.ndarray],
    indices: Mapping[str, np.ndarray],
    names: Mapping[str, str],
    thresholds: tuple[float, float],
    labels: tuple[str, str],
) -> go.Figure:
    """Every image as a point (score under model A, score under model B), one colour and symbol per set, with each
    model's 95%-TPR threshold: points in the off-diagonal quadrants are the images the two models disagree on."""
    figure = go.Figure()
    for position, spec in enumerate(scores_a):
        figure.add_trace(
            go.Scattergl(
                x=scores_a[spec],
                y=scores_b[spec],
                mode="markers",
                name=names.get(spec, spec),
                marker=dict(
                    size=5,
                    opacity=0.6,
                    color=PALETTE[position % len(PALETTE)],
                    symbol=SYMBOLS[position % len(SYMBOLS)],
                    line=dict(width=0),
                ),
                customdata=np.asarray(indices[spec]),
                hovertemplate=f"{names.get(spec, spec)} #%{{customdata}}<br>"
                "A = %{x:.4g}, B = %{y:.4g}<extra></extra>",
            )
        )
    for axis, value, name in (("x", thresholds[0], "A"), ("y", thresholds[1], "B")):
        line = dict(color="#444", dash="dash", width=1)
        if axis == "x":
            figure.add_vline(x=value, line=line, annotation_text=f"threshold {name}", annotation_position="top")
        else:
            figure.add_hline(y=value, line=line, annotation_text=f"threshold {name}", annotation_position="right")
    figure.update_layout(
        height=520,
        margin=dict(l=10, r=10, t=30, b=10),
        template="plotly_white",
        xaxis_title=f"model A: {labels[0]} (higher = more OOD)",
        yaxis_title=f"model B: {labels[1]}",
        legend=dict(font_size=11, itemsizing="constant"),
    )
    return figure
