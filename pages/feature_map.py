"""Feature map: 2-D UMAP (PCA while it computes) of ID and OOD features and their reconstructions.

Hovering a point names its image and score; a lasso, a box or a click selects points, and the selected images appear
below with their scores, verdicts and layer profiles, one click away from How DLSR works, and export as CSV
(explorer.map_selection maps the selection event back to the images). UMAP runs in a background worker process
(dlsr_core.embedding.BackgroundProjector): the page never waits for it, it shows PCA meanwhile.
"""

import numpy as np
import streamlit as st
import torch

from dlsr_core import embedding, explorer
from pages import gallery, shared, widgets
from pages.map_figure import map_figure

SELECTION_PER_PAGE = 12
KIND_WORDS = {"original": "its features", "reconstructed": "its reconstruction"}

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
def _files(spec: str, indices: tuple[int, ...]) -> list[str]:
    return explorer.image_files(spec, indices)


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
values = points.scores[score]
# Placed among all ID reference images, against the threshold every other page uses (not the ID points shown).
id_reference_features = explorer.reference_subset(feature_sets[experiment.id_set.spec])
reference = shared.reference_set(detector, run_dir, id_reference_features, timestep, steps, score)
id_reference = reference[score]
threshold = explorer.id_threshold95(id_reference)
id_percentiles = [explorer.percent_text(p) for p in explorer.percent_below(id_reference, values)]


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
traces = explorer.map_traces(points, specs)
event = st.plotly_chart(
    map_figure(
        traces,
        points,
        coordinates,
        experiment.names,
        values,
        id_percentiles,
        explorer.SCORE_LABELS[score],
        colour_by == "score rank",
        title,
    ),
    width="stretch",
    key="feature-map",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
)
selected = explorer.selected_rows(traces, event.selection.points if event else [])

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
    f"{', features (filled symbols) and their reconstructions (open symbols)' if with_reconstructions else ''}; "
    f"t={timestep}, {steps} DDIM step(s), {draws} noise draw(s); colour: "
    f"{'set' if colour_by == 'set' else score_label + ' rank'}; hover: {score_label}. Positions depend only on the "
    f"features{' and their reconstructions' if with_reconstructions else ''}, never on the score: changing the score "
    "recolours the same map."
)


st.subheader("Selected images")
if not len(selected):
    st.caption(
        "Drag a lasso around points on the map (the chart's toolbar also offers a box), or click one point: the "
        "selected images appear here with their scores, verdicts and layer profiles, and can be exported or opened "
        "on another page. Double-click the map to clear the selection."
    )
else:
    images = explorer.selected_images(points, selected, score, id_reference, threshold)
    ood_count = sum(image.verdict == "OOD" for image in images)
    count_by_set: dict[str, int] = {}
    for image in images:
        count_by_set[image.ref.spec] = count_by_set.get(image.ref.spec, 0) + 1
    st.markdown(
        f"**{len(images)} image(s)** from {len(selected)} selected point(s): {ood_count} OOD, "
        f"{len(images) - ood_count} ID at the threshold {score_label} = {threshold:.4g} — "
        + ", ".join(f"{gallery.md(experiment.name_of(spec))} {count}" for spec, count in count_by_set.items())
    )
    file_of = {}
    for spec in count_by_set:
        wanted = tuple(image.ref.index for image in images if image.ref.spec == spec)
        file_of.update({(spec, i): file for i, file in zip(wanted, _files(spec, wanted), strict=True)})
    files = [file_of[(image.ref.spec, image.ref.index)] for image in images]
    st.download_button(
        f"Export the {len(images)} selected images as CSV",
        explorer.selection_csv(
            images,
            experiment.names,
            files,
            score,
            threshold,
            {"model_id": shared.model_id(detector, run_dir), "t": timestep, "steps": steps, "draws": draws},
        ),
        file_name=f"dlsr_map_selection_{score}_t{timestep}.csv",
        mime="text/csv",
    )
    window = gallery.pager(len(images), SELECTION_PER_PAGE, key="map_selection_page")
    shown_images = images[window.start : window.stop]
    features = torch.from_numpy(points.matrix[[image.row for image in shown_images]])
    profiles = explorer.image_profiles(detector, features, reference, score, timestep, steps, draws)
    cards = []
    for image, profile in zip(shown_images, profiles, strict=True):
        badge = {"OOD": ":red-badge[OOD]", "ID": ":green-badge[ID]"}.get(image.verdict, ":gray-badge[no verdict]")
        lines = (
            f"**{gallery.md(experiment.name_of(image.ref.spec))} \\#{image.ref.index}** {badge}",
            f"{score_label} = `{image.score:.4g}` · above {explorer.percent_text(image.id_percentile)} % of ID",
            ":gray[selected: " + " and ".join(KIND_WORDS[kind] for kind in image.kinds) + "]",
        )
        picture = gallery.set_images(image.ref.spec, (image.ref.index,))[0]
        cards.append(gallery.Card(picture, lines, image.ref, profile, explorer.verdict_note(profile, image.verdict)))
    gallery.show_cards(cards)

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
