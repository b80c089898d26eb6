"""Train: extract features of an ID dataset and train an LFDN with live progress; stop any time; use the new model."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dlsr_core import explorer
from dlsr_core.backbones import BACKBONES
from dlsr_core.checkpoint import CheckpointError, run_dir_for_name
from dlsr_core.data import DatasetError, ExperimentError, builtin_sets, overlap_warning, parse_dataset
from pages import shared

JOB_KEY = "train_job"

st.title("Train a detector")
job: explorer.TrainingJob | None = st.session_state.get(JOB_KEY)
busy = job is not None and job.running


try:  # the sets a new model starts from: the loaded model's experiment (the shipped one's without a usable model)
    loaded = shared.current_experiment(shared.load_detector(shared.current_run_dir()), shared.current_run_dir())
    loaded = loaded.experiment
except CheckpointError:
    loaded = explorer.shipped_experiment()


@st.cache_data(show_spinner=False)
def _default_training_set(experiment) -> str | None:
    return explorer.default_training_set(experiment) if experiment is not None else None


offered = builtin_sets()
default_set = _default_training_set(loaded) or offered[0]
kind = default_set.partition(":")[0]  # the form opens on the loaded model's kind of training data
if kind not in ("torchvision", "folder") and default_set not in offered:
    offered.insert(0, default_set)  # e.g. a class selection such as fashion_mnist:fit:classes=0-3,5,7
# Outside the form, so that choosing a source shows only that source's fields (a form reruns only on submit).
source = st.radio(
    "ID dataset",
    ["Built-in", "torchvision by name", "Image folder"],
    index={"torchvision": 1, "folder": 2}.get(kind, 0),
    horizontal=True,
)
with st.form("train"):
    columns = st.columns(3)
    builtin, torchvision_name, download, folder, data_root = None, "", False, "", ""
    if source == "Built-in":
        builtin = columns[0].selectbox(
            "Built-in set",
            offered,
            index=offered.index(default_set) if default_set in offered else 0,
            help="The images the new model learns as in-distribution (default: the loaded model's training set, when "
            "installed). It is evaluated on other images: see **Evaluation sets** below.",
        )
    elif source == "torchvision by name":
        torchvision_name = columns[0].text_input(
            "torchvision dataset",
            default_set.partition(":")[2] if kind == "torchvision" else "CIFAR10:train",
            help="Class[:split]; files must already be on disk unless downloading",
        )
        download = columns[1].checkbox("Allow download (needs network)")
    else:
        folder = columns[0].text_input(
            "Image folder path",
            default_set.partition(":")[2] if kind == "folder" else "",
            help="All images below this folder, any format; subfolders are the classes (torchvision's ImageFolder)",
        )
    if source != "Image folder":
        data_root = columns[2].text_input(
            "Data folder (optional)",
            "",
            help="Where the files of a built-in training split or of a torchvision dataset already are, if not in "
            "their default places",
        )
    columns = st.columns(4)
    backbone = columns[0].selectbox(
        "Backbone",
        list(BACKBONES),
        index=list(BACKBONES).index("efficientnet_lite0"),
        help="efficientnet_lite0 works offline; the others need their weights",
    )
    input_size = columns[1].number_input("Input size (px)", 32, 384, 64, step=32)
    width = columns[2].number_input("LFDN width", 32, 2048, 256, step=32, help="Paper: 1440")
    depth = columns[3].number_input("LFDN depth (blocks)", 1, 32, 4, help="Paper: 16")
    columns = st.columns(4)
    epochs = columns[0].number_input("Epochs", 1, 500, 5)
    batch_size = columns[1].number_input("Batch size", 16, 4096, 256, step=16)
    learning_rate = columns[2].number_input("Learning rate", 1e-5, 1e-1, 1e-3, format="%.5f")
    run_name = columns[3].text_input("Run name", "my_run", help="Saved to checkpoints/<run name>")
    with st.expander("Evaluation sets (the new model's experiment; editable later on **Experiment / data**)"):
        id_text = st.text_input(
            "ID evaluation set",
            "",
            help="Held-out images of the training data, e.g. torchvision:CIFAR10:test or "
            "folder:/path/test. Blank: the training set's test split where one exists (a train/ folder: its test/ "
            "or val/ sibling), else the training set itself, which every page then flags.",
        )
        ood_offered = loaded.groups if loaded is not None else {}
        ood_choice = st.multiselect(
            "OOD sets",
            list(ood_offered),
            default=list(ood_offered),
            format_func=lambda spec: f"{loaded.name_of(spec)} ({ood_offered[spec]})",
            help="Taken from the loaded model's experiment; add others later on the Experiment / data page.",
        )
    start_over = st.checkbox(
        "Start over",
        help="A run of this name that already exists is continued by default (same width, depth and batch size "
        "needed); tick this to train it again from scratch, replacing its checkpoints.",
    )
    start = st.form_submit_button("Start training", disabled=busy, type="primary")

if start:
    spec = {
        "Built-in": builtin,
        "torchvision by name": f"torchvision:{torchvision_name}",
        "Image folder": f"folder:{folder}",
    }[source]
    run_dir, problem, new_experiment = None, None, None
    try:
        spec = str(parse_dataset(spec))
        run_dir = run_dir_for_name(run_name, explorer.checkpoints_root())  # only ever a folder directly inside it
        new_experiment = explorer.evaluation_sets(spec, loaded, id_text, tuple(ood_choice))
    except (DatasetError, CheckpointError, ExperimentError) as error:
        problem = explorer.gui_message(str(error))
    if run_dir is not None and run_dir.resolve() == explorer.default_run_dir().resolve():
        problem = "that name is the shipped default model; pick another run name"
    if problem:
        st.error(f"Cannot start: {problem}")
    else:
        request = explorer.TrainRequest(
            dataset=spec,
            run_dir=run_dir,
            backbone=backbone,
            input_size=int(input_size),
            width=int(width),
            depth=int(depth),
            epochs=int(epochs),
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            data_root=data_root.strip() or None,
            download=download,
            resume=not start_over,
            experiment=new_experiment,
        )
        if (run_dir / "resume.pt").exists():
            st.info(
                f"`{run_dir.name}` already exists: "
                + (
                    "it is trained again from scratch."
                    if start_over
                    else "training continues it (tick **Start over** to train it from scratch instead)."
                )
            )
        if overlap_warning(new_experiment):
            st.warning(overlap_warning(new_experiment))
        job = explorer.TrainingJob(request).start()
        st.session_state[JOB_KEY] = job


def _render(job: explorer.TrainingJob) -> None:
    state = job.snapshot()
    request = job.request
    st.markdown(
        f"**{request.dataset}** → `{request.run_dir}` · {request.backbone} @ {request.input_size}px · "
        f"width {request.width} × depth {request.depth} · phase: **{state.phase}**"
    )
    if state.to_extract:
        st.progress(state.extracted / state.to_extract, text=f"features: {state.extracted}/{state.to_extract} images")
    if state.phase in ("training", "finished", "stopped") and state.steps_per_epoch:
        done = (max(state.epoch - 1, 0) * state.steps_per_epoch + state.step) / (state.epochs * state.steps_per_epoch)
        st.progress(
            min(done, 1.0),
            text=f"epoch {state.epoch}/{state.epochs}, step {state.step}/"
            f"{state.steps_per_epoch} · checkpoints saved: {state.checkpoints}",
        )
    if state.losses:
        st.line_chart(pd.DataFrame({"training loss": state.losses}), height=220, x_label="step", y_label="loss")
    if state.message:
        (st.error if state.phase == "failed" else st.caption)(state.message)


def _live() -> None:
    current = st.session_state.get(JOB_KEY)
    if current is None:
        return
    _render(current)
    if current.running:
        if st.button("Stop training", help="Stops after the current step; the last saved checkpoint is kept"):
            current.stop()
            st.toast("Stopping…")
    elif not st.session_state.get("train_announced") == id(current):
        st.session_state["train_announced"] = id(current)
        st.rerun()  # a full rerun refreshes the "use this model" section below


# Refresh every second only while a job runs: when it ends, the fragment's last refresh triggers one full rerun,
# which re-creates it without a timer, so a finished or stopped run costs nothing.
polling = explorer.poll_interval(st.session_state.get(JOB_KEY))
st.fragment(run_every=polling)(_live)()
job = st.session_state.get(JOB_KEY)
if job is not None and not job.running and (Path(job.request.run_dir) / "last.safetensors").is_file():
    st.success(f"`{job.request.run_dir.name}` is now selectable on the Home page.")
    if st.button("Use this model now"):
        st.session_state[shared.RUN_KEY] = str(job.request.run_dir)
        st.switch_page("pages/home.py")
st.caption(f"Runs are saved under `{explorer.checkpoints_root()}`; training continues if you switch pages.")
