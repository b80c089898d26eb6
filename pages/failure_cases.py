"""Failure cases: ID images scored most OOD-like and OOD images scored most ID-like, with per-stage similarities."""

import pandas as pd
import streamlit as st

from dlsr_core import explorer
from pages import shared

st.title("Failure cases")
st.markdown(
    "The paper's failure categories show up here: dark or low-semantics ID images that look unfamiliar, "
    "and OOD images that resemble an ID class or its colours."
)
detector, run_dir = shared.detector_or_stop()
timestep, steps, score = shared.sampling_controls(detector)
k = st.slider("Images per group", 4, 40, 12, step=4)

specs = [explorer.DEMO_ID_SET, *explorer.DEMO_OOD_SETS]
fingerprint = shared.fingerprint(run_dir)
scores, stage_cos, indices = {}, {}, {}
for spec in specs:
    features = shared.features_or_stop(detector, spec)
    result = shared.set_scores(detector, fingerprint, spec, features, timestep, steps, score == "lr")
    scores[spec], stage_cos[spec], indices[spec] = result[score], result["stage_cos"], features.indices.numpy()

cases = explorer.failure_cases(explorer.DEMO_ID_SET, scores, stage_cos, indices, k)
threshold = explorer.id_threshold95(scores[explorer.DEMO_ID_SET])
label = explorer.SCORE_LABELS[score]
st.caption(f"{label} at t={timestep}; 95%-TPR threshold {threshold:.4g} (scores above it are called OOD).")


@st.cache_data(max_entries=128, show_spinner=False)
def _images(spec: str, index_tuple: tuple[int, ...]):
    return [
        image.resize((84, 84), 0) if image is not None else None for image in explorer.dataset_images(spec, index_tuple)
    ]


for kind, blurb in (
    ("ID scored as OOD", "ID images with the highest scores (false alarms)"),
    ("OOD scored as ID", "OOD images with the lowest scores (missed detections), over all OOD sets"),
):
    group = [case for case in cases if case.kind == kind]
    st.subheader(f"{kind}: {len(group)}")
    st.caption(blurb)
    images = []
    for case in group:
        images += _images(case.dataset, (case.index,))
    captions = [
        f"{c.dataset.removeprefix('demo:').replace('fashion_mnist', 'fmnist')} #{c.index} · {c.score:.3g}\n"
        + "cos "
        + " ".join(f"{v:.2f}" for v in c.stage_cos)
        for c in group
    ]
    per_row = 8
    for start in range(0, len(group), per_row):
        columns = st.columns(per_row)
        for column, image, caption in zip(
            columns, images[start : start + per_row], captions[start : start + per_row], strict=False
        ):
            if image is not None:
                column.image(image, caption=caption, width="stretch")

st.subheader("Table")
stage_count = len(cases[0].stage_cos) if cases else 0
table = pd.DataFrame(
    [
        {
            "kind": c.kind,
            "rank": c.rank,
            "set": c.dataset,
            "index": c.index,
            label: c.score,
            **{f"cos stage {i + 1}": v for i, v in enumerate(c.stage_cos)},
        }
        for c in cases
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
    explorer.failure_csv(cases, score, threshold),
    file_name=f"dlsr_failures_{score}_t{timestep}.csv",
    mime="text/csv",
)
