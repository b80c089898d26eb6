"""Feature map: 2-D UMAP (PCA while it computes) of ID and OOD features and their reconstructions.

Hovering a point shows its image thumbnail and score. The chart is a self-contained Plotly page inside
st.iframe (Plotly's JavaScript is inlined from the installed plotly package, so no network is needed),
because Streamlit's own plotly_chart cannot show images on hover. UMAP runs in a background worker process
(dlsr_core.embedding.BackgroundProjector): the page never waits for it, it shows PCA meanwhile.
"""

import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dlsr_core import embedding, explorer
from pages import shared, widgets

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")  # one colour per set

st.title("Feature map (UMAP)")
detector, run_dir = shared.detector_or_stop()
experiment = shared.current_experiment(detector, run_dir).experiment
timestep, steps, score = widgets.sampling_controls(detector)
draws = widgets.current_draws()  # the sidebar's noise-draws control
controls = st.columns(4)
method = controls[0].radio(
    "Projection",
    ["UMAP", "PCA"],
    horizontal=True,
    help="PCA is instant; UMAP (cosine) shows neighbourhoods. It is computed in the background, PCA meanwhile.",
)
colour_by = controls[1].radio(
    "Colour by",
    ["set", "score rank"],
    horizontal=True,
    help="Score rank: each point's rank among all shown points (0 = most ID-like, 100 = most OOD-like), so one "
    "far-off set cannot take the whole colour scale.",
)
per_set = controls[2].select_slider("Images per set", [50, 100, 200, 300, 500], value=explorer.DEFAULT_MAP_PER_SET)
with_reconstructions = controls[3].checkbox(
    "Show reconstructions", value=True, help="Also map ẑ₀: ID points stay put, OOD points move towards ID."
)

feature_sets = shared.experiment_features(detector, experiment)
specs = list(feature_sets)  # the ID set first, then the OOD sets that are ready
fingerprint = shared.fingerprint(run_dir)
sets_key = (experiment.key, *specs)


# cache_resource, not cache_data: the points (a few MB) are read-only here, so every rerun shares one copy.
@st.cache_resource(max_entries=16, show_spinner="Reconstructing the sampled features…")
def _points(run_fingerprint, sets_key, timestep, steps, draws, per_set, with_reconstructions) -> explorer.MapPoints:
    return explorer.map_points(
        detector,
        {k: v.features for k, v in feature_sets.items()},
        {k: v.indices.numpy() for k, v in feature_sets.items()},
        timestep,
        steps,
        per_set,
        with_reconstructions,
        draws=draws,
    )


@st.cache_data(max_entries=64, show_spinner=False)
def _thumbnails(spec: str, indices: tuple[int, ...]) -> list[str]:
    return [
        explorer.thumbnail_uri(image) if image is not None else "" for image in explorer.dataset_images(spec, indices)
    ]


@st.cache_resource
def _projector() -> embedding.BackgroundProjector:
    return embedding.BackgroundProjector()


@st.cache_resource(max_entries=64)
def _shipped(setting: explorer.MapSetting) -> np.ndarray | None:
    return explorer.load_shipped_projection(setting)


@st.cache_resource(max_entries=16, show_spinner=False)
def _pca(run_fingerprint, sets_key, timestep, steps, draws, per_set, with_reconstructions) -> np.ndarray:
    return embedding.pca_2d(
        _points(run_fingerprint, sets_key, timestep, steps, draws, per_set, with_reconstructions).matrix
    )


points = _points(fingerprint, sets_key, timestep, steps, draws, per_set, with_reconstructions)
setting = explorer.map_setting(
    shared.model_id(detector, run_dir),
    {spec: len(feature_sets[spec]) for spec in specs},
    per_set,
    with_reconstructions,
    timestep,
    steps,
    draws,
)
# One thumbnail per (set, image); a reconstruction shows its original's picture.
thumbs, thumb_of = [], {}
bar = st.empty()  # decoding a few hundred large images per set takes seconds: say how far it is
for position, spec in enumerate(specs):
    bar.progress(position / len(specs), text=f"Making hover thumbnails: {experiment.name_of(spec)}…")
    wanted = sorted({int(i) for s, i in zip(points.sets, points.indices, strict=True) if s == spec})
    for index, uri in zip(wanted, _thumbnails(spec, tuple(wanted)), strict=True):
        thumb_of[(spec, index)] = len(thumbs)
        thumbs.append(uri)
bar.empty()

values = points.scores[score]
id_mask = points.mask(experiment.id_set.spec, "original")
ranks = explorer.rank_percentiles(values)
# Placed among all ID reference images, against the threshold every other page uses (not the ID points shown).
id_reference_features = explorer.reference_subset(feature_sets[experiment.id_set.spec])
id_reference = shared.reference_scores(detector, run_dir, id_reference_features, timestep, steps, score)
threshold = explorer.id_threshold95(id_reference)
id_percentiles = [explorer.percent_text(p) for p in explorer.percent_below(id_reference, values)]


