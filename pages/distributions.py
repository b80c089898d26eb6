"""Score distributions: ID vs OOD histograms, training's effect (Fig. 3), the timestep sweep (Fig. 4), and the
AUROC / FPR95 table of every method.

Scores are computed lazily — only for the methods shown, once per setting (kept for the session's process), with
a progress bar — and costly settings (more DDIM steps or draws) score a fixed random subset of each set unless the
user asks for all images, so that a widget change answers within a few seconds on a laptop CPU.
"""

import numpy as np
import pandas as pd
import streamlit as st

from dlsr_core import explorer
from dlsr_core.metrics import ood_metrics
from pages import distribution_figures, shared, widgets

BASELINES = ["knn", "mahalanobis"]

st.title("Score distributions")
detector, run_dir = shared.detector_or_stop()
experiment = shared.current_experiment(detector, run_dir).experiment
id_spec, training_set = experiment.id_set.spec, experiment.training_set
timestep, steps, _ = widgets.sampling_controls(detector, with_score=False)
draws = widgets.current_draws()  # the sidebar's noise-draws control
fingerprint = shared.fingerprint(run_dir)
dlsr_names = explorer.available_scores(detector)
options = dlsr_names + BASELINES
chosen = st.multiselect(
    "Methods in the table and histograms",
    options,
    default=options,
    format_func=lambda name: explorer.SCORE_LABELS.get(name, name),
    help="LR runs a second model (the first-epoch checkpoint), so it doubles the scoring time.",
)
# The comparison's models (the pixel DDPM needs diffusers: about 2 s to import) are loaded only when asked for.
added, comparison_baselines = [], None
if st.toggle(
    "Compare with the paper's other methods",
    key="distributions_compare",
    help="Pixel DDPM, feature autoencoder, MSP, energy, DICE, ASH-S, ReAct, ViM. Their models load once per app.",
):
    comparison_baselines = shared.comparison_baselines()
    # Offered only where trained on inputs made like this model's (backbone, features) and on its training set.
    addable, other_data = explorer.baselines_for_experiment(
        explorer.addable_methods(detector, comparison_baselines), comparison_baselines, training_set
    )
    added = st.multiselect(
        "Add methods from the paper's comparison",
        addable,
        default=[],
        format_func=lambda name: explorer.METHOD_LABELS.get(name, name),
        help="Pixel-level diffusion, a feature autoencoder and classifier-based detectors (pytorch-ood), as in "
        "`python -m benchmarks.compare`. Each is computed once per model when first added; they do not depend on "
        "t, steps or draws. Classifier-based methods need the ID class labels; DLSR does not.",
    )
    if comparison_baselines.problems:
        st.caption(
            "Not offered (their files could not be loaded): "
            + "; ".join(f"{kind}: {reason}" for kind, reason in comparison_baselines.problems.items())
        )
    if other_data:
        st.caption(
            "Not offered (trained on other data than this model): "
            + "; ".join(f"{explorer.METHOD_LABELS.get(name, name)}: {why}" for name, why in other_data.items())
        )
if not chosen and not added:
    st.info("Choose at least one method.")
    st.stop()

ready = shared.experiment_features(detector, experiment)
id_features = ready[id_spec]
ood_features = {spec: ready[spec] for spec in experiment.groups if spec in ready}
if not ood_features:
    st.info(
        "This model's experiment has no OOD set ready to compare with its ID set yet: add OOD sets on the "
        "**Experiment / data** page (or wait for their features, above)."
    )
    st.stop()
groups = {spec: experiment.groups[spec] for spec in ood_features}
all_features = {id_spec: id_features.features, **{k: v.features for k, v in ood_features.items()}}
sets_key = (experiment.key, *all_features)  # every memo below follows the experiment's sets


@st.cache_resource
def _memo() -> dict:
    """Process-wide results per setting, filled outside st.cache_* so that progress bars are live, not replayed."""
    return {}


