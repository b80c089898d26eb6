"""Experiment / data: the loaded model's sets — what it was trained on, its ID evaluation set, its OOD sets — and
the ways to change them: add a set by name, upload images (files or ZIP archives), retag or remove a set, change the
ID evaluation set, or take the sets of a template (the paper's settings)."""

from pathlib import Path

import streamlit as st

from dlsr_core import explorer
from dlsr_core.data import (
    GROUPS,
    DatasetError,
    ExperimentError,
    OODSet,
    UploadError,
    remove_stored_set,
    store_uploaded_set,
    user_data_dir,
)
from pages import shared

MESSAGE_KEY = "experiment_message"  # (kind, text) shown once after an edit's rerun


def _describe(spec: str) -> explorer.SetInfo:
    return _described(spec, explorer.experiment_version(run_dir))


@st.cache_data(show_spinner=False, max_entries=128, ttl=120)
def _described(spec: str, version: str) -> explorer.SetInfo:
    del version  # cache key: a new experiment re-opens its sets (a folder may have been filled meanwhile)
    return explorer.describe_set(spec)


def _feature_state(spec: str) -> str:
    if shared.ready_features(detector, spec) is not None:
        return "cached"
    status = shared.extraction_status(detector, spec)
    if status is None:
        return "not extracted yet"
    if status.state == "failed":
        return f"extraction failed: {status.error[:200]}"
    return f"extracting: {100 * status.fraction:.0f} %" if status.total else "extracting…"


def _save(experiment, message: str, extract: str | None = None) -> None:
    """Save an edit, start extracting a new set's features, and rerun with `message` shown."""
    try:
        explorer.save_edit(current, experiment)
    except (ExperimentError, OSError) as error:
        st.error(f"The experiment could not be saved: {error}")
        return
    if extract is not None:
        shared.start_extraction(detector, extract)
    st.session_state[MESSAGE_KEY] = ("success", message)
    st.rerun()


st.title("Experiment / data")
detector, run_dir = shared.detector_or_stop()
current = shared.current_experiment(detector, run_dir)
experiment = current.experiment
st.markdown(
    "The **experiment** names what this model is studied on: the images it was trained on, held-out **ID "
    "evaluation** images of the same kind, and **OOD sets** it should flag — *far* (other content) or *near* (close "
    "to the ID data). Every page of the app uses these sets."
)
kind, text = st.session_state.pop(MESSAGE_KEY, (None, None))
if text:
    getattr(st, kind)(text)
shared.experiment_notes(current)
where = f"Read from `{current.path}`." if current.path is not None else "Not saved yet (a fallback)."
st.caption(
    f"{where} Edits are saved to `{current.edits_path}`"
    + (" (the shipped model's own file stays unchanged)." if current.edits_path.parent != run_dir else ".")
    + f" Uploaded sets are stored in `{user_data_dir()}`."
)

specs = [experiment.training_set, *experiment.specs]
infos = {spec: _describe(spec) for spec in specs}
states = {spec: _feature_state(spec) for spec in experiment.specs}
states[experiment.training_set] = _feature_state(experiment.training_set) + " (used by k-NN / Mahalanobis)"
st.table(explorer.set_rows(experiment, infos, states))
if experiment.class_names:
    st.caption(f"ID classes ({len(experiment.class_names)}): {', '.join(experiment.class_names)}.")
running = {
    spec: experiment.name_of(spec)
    for spec in experiment.specs
    if (status := shared.extraction_status(detector, spec)) is not None and not status.finished
}
if running:
    shared.show_extraction(detector, running)
missing = [
    spec
    for spec in experiment.specs
    if states[spec].startswith(("not extracted", "extraction failed")) and infos[spec].problem is None
]
if missing and st.button(
    f"Extract the features of {len(missing)} set(s) now",
    help="In the background, one set after another, with progress; other pages stay usable meanwhile.",
):
    for spec in missing:
        shared.start_extraction(detector, spec)
    st.rerun()

st.header("Add a set")
by_name, by_upload = st.tabs(["By dataset name", "By uploading images"])
with by_name, st.form("add_by_name"):
    spec_text = st.text_input(
        "Dataset",
        placeholder="folder:/path/to/images · torchvision:SVHN:test · digits · letters+rot90",
        help="Anything `python -m dlsr_core` accepts: folder:<path> (every image below it; subfolders are classes), "
        "torchvision:<Class>[:<split>], the built-in sets (digits, letters, textures, the bundled demo sets, …), each "
        "optionally followed by shifts such as +rot90, +invert, +blur.",
    )
    columns = st.columns([2, 1, 1])
    name_text = columns[0].text_input("Display name (optional)", max_chars=40)
    group = columns[1].radio("OOD group", GROUPS, horizontal=True, key="add_group")
    download = columns[2].checkbox("Allow download", help="Let torchvision download a missing set (needs network)")
    if st.form_submit_button("Add as OOD set", type="primary"):
        try:
            spec, name = explorer.named_set(spec_text, name_text, download, tuple(experiment.names.values()))
            _save(experiment.with_ood_set(OODSet(spec, name, group)), f"Added **{name}** ({spec}).", extract=spec)
        except (DatasetError, ExperimentError, OSError) as error:
            st.error(f"Cannot add {spec_text.strip() or 'an empty name'}: {error}")

