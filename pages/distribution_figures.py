"""The figures of Score distributions: ID against OOD densities (panels to compare share axes and bins) and the
timestep sweep, one panel per OOD set. This is not a page: app.py does not route to it."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dlsr_core import explorer

ID_COLOUR, OOD_COLOUR = "#3b6fb6", "#b83b3b"


def histogram(
    id_scores,
    ood_scores,
    title: str,
    x_title: str,
    threshold: float | None,
    height: int = 300,
    x_range: tuple[float, float] | None = None,
    y_max: float | None = None,
):
    """ID and OOD densities; with `x_range`, that axis and 50 bins across it, with `y_max` that density axis (panels
    to compare share all three)."""
    figure = go.Figure()
    bins = None if x_range is None else dict(start=x_range[0], end=x_range[1], size=(x_range[1] - x_range[0]) / 50)
    for values, name, colour in ((id_scores, "ID", ID_COLOUR), (ood_scores, "OOD", OOD_COLOUR)):
        figure.add_trace(
            go.Histogram(
                x=values,
                name=name,
                opacity=0.6,
                marker_color=colour,
                histnorm="probability density",
                **({"nbinsx": 50} if bins is None else {"xbins": bins, "autobinx": False}),
            )
        )
    if x_range is not None:
        figure.update_xaxes(range=list(x_range))
    if y_max is not None:
        figure.update_yaxes(range=[0.0, 1.05 * y_max])
    if threshold is not None:
        figure.add_vline(x=threshold, line_dash="dash", line_color="#444", line_width=1)
    figure.update_layout(
        barmode="overlay",
        height=height,
        margin=dict(l=5, r=5, t=55, b=5),
        # Under the axis title: at the top it ran into the title, inside the plot it would hide bars.
        legend=dict(orientation="h", y=-0.32, x=0.5, xanchor="center", yanchor="top", font_size=11),
        title=dict(text=title, font_size=13),
        xaxis_title=dict(text=x_title, font_size=11),
        yaxis_title=dict(text="density", font_size=11),
    )
    return figure


def sweep_figure(timesteps: list[int], curves: dict[str, list[float]], score: str, names: dict[str, str]) -> go.Figure:
    """AUROC against t, one small panel per OOD set and one for their average, each with its own y-range: on one
    axis the far sets' curves, all near 100 %, hid each other."""
    from plotly.subplots import make_subplots

    series = {name.removeprefix("demo:"): 100 * np.asarray(values) for name, values in curves.items()}
    series["average"] = np.mean(list(series.values()), axis=0)
    columns = 3
    rows = -(-len(series) // columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=list(series), vertical_spacing=0.16)
    for position, (name, values) in enumerate(series.items()):
        row, column = position // columns + 1, position % columns + 1
        figure.add_trace(
            go.Scatter(
                x=timesteps,
                y=values,
                mode="lines+markers",
                name=name,
                line_color=OOD_COLOUR if name != "average" else "#333",
                hovertemplate=f"{name}<br>t = %{{x}}: AUROC %{{y:.2f}} %<extra></extra>",
                cliponaxis=False,  # points at 100 % sit on the top edge, which no axis label passes
            ),
            row=row,
            col=column,
        )
        pad = max(0.5, 0.1 * float(np.ptp(values)))
        top = min(100.0, float(values.max()) + pad)
        figure.update_yaxes(range=[max(0.0, min(float(values.min()) - pad, top - 2 * pad)), top], row=row, col=column)
    figure.update_xaxes(title_text="start timestep t", row=rows)
    figure.update_yaxes(title_text=f"AUROC % ({explorer.SCORE_LABELS[score]})", col=1)
    figure.update_annotations(font_size=12)
    figure.update_layout(height=230 * rows + 40, margin=dict(l=5, r=5, t=30, b=5), showlegend=False)
    return figure