def _memoised(key: tuple, label: str, compute):
    memo = _memo()
    if key not in memo:
        bar = st.progress(0.0, text=label)
        try:
            memo[key] = compute(lambda done, total, what: bar.progress(done / max(total, 1), text=f"{label} {what}"))
        finally:  # no progress bar left standing beside an error
            bar.empty()
        while len(memo) > 96:
            memo.pop(next(iter(memo)))
    return memo[key]


@st.cache_data(show_spinner=False, ttl=60)
def _describe(spec: str) -> explorer.SetInfo:
    return explorer.describe_set(spec)


# --- DLSR scores at this setting: the costly part, bounded by a work budget ---
with_lr = "lr" in chosen
sizes = {name: len(matrix) for name, matrix in all_features.items()}
passes = steps * draws * (2 if with_lr and detector.has_early else 1)
setting = (fingerprint, sets_key, timestep, steps, draws)
score_all = st.session_state.get("distributions_all_rows") == setting
rows = None if score_all else explorer.budget_rows(sizes, passes)
if rows is None:  # every image: the scores every page shares (shared.set_scores; warm_up has the default's)
    with_lr = with_lr and detector.has_early
    feature_sets = {id_spec: id_features, **ood_features}
    all_ready = all(shared.set_scores_ready(fingerprint, s, timestep, steps, with_lr, draws) for s in feature_sets)
    bar = None if all_ready else st.progress(0.0, text="Scoring the experiment's sets:")
    per_set = {}
    for position, (spec, features) in enumerate(feature_sets.items()):
        if bar is not None:
            text = f"Scoring the experiment's sets: {experiment.name_of(spec)}"
            bar.progress(position / len(feature_sets), text=text)
        per_set[spec] = shared.set_scores(detector, fingerprint, spec, features, timestep, steps, with_lr, draws)
    if bar is not None:
        bar.empty()
    dlsr = explorer.dlsr_method_scores(per_set, with_lr)
else:
    dlsr = _memoised(
        ("dlsr", *setting, with_lr),
        "Scoring the experiment's sets:",
        lambda progress: explorer.dlsr_methods(
            detector,
            all_features,
            timestep,
            steps,
            draws,
            with_lr=with_lr,
            rows=rows,
            progress=progress,
            names=experiment.names,
        ),
    )

# --- Baselines: fitted once per model (they do not depend on t, steps or draws) ---
# Stored once per model and data (explorer.stored_scores): the training features are read only to fit them.
baselines, fitted_on_train = [], True
if any(name in chosen for name in BASELINES):
    in_memory = shared.features_in_memory(detector, training_set)  # refit once the button's extraction is done
    baselines, fitted_on_train = _memoised(
        ("baselines", fingerprint, sets_key, in_memory),
        "Fitting k-NN and Mahalanobis:",
        lambda progress: explorer.distance_scores(
            shared.model_id(detector, run_dir),
            all_features,
            id_spec,
            tuple(detector.stage_dims),
            training_set,
            lambda: None if (train := shared.ready_features(detector, training_set)) is None else train.features,
            progress=progress,
        ),
    )

# --- Methods of the paper's comparison: one at a time, once per model ---
compared = []
for name in added:
    try:
        comparison = _memoised(
            ("compared", fingerprint, sets_key, name),
            f"{explorer.METHOD_LABELS.get(name, name)}:",
            lambda progress, name=name: explorer.compare_methods(
                detector,
                [name],
                id_spec,
                {id_spec: id_features, **ood_features},
                baselines=comparison_baselines,
                progress=lambda what: progress(0, 1, what),
            ),
        )
    except (ValueError, OSError, RuntimeError) as error:  # MissingInputError is a ValueError
        if isinstance(error, RuntimeError) and not shared.weights_unavailable(error):
            raise
        st.error(f"{explorer.METHOD_LABELS.get(name, name)} could not be scored: {error}")
        continue
    compared += comparison.method_scores()

