"""Compare models: a second model (another run, preset or training set, or an epoch a run kept) beside the loaded one
on the loaded experiment's sets — both scores of every image, each model's AUROC, and the images they disagree on."""

import pandas as pd
import streamlit as st

from dlsr_core import explorer
from pages import gallery, shared, widgets
from pages.compare_figure import pair_scatter

CHOICE_KEY = "compare_model_b"
PER_PAGE = 12

st.title("Compare two models")
st.markdown(
    "The loaded model (**A**) beside a second one (**B**) on the same images — the sets of the loaded model's "
    "experiment: another run (another preset, backbone or training set), or an earlier epoch of a run. Each model "
    "makes its own features and scores every image at the same timestep, steps and noise draws; each judges at "
    "its own threshold (95 % of *its* ID scores accepted), as `evaluate` would judge it alone."
)
detector, run_dir = shared.detector_or_stop()
experiment = shared.current_experiment(detector, run_dir).experiment

runs = explorer.list_run_dirs()
if run_dir.resolve() not in {run.resolve() for run in runs}:
    runs.insert(0, run_dir)
choices = {
    str(choice.path): choice.label
    for choice in explorer.model_choices(runs)
    if choice.path.resolve() != run_dir.resolve()  # the loaded model itself
}
if not choices:
    st.info("There is no second model yet: train one on the **Train** page (its run lands in checkpoints/).")
    st.stop()
first_epoch = str(run_dir / "first.safetensors")
if st.session_state.get(CHOICE_KEY) not in choices:
    st.session_state[CHOICE_KEY] = first_epoch if first_epoch in choices else next(iter(choices))
st.caption(f"Model A (loaded): {explorer.model_caption(detector, run_dir).removeprefix('**Model:** ')}")
choice = st.selectbox(
    "Model B",
    list(choices),
    key=CHOICE_KEY,
    format_func=choices.get,
    help="Every run the Home page lists, its first epoch and the epochs it kept in between (runs trained on the "
    "Train page keep a few).",
)
try:
    other = shared.load_detector(choice)
except Exception as error:  # noqa: BLE001 - any unreadable model gets a message, never a traceback
    st.error(f"Model B ({choices[choice]}) cannot be loaded: {type(error).__name__}: {str(error)[:500]}")
    st.stop()

timestep, steps, score = widgets.sampling_controls(detector)
draws = widgets.current_draws()
if score not in explorer.available_scores(other):
    st.info("Model B has no first-epoch checkpoint, so it has no LR score: comparing MFsim.")
    score = "mfsim"
if timestep > other.info.config.num_timesteps:
    st.error(f"Model B has {other.info.config.num_timesteps} timesteps; choose t ≤ {other.info.config.num_timesteps}.")
    st.stop()
label = explorer.SCORE_LABELS[score]

# Each model's own features (a model of another backbone extracts its own, in the background, with progress).
ready_a = shared.experiment_features(detector, experiment)
if other.backbone != detector.backbone or other.feature_options != detector.feature_options:
    st.caption(f"Model B uses other features ({other.backbone} @ {other.input_size}px): they are extracted once.")
ready_b = shared.experiment_features(other, experiment)
specs = [spec for spec in experiment.specs if spec in ready_a and spec in ready_b]
fingerprint_a, fingerprint_b = shared.fingerprint(run_dir), shared.fingerprint(choice)
scores_a, scores_b, indices, limited = {}, {}, {}, []
bar = st.progress(0.0)
for position, spec in enumerate(specs):
    features_a = explorer.reference_subset(ready_a[spec])
    features_b = explorer.reference_subset(ready_b[spec])
    if len(features_a) < len(ready_a[spec]):
        limited.append(spec)
    rows_a, rows_b, indices[spec] = explorer.aligned_rows(features_a.indices.numpy(), features_b.indices.numpy())
    for name, model, fingerprint, features, rows, out in (
        ("A", detector, fingerprint_a, features_a, rows_a, scores_a),
        ("B", other, fingerprint_b, features_b, rows_b, scores_b),
    ):
        bar.progress(position / len(specs), text=f"Scoring {experiment.name_of(spec)} with model {name}…")
        result = shared.set_scores(
            model, fingerprint, features.dataset, features, timestep, steps, score == "lr", draws
        )
        out[spec] = result[score][rows]
