"""Failure cases: every error at the 95%-TPR threshold, tagged with a measured reason (the paper's Figs. 10-12)."""

import numpy as np
import pandas as pd
import streamlit as st

from dlsr_core import explorer
from dlsr_core.explorer import failures
from pages import shared, widgets

st.title("Failure cases")
st.markdown(
    "Where the detector is wrong at its working threshold (95 % of ID images accepted), and a measured reason for "
    "each error — the paper's failure categories: ID images flagged because they carry **little semantic "
    "content**, OOD images accepted because they **resemble an ID class** or **share the ID data's intensity "
    "statistics**."
)
detector, run_dir = shared.detector_or_stop()
experiment = shared.current_experiment(detector, run_dir).experiment
id_spec = experiment.id_set.spec
timestep, steps, score = widgets.sampling_controls(detector)
draws = widgets.current_draws()  # the sidebar's noise-draws control
k = st.slider("Images shown per group (most extreme first)", 4, 40, 12, step=4)

ready = shared.experiment_features(detector, experiment)
fingerprint = shared.fingerprint(run_dir)


def _statistics(spec: str, indices: tuple[int, ...]) -> dict:
    """The images' statistics, measured once per process (shared.image_statistics; warm_up may have them)."""
    if shared.image_statistics_ready(spec, indices):
        return shared.image_statistics(spec, indices)
    text = f"Measuring the image statistics of {experiment.name_of(spec)} (once)…"
    bar = st.progress(0.0, text=text)
    try:
        return shared.image_statistics(
            spec, indices, lambda done, total: bar.progress(done / max(total, 1), text=f"{text} {done:,}/{total:,}")
        )
    finally:
        bar.empty()


@st.cache_data(max_entries=16, show_spinner=False)
def _labels(spec: str, indices: tuple[int, ...], class_names):
    return explorer.set_labels(spec, indices, class_names)


@st.cache_resource(max_entries=4, show_spinner="Grouping the unlabelled ID images into clusters…")
def _clusters(run_fingerprint: str, spec: str, indices: tuple[int, ...], _features: np.ndarray) -> explorer.Clusters:
    return explorer.id_clusters(_features)


@st.cache_data(max_entries=128, show_spinner=False)
def _images(spec: str, index_tuple: tuple[int, ...]):
    return [
        image.resize((84, 84), 0) if image is not None else None for image in explorer.dataset_images(spec, index_tuple)
    ]


sets, analysed = {}, {}
bar = st.empty()
for position, (spec, all_features) in enumerate(ready.items()):
    # A large set is analysed on a stated fixed subset: each of its images is decoded (and scored) to measure it.
    features = explorer.reference_subset(all_features, explorer.ANALYSED_ROWS)
    if len(features) < len(all_features):
        analysed[spec] = len(all_features)
    bar.progress(position / len(ready), text=f"Scoring {len(features):,} images of {experiment.name_of(spec)}…")
    result = shared.set_scores(detector, fingerprint, features.dataset, features, timestep, steps, score == "lr")
    indices = tuple(int(i) for i in features.indices.numpy())
    labels, class_names = _labels(spec, indices, experiment.class_names if spec == id_spec else None)
    sets[spec] = explorer.SetData(
        result[score],
        result["stage_cos"],
        features.indices.numpy(),
        features.features.numpy(),
        _statistics(spec, indices),
        labels,
        class_names,
    )
bar.empty()
threshold = explorer.id_threshold95(sets[id_spec].scores)

clusters = None
if sets[id_spec].labels is None:  # no ID labels: clusters of the ID features stand in for the classes
    id_data = sets[id_spec]
    clusters = _clusters(fingerprint, id_spec, tuple(int(i) for i in id_data.indices), id_data.features)
    sets[id_spec] = explorer.SetData(**{**id_data.__dict__, "labels": clusters.labels, "class_names": clusters.names})
analysis = explorer.analyse_errors(id_spec, sets, threshold)
label = explorer.SCORE_LABELS[score]
missed, total_ood = sum(analysis.ood_errors.values()), sum(analysis.ood_totals.values())
st.caption(
    f"ID: {experiment.id_set.name} · {label} at t={timestep}, {steps} DDIM step(s), {draws} draw(s); 95%-TPR "
    f"threshold **{threshold:.4g}** (scores above it are called OOD)."
)
if analysed:
    st.info(
        "Large sets are analysed on a fixed random "
        f"{explorer.ANALYSED_ROWS:,} of their images (each image is decoded to measure it): "
        + ", ".join(f"{experiment.name_of(spec)} {explorer.ANALYSED_ROWS:,} of {n:,}" for spec, n in analysed.items())
        + ". Counts below, and the threshold, are of those images."
    )
