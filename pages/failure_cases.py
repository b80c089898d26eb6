"""Failure cases: every error at the 95%-TPR threshold, tagged with a measured reason (the paper's Figs. 10-12)."""

import numpy as np
import pandas as pd
import streamlit as st

from dlsr_core import explorer
from dlsr_core.explorer import failures
from pages import gallery, shared, widgets

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
# st.table wraps long text (the criteria) instead of cutting it off.
st.table(
    pd.DataFrame(
        [
            {
                "error": count.kind,
                "category": count.category,
                "errors": count.errors,
                "share of these errors": f"{100 * count.share_of_errors:.0f} %",
                "share of all images": "—" if count.base_rate is None else f"{100 * count.base_rate:.0f} %",
                "measured as": failures.CATEGORY_HELP[count.category],
            }
            for count in analysis.counts
        ]
    ).set_index("error")
)
st.caption(
    "Share of all images: how common the criterion is among all ID images (ID rows) or all OOD images (OOD rows); a "
    "category explains errors only where it is more common among them than overall."
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
            st.image([gallery.thumbnail(i) for i in gallery.set_images(id_spec, positions) if i is not None], width=56)


# Browse every error -------------------------------------------------------------------------------------------------
st.subheader("Browse the errors")
cases = analysis.cases
filters = st.columns([3, 3, 3, 2])
set_options = [spec for spec in sets if any(case.dataset == spec for case in cases)]
# An empty filter keeps everything (a list of every option would fill the box with chips).
chosen_sets = filters[0].multiselect(
    "Sets", set_options, format_func=experiment.name_of, key="failure_sets", placeholder="all sets"
)
category_options = [name for name in failures.CATEGORY_HELP if any(name in case.categories for case in cases)]
chosen_categories = filters[1].multiselect(
    "Categories", category_options, key="failure_categories", placeholder="all categories"
)
class_options = sorted({explorer.id_class_of(case) for case in cases} - {None})
chosen_classes = filters[2].multiselect(
    "ID class",
    class_options,
    key="failure_classes",
    placeholder="all classes" if class_options else "no ID labels",
    help="An ID error's own class; for an OOD error, the ID class it resembles most (nearest class mean).",
    disabled=not class_options,
)
per_page = filters[3].selectbox("Per page", [6, 12, 24, 48], index=1, key="failure_per_page")
shown = explorer.filter_cases(
    cases, set(chosen_sets) or None, set(chosen_categories) or None, set(chosen_classes) or None
)


def _card(case: explorer.FailureCase, image) -> gallery.Card:
    own = f" · {gallery.md(case.true_class)}" if case.true_class else ""
    lines = [
        f"**{gallery.md(experiment.name_of(case.dataset))} \\#{case.index}**{own}",
        f"{label} {case.score:.4g} · rank {case.rank}",
    ]
    if case.nearest_class:
        lines.append(f"looks like: {gallery.md(case.nearest_class)}")
    lines.append(f":gray[{gallery.md(', '.join(case.categories))}]")
    return gallery.Card(image, tuple(lines), explorer.ImageRef.of_set(case.dataset, case.index))


for kind, blurb in (
    (failures.ID_KIND, "ID images scored above the threshold (false alarms), highest score first"),
    (failures.OOD_KIND, "OOD images scored at or below the threshold (missed detections), lowest score first"),
):
    group = [case for case in shown if case.kind == kind]
    total = len(analysis.of_kind(kind))
    st.markdown(f"#### {kind}: {len(group)}" + (f" of {total} (filtered)" if len(group) < total else ""))
    if not group:
        st.caption("None at this threshold." if not total else "None with these filters.")
        continue
    st.caption(f"{blurb}.")
    window = gallery.pager(len(group), per_page, key=f"failure_page_{kind}")
    page_cases = group[window.start : window.stop]
    images = {}
    for spec in dict.fromkeys(case.dataset for case in page_cases):
        wanted = tuple(case.index for case in page_cases if case.dataset == spec)
        images.update({(spec, i): image for i, image in zip(wanted, gallery.set_images(spec, wanted), strict=True)})
    gallery.show_cards([_card(case, images[(case.dataset, case.index)]) for case in page_cases])

st.subheader("All errors" + (f" ({len(shown)} with these filters)" if len(shown) < len(cases) else ""))
stage_count = len(cases[0].stage_cos) if cases else 0
table = pd.DataFrame(
    [
        {
            "kind": c.kind,
            "rank": c.rank,
            "set": experiment.name_of(c.dataset),
            "index": c.index,
            "class": c.true_class,
            "nearest ID class": c.nearest_class,
            "categories": ", ".join(c.categories),
            label: c.score,
            **{f"cos stage {i + 1}": v for i, v in enumerate(c.stage_cos)},
        }
        for c in shown
    ]
)
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        **gallery.text_columns(table, ("kind", "set", "class", "nearest ID class", "categories")),
        **{
            f"cos stage {i + 1}": st.column_config.ProgressColumn(format="%.3f", min_value=-1.0, max_value=1.0)
            for i in range(stage_count)
        },
    },
)
st.download_button(
    f"Export these {len(shown)} failure cases as CSV",
    explorer.failure_csv(
        shown,
        score,
        threshold,
        {"model_id": shared.model_id(detector, run_dir), "t": timestep, "steps": steps, "draws": draws},
    ),
    file_name=f"dlsr_failures_{score}_t{timestep}_steps{steps}_draws{draws}.csv",
    mime="text/csv",
)
