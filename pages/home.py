"""Home / model: what DLSR does, which model is loaded, and choosing another checkpoint."""

from pathlib import Path

import streamlit as st

from dlsr_core import explorer
from pages import shared

DIAGRAM = Path(__file__).resolve().parent.parent / "assets" / "dlsr_diagram.svg"

st.title("DLSR Explorer")
st.markdown(
    "**DLSR** detects out-of-distribution (OOD) images without any labels. A frozen image backbone turns each "
    "image into a vector of pooled features from *every* stage, from edges to object parts. A small diffusion "
    "model (LFDN) is trained to denoise such vectors for in-distribution (ID) data only. To score an image, its "
    "vector is noised to a small timestep *t* and reconstructed: ID images come back close to where they started, "
    "unfamiliar images do not. The reconstruction error (**MSE**), the per-stage cosine dissimilarity "
    "(**MFsim**) and the likelihood-ratio-like **LR** score all say: higher = more OOD."
)
if DIAGRAM.is_file():
    st.image(str(DIAGRAM), caption="The DLSR pipeline", width="stretch")


def _choose(run_key: str = shared.RUN_KEY) -> None:
    st.session_state[run_key] = st.session_state["run_choice"]


runs = [str(path) for path in explorer.list_run_dirs()]
current = str(shared.current_run_dir())
if current not in runs:
    runs.insert(0, current)
st.session_state["run_choice"] = current
st.selectbox(
    "Checkpoint (run folders in checkpoints/ with last.safetensors)",
    runs,
    key="run_choice",
    on_change=_choose,
    format_func=lambda path: f"{Path(path).name}  —  {path}",
)

detector, run_dir = shared.detector_or_stop()
summary = explorer.summarize(detector, run_dir)
experiment = shared.current_experiment(detector, run_dir).experiment
st.subheader("Loaded model")
columns = st.columns(2)
columns[0].metric("Backbone", summary.backbone)
columns[1].metric("Trained on", summary.dataset)
columns = st.columns(2)
columns[0].metric("Epochs", summary.epoch)
columns[1].metric("LFDN size", f"{summary.parameters / 1e6:.2f} M params")
st.markdown(
    f"- input size **{summary.input_size}px**, backbone weights `{summary.weights}`\n"
    f"- preset **{summary.preset}** (`paper`: the paper's equations; `official`: the authors' released code)\n"
    f"- feature vector **{summary.feature_dim}-d** from {len(summary.stage_dims)} stages {summary.stage_dims}\n"
    f"- LFDN width {summary.width} × depth {summary.depth}; files {summary.megabytes:.1f} MB in `{summary.run_dir}`\n"
    f"- evaluated on **{experiment.id_set.name}** against {len(experiment.ood_sets)} OOD set(s): "
    + ", ".join(f"{s.name} ({s.group})" for s in experiment.ood_sets)
    + " — see **Experiment / data**\n"
    + (
        "- LR score: available (early checkpoint present)"
        if summary.has_early
        else "- LR score: not available (no first.safetensors)"
    )
)
st.info(
    "Next: **How DLSR works** to follow one image through the method step by step (the page to show a class); "
    "**Score images** to test your own pictures; **Score distributions** for AUROC/FPR95 of every method and "
    "the paper's explanatory figures (training's effect, Fig. 3; the timestep sweep, Fig. 4); **Feature map** to "
    "see the sets in 2-D and select images on it; **Failure cases** for every error at the threshold and a measured "
    "reason for it; **Compare models** to put a second model (another run or epoch) beside this one, image by image."
)
