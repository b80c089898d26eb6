"""The feature map's Plotly figure: one selectable trace per (set, kind) in explorer.map_traces' order, a colour and
a marker symbol per set (open symbols for reconstructions), so that under score-rank colouring the symbols still
tell the sets apart. This is not a page: app.py routes only to the pages it lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from dlsr_core import explorer

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")  # per set
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "star", "hexagon", "cross", "triangle-down")  # per set
LEGEND_GREY = "#6b6b6b"


def _marker(position: int, kind: str, colour) -> dict:
    symbol = SYMBOLS[position % len(SYMBOLS)]
    original = kind == "original"
    return dict(
        size=7 if original else 6,
        symbol=symbol if original else f"{symbol}-open",
        opacity=0.8 if original else 0.55,
        color=colour,
        line=dict(width=0),
    )


def map_figure(
    traces: Sequence[explorer.MapTrace],
    points: explorer.MapPoints,
    coordinates: np.ndarray,
    names: Mapping[str, str],
    values: np.ndarray,
    id_percent: Sequence[str],
    label: str,
    by_rank: bool,
    title: str,
) -> go.Figure:
    """The map: coordinates (P, 2) of every MapPoints row; values (P,) the score, id_percent (P,) its place among the
    ID reference images as text. Colour by set, or (`by_rank`) by the score's rank among the shown points — then
    grey legend entries (after the data traces, holding no points) name each set's symbol."""
    figure = go.Figure()
    specs = list(dict.fromkeys(trace.spec for trace in traces))
    ranks = explorer.rank_percentiles(values) if by_rank else None
    for number, trace in enumerate(traces):
        position, rows = specs.index(trace.spec), trace.rows
        marker = _marker(position, trace.kind, PALETTE[position % len(PALETTE)])
        if ranks is not None:
            marker.update(
                color=ranks[rows],
                colorscale="Viridis",
                cmin=0.0,
                cmax=100.0,
                showscale=number == 0,
                # Horizontal, under the plot: a vertical bar on the right sat on top of the legend.
                colorbar=dict(
                    title=dict(text=f"{label} rank among shown points (%)", side="top"),
                    orientation="h",
                    y=-0.12,
                    yanchor="top",
                    len=0.6,
                    thickness=12,
                ),
            )
        kind = "reconstruction ẑ₀" if trace.kind == "reconstructed" else "features z₀"
        figure.add_trace(
            go.Scattergl(
                x=coordinates[rows, 0],
                y=coordinates[rows, 1],
                mode="markers",
                marker=marker,
                customdata=[
                    [names[trace.spec], kind, int(points.indices[row]), float(values[row]), id_percent[row]]
                    for row in rows
                ],
                name=f"{names[trace.spec]} ({'ẑ₀' if trace.kind == 'reconstructed' else 'z₀'})",
                legendgroup=trace.spec,
                showlegend=ranks is None,
                hovertemplate=f"%{{customdata[0]}} #%{{customdata[2]}} (%{{customdata[1]}})<br>{label} = "
                "%{customdata[3]:.4g}, above %{customdata[4]} % of ID images<extra></extra>",
            )
        )
    if ranks is not None:  # legend entries only: the sets' symbols in grey (the colour is the rank)
        for trace in traces:
            position = specs.index(trace.spec)
            figure.add_trace(
                go.Scattergl(
                    x=[None],
                    y=[None],
                    mode="markers",
                    marker=_marker(position, trace.kind, LEGEND_GREY),
                    name=f"{names[trace.spec]} ({'ẑ₀' if trace.kind == 'reconstructed' else 'z₀'})",
                    legendgroup=trace.spec,
                    hoverinfo="skip",
                )
            )
    figure.update_layout(
        height=560,
        margin=dict(l=5, r=5, t=36, b=70 if ranks is not None else 5),
        title=title,
        template="plotly_white",
        # Dragging draws a lasso (the toolbar switches to a box, zoom or pan); a click selects one point.
        dragmode="lasso",
        legend=dict(font_size=11, x=1.02, y=1.0, xanchor="left", itemsizing="constant"),
    )
    return figure