evaluation = explorer.evaluate_methods(
    id_spec,
    groups,
    [method for method in dlsr + baselines if method.name in chosen] + compared,
    {"model_id": shared.model_id(detector, run_dir), "t": timestep, "steps": steps, "draws": draws, "seed": 0},
    names=experiment.names,
)
methods = [name for name in [*chosen, *added] if name in evaluation.methods]
if not methods:
    st.warning("None of the chosen methods could be scored (see the messages above); choose another method.")
    st.stop()
st.caption(
    f"ID: {experiment.id_set.name} ({id_spec}) · model {evaluation.settings['model_id']} · t={timestep}, "
    f"{steps} DDIM step(s), {draws} noise draw(s)"
)
if rows is not None:
    subset = sum(len(r) for r in rows.values())
    st.info(
        f"At {steps} DDIM step(s) × {draws} draw(s){' with LR' if passes > steps * draws else ''}, the DLSR scores "
        f"use a fixed random {subset:,} of the {sum(sizes.values()):,} images (the same share of every set) so "
        "that the page answers within seconds."
    )
    if st.button("Score all images at this setting", help="Runs once per setting with a progress bar, then is kept."):
        st.session_state["distributions_all_rows"] = setting
        st.rerun()

# --- Views ---
view = st.radio(
    "Show",
    ["ID vs each OOD set", "First vs last epoch (paper Fig. 3)", "Timestep sweep (paper Fig. 4)"],
    horizontal=True,
    key="distributions_view",
)


if view == "ID vs each OOD set":
    histogram_method = st.selectbox(
        "Histogram method",
        methods,
        format_func=lambda name: evaluation.methods[name].label,
        index=methods.index("mfsim") if "mfsim" in methods else 0,
    )
    entry = evaluation.methods[histogram_method]
    id_scores = evaluation.scores(histogram_method, id_spec)
    threshold = explorer.id_threshold95(id_scores)
    columns = st.columns(3)
    for position, spec in enumerate(groups):
        metric = evaluation.metric(histogram_method, spec)
        figure = distribution_figures.histogram(
            id_scores,
            evaluation.scores(histogram_method, spec),
            f"{experiment.name_of(spec)} ({groups[spec]})<br>AUROC {100 * metric.auroc:.1f}% · "
            f"FPR95 {100 * metric.fpr95:.1f}%",
            f"{entry.label} score (higher = more OOD)",
            threshold,
        )
        columns[position % 3].plotly_chart(
            figure, width="stretch", key=f"hist-{spec}", config={"displayModeBar": False}
        )
    st.caption(
        f"Blue: the {len(id_scores):,} ID images; red: the OOD set. Dashed line: the 95%-TPR threshold "
        f"({threshold:.4g}) — images to its right are called OOD."
    )