columns = st.columns(2)
columns[0].metric(
    "ID images flagged as OOD",
    f"{analysis.id_errors} of {analysis.id_total}",
    help="False alarms at the threshold: about 5 % by construction of the 95%-TPR threshold.",
)
columns[1].metric(
    "OOD images accepted as ID",
    f"{missed} of {total_ood}",
    help="Missed detections at the threshold, over all OOD sets; per set below.",
)
st.dataframe(
    pd.DataFrame(
        [
            {
                "OOD set": experiment.name_of(name),
                "accepted as ID": analysis.ood_errors[name],
                "of": analysis.ood_totals[name],
                "rate %": 100 * analysis.ood_errors[name] / max(analysis.ood_totals[name], 1),
            }
            for name in analysis.ood_errors
        ]
    ),
    hide_index=True,
    column_config={"rate %": st.column_config.NumberColumn(format="%.1f")},
)

st.subheader("Why? Errors per measured category")
st.dataframe(
    pd.DataFrame(
        [
            {
                "error": count.kind,
                "category": count.category,
                "errors": count.errors,
                "share of these errors %": 100 * count.share_of_errors,
                "share of all images %": None if count.base_rate is None else 100 * count.base_rate,
                "measured as": failures.CATEGORY_HELP[count.category],
            }
            for count in analysis.counts
        ]
    ),
    hide_index=True,
    width="stretch",
    column_config={
        "share of these errors %": st.column_config.NumberColumn(format="%.0f"),
        "share of all images %": st.column_config.NumberColumn(
            format="%.0f",
            help="How common the criterion is among all ID images (ID rows) or all OOD images (OOD rows): a category "
            "explains errors only where it is more common among them than overall.",
        ),
    },
)
grouping = (
    f"the mean feature vector of each of the {len(clusters.names)} clusters of the (unlabelled) ID features, shown "
    "below"
    if clusters is not None
    else f"the mean feature vector of each class of the ID set ({experiment.id_set.name})"
)
st.caption(
    f"An error can carry several categories. Measured against the ID set's own statistics; class resemblance uses "
    f"{grouping}."
)
if clusters is not None:
    st.subheader("ID clusters (the ID set has no labels)")
    st.caption(
        "Without class labels, the ID features are grouped by k-means (cosine) into clusters that stand in for "
        'classes: "resembles ID cluster k" means an OOD image lies as close to that cluster\'s mean as a typical '
        "ID member does. The most typical images of each cluster:"
    )
    cluster_columns = st.columns(min(4, len(clusters.names)))
    for cluster, name in enumerate(clusters.names):
        rows = clusters.typical[cluster]
        positions = tuple(int(i) for i in sets[id_spec].indices[rows])
        with cluster_columns[cluster % len(cluster_columns)]:
            st.markdown(f"**{name}** ({int(np.sum(clusters.labels == cluster)):,} images)")
            st.image([image for image in _images(id_spec, positions) if image is not None], width=56)


def _caption(case: explorer.FailureCase) -> str:
    where = experiment.name_of(case.dataset)
    what = f" · {case.true_class}" if case.true_class else ""
    near = f"\nlooks like: {case.nearest_class}" if case.nearest_class else ""
    tags = ", ".join(case.categories)
    return f"{where} #{case.index}{what} · {case.score:.3g}{near}\n{tags}"


for kind, blurb in (
    (failures.ID_KIND, "ID images scored above the threshold (false alarms), highest score first"),
    (failures.OOD_KIND, "OOD images scored at or below the threshold (missed detections), lowest score first"),
):
    group = analysis.of_kind(kind)
    st.subheader(f"{kind}: {len(group)}")
    if not group:
        st.caption("None at this threshold.")
        continue
    shown = group[:k]
    st.caption(f"{blurb}; showing {len(shown)} of {len(group)}.")
    images = [_images(case.dataset, (case.index,))[0] for case in shown]
    per_row = 6
    for start in range(0, len(shown), per_row):
        columns = st.columns(per_row)
        for column, image, case in zip(
            columns, images[start : start + per_row], shown[start : start + per_row], strict=False
        ):
            if image is not None:
                column.image(image, caption=_caption(case), width="stretch")

st.subheader("All errors")
stage_count = len(analysis.cases[0].stage_cos) if analysis.cases else 0
table = pd.DataFrame(
    [
        {
            "kind": c.kind,
            "rank": c.rank,
            "set": c.dataset,
            "index": c.index,
            "class": c.true_class,
            "nearest ID class": c.nearest_class,
            "categories": ", ".join(c.categories),
            label: c.score,
            **{f"cos stage {i + 1}": v for i, v in enumerate(c.stage_cos)},
        }
        for c in analysis.cases
    ]
)
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        f"cos stage {i + 1}": st.column_config.ProgressColumn(format="%.3f", min_value=-1.0, max_value=1.0)
        for i in range(stage_count)
    },
)
st.download_button(
    "Export failure cases as CSV",
    explorer.failure_csv(
        analysis.cases,
        score,
        threshold,
        {"model_id": shared.model_id(detector, run_dir), "t": timestep, "steps": steps, "draws": draws},
    ),
    file_name=f"dlsr_failures_{score}_t{timestep}_steps{steps}_draws{draws}.csv",
    mime="text/csv",
)
