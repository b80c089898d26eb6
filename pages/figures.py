"""Plotly figures more than one page draws. This is not a page: app.py routes only to the pages it lists."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dlsr_core import explorer


def id_histogram(
    id_scores: np.ndarray,
    threshold: float,
    score_label: str,
    markers: list[tuple[str, str, float, str]],
    title: str,
    height: int = 320,
) -> go.Figure:
    """The ID reference histogram with the 95%-TPR threshold and numbered image markers below it.

    markers: (number, name, score, verdict) per image. Markers that would overlap are stacked in rows
    (explorer.marker_rows) instead of piling labels on one spot; hovering a marker shows the image's name.
    """
    from plotly.subplots import make_subplots

    values = [score for _, _, score, _ in markers]
    span = float(max([*values, float(np.max(id_scores))]) - min([*values, float(np.min(id_scores))])) or 1.0
    rows = explorer.marker_rows(values, 0.025 * span) if markers else np.zeros(0, dtype=int)
    strip = max(1, int(rows.max()) + 1 if len(rows) else 1)
    # The marker strip grows with its rows (about 22 px each) so that stacked markers never overlap.
    histogram_px, strip_px = 0.72 * height, max(0.28 * height, 22.0 * strip + 16.0)
    total_px = histogram_px + strip_px
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[histogram_px / total_px, strip_px / total_px],
        vertical_spacing=0.03,
    )
    figure.add_trace(
        go.Histogram(x=id_scores, nbinsx=60, name="ID reference", marker_color="#7fa6dc", opacity=0.85), row=1, col=1
    )
    for verdict, colour in (("OOD", "#b83b3b"), ("ID", "#3c8d47")):
        chosen = [i for i, marker in enumerate(markers) if marker[3] == verdict]
        if not chosen:
            continue
        figure.add_trace(
            go.Scatter(
                x=[markers[i][2] for i in chosen],
                y=[-float(rows[i]) for i in chosen],
                mode="markers+text",
                text=[markers[i][0] for i in chosen],
                textfont=dict(color="white", size=10),
                marker=dict(size=17, color=colour, line=dict(color="white", width=1)),
                customdata=[[markers[i][1]] for i in chosen],
                hovertemplate=f"#%{{text}} %{{customdata[0]}}<br>{score_label} %{{x:.4g}}<extra>{verdict}</extra>",
                name=f"your image, verdict {verdict}",
            ),
            row=2,
            col=1,
        )
    for row in (1, 2):
        figure.add_vline(x=threshold, line_dash="dash", line_color="black", row=row, col=1)
    figure.add_annotation(
        x=threshold, y=1.0, yref="y domain", text="95%-TPR threshold", showarrow=False, xanchor="left", row=1, col=1
    )
    figure.update_yaxes(title_text="ID images", row=1, col=1)
    figure.update_yaxes(visible=False, range=[-strip + 0.4, 0.6], row=2, col=1)
    figure.update_xaxes(title_text=f"{score_label} score (higher = more OOD)", row=2, col=1)
    figure.update_layout(
        title=dict(text=title, font_size=12),
        height=round(total_px) + 60,
        margin=dict(l=10, r=10, t=40, b=70),
        # below the axis title, in plot-area fractions: clear of the title and of Plotly's toolbar
        legend=dict(orientation="h", yanchor="top", y=-48 / (total_px - 50), x=0),
        bargap=0.02,
    )
    return figure
