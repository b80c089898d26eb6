"""How DLSR works: one image traced through the method step by step, for teaching; then "what counts as OOD?"."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dlsr_core import explorer
from pages import figures, follow, shared, widgets
from pages.walkthrough_figures import comparison_figure, stage_figure, stage_footers

SOURCE_KEY = "walk_source"
SET_KEY = "walk_set"
INDEX_KEY = "walk_index"
SHIFT_KEY = "walk_shift"
UPLOADER_KEY = "walk_uploader"
UPLOAD_KEPT = "upload"  # _KEPT key: the digest of the traced upload (its bytes are in follow.upload_store)
GREY, ORANGE, GREEN = "#8c8c8c", "#e07b39", "#3c8d47"
STATIC = {"displayModeBar": False}  # Plotly's toolbar covers the small titles; a projected page needs none
SHIFT_WHOLE_SET = 2000  # ID sets up to this size are shifted whole and cached on disk


@st.cache_data(max_entries=64, show_spinner=False)
def _set_image(spec: str, index: int):
    return explorer.dataset_images(spec, [index])[0]


def _random_index(size: int) -> None:
    st.session_state[INDEX_KEY] = _KEPT[INDEX_KEY] = int(np.random.default_rng().integers(size))


# Streamlit drops a widget's value while the widget is not shown (the demo-set picker while "an upload" is chosen):
# the choices are kept under plain keys too and given back when the widgets return.
_KEPT = st.session_state.setdefault("walk_kept", {})


def _keep(key: str) -> None:
    _KEPT[key] = st.session_state[key]


def _restore(key: str, default):
    st.session_state[key] = st.session_state.get(key, _KEPT.get(key, default))
    return st.session_state[key]


def _upload_changed() -> None:
    if st.session_state.get(UPLOADER_KEY) is None:  # the user removed the file: nothing to trace any more
        _KEPT.pop(UPLOAD_KEPT, None)


def _open_arrived(ref: explorer.ImageRef, sets: list[str]) -> None:
    """Trace the image a link brought (a score card, a failure case, a map selection, Compare models)."""
    if ref.is_upload:
        if ref.digest not in follow.upload_store():
            st.warning(follow.missing_upload_message(ref))
            return
        st.session_state[SOURCE_KEY] = _KEPT[SOURCE_KEY] = "an upload"
        _KEPT[UPLOAD_KEPT] = ref.digest
    elif ref.spec not in sets:
        st.warning(
            f"The linked image belongs to {ref.spec}, which is not a set of the loaded model's experiment; choose "
            "another model on Home / model, or add the set on Experiment / data."
        )
    else:
        st.session_state[SOURCE_KEY] = _KEPT[SOURCE_KEY] = "a set of the experiment"
        st.session_state[SET_KEY] = _KEPT[SET_KEY] = ref.spec
        st.session_state[INDEX_KEY] = _KEPT[INDEX_KEY] = ref.index


def _shift_chosen() -> None:
    """Clicking the selected pill unselects it; the panel keeps showing that shift, so the pill stays selected."""
    if st.session_state[SHIFT_KEY] is None:
        st.session_state[SHIFT_KEY] = _KEPT.get(SHIFT_KEY, "hflip")
    _keep(SHIFT_KEY)


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
arrived = follow.incoming("walk")
if arrived is not None:
    _open_arrived(arrived, experiment.specs)
_restore(SOURCE_KEY, "a set of the experiment")
source = st.radio(
    "Image from",
    ["a set of the experiment", "an upload"],
    horizontal=True,
    key=SOURCE_KEY,
    on_change=_keep,
    args=(SOURCE_KEY,),
)
sets = experiment.specs
if st.session_state.get(SET_KEY) not in sets:  # another model's experiment was loaded since
    st.session_state.pop(SET_KEY, None)
if _KEPT.get(SET_KEY) not in sets:
    _KEPT.pop(SET_KEY, None)
if source == "a set of the experiment":
    columns = st.columns([2, 1, 1])
    _restore(SET_KEY, sets[0])
    spec = columns[0].selectbox(
        "Set",
        sets,
        key=SET_KEY,
        on_change=_keep,
        args=(SET_KEY,),
        format_func=lambda s: f"{experiment.name_of(s)} ({'ID' if s == experiment.id_set.spec else 'OOD'})",
    )
    feature_set = shared.features_or_stop(detector, spec, experiment.name_of(spec))
    size = len(feature_set)
    st.session_state[INDEX_KEY] = int(min(max(_restore(INDEX_KEY, 0), 0), size - 1))
    index = int(columns[1].number_input("Image number", 0, size - 1, key=INDEX_KEY, on_change=_keep, args=(INDEX_KEY,)))
    columns[2].button("Random image", on_click=_random_index, args=(size,))
    rows = np.flatnonzero(feature_set.indices.numpy() == index)
    if len(rows) == 0:
        st.warning(f"Image {index} of {spec} could not be read; pick another.")
        st.stop()
    features, image = feature_set.features[int(rows[0])], _set_image(spec, index)
    image_name = f"{experiment.name_of(spec)} #{index}"
    follow.shown("walk", explorer.ImageRef.of_set(spec, index))
else:
    upload = st.file_uploader(
        "One image (PNG, JPEG, WebP, BMP, TIFF, GIF)",
        type=list(explorer.UPLOAD_TYPES),
        key=UPLOADER_KEY,
        on_change=_upload_changed,
    )
    store = follow.upload_store()
    if upload is not None:
        _KEPT[UPLOAD_KEPT] = store.put(upload.name, upload.getvalue())
    kept = store.get(_KEPT.get(UPLOAD_KEPT, ""))
    if kept is None:
        st.info("Upload an image to trace it, or switch back to a set of the experiment.")
        st.stop()
    if upload is None:  # Streamlit empties the uploader when another page is opened: the file is kept
        st.caption(f"Tracing **{kept[0]}**, uploaded before in this session; upload another file to replace it.")
    files = [kept]
    batch = shared.prepared_uploads(
        detector.backbone,
        detector.backbone_weights(),
        detector.input_size,
        explorer.digest_files(files),
        tuple(files),
        detector.feature_options,
    )
    if not batch.names:
        st.error(f"**{kept[0]}** cannot be traced: {batch.errors[0][1]}")
        st.stop()
    features, image, image_name = batch.features[0], batch.images[0], kept[0]
    follow.shown("walk", explorer.ImageRef.of_upload(_KEPT[UPLOAD_KEPT]))

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
features_figure = stage_figure(names, [("z₀ (features)", z0, GREY, "lines")])
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
    stage_figure(
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
profile = trace.profile
st.plotly_chart(
    stage_figure(
        names,
        [
            ("z₀ (original)", trace.features, GREY, "lines"),
            ("ẑ₀ (reconstruction)", trace.reconstruction, GREEN, "lines"),
        ],
        footers=stage_footers(profile),
    ),
    width="stretch",
    config=STATIC,
    key="walk-reconstruction",
)
worse = [name.short for name, status in zip(profile.names, profile.status, strict=True) if status == "worse"]
st.markdown(
    f"**What:** the LFDN (a small MLP trained only on ID features) denoises z_t back to ẑ₀ in {trace.steps} DDIM "
    "step(s). Where green covers grey, the model recognised the features. Under each stage's title: how far it "
    f"came back ({profile.quantity}, averaged over {explorer.profile_draws(draws)} noise draws) beside the range of "
    "95 % of ID images; red = outside it on the OOD side"
    + (f" — here {', '.join(worse)}." if worse else ". Here every stage is within it.")
    + "  \n**Why:** the model learned the ID feature distribution and nothing else: it pulls every input towards "
    "it. An unfamiliar vector still comes back looking like *some* ID vector — the curves alone can look alike; "
    "what gives it away is how far each stage had to move, compared with how far ID images move."
)
if draws > 1:
    st.caption(f"The picture shows the first of {draws} noise draws; the score below averages all {draws}.")

# 5 · per-stage similarity --------------------------------------------------------------------------------------------
st.header("5 · Compare, stage by stage")
st.plotly_chart(comparison_figure(trace), width="stretch", config=STATIC, key="walk-compare")
st.markdown(
    "**What:** left, how close each stage came back (dot), beside the range of 95 % of ID images for that stage "
    "(grey): the deep stages of *every* image come back a little less exactly, so a low cosine alone says little. "
    f"Right, the fair comparison, the layer profile: each stage against the same stage of "
    f"{profile.reference_size:,} ID images ({profile.quantity}, grey = ID 5–95 %); red = outside that range on the "
    f"OOD side. The profile averages {explorer.profile_draws(draws)} noise draws of this image, so it does not move "
    "with the noise of a single draw.  \n"
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
above = f"above {explorer.percent_text(trace.id_percentile)} % of ID images"
why = " ".join(filter(None, (profile.sentence, explorer.verdict_note(profile, trace.verdict))))
if trace.verdict == "OOD":
    st.error(f"**OOD** — {label} {trace.score:.4g} > threshold {trace.threshold:.4g} ({above}). {why}")
else:
    st.success(f"**ID** — {label} {trace.score:.4g} ≤ threshold {trace.threshold:.4g} ({above}). {why}")

# What counts as OOD? -------------------------------------------------------------------------------------------------
st.header("What counts as OOD?")
st.markdown(
    "Take ID images and change them: is a flipped shirt out of distribution? A blurred one? The same "
    f"{explorer.SHIFT_SAMPLE} ID images are scored before (blue) and after (red) the change. An AUROC near 50 % "
    "means the detector cannot tell them apart (it accepts the change as ID); near 100 % means it flags every one."
)
_restore(SHIFT_KEY, "hflip")
shift = st.pills(
    "Shift", list(explorer.SHIFT_LABELS), key=SHIFT_KEY, on_change=_shift_chosen, format_func=explorer.SHIFT_LABELS.get
)


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
# A small ID set (the demo's 2,000 images) is shifted whole, once, and cached on disk like any set; a large one has
# only the panel's images shifted, once per process.
if len(all_id_features) <= SHIFT_WHOLE_SET:
    shifted_set = shared.features_or_stop(detector, f"{experiment.id_set.spec}+{shift}")
    row_of = {int(index): row for row, index in enumerate(shifted_set.indices.tolist())}
    shifted = shifted_set.features[[row_of[position] for position in positions]]
else:
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
