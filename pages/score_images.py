"""Score images: upload pictures, get their OOD score, where it falls among ID scores, the verdict, per-stage cosine."""

import html

import plotly.graph_objects as go
import streamlit as st

from dlsr_core import explorer
from pages import shared

st.title("Score images")
detector, run_dir = shared.detector_or_stop()
timestep, steps, score = shared.sampling_controls(detector)

uploaded = st.file_uploader(
    "Images (PNG, JPEG, WebP, BMP, TIFF, GIF; any mode). They are scored in memory and never stored.",
    type=list(explorer.UPLOAD_TYPES),
    accept_multiple_files=True,
)
left, right = st.columns([1, 3])
if left.button("Use sample images", help="Two images from each demo set (ID and OOD)"):
    st.session_state[shared.UPLOADS_KEY] = explorer.sample_uploads()
if shared.UPLOADS_KEY in st.session_state and right.button("Clear sample images"):
    del st.session_state[shared.UPLOADS_KEY]

if uploaded:
    files = [(file.name, file.getvalue()) for file in uploaded]
else:
    # Tests (and the sample button) seed (name, bytes) pairs here: AppTest-driven runs need no browser upload.
    files = list(st.session_state.get(shared.UPLOADS_KEY, []))
if not files:
    st.info("Upload one or more images, or press **Use sample images**.")
    st.stop()

id_features = shared.features_or_stop(detector, explorer.DEMO_ID_SET)
id_scores = shared.reference_scores(detector, run_dir, id_features, timestep, steps, score)
weights = detector.backbone_weights()
batch = shared.prepared_uploads(
    detector.backbone, weights, detector.input_size, shared.digest_files(files), tuple(files), detector.feature_options
)
for name, reason in batch.errors:
    st.error(f"**{name}** was not scored: {reason}")
for name, note in batch.notes:
    st.info(f"**{name}**: {note}")
if not batch.names:
    st.warning("None of the files could be read as an image.")
    st.stop()

results = explorer.score_uploads(detector, batch.features, batch.names, id_scores, score, timestep, steps)
label = explorer.SCORE_LABELS[score]
threshold = results[0].threshold
ood_count = sum(result.verdict == "OOD" for result in results)
id_count = sum(result.verdict == "ID" for result in results)
st.success(
    f"Scored {len(results)} image(s) at t={timestep}, {steps} DDIM step(s): "
    f"{ood_count} OOD, {id_count} ID at the 95%-TPR threshold {label} = {threshold:.4g}."
)
if ood_count + id_count < len(results):  # a NaN/Inf score or threshold never becomes a verdict
    st.error(f"{len(results) - ood_count - id_count} image(s) got a NaN/Inf score or threshold: no verdict given.")

histogram = go.Figure(
    go.Histogram(x=id_scores, nbinsx=60, name=f"ID ({explorer.DEMO_ID_SET})", marker_color="#7fa6dc", opacity=0.8)
)
histogram.add_vline(x=threshold, line_dash="dash", line_color="black", annotation_text="95% TPR threshold")
for result in results:
    histogram.add_vline(
        x=result.score,
        line_color="#b83b3b" if result.verdict == "OOD" else "#3c8d47",
        annotation_text=html.escape(result.name[:18]),  # Plotly renders a subset of HTML in annotations
        annotation_textangle=-90,
        annotation_font_size=10,
    )
histogram.update_layout(
    title=dict(text=f"{len(id_scores)} ID reference images ({explorer.DEMO_ID_SET})", font_size=12),
    height=300,
    margin=dict(l=10, r=10, t=40, b=10),
    xaxis_title=f"{label} score",
    yaxis_title="ID images",
    showlegend=False,
)
st.plotly_chart(histogram, width="stretch")

per_row = 3
for start in range(0, len(results), per_row):
    columns = st.columns(per_row)
    chunk = zip(columns, results[start : start + per_row], batch.images[start : start + per_row], strict=False)
    for column, result, image in chunk:
        with column.container(border=True):
            st.image(image.resize((96, 96)) if max(image.size) < 96 else image, caption=result.name, width=96)
            badge = {"OOD": ":red-badge[OOD]", "ID": ":green-badge[ID]"}.get(result.verdict, ":gray-badge[no verdict]")
            st.markdown(f"{badge} · {label} = `{result.score:.4g}` · above {result.id_percentile:.1f}% of ID")
            # Plain HTML bars: a dozen Plotly charts would make every timestep change slow to redraw.
            st.html(shared.stage_bars_html(result.stage_cos))
st.session_state["score_results"] = results