with by_upload, st.form("add_by_upload"):
    uploads = st.file_uploader(
        "Image files or ZIP archives (subfolders in a ZIP are the class labels, as in torchvision's ImageFolder)",
        type=[*explorer.UPLOAD_TYPES, "zip"],
        accept_multiple_files=True,
    )
    columns = st.columns([2, 1])
    upload_name = columns[0].text_input("Set name", max_chars=40, key="upload_name")
    upload_group = columns[1].radio("OOD group", GROUPS, horizontal=True, key="upload_group")
    if st.form_submit_button("Store and add as OOD set", type="primary"):
        if not uploads or not upload_name.strip():
            st.error("Choose files to upload and give the set a name.")
        else:
            bar = st.progress(0.0, text="Checking and storing the files…")
            try:
                stored = store_uploaded_set(
                    upload_name,
                    [(file.name, file.getvalue()) for file in uploads],
                    progress=lambda done, total: bar.progress(done / total, text=f"Stored {done:,} of {total:,}"),
                )
            except (UploadError, ValueError, OSError) as error:  # ArchiveError is a ValueError
                bar.empty()
                st.error(f"Nothing was stored: {error}")
            else:
                try:
                    updated = explorer.with_uploaded_set(experiment, stored, upload_name, upload_group)
                except (DatasetError, ExperimentError) as error:
                    remove_stored_set(stored.path)  # not part of the experiment: keep nothing of it
                    st.error(f"The set was not added (its files were removed again): {error}")
                else:
                    _save(updated, explorer.upload_summary(stored, upload_name), extract=stored.spec)

if experiment.ood_sets:
    st.header("Change an OOD set")
    columns = st.columns([2, 1, 1, 1])
    chosen = columns[0].selectbox("OOD set", list(experiment.groups), format_func=experiment.name_of)
    new_group = columns[1].radio("Group", GROUPS, index=GROUPS.index(experiment.groups[chosen]), horizontal=True)
    if columns[2].button("Save group"):
        ood = experiment.ood_set(chosen)
        _save(experiment.with_ood_set(OODSet(ood.spec, ood.name, new_group, ood.note)), f"{ood.name} is {new_group}.")
    uploaded_folder = Path(chosen.removeprefix("folder:")).resolve().parent == (user_data_dir() / "sets").resolve()
    delete = uploaded_folder and st.checkbox("Also delete its uploaded files", help=chosen.removeprefix("folder:"))
    if columns[3].button("Remove"):
        if delete:
            try:
                remove_stored_set(chosen.removeprefix("folder:"))
            except (UploadError, OSError) as error:
                st.error(f"The files could not be deleted: {error}")
        _save(experiment.without_ood_set(chosen), f"Removed **{experiment.name_of(chosen)}**.")

st.header("ID evaluation set")
with st.form("id_set"):
    columns = st.columns([3, 2])
    id_text = columns[0].text_input("Dataset", experiment.id_set.spec, help="Held-out images of the training data.")
    id_name = columns[1].text_input("Display name", experiment.id_set.name, max_chars=40)
    if st.form_submit_button("Use as ID evaluation set"):
        try:
            spec, name = explorer.named_set(id_text, id_name)
            _save(explorer.with_id_set(experiment, spec, name), f"The ID evaluation set is now **{name}**.", spec)
        except (DatasetError, ExperimentError, OSError) as error:
            st.error(f"Cannot use {id_text.strip()}: {error}")

found = explorer.templates()
if found:
    st.header("Sets of a template")
    columns = st.columns([3, 1])
    title = columns[0].selectbox("Template", list(found), help=f"Experiment files in `{explorer.TEMPLATES_DIR}`")
    template, warning = explorer.from_template(experiment, found[title])
    if warning:
        st.warning(warning)
    st.caption(
        f"ID: {template.id_set.spec}; OOD: " + ", ".join(f"{s.name} ({s.group})" for s in template.ood_sets) + ". "
        "Relative folders are read from the user data folder; sets this machine lacks are listed as unavailable."
    )
    if columns[1].button("Use these sets"):
        _save(template, f"Took the sets of **{title}**.")

if current.source == "user copy" and st.button("Back to the run's own sets", help=f"Deletes {current.path}"):
    explorer.reset_edits(current)
    st.session_state[MESSAGE_KEY] = ("success", "Back to the run's own experiment file.")
    st.rerun()
if current.source == "fallback" and st.button("Save these sets as the run's experiment"):
    _save(experiment, f"Saved to `{current.edits_path}`.")