bar.empty()
if len(specs) < 2 or experiment.id_set.spec not in specs:
    st.warning("Both models need the ID set and at least one OOD set; the others are still being extracted.")
    st.stop()
pair = explorer.compare_models(experiment.id_set.spec, scores_a, scores_b, indices)
if limited:
    st.info(
        "Large sets are compared on a fixed random "
        f"{explorer.REFERENCE_LIMIT:,} of their images: " + ", ".join(experiment.name_of(s) for s in limited) + "."
    )

st.subheader("AUROC on the same sets")
mean_a, mean_b = pair.mean_aurocs
columns = st.columns(3)
columns[0].metric("Mean AUROC, model A", f"{100 * mean_a:.2f} %")
columns[1].metric("Mean AUROC, model B", f"{100 * mean_b:.2f} %", delta=f"{100 * (mean_b - mean_a):+.2f} points")
columns[2].metric("Images with different verdicts", f"{len(pair.disagreements)} of {pair.images:,}")
table = pd.DataFrame(
    [
        {
            "OOD set": experiment.name_of(spec),
            "group": experiment.groups.get(spec, ""),
            "AUROC A %": 100 * a,
            "AUROC B %": 100 * b,
            "B − A (points)": 100 * (b - a),
            "A: OOD, B: ID": pair.disagreement_counts(spec)[0],
            "A: ID, B: OOD": pair.disagreement_counts(spec)[1],
        }
        for spec, (a, b) in pair.aurocs.items()
    ]
)
st.dataframe(
    table,
    hide_index=True,
    column_config={
        name: st.column_config.NumberColumn(format="%.2f") for name in ("AUROC A %", "AUROC B %", "B − A (points)")
    },
)
id_a, id_b = pair.disagreement_counts(experiment.id_set.spec)
st.caption(
    f"{label} at t={timestep}, {steps} DDIM step(s), {draws} noise draw(s). Thresholds (95 % of each model's own ID "
    f"scores accepted): A {pair.thresholds[0]:.4g}, B {pair.thresholds[1]:.4g}. On the ID set "
    f"({experiment.id_set.name}) A alone flags {id_a} and B alone flags {id_b} image(s)."
)

st.subheader(f"Score A against score B ({pair.images:,} images)")
st.plotly_chart(
    pair_scatter(scores_a, scores_b, indices, experiment.names, pair.thresholds, (label, label)),
    width="stretch",
    key="compare-scatter",
)
st.caption(
    "Each point is one image; the dashed lines are the two thresholds. Points above and right of both are called "
    "OOD by both models; in the top-left and bottom-right quadrants the two disagree (listed below)."
)

st.subheader(f"Images the two models disagree on: {len(pair.disagreements)}")
if pair.disagreements:
    st.caption("Most different first: the largest gap between the image's places among each model's ID scores.")
    window = gallery.pager(len(pair.disagreements), PER_PAGE, key="compare_page")
    cards = []
    for case in pair.disagreements[window.start : window.stop]:
        lines = (
            f"**{gallery.md(experiment.name_of(case.ref.spec))} \\#{case.ref.index}**",
            f"A: {label} `{case.score_a:.4g}` → **{case.verdict_a}** (above {explorer.percent_text(case.percent_a)} %"
            " of ID)",
            f"B: {label} `{case.score_b:.4g}` → **{case.verdict_b}** (above {explorer.percent_text(case.percent_b)} %"
            " of ID)",
        )
        cards.append(gallery.Card(gallery.set_images(case.ref.spec, (case.ref.index,))[0], lines, case.ref))
    gallery.show_cards(cards)
st.download_button(
    "Export both scores of every image as CSV",
    explorer.pair_csv(
        scores_a,
        scores_b,
        indices,
        pair,
        experiment.names,
        {
            "model_a": shared.model_id(detector, run_dir),
            "model_b": explorer.model_id(other),
            "score": score,
            "t": timestep,
            "steps": steps,
            "draws": draws,
        },
    ),
    file_name=f"dlsr_two_models_{score}_t{timestep}.csv",
    mime="text/csv",
)