elif view == "First vs last epoch (paper Fig. 3)":
    st.markdown(
        "The paper's Figure 3: the same images scored by the model after an **earlier** training epoch and after its "
        "**last**. Training on ID features teaches the model to rebuild them, so ID scores fall. OOD features were "
        "never trained on: what detects them is whether their scores fall *less* — the sentence under the two "
        "panels reads what this model did. Both panels share their axes and their bins."
    )
    checkpoints = explorer.epoch_checkpoints(detector)
    if len(checkpoints) < 2:
        st.info("This run kept only one epoch (no first.safetensors), so there is nothing to compare.")
    else:
        columns = st.columns(3)
        fig3_score = columns[0].selectbox(
            "Score", ["mfsim", "mse"], format_func=lambda name: explorer.SCORE_LABELS[name], key="fig3_score"
        )
        fig3_set = columns[1].selectbox(
            "OOD set",
            ["all OOD sets", *groups],
            format_func=lambda name: name if name == "all OOD sets" else experiment.name_of(name),
            key="fig3_set",
        )
        earlier = checkpoints[:-1]
        if len(earlier) > 1:
            picked = columns[2].select_slider(
                "Earlier epoch",
                [c.epoch for c in earlier],
                value=earlier[0].epoch,
                help="Epochs kept by this run (runs trained on the Train page keep a few in between).",
            )
            before = next(c for c in earlier if c.epoch == picked)
        else:
            before = earlier[0]
            columns[2].caption(f"Saved epochs: {', '.join(str(c.epoch) for c in checkpoints)}.")
        final_scores = next(m for m in dlsr if m.name == fig3_score).scores
        early_scores = _memoised(
            ("epoch", *setting, str(before.path), fig3_score, with_lr, rows is None),  # the same rows as `dlsr`
            f"Scoring with the epoch-{before.epoch} model:",
            lambda progress: explorer.epoch_scores(
                explorer.detector_at(detector, before), all_features, fig3_score, timestep, steps, draws, rows
            ),
        )
        ood_sets = list(groups) if fig3_set == "all OOD sets" else [fig3_set]
        panels = [
            (checkpoint, scores[id_spec], np.concatenate([scores[name] for name in ood_sets]))
            for checkpoint, scores in ((before, early_scores), (checkpoints[-1], final_scores))
        ]
        every = np.concatenate([np.concatenate([id_scores, ood_scores]) for _, id_scores, ood_scores in panels])
        shared_range = (float(every.min()), float(every.max()) or 1.0)
        edges = np.linspace(*shared_range, 51)
        tallest = max(
            float(np.histogram(values, bins=edges, density=True)[0].max())
            for _, id_scores, ood_scores in panels
            for values in (id_scores, ood_scores)
        )
        summary = []
        for column, (checkpoint, id_scores, ood_scores) in zip(st.columns(2), panels, strict=True):
            auroc = ood_metrics(id_scores, ood_scores).auroc
            summary.append(explorer.EpochSummary(checkpoint.epoch, np.median(id_scores), np.median(ood_scores), auroc))
            column.plotly_chart(
                distribution_figures.histogram(
                    id_scores,
                    ood_scores,
                    f"after epoch {checkpoint.epoch} · AUROC {100 * auroc:.1f}%",
                    f"{explorer.SCORE_LABELS[fig3_score]} score (higher = more OOD)",
                    explorer.id_threshold95(id_scores),
                    height=340,
                    x_range=shared_range,
                    y_max=tallest,
                ),
                width="stretch",
                key=f"fig3-{checkpoint.epoch}",
                config={"displayModeBar": False},
            )
        st.markdown(explorer.training_effect(explorer.SCORE_LABELS[fig3_score], *summary))
        st.caption(
            "Same t, steps, draws and images in both panels; medians over the images shown; dashed lines: each "
            "model's own 95%-TPR threshold."
        )

else:
    with st.form("sweep"):
        form_columns = st.columns(3)
        sweep_timesteps = form_columns[0].multiselect(
            "Timesteps", list(range(1, widgets.MAX_TIMESTEP + 1)), default=[1, 2, 3, 5, 8, 10, 15, 20]
        )
        sweep_score = form_columns[1].selectbox(
            "Score", dlsr_names, index=dlsr_names.index("mfsim"), format_func=lambda s: explorer.SCORE_LABELS[s]
        )
        per_set = form_columns[2].number_input(
            "Images per set", 50, 2000, 300, step=50, help="A random subset of each set keeps the sweep quick."
        )
        run_sweep = st.form_submit_button("Run sweep")
    sweep_key = (fingerprint, tuple(sorted(sweep_timesteps)), sweep_score, int(per_set), steps, draws, sets_key)
    if run_sweep and sweep_timesteps:
        ordered = sorted(sweep_timesteps)
        _memoised(
            ("sweep", *sweep_key),
            "Sweeping timesteps:",
            lambda progress: explorer.sweep(
                detector,
                id_features.features,
                {k: v.features for k, v in ood_features.items()},
                ordered,
                sweep_score,
                steps=steps,
                max_per_set=int(per_set),
                progress=lambda done, total: progress(done, total, f"t = {ordered[done - 1]} done"),
                draws=draws,
            ),
        )
        st.session_state["sweep_key"] = sweep_key
    shown = st.session_state.get("sweep_key")
    if shown == sweep_key and ("sweep", *shown) in _memo():  # never a sweep of another model, steps or draws
        curves = _memo()[("sweep", *shown)]
        st.plotly_chart(
            distribution_figures.sweep_figure(list(shown[1]), curves, shown[2], experiment.names),
            width="stretch",
            key="sweep-plot",
            config={"displayModeBar": False},  # the toolbar covered the panel titles
        )
        st.markdown(explorer.sweep_summary(list(shown[1]), curves, explorer.SCORE_LABELS[shown[2]], experiment.names))
        st.caption(
            f"{shown[3]} images per set, {explorer.SCORE_LABELS[shown[2]]} score, {shown[4]} DDIM step(s) (at most t) "
            f"and {shown[5]} draw(s) per timestep."
        )
    else:
        st.caption("Pick timesteps and press **Run sweep**; results are kept for this model.")

