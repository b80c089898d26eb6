"""How DLSR works: one image traced through the method step by step, for teaching; then "what counts as OOD?"."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dlsr_core import explorer
from pages import figures, shared, widgets

SOURCE_KEY = "walk_source"
SET_KEY = "walk_set"
INDEX_KEY = "walk_index"
SHIFT_KEY = "walk_shift"
GREY, ORANGE, GREEN = "#8c8c8c", "#e07b39", "#3c8d47"
STATIC = {"displayModeBar": False}  # Plotly's toolbar covers the small titles; a projected page needs none


@st.cache_data(max_entries=64, show_spinner=False)
def _set_image(spec: str, index: int):
    return explorer.dataset_images(spec, [index])[0]


def _random_index(size: int) -> None:
    st.session_state[INDEX_KEY] = int(np.random.default_rng().integers(size))


def _stage_figure(
    names: tuple[explorer.StageName, ...], series: list[tuple[str, np.ndarray, str, str]], height: int = 230
) -> go.Figure:
    """One small panel per stage; series: (name, vector (D,), colour, 'lines' | 'markers')."""
    titles = [f"{n.short.replace(' (', '<br>(')}<br>{n.channels} ch" for n in names]
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.03)
    cuts = np.cumsum([n.channels for n in names])[:-1]
    for name, vector, colour, mode in series:
        for column, block in enumerate(np.split(np.asarray(vector), cuts), 1):
            figure.add_trace(
                go.Scatter(
                    y=block,
                    mode=mode,
                    name=name,
                    legendgroup=name,
                    showlegend=column == 1,
                    line=dict(color=colour, width=1.2),
                    marker=dict(color=colour, size=3),
                    hovertemplate=f"{name}<br>channel %{{x}}: %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=column,
            )
    figure.update_annotations(font_size=11)
    figure.update_xaxes(showticklabels=False)
    figure.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=60, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=-0.18, x=0),
    )
    return figure


st.title("How DLSR works")
st.markdown(
    "Follow one image through **DLSR** (diffusion-based layer-wise semantic reconstruction), from pixels to verdict. "
    "The idea in one line: a small diffusion model has only ever learned to clean up the features of in-distribution "
    "(ID) images, so it rebuilds them well and fails on anything else — and it tells us *at which level* it failed."
)
detector, run_dir = shared.detector_or_stop()
experiment = shared.current_experiment(detector, run_dir).experiment
draws = widgets.current_draws()

# 1 · the image ------------------------------------------------------------------------------------------------------
st.header("1 · The image")
source = st.radio("Image from", ["a set of the experiment", "an upload"], horizontal=True, key=SOURCE_KEY)
sets = experiment.specs
if st.session_state.get(SET_KEY) not in sets:  # another model's experiment was loaded since
    st.session_state.pop(SET_KEY, None)
if source == "a set of the experiment":
    columns = st.columns([2, 1, 1])
    spec = columns[0].selectbox(
        "Set",
        sets,
        key=SET_KEY,
        format_func=lambda s: f"{experiment.name_of(s)} ({'ID' if s == experiment.id_set.spec else 'OOD'})",
    )
    feature_set = shared.features_or_stop(detector, spec, experiment.name_of(spec))
    size = len(feature_set)
    st.session_state[INDEX_KEY] = int(min(max(st.session_state.get(INDEX_KEY, 0), 0), size - 1))
    index = int(columns[1].number_input("Image number", 0, size - 1, key=INDEX_KEY))
    columns[2].button("Random image", on_click=_random_index, args=(size,))
    rows = np.flatnonzero(feature_set.indices.numpy() == index)
    if len(rows) == 0:
        st.warning(f"Image {index} of {spec} could not be read; pick another.")
        st.stop()
    features, image = feature_set.features[int(rows[0])], _set_image(spec, index)
    image_name = f"{experiment.name_of(spec)} #{index}"
else:
    upload = st.file_uploader("One image (PNG, JPEG, WebP, BMP, TIFF, GIF)", type=list(explorer.UPLOAD_TYPES))
    if upload is None:
        st.info("Upload an image to trace it, or switch back to a set of the experiment.")
        st.stop()
    files = [(upload.name, upload.getvalue())]
    batch = shared.prepared_uploads(
        detector.backbone,
        detector.backbone_weights(),
        detector.input_size,
        explorer.digest_files(files),
        tuple(files),
        detector.feature_options,
    )
    if not batch.names:
        st.error(f"**{upload.name}** cannot be traced: {batch.errors[0][1]}")
        st.stop()
    features, image, image_name = batch.features[0], batch.images[0], upload.name

size_px = detector.input_size
columns = st.columns([1, 1, 3])
columns[0].image(image.resize((128, 128), 0) if max(image.size) < 128 else image, caption=image_name, width=128)
columns[1].image(
    image.resize((size_px, size_px)).resize((128, 128), 0),
    caption=f"as the backbone sees it ({size_px}×{size_px})",
    width=128,
)
columns[2].markdown(
    f"**What:** the picture is resized to {size_px}×{size_px} pixels and fed to a frozen image network "
    f"(`{detector.backbone}`, trained on ImageNet, never on our data).  \n"
    "**Why:** such a network already turns pixels into a hierarchy of visual concepts; DLSR only has to learn what "
    "those concepts look like for ID images."
)

# 2 · features -------------------------------------------------------------------------------------------------------
st.header("2 · Layer-wise features")
names = explorer.stage_names(detector.backbone, tuple(detector.stage_dims))
z0 = features.float().numpy()
features_figure = _stage_figure(names, [("z₀ (features)", z0, GREY, "lines")])
st.plotly_chart(features_figure, width="stretch", config=STATIC, key="walk-features")
st.markdown(
    f"**What:** the network has {len(names)} stages, from fine detail to whole-object meaning. Each stage's "
    "feature maps are averaged over the image (one number per channel), then standardized (mean 0, spread 1 within "
    f"the stage); the {len(names)} pieces are joined into one vector z₀ of {len(z0)} numbers.  \n"
    "**Why:** keeping every stage lets DLSR notice an image that is normal in its textures but odd in its "
    "semantics, or the other way round; standardizing gives every stage the same say."
)

# 3 · noise -----------------------------------------------------------------------------------------------------------
st.header("3 · Add noise up to timestep t")
timestep, steps, score = widgets.sampling_controls(detector)
all_id_features = shared.features_or_stop(detector, experiment.id_set.spec, experiment.id_set.name)
id_features = explorer.reference_subset(all_id_features)
reference = shared.reference_set(detector, run_dir, id_features, timestep, steps, score)
trace = explorer.trace_image(detector, features, reference, score, timestep, steps, draws)
st.session_state["walkthrough_trace"] = trace
st.caption("Move **Sampling timestep t**: the orange points drift away from the grey line as t grows.")
st.plotly_chart(
    _stage_figure(
        names,
        [("z₀", trace.features, GREY, "lines"), (f"z_t at t = {timestep}", trace.noised, ORANGE, "markers")],
    ),
    width="stretch",
    config=STATIC,
    key="walk-noised",
)
st.markdown(
    f"**What:** z_t = {trace.signal_scale:.3f} · z₀ + {trace.noise_scale:.3f} · ε, with ε random noise. At "
    f"t = {timestep} the noise has a spread of {trace.noise_scale:.2f} against 1 for the features.  \n"
    "**Why:** a little noise hides fine detail but keeps the gist. A model that knows ID features can put the "
    "detail back; for unfamiliar features it fills in what an ID image *would* have. The noise is drawn from the "
    "feature vector itself, so the same image always gets the same noise and the same score."
)

# 4 · reconstruction -------------------------------------------------------------------------------------------------
st.header("4 · Reconstruct with the diffusion model")
st.plotly_chart(
    _stage_figure(
        names,
        [
            ("z₀ (original)", trace.features, GREY, "lines"),
            ("ẑ₀ (reconstruction)", trace.reconstruction, GREEN, "lines"),
        ],
    ),
    width="stretch",
    config=STATIC,
    key="walk-reconstruction",
)
st.markdown(
    f"**What:** the LFDN (a small MLP trained only on ID features) denoises z_t back to ẑ₀ in {trace.steps} DDIM "
    f"step(s). Where green covers grey, the model recognised the features.  \n"
    "**Why:** the model learned the ID feature distribution and nothing else: it pulls every input towards it."
)
if draws > 1:
    st.caption(f"The picture shows the first of {draws} noise draws; the numbers below average all {draws}.")

# 5 · per-stage similarity --------------------------------------------------------------------------------------------
st.header("5 · Compare, stage by stage")
profile = trace.profile
labels = [name.label for name in trace.names]
columns = st.columns(2)
similarity = go.Figure(
    go.Bar(
        x=trace.stage_cos,
        y=labels,
        orientation="h",
        marker_color="#7fa6dc",
        text=[f"{v:.4f}" for v in trace.stage_cos],
        customdata=trace.stage_sq_error,
        hovertemplate="%{y}<br>cosine %{x:.4f}<br>squared error %{customdata:.3f}<extra></extra>",
    )
)
similarity.update_layout(
    title=dict(text="cosine(z₀, ẑ₀) per stage (1 = perfect)", font_size=12),
    height=260,
    margin=dict(l=10, r=10, t=40, b=10),
    xaxis=dict(range=[min(0.9, float(trace.stage_cos.min()) - 0.01), 1.0], title="cosine similarity"),
    yaxis=dict(autorange="reversed"),
)
columns[0].plotly_chart(similarity, width="stretch", config=STATIC, key="walk-similarity")
band = go.Figure()
band.add_shape(
    type="rect", x0=5, x1=95, y0=-0.5, y1=len(labels) - 0.5, fillcolor="#e6e6e6", line_width=0, layer="below"
)
band.add_trace(
    go.Scatter(
        x=profile.worse_than,
        y=labels,
        mode="markers+text",
        marker=dict(size=14, color=[explorer.PROFILE_COLOURS[s] for s in profile.status]),
        text=[f"{explorer.percent_text(p)} %" for p in profile.worse_than],
        textposition=["middle left" if p > 80 else "middle right" for p in profile.worse_than],
        customdata=np.stack([profile.values, profile.band_low, profile.band_high, profile.z_scores], axis=1),
        hovertemplate="%{y}<br>worse than %{x:.1f} % of ID images<br>value %{customdata[0]:.4g} (ID 5–95 %: "
        "%{customdata[1]:.4g} … %{customdata[2]:.4g})<br>z = %{customdata[3]:+.1f}<extra></extra>",
    )
)
band.update_layout(
    title=dict(text=f"Layer profile against {profile.reference_size:,} ID images (grey: ID 5–95 %)", font_size=12),
    height=260,
    margin=dict(l=10, r=10, t=40, b=10),
    xaxis=dict(range=[-2, 102], title=f"worse than … % of ID images ({profile.quantity})"),
    yaxis=dict(autorange="reversed"),
    showlegend=False,
)
columns[1].plotly_chart(band, width="stretch", config=STATIC, key="walk-profile")
st.markdown(
    "**What:** left, how close each stage came back (the deep stages of *every* image come back a little less "
    "exactly). Right, the fair comparison: each stage against the same stage of ID images; red = outside the ID "
    "range on the OOD side.  \n"
    f"**In words:** {profile.sentence}"
)

# 6 · the score -------------------------------------------------------------------------------------------------------
label = explorer.SCORE_LABELS[score]
formulas = {
    "mfsim": "MFsim = − mean over stages of cosine(z₀, ẑ₀)",
    "mse": "MSE = sum of squared differences between z₀ and ẑ₀",
    "lr": "LR = squared error under the first-epoch model − squared error under the final model",
}
st.header("6 · One score, placed among ID images")
st.plotly_chart(
    figures.id_histogram(
        trace.id_scores,
        trace.threshold,
        label,
        [("1", image_name, trace.score, trace.verdict)],
        f"{label} of {'all' if len(id_features) == len(all_id_features) else 'a fixed random'} "
        f"{len(trace.id_scores):,} ID reference images ({experiment.id_set.name}) and this image (1)",
        height=300,
    ),
    width="stretch",
    config=STATIC,
    key="walk-histogram",
)
st.markdown(
    f"**What:** {formulas[score]} = **{trace.score:.4g}** (averaged over {draws} noise draw(s)); higher = more OOD. "
    f"The dashed line is the threshold that keeps 95 % of ID images: {label} = {trace.threshold:.4g}.  \n"
    "**Why:** without labels or OOD examples, the only yardstick is how ID images score; the threshold fixes "
    "how many ID images we accept to lose (5 %)."
)

# 7 · verdict ---------------------------------------------------------------------------------------------------------
st.header("7 · Verdict")
above = f"above {trace.id_percentile:.1f} % of ID images"
if trace.verdict == "OOD":
    st.error(f"**OOD** — {label} {trace.score:.4g} > threshold {trace.threshold:.4g} ({above}). {profile.sentence}")
else:
    st.success(f"**ID** — {label} {trace.score:.4g} ≤ threshold {trace.threshold:.4g} ({above}). {profile.sentence}")

# What counts as OOD? -------------------------------------------------------------------------------------------------
st.header("What counts as OOD?")
st.markdown(
    "Take ID images and change them: is a flipped shirt out of distribution? A blurred one? The same "
    f"{explorer.SHIFT_SAMPLE} ID images are scored before (blue) and after (red) the change. An AUROC near 50 % "
    "means the detector cannot tell them apart (it accepts the change as ID); near 100 % means it flags every one."
)
shift = st.pills(
    "Shift", list(explorer.SHIFT_LABELS), key=SHIFT_KEY, default="hflip", format_func=explorer.SHIFT_LABELS.get
)
shift = shift or "hflip"


@st.cache_resource
def _shift_memo() -> dict:
    """Shifted features per (model inputs, set, images, shift); filled outside st.cache_* so progress is live."""
    return {}


def _shifted_features(spec: str, positions: tuple[int, ...], shift: str):
    key = (detector.backbone, detector.info.weights, detector.feature_options, detector.input_size, spec, positions)
    memo = _shift_memo()
    if (*key, shift) not in memo:
        extractor = shared.get_extractor(detector.backbone, detector.backbone_weights(), detector.feature_options)
        text = f"Extracting features of {len(positions)} shifted ID images (once per shift)…"
        bar = st.progress(0.0, text=text)
        memo[(*key, shift)] = explorer.shifted_features(
            extractor,
            detector.input_size,
            spec,
            np.asarray(positions),
            shift,
            progress=lambda d, t: bar.progress(d / max(t, 1), text=f"{text} {d}/{t}"),
        )
        bar.empty()
        while len(memo) > 32:
            memo.pop(next(iter(memo)))
    return memo[(*key, shift)]


rows = explorer.shift_rows(len(id_features))
positions = tuple(int(p) for p in id_features.indices.numpy()[rows])
shifted = _shifted_features(experiment.id_set.spec, positions, shift)
comparison = explorer.compare_shift(detector, id_features.features[rows], shifted, shift, score, timestep, steps, draws)
st.session_state["walkthrough_shift"] = comparison
columns = st.columns([1, 3])
columns[0].metric(f"AUROC, {explorer.SHIFT_LABELS[shift]}", f"{100 * comparison.metrics.auroc:.1f} %")
columns[0].caption(f"{label}, t={timestep}; {len(rows)} ID images vs the same images shifted.")
examples = [_set_image(experiment.id_set.spec, p) for p in positions[:4]]
shifted_examples = [_set_image(f"{experiment.id_set.spec}+{shift}", p) for p in positions[:4]]
columns[0].image([e.resize((56, 56)) for e in examples + shifted_examples if e is not None], width=56)
columns[0].caption(f"Top: four of the ID images; bottom: the same after {explorer.SHIFT_LABELS[shift]}.")
histogram = go.Figure()
histogram.add_trace(go.Histogram(x=comparison.id_scores, name="ID images", marker_color="#3b6fb6", opacity=0.6))
histogram.add_trace(
    go.Histogram(x=comparison.shifted_scores, name=explorer.SHIFT_LABELS[shift], marker_color="#b83b3b", opacity=0.6)
)
histogram.update_layout(
    barmode="overlay",
    height=280,
    margin=dict(l=10, r=10, t=30, b=10),
    xaxis_title=f"{label} score (higher = more OOD)",
    yaxis_title="images",
    legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
)
columns[1].plotly_chart(histogram, width="stretch", config=STATIC, key="walk-shift")
st.markdown(
    "**Discuss:** a *semantic* shift changes what is in the picture (a new kind of object); a *covariate* shift "
    "changes how it is shown (orientation, sharpness, contrast). Try each shift on this model: which does it "
    "accept (AUROC near 50 %) and which does it flag (near 100 %)? A flip of a nearly symmetric object changes "
    "little; blur, inversion or low contrast change what every stage sees, although the object is the same. Is "
    "that what you want your detector to call OOD?"
)
