"""Score images: upload pictures, get their OOD score, where it falls among ID scores, the verdict and why (the
layer profile: where each stage's reconstruction falls among ID images)."""

import streamlit as st

from dlsr_core import explorer
from pages import figures, follow, shared, widgets

SOURCE_KEY = "score_source"  # "uploads" | "samples": the latest action wins
UPLOADER_KEY = "score_file_uploader"
KEPT_KEY = "score_kept_uploads"  # digests of the files last uploaded here (in follow.upload_store)
SET_REFS_KEY = "score_set_refs"  # digest -> token of the set image a sample or an opened image is
CHOSEN_KEY = "score_chosen"  # what the non-upload images are: "samples" | "opened"


def _uploads_changed() -> None:
    st.session_state[SOURCE_KEY] = "uploads"
    if not st.session_state.get(UPLOADER_KEY):  # the user removed every file: forget the kept ones too
        st.session_state[KEPT_KEY] = []


def _open_arrived(ref: explorer.ImageRef) -> None:
    """Show the image a link brought (from How DLSR works, a failure case, a map selection, Compare models)."""
    if ref.is_upload:
        stored = follow.upload_store().get(ref.digest)
        if stored is None:
            st.warning(follow.missing_upload_message(ref))
            return
        files = [stored]
    else:
        try:
            files = [(ref.label(experiment.names), explorer.set_image_png(ref))]
        except (ValueError, OSError) as error:  # DatasetError is a ValueError
            st.warning(f"The linked image cannot be opened here: {error}")
            return
        st.session_state.setdefault(SET_REFS_KEY, {})[follow.upload_store().put(*files[0])] = ref.token
    st.session_state[shared.UPLOADS_KEY] = files
    st.session_state[SOURCE_KEY], st.session_state[CHOSEN_KEY] = "samples", "opened"


st.title("Score images")
detector, run_dir = shared.detector_or_stop()
experiment = shared.current_experiment(detector, run_dir).experiment
arrived = follow.incoming("score")
if arrived is not None:
    _open_arrived(arrived)
timestep, steps, score = widgets.sampling_controls(detector)
draws = widgets.current_draws()

uploaded = st.file_uploader(
    "Images (PNG, JPEG, WebP, BMP, TIFF, GIF; any mode). They are scored in memory and never stored.",
    type=list(explorer.UPLOAD_TYPES),
    accept_multiple_files=True,
    key=UPLOADER_KEY,
    on_change=_uploads_changed,
)
store = follow.upload_store()
kept_before = False
if uploaded:
    uploads = [(file.name, file.getvalue()) for file in uploaded]
    st.session_state[KEPT_KEY] = store.put_all(uploads)
else:  # Streamlit empties the uploader when another page is opened: the files are kept in the session
    uploads = [store.get(digest) for digest in st.session_state.get(KEPT_KEY, []) if digest in store]
    kept_before = bool(uploads)
buttons = st.columns([1, 1, 2])
if buttons[0].button("Use sample images", help="Two images from each set of the model's experiment (ID and OOD)"):
    # Tests seed (name, bytes) pairs under UPLOADS_KEY the same way: AppTest-driven runs need no browser upload.
    sampled = explorer.sample_files(experiment.names)
    st.session_state[shared.UPLOADS_KEY] = [(name, data) for name, data, _ in sampled]
    st.session_state[SET_REFS_KEY] = {store.put(name, data): ref.token for name, data, ref in sampled}
    st.session_state[SOURCE_KEY], st.session_state[CHOSEN_KEY] = "samples", "samples"
samples = list(st.session_state.get(shared.UPLOADS_KEY, []))
source = st.session_state.get(SOURCE_KEY) or ("uploads" if uploads else "samples")
if source == "samples" and uploads and buttons[1].button("Show my uploads"):
    source = st.session_state[SOURCE_KEY] = "uploads"
if source == "uploads" and not uploads:
    source = "samples"
if source == "samples" and not samples:
    source = "uploads"
opened = st.session_state.get(CHOSEN_KEY) == "opened"
if samples and source == "samples" and buttons[1].button("Clear opened image" if opened else "Clear sample images"):
    del st.session_state[shared.UPLOADS_KEY]
    samples, source = [], "uploads"

files = uploads if source == "uploads" else samples
if not files:
    st.info("Upload one or more images, or press **Use sample images**.")
    st.stop()
if source == "uploads":
    shown = f"Showing your {len(files)} uploaded file(s)" + (
        " (kept from before in this session; upload new files to replace them)." if kept_before else "."
    )
    hidden = "" if samples else " Press **Use sample images** to score sample images of the experiment's sets instead."
