"""DLSR Explorer: `streamlit run app.py`. Routes to the pages in pages/ and shows the loaded model in the sidebar."""

import os

import streamlit as st
import torch

from dlsr_core import explorer
from pages import shared, widgets

# Half the cores (at most 4) for torch, overridable with DLSR_TORCH_THREADS. On a shared 2-core machine two torch
# threads competing with other processes made scoring 5x slower than one (measured), and the browser needs a core.
torch.set_num_threads(int(os.environ.get("DLSR_TORCH_THREADS", max(1, min(4, (os.cpu_count() or 2) // 2)))))

st.set_page_config(page_title="DLSR Explorer", page_icon=":material/search:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home / model", icon=":material/home:", default=True),
    st.Page("pages/experiment.py", title="Experiment / data", icon=":material/dataset:"),
    st.Page("pages/score_images.py", title="Score images", icon=":material/image_search:"),
    st.Page("pages/how_dlsr_works.py", title="How DLSR works", icon=":material/school:"),
    st.Page("pages/distributions.py", title="Score distributions", icon=":material/bar_chart:"),
    st.Page("pages/feature_map.py", title="Feature map (UMAP)", icon=":material/scatter_plot:"),
    st.Page("pages/failure_cases.py", title="Failure cases", icon=":material/report:"),
    st.Page("pages/compare_models.py", title="Compare models", icon=":material/compare_arrows:"),
    st.Page("pages/feature_vs_pixel.py", title="Feature vs pixel", icon=":material/compare:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
]
page = st.navigation(PAGES)

detector = None
with st.sidebar:
    run_dir = shared.current_run_dir()
    try:
        detector = shared.load_detector(run_dir)
        st.markdown(explorer.model_caption(detector, run_dir))
        current = shared.current_experiment(detector, run_dir)
        st.markdown(explorer.experiment_caption(current))
        if current.problems:  # the pages use a stated fallback meanwhile
            st.error(f"{current.problems[0][:400]} — see **Experiment / data**.")
        if current.overlap:  # on every page: the metrics of such a run look better than they are
            st.warning(current.overlap)
    except Exception as error:  # the page itself explains; the sidebar only must not crash
        st.warning(f"No usable model at `{run_dir}` ({type(error).__name__}).")
    widgets.draws_control()  # every page scores with this many noise draws per image
    st.caption(
        "DLSR: diffusion-based layer-wise semantic reconstruction for unsupervised OOD detection "
        "(NeurIPS 2024). All scores: higher = more OOD."
    )

shared.page_started()
try:
    page.run()
finally:  # also after st.stop(): once the first page is up, load what the next ones need (see shared.warm_up)
    shared.page_finished()
    if detector is not None:
        shared.warm_up(detector, run_dir)
