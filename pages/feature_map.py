"""Feature map: 2-D UMAP (PCA while it computes) of ID and OOD features and their reconstructions.

Hovering a point shows its image thumbnail and score. The chart is a self-contained Plotly page inside
st.iframe (Plotly's JavaScript is inlined from the installed plotly package, so no network is needed),
because Streamlit's own plotly_chart cannot show images on hover.
"""

import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dlsr_core import embedding, explorer
from pages import shared

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")  # one colour per set

st.title("Feature map (UMAP)")
detector, run_dir = shared.detector_or_stop()
timestep, steps, score = shared.sampling_controls(detector)
controls = st.columns(4)
method = controls[0].radio(
    "Projection",
    ["UMAP", "PCA"],
    horizontal=True,
    help="PCA is instant; UMAP (cosine) shows neighbourhoods and takes seconds.",
)
colour_by = controls[1].radio("Colour by", ["set", "score"], horizontal=True)
per_set = controls[2].select_slider("Images per set", [50, 100, 200, 300, 500], value=200)
with_reconstructions = controls[3].checkbox(
    "Show reconstructions", value=True, help="Also map ẑ₀: ID points stay put, OOD points move towards ID."
)

specs = [explorer.DEMO_ID_SET, *explorer.DEMO_OOD_SETS]
feature_sets = {spec: shared.features_or_stop(detector, spec) for spec in specs}
fingerprint = shared.fingerprint(run_dir)


@st.cache_data(max_entries=16, show_spinner="Reconstructing the sampled features…")
def _points(run_fingerprint, timestep, steps, score, per_set, with_reconstructions, draws) -> explorer.MapPoints:
    return explorer.map_points(
        detector,
        {k: v.features for k, v in feature_sets.items()},
        {k: v.indices.numpy() for k, v in feature_sets.items()},
        score,
        timestep,
        steps,
        per_set,
        with_reconstructions,
        draws=draws,
    )


@st.cache_data(max_entries=64, show_spinner="Making thumbnails…")
def _thumbnails(spec: str, indices: tuple[int, ...]) -> list[str]:
    return [
        explorer.thumbnail_uri(image) if image is not None else "" for image in explorer.dataset_images(spec, indices)
    ]


@st.cache_resource(max_entries=16)
def _umap_memo() -> dict:
    return {}


points = _points(fingerprint, timestep, steps, score, per_set, with_reconstructions, shared.current_draws())
# One thumbnail per (set, image); a reconstruction shows its original's picture.
thumbs, thumb_of = [], {}
for spec in specs:
    wanted = sorted({int(i) for s, i in zip(points.sets, points.indices, strict=True) if s == spec})
    for index, uri in zip(wanted, _thumbnails(spec, tuple(wanted)), strict=True):
        thumb_of[(spec, index)] = len(thumbs)
        thumbs.append(uri)


def _html(coordinates: np.ndarray, title: str) -> str:
    figure = go.Figure()
    label = explorer.SCORE_LABELS[score]
    groups = [(spec, kind) for spec in specs for kind in ("original", "reconstructed")]
    for spec, kind in groups:
        mask = np.array([s == spec and k == kind for s, k in zip(points.sets, points.kinds, strict=True)])
        if not mask.any():
            continue
        custom = [
            [thumb_of[(spec, int(i))], spec.removeprefix("demo:"), kind, int(i), float(v)]
            for i, v in zip(points.indices[mask], points.scores[mask], strict=True)
        ]
        marker = dict(
            size=6 if kind == "original" else 5,
            symbol="circle" if kind == "original" else "x",
            opacity=0.75 if kind == "original" else 0.5,
            color=PALETTE[specs.index(spec) % len(PALETTE)],
        )
        if colour_by == "score":
            marker.update(
                color=points.scores[mask],
                colorscale="Viridis",
                cmin=float(np.quantile(points.scores, 0.02)),
                cmax=float(np.quantile(points.scores, 0.98)),
                showscale=spec == specs[0] and kind == "original",
                colorbar=dict(title=label),
            )
        figure.add_trace(
            go.Scattergl(
                x=coordinates[mask, 0],
                y=coordinates[mask, 1],
                mode="markers",
                marker=marker,
                customdata=custom,
                name=f"{spec.removeprefix('demo:')} ({'ẑ₀' if kind == 'reconstructed' else 'z₀'})",
                legendgroup=spec,
                hovertemplate=f"%{{customdata[1]}} #%{{customdata[3]}} (%{{customdata[2]}})<br>"
                f"{label} = %{{customdata[4]:.4g}}<extra></extra>",
            )
        )
    figure.update_layout(
        height=540, margin=dict(l=5, r=5, t=30, b=5), title=title, template="plotly_white", legend=dict(font_size=11)
    )
    return _page(figure.to_json(), json.dumps(thumbs))


@st.cache_resource
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _page(figure_json: str, thumbs_json: str) -> str:
    return f"""<html><head><meta charset="utf-8"><script>{_plotly_js()}</script></head>
<body style="margin:0;font-family:sans-serif">
<div style="display:flex;gap:8px">
  <div id="map" style="flex:1;min-width:0"></div>
  <div id="hover" style="width:140px;font-size:12px;color:#333;padding-top:40px">Hover a point to see its image.</div>
</div>
<script>
const fig = {figure_json};
const thumbs = {thumbs_json};
Plotly.newPlot("map", fig.data, fig.layout, {{displaylogo: false, responsive: true}});
document.getElementById("map").on("plotly_hover", (event) => {{
  const c = event.points[0].customdata;
  document.getElementById("hover").innerHTML =
    `<img src="${{thumbs[c[0]]}}" width="112" height="112" style="image-rendering:pixelated;border:1px solid #ccc">`
    + `<br><b>${{c[1]}}</b> #${{c[3]}}<br>${{c[2]}}<br>score ${{Number(c[4]).toPrecision(4)}}`;
}});
</script></body></html>"""


placeholder = st.empty()
pca_coordinates = embedding.pca_2d(points.matrix)
memo_key = (fingerprint, timestep, steps, score, per_set, with_reconstructions)
if method == "PCA" or memo_key not in _umap_memo():
    with placeholder.container():
        st.iframe(
            _html(pca_coordinates, "PCA" + (" (UMAP is being computed…)" if method == "UMAP" else "")), height=560
        )
shown = "PCA"
if method == "UMAP":
    if memo_key not in _umap_memo():
        with st.spinner(f"Computing UMAP of {len(points.matrix)} points (PCA shown meanwhile)…"):
            _umap_memo()[memo_key] = embedding.umap_2d(points.matrix)
    with placeholder.container():
        st.iframe(_html(_umap_memo()[memo_key], "UMAP (cosine)"), height=560)
    shown = "UMAP"
st.caption(
    f"{shown} of {len(points.matrix)} points: {per_set} per set from {len(specs)} sets"
    f"{', originals (●) and reconstructions (×)' if with_reconstructions else ''}; "
    f"t={timestep}, {explorer.SCORE_LABELS[score]} score."
)