elif opened:
    shown = f"Showing the image opened from another page: {files[0][0]}."
    hidden = " Your uploaded files are kept: press **Show my uploads** to score them again." if uploads else ""
else:
    shown = f"Showing {len(files)} sample images (two from each set of the experiment, ID and OOD)."
    hidden = " Your uploaded files are kept: press **Show my uploads** to score them again." if uploads else ""
st.caption(shown + hidden)

all_id_features = shared.features_or_stop(detector, experiment.id_set.spec, experiment.id_set.name)
id_features = explorer.reference_subset(all_id_features)
reference = shared.reference_set(detector, run_dir, id_features, timestep, steps, score)
weights = detector.backbone_weights()
digests = explorer.digest_files(files)
batch = shared.prepared_uploads(
    detector.backbone, weights, detector.input_size, digests, tuple(files), detector.feature_options
)
for name, reason in batch.errors:
    st.error(f"**{name}** was not scored: {reason}")
for name, note in batch.notes:
    st.info(f"**{name}**: {note}")
if not batch.names:
    st.warning("None of the files could be read as an image.")
    st.stop()

results = explorer.score_uploads(detector, batch.features, batch.names, reference, score, timestep, steps, draws=draws)
label = explorer.SCORE_LABELS[score]
threshold = results[0].threshold
ood_count = sum(result.verdict == "OOD" for result in results)
id_count = sum(result.verdict == "ID" for result in results)
st.success(
    f"Scored {len(results)} image(s) at t={timestep}, {steps} DDIM step(s), {draws} noise draw(s): "
    f"{ood_count} OOD, {id_count} ID at the 95%-TPR threshold {label} = {threshold:.4g}."
)
if ood_count + id_count < len(results):  # a NaN/Inf score or threshold never becomes a verdict
    st.error(f"{len(results) - ood_count - id_count} image(s) got a NaN/Inf score or threshold: no verdict given.")

# The same content always gets the same score (the noise belongs to the feature vector): say so for duplicates.
by_digest: dict[str, list[str]] = {}
for name, digest in digests:
    by_digest.setdefault(digest, []).append(name)
scored = {result.name: result for result in results}
for names in by_digest.values():
    same = [scored[name] for name in names if name in scored]
    listed = ", ".join(f"**{r.name}**" for r in same)
    if len(same) > 1 and len({r.score for r in same}) == 1:
        st.caption(f"Identical files {listed}: one image, one score — {label} = {same[0].score:.6g} for each.")
    elif len(same) > 1:  # cannot happen while the noise is keyed by the features: say so loudly if it ever does
        st.error(f"Identical files {listed} got different scores: {', '.join(f'{r.score:.6g}' for r in same)}.")

id_scores = reference[score]
subset = "" if len(id_features) == len(all_id_features) else f"a fixed random {len(id_features):,} of the "
st.plotly_chart(
    figures.id_histogram(
        id_scores,
        threshold,
        label,
        [(str(number), r.name, r.score, r.verdict) for number, r in enumerate(results, 1)],
        f"{subset or 'All '}{len(all_id_features):,} ID reference images ({experiment.id_set.name}) at t={timestep}, "
        f"{steps} step(s), {draws} draw(s); numbered markers: your images",
    ),
    width="stretch",
    key="score-histogram",
)

per_row = 3
digest_of = dict(digests)  # file name -> content digest (the store holds every file shown here)
set_refs = st.session_state.get(SET_REFS_KEY, {}) if source == "samples" else {}
for (name, data), (_, digest) in zip(files, digests, strict=True):
    if digest not in store:  # the links below find every file shown here
        store.put(name, data)
for start in range(0, len(results), per_row):
    columns = st.columns(per_row)
    chunk = zip(columns, results[start : start + per_row], batch.images[start : start + per_row], strict=False)
    for number, (column, result, image) in enumerate(chunk, start + 1):
        with column.container(border=True):
            st.image(image.resize((96, 96)) if max(image.size) < 96 else image, caption=result.name, width=96)
            badge = {"OOD": ":red-badge[OOD]", "ID": ":green-badge[ID]"}.get(result.verdict, ":gray-badge[no verdict]")
            st.markdown(
                f"**#{number}** {badge} · {label} = `{result.score:.4g}` · above "
                f"{explorer.percent_text(result.id_percentile)} % of ID"
            )
            # Plain HTML rows: a dozen Plotly charts would make every timestep change slow to redraw.
            st.html(explorer.profile_html(result.profile))
            note = explorer.verdict_note(result.profile, result.verdict)
            if note:
                st.caption(note)
            digest = digest_of[result.name]
            token = set_refs.get(digest)
            follow.links(
                explorer.ImageRef.from_token(token) if token else explorer.ImageRef.of_upload(digest), score=False
            )
st.session_state["score_results"] = results
