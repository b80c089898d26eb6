"""Score distributions: ID vs OOD histograms, the AUROC / FPR95 / AUPR table with baselines, a timestep sweep."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dlsr_core import explorer
from dlsr_core.evaluation import EvaluationSettings
from pages import shared

st.title("Score distributions")
detector, run_dir = shared.detector_or_stop()
timestep, steps, _ = shared.sampling_controls(detector, with_score=False)
with_baselines = st.toggle("Include k-NN and Mahalanobis baselines", value=True)

id_features = shared.features_or_stop(detector, explorer.DEMO_ID_SET)
ood_features = {spec: shared.features_or_stop(detector, spec) for spec in explorer.DEMO_OOD_SETS}


@st.cache_data(max_entries=32, show_spinner="Scoring the demo sets…")
def _evaluation(
    run_fingerprint: str, timestep: int, steps: int | None, with_baselines: bool, draws: int
) -> explorer.Evaluation:
    train = explorer.cached_features_only(detector, explorer.BASELINE_TRAIN_SET) if with_baselines else None
    return explorer.evaluate_sets(
        detector,
        explorer.DEMO_ID_SET,
        id_features.features,
        {k: v.features for k, v in ood_features.items()},
        EvaluationSettings(timestep=timestep, steps=steps, draws=draws),
        train.features if train is not None else None,
        with_baselines=with_baselines,
    )


draws = shared.current_draws()
evaluation = _evaluation(shared.fingerprint(run_dir), timestep, steps, with_baselines, draws)
report = evaluation.report
st.caption(f"ID: {explorer.DEMO_ID_SET} · t={timestep}, {steps} DDIM step(s) · {evaluation.baseline_note}")

score_names = report.score_names
histogram_score = st.selectbox(
    "Histogram score",
    score_names,
    format_func=lambda s: explorer.SCORE_LABELS[s],
    index=score_names.index("mfsim") if "mfsim" in score_names else 0,
)
id_scores = report.scores[explorer.DEMO_ID_SET][histogram_score]
columns = st.columns(3)
for position, spec in enumerate(explorer.DEMO_OOD_SETS):
    figure = go.Figure()
    figure.add_trace(
        go.Histogram(
            x=id_scores, name="ID", opacity=0.6, marker_color="#3b6fb6", nbinsx=50, histnorm="probability density"
        )
    )
    figure.add_trace(
        go.Histogram(
            x=report.scores[spec][histogram_score],
            name="OOD",
            opacity=0.6,
            marker_color="#b83b3b",
            nbinsx=50,
            histnorm="probability density",
        )
    )
    metric = report.metric(spec, histogram_score)
    figure.update_layout(
        barmode="overlay",
        height=260,
        margin=dict(l=5, r=5, t=40, b=5),
        legend=dict(orientation="h", y=-0.2),
        title=dict(
            text=f"{spec.removeprefix('demo:')} ({explorer.DEMO_OOD_SETS[spec]}) · AUROC {100 * metric.auroc:.1f}%",
            font_size=13,
        ),
    )
    columns[position % 3].plotly_chart(figure, width="stretch", key=f"hist-{spec}", config={"displayModeBar": False})

st.subheader("Metrics (percent)")
table = pd.DataFrame(explorer.metrics_rows(report))
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={c: st.column_config.NumberColumn(format="%.2f") for c in table.columns[2:]},
)
st.download_button("Download metrics CSV", report.to_csv(), file_name=f"dlsr_metrics_t{timestep}.csv", mime="text/csv")

st.subheader("Timestep sweep (AUROC vs t, like the paper's Figure 4)")
with st.form("sweep"):
    form_columns = st.columns(3)
    sweep_timesteps = form_columns[0].multiselect(
        "Timesteps", list(range(1, shared.MAX_TIMESTEP + 1)), default=[1, 2, 3, 5, 8, 10, 15, 20]
    )
    sweep_score = form_columns[1].selectbox(
        "Score", explorer.available_scores(detector), index=1, format_func=lambda s: explorer.SCORE_LABELS[s]
    )
    per_set = form_columns[2].number_input(
        "Images per set", 50, 2000, 300, step=50, help="A random subset of each set keeps the sweep quick."
    )
    run_sweep = st.form_submit_button("Run sweep")


@st.cache_resource(max_entries=16)
def _sweeps() -> dict:
    return {}


sweep_key = (shared.fingerprint(run_dir), tuple(sorted(sweep_timesteps)), sweep_score, int(per_set), steps, draws)
if run_sweep and sweep_timesteps and sweep_key not in _sweeps():
    bar = st.progress(0.0, text="Sweeping timesteps…")
    ordered = sorted(sweep_timesteps)
    curves = explorer.sweep(
        detector,
        id_features.features,
        {k: v.features for k, v in ood_features.items()},
        ordered,
        sweep_score,
        steps=steps,
        max_per_set=int(per_set),
        progress=lambda done, total: bar.progress(done / total, text=f"t = {ordered[done - 1]} done ({done}/{total})"),
        draws=draws,
    )
    bar.empty()
    _sweeps()[sweep_key] = curves
if run_sweep:
    st.session_state["sweep_key"] = sweep_key
shown = st.session_state.get("sweep_key")
if shown in _sweeps():
    curves = _sweeps()[shown]
    figure = go.Figure()
    for name, values in curves.items():
        figure.add_trace(
            go.Scatter(
                x=list(shown[1]), y=[100 * v for v in values], mode="lines+markers", name=name.removeprefix("demo:")
            )
        )
    figure.update_layout(
        height=340,
        xaxis_title="start timestep t",
        margin=dict(l=5, r=5, t=20, b=5),
        yaxis_title=f"AUROC % ({explorer.SCORE_LABELS[shown[2]]})",
    )
    st.plotly_chart(figure, width="stretch", key="sweep-plot")
    st.caption(
        f"{shown[3]} images per set, {explorer.SCORE_LABELS[shown[2]]} score, "
        f"{shown[4]} DDIM step(s) (at most t) per timestep."
    )
else:
    st.caption("Pick timesteps and press **Run sweep**; results are kept for this model.")