# --- The table: one row per OOD set and per average, a column group per method ---
st.subheader("Metrics (percent)")
metric_keys = st.multiselect(
    "Metrics",
    list(explorer.METRIC_LABELS),
    default=["auroc", "fpr95"],
    format_func=lambda key: explorer.METRIC_LABELS[key],
    help="AUROC and AUPR: higher is better; FPR95 (OOD accepted when 95 % of ID is accepted): lower is better.",
)
if metric_keys:
    labels, columns, values = explorer.wide_table(evaluation, methods, metric_keys)
    table = pd.DataFrame(values, index=labels, columns=pd.MultiIndex.from_tuples(columns)).round(2)
    st.dataframe(table, width="stretch")
speeds = explorer.measured_speeds(methods)
if speeds is not None and speeds.rows:
    st.markdown("**Speed**, fastest first: images per second from a decoded image to its score, backbone included.")
    st.dataframe(
        pd.DataFrame([{"method": label, "images/s end to end": round(rate)} for _, label, rate in speeds.rows]),
        hide_index=True,
    )
    shipped = run_dir.resolve() == explorer.default_run_dir().resolve()
    st.caption(
        f"Measured by `python -m benchmarks.compare` on the {'' if shipped else 'shipped model (not this one), '}"
        f"every method on the same decoded images, one after another ({speeds.machine}). Rates from each method's "
        "cached input (a feature vector, pre-logits or pixels) measure different work, so they are not shown."
    )
notes = {entry.note for entry in (evaluation.methods[m] for m in methods) if entry.note}
for note in sorted(notes):
    owners = ", ".join(evaluation.methods[m].label for m in methods if evaluation.methods[m].note == note)
    st.caption(f"**{owners}:** {note}.")
if any(name in methods for name in BASELINES) and not fitted_on_train:
    info = _describe(training_set)
    where = f"the model's training set ({training_set})"
    if info.problem is None:
        st.warning(
            f"k-NN and Mahalanobis are meant to be fitted on {where}, whose features are not extracted yet; these are "
            "fitted on half of the ID set instead, so their numbers differ from a table fitted on the training set."
        )
        status = shared.extraction_status(detector, training_set)
        if status is not None and not status.finished:
            shared.show_extraction(detector, {training_set: "the training set"})
        elif st.button(
            "Extract the training set's features and refit the baselines",
            help=f"Runs the backbone once over the {info.images:,} training images in the background (with progress; "
            "other pages stay usable), caches the features on disk, then fits the baselines on them.",
        ):
            shared.start_extraction(detector, training_set)
            st.rerun()
    else:
        st.warning(
            f"k-NN and Mahalanobis are meant to be fitted on {where}, which cannot be opened here ({info.problem}); "
            "these are fitted on half of the ID set instead, so their numbers differ from a table fitted on it."
        )
st.download_button(
    "Download metrics CSV",
    explorer.metrics_csv(evaluation, methods),
    file_name=f"dlsr_metrics_{evaluation.settings['model_id'].replace('@', '_')}_t{timestep}_steps{steps}"
    f"_draws{draws}.csv",
    mime="text/csv",
)