def _html(coordinates: np.ndarray, title: str) -> str:
    figure = go.Figure()
    label = explorer.SCORE_LABELS[score]
    groups = [(spec, kind) for spec in specs for kind in ("original", "reconstructed")]
    first_trace = True
    for spec, kind in groups:
        mask = points.mask(spec, kind)
        if not mask.any():
            continue
        custom = [
            [thumb_of[(spec, int(i))], experiment.name_of(spec), kind, int(i), float(v), id_percentiles[row]]
            for row, i, v in zip(np.flatnonzero(mask), points.indices[mask], values[mask], strict=True)
        ]
        marker = dict(
            size=6 if kind == "original" else 5,
            symbol="circle" if kind == "original" else "x",
            opacity=0.75 if kind == "original" else 0.5,
            color=PALETTE[specs.index(spec) % len(PALETTE)],
        )
        if colour_by == "score rank":
            marker.update(
                color=ranks[mask],
                colorscale="Viridis",
                cmin=0.0,
                cmax=100.0,
                showscale=first_trace,
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
            first_trace = False
        figure.add_trace(
            go.Scattergl(
                x=coordinates[mask, 0],
                y=coordinates[mask, 1],
                mode="markers",
                marker=marker,
                customdata=custom,
                name=f"{experiment.name_of(spec)} ({'ẑ₀' if kind == 'reconstructed' else 'z₀'})",
                legendgroup=spec,
                hovertemplate=f"%{{customdata[1]}} #%{{customdata[3]}} (%{{customdata[2]}})<br>"
                f"{label} = %{{customdata[4]:.4g}}, above %{{customdata[5]}} % of ID images<extra></extra>",
            )
        )
    figure.update_layout(
        height=540,
        margin=dict(l=5, r=5, t=30, b=70 if colour_by == "score rank" else 5),
        title=title,
        template="plotly_white",
        legend=dict(font_size=11, x=1.02, y=1.0, xanchor="left"),
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
    + `<br><b>${{c[1]}}</b> #${{c[3]}}<br>${{c[2]}}<br>score ${{Number(c[4]).toPrecision(4)}}`
    + `<br>above ${{c[5]}} % of ID`;
}});
</script></body></html>"""


coordinates, shown, waiting = None, "PCA", False
if method == "UMAP":
    coordinates = _shipped(setting)
    if coordinates is None:
        projector = _projector()
        projector.submit(setting, points.matrix)  # no-op when this setting is running or done
        projection = projector.get(setting)
        if projection is not None and projection.status == "done":
            coordinates = projection.coordinates
        elif projection is not None and projection.status == "failed":
            st.warning(f"UMAP failed ({projection.error}); showing PCA.")
        else:
            waiting = True
    else:
        _projector().warm()  # compile UMAP in the background now, so the next setting answers in seconds
    if coordinates is not None:
        shown = "UMAP"
if coordinates is None:
    coordinates = _pca(fingerprint, sets_key, timestep, steps, draws, per_set, with_reconstructions)
title = {"UMAP": "UMAP (cosine)", "PCA": "PCA"}[shown] + (" — UMAP is being computed…" if waiting else "")
st.iframe(_html(coordinates, title), height=560)

if waiting:

    @st.fragment(run_every=1.0)
    def _wait_for_umap() -> None:
        projection = _projector().get(setting)
        if projection is None or projection.status != "running":
            st.rerun()  # a full rerun draws the map; this fragment then no longer exists, so polling stops
        st.caption(
            f"UMAP of {len(points.matrix)} points is being computed in the background "
            f"({projection.seconds:.0f} s; the first one in a session also compiles UMAP, about 15 s). "
            "PCA is shown meanwhile."
        )

    _wait_for_umap()

score_label = explorer.SCORE_LABELS[score]
st.caption(
    f"{shown} of {len(points.matrix)} points: {per_set} per set from {len(specs)} sets"
    f"{', originals (●) and reconstructions (×)' if with_reconstructions else ''}; "
    f"t={timestep}, {steps} DDIM step(s), {draws} noise draw(s); colour: "
    f"{'set' if colour_by == 'set' else score_label + ' rank'}; hover: {score_label}. Positions depend only on the "
    f"features{' and their reconstructions' if with_reconstructions else ''}, never on the score: changing the score "
    "recolours the same map."
)

inside = explorer.share_among_id(coordinates, points.sets, points.kinds, experiment.id_set.spec)
rows = []
for spec in specs[1:]:
    originals = points.mask(spec, "original")
    rows.append(
        {
            "OOD set": experiment.name_of(spec),
            f"inside the ID cluster on this {shown} map": f"{100 * inside.get(spec, 0.0):.0f} %",
            f"flagged OOD by {explorer.SCORE_LABELS[score]}": f"{100 * np.mean(values[originals] > threshold):.0f} %",
        }
    )
st.subheader("Why can a set sit inside the ID cluster and still be detected?")
st.markdown(
    f"The map squeezes the {points.matrix.shape[1]} numbers of each feature vector into two and keeps only *which "
    "points are neighbours overall*. DLSR does not score that. It noises each vector a little, lets the diffusion "
    "model rebuild it, and compares the rebuilt vector with the original **stage by stage** (from edges and "
    "colour in stage 1 to object shape in the last). A near-OOD image (an inverted or rotated ID image, say) keeps "
    "much of an ID image's overall features, so the map can put it among the ID points, while some of its stages "
    "do not come back — and that per-stage failure is what the score measures. The table puts numbers on it for "
    "the map above."
)
st.dataframe(rows, hide_index=True)
st.caption(
    "Inside the ID cluster: the point's nearest ID point on this map is no farther than the ID points' own nearest "
    f"neighbours (95th percentile). Flagged: score above the 95 %-TPR threshold of all {len(id_reference):,} ID "
    f"reference images ({threshold:.4g}, the threshold of every page)."
)
