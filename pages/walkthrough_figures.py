"""The figures of How DLSR works: per-stage panels of one vector, and the stage-by-stage comparison.

Sized to read on a 1024-px projector as well as on a wide screen: short stage labels, every number inside its axes.
This is not a page: app.py does not route to it.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dlsr_core import explorer

# The profile's colours (explorer.PROFILE_COLOURS), with a darker grey for "normal" text under a panel title.
TEXT_COLOURS = {**explorer.PROFILE_COLOURS, "normal": "#5f5f5f"}


def stage_figure(
    names: tuple[explorer.StageName, ...],
    series: list[tuple[str, np.ndarray, str, str]],
    footers: list[tuple[str, str, str]] | None = None,
    height: int = 230,
) -> go.Figure:
    """One small panel per stage; series: (name, vector (D,), colour, 'lines' | 'markers'); footers: one
    (value, ID range, colour) per stage, written under its title (how far this stage came back, against ID images)."""
    titles = [f"{n.short.replace(' (', '<br>(')}<br>{n.channels} ch" for n in names]
    if footers is not None:  # two short lines: a 1024-px screen leaves each panel about 100 px
        titles = [
            f'{title}<br><span style="color:{colour}"><b>{html.escape(value)}</b></span><br>{html.escape(band)}'
            for title, (value, band, colour) in zip(titles, footers, strict=True)
        ]
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.05)
    cuts = np.cumsum([n.channels for n in names])[:-1]
    for name, vector, colour, mode in series:
        for column, block in enumerate(np.split(np.asarray(vector), cuts), 1):
            figure.add_trace(
                go.Scatter(
                    y=block,
                    mode=mode,
                    name=name,
                    legendgroup=name,
                    showlegend=column == 1,
                    line=dict(color=colour, width=1.2),
                    marker=dict(color=colour, size=3),
                    hovertemplate=f"{name}<br>channel %{{x}}: %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=column,
            )
    figure.update_annotations(font_size=11)
    figure.update_xaxes(showticklabels=False)
    top = 60 if footers is None else 92
    figure.update_layout(
        height=height + top - 60,
        margin=dict(l=10, r=10, t=top, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=-0.18, x=0),
    )
    return figure


def stage_footers(profile: explorer.LayerProfile) -> list[tuple[str, str, str]]:
    """Per stage, its value in the score's own quantity, the ID 5-95 % range, and the profile's colour."""
    short = {"mfsim": "cos", "mse": "error", "lr": "LR"}[profile.score]
    number = (lambda v: f"{v:.3f}") if profile.score == "mfsim" else (lambda v: f"{v:.3g}")
    return [
        (f"{short} {number(value)}", f"ID {number(low)}–{number(high)}", TEXT_COLOURS[status])
        for value, low, high, status in zip(
            profile.values, profile.band_low, profile.band_high, profile.status, strict=True
        )
    ]


def _text_sides(values: np.ndarray, low: float, high: float) -> list[str]:
    """Labels right of points in the left half of the axis, left of those in the right half: never clipped."""
    middle = (low + high) / 2
    return ["middle right" if value < middle else "middle left" for value in values]


def comparison_figure(trace: explorer.Trace) -> go.Figure:
    """Stage by stage, one row each (short labels shared by both panels): left, cosine(z0, ẑ0) against the ID images'
    5-95 % range of that stage's cosine; right, the layer profile (percent of ID images this stage is worse than)."""
    profile = trace.profile
    labels = [f"{name.number} · {name.role}" for name in trace.names]
    figure = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=("cosine(z₀, ẑ₀) per stage (1 = perfect)", f"{profile.comparison} … % of ID images"),
    )
    low, high = trace.stage_cos_band
    lowest = float(min(trace.stage_cos.min(), low.min()))
    span = (lowest - 0.12 * (1.0 - lowest), 1.0 + 0.02 * (1.0 - lowest))
    cosine_colours = ["#b83b3b" if c < lo else "#3b6fb6" for c, lo in zip(trace.stage_cos, low, strict=True)]
    figure.add_trace(
        go.Bar(
            x=high - low,
            base=low,
            y=labels,
            orientation="h",
            marker_color="#e3e3e3",
            width=0.5,
            customdata=np.stack([low, high], axis=1),
            hovertemplate="%{y}<br>ID images 5–95 %: cosine %{customdata[0]:.4f} … %{customdata[1]:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Scatter(
            x=trace.stage_cos,
            y=labels,
            mode="markers+text",
            marker=dict(size=12, color=cosine_colours),
            text=[f"{value:.4f}" for value in trace.stage_cos],
            textposition=_text_sides(trace.stage_cos, *span),
            customdata=np.stack([trace.stage_sq_error, low, high], axis=1),
            hovertemplate="%{y}<br>cosine %{x:.4f} (ID 5–95 %: %{customdata[1]:.4f} … %{customdata[2]:.4f})"
            "<br>squared error %{customdata[0]:.3f}<extra></extra>",
            cliponaxis=False,
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Bar(
            x=[90] * len(labels), base=5, y=labels, orientation="h", marker_color="#e3e3e3", width=0.5, hoverinfo="skip"
        ),
        row=1,
        col=2,
    )
    texts = [explorer.percent_text(p) for p in profile.worse_than]
    figure.add_trace(
        go.Scatter(
            x=profile.worse_than,
            y=labels,
            mode="markers+text",
            marker=dict(size=14, color=[explorer.PROFILE_COLOURS[s] for s in profile.status]),
            text=[f"{text} %" for text in texts],
            textposition=_text_sides(profile.worse_than, 0, 100),
            customdata=np.stack(
                [np.array(texts, dtype=object), profile.values, profile.band_low, profile.band_high, profile.z_scores],
                axis=1,
            ),
            hovertemplate=f"%{{y}}<br>{profile.comparison} %{{customdata[0]}} % of ID images<br>{profile.quantity} "
            "%{customdata[1]:.4g} (ID 5–95 %: %{customdata[2]:.4g} … %{customdata[3]:.4g})<br>z = "
            "%{customdata[4]:+.1f}<extra></extra>",
            cliponaxis=False,
        ),
        row=1,
        col=2,
    )
    figure.update_xaxes(range=list(span), row=1, col=1)
    figure.update_xaxes(range=[-3, 103], tickvals=[0, 50, 100], row=1, col=2)
    figure.update_yaxes(autorange="reversed", automargin=True)
    figure.update_annotations(font_size=12)
    figure.update_layout(height=270, margin=dict(l=10, r=20, t=40, b=10), showlegend=False, bargap=0.4)
    return figure
