"""Feature vs pixel: the pixel DDPM's reconstructions next to the originals, DLSR's feature reconstruction quality,
and the time each took on the same images — the paper's argument for reconstructing features, made visible."""

import pandas as pd
import streamlit as st

from dlsr_core import explorer
from dlsr_core.baselines.store import BaselineFileError
from pages import shared

st.title("Feature vs pixel")
st.markdown(
    "A pixel-level diffusion model (the paper's *DDPM* baseline) scores an image by noising **every pixel** to "
    "several levels and rebuilding it, one UNet pass per level and step. DLSR runs the backbone once and "
    "reconstructs a short **feature vector** with a small MLP. Same images, both methods, timed here."
)
detector, run_dir = shared.detector_or_stop()


@st.cache_resource(show_spinner="Loading the pixel DDPM…", max_entries=2)
def _pixel_model(path: str, fingerprint: str):
    del fingerprint  # cache key only: a retrained model is reloaded
    return explorer.load_pixel_model(path)


try:
    path = explorer.pixel_model_path()
    pixel_model = _pixel_model(str(path), explorer.run_fingerprint(path))
except BaselineFileError as error:
    st.error(f"The pixel DDPM baseline is not available: {error}")
    st.stop()
mismatch = explorer.pixel_model_mismatch(detector, pixel_model)
if mismatch:
    st.info(f"Feature vs pixel is not offered for this model: {mismatch}")
    st.stop()

timestep, steps, _ = shared.sampling_controls(detector, with_score=False)
sets = [explorer.DEMO_ID_SET, *explorer.DEMO_OOD_SETS]
columns = st.columns(3)
spec = columns[0].selectbox("Images from", sets, format_func=lambda s: s.removeprefix("demo:"))
count = columns[1].slider("Images", 2, 12, 6)
start = columns[2].number_input("First image", 0, 900, 0, step=count)
indices = tuple(range(int(start), int(start) + count))

id_features = shared.features_or_stop(detector, explorer.DEMO_ID_SET)
extractor = shared.get_extractor(detector.backbone, detector.backbone_weights(), detector.feature_options)


@st.cache_data(max_entries=32, show_spinner="Scoring with both methods…")
def _compare(
    run_fingerprint: str, pixel_fingerprint: str, spec: str, indices: tuple[int, ...], timestep: int, steps: int, draws
):
    images = [image for image in explorer.dataset_images(spec, indices) if image is not None]
    return explorer.feature_vs_pixel(
        detector, pixel_model, extractor, images, timestep, steps, id_features=id_features.features, draws=draws
    )


result = _compare(
    shared.fingerprint(run_dir), explorer.run_fingerprint(path), spec, indices, timestep, steps, shared.current_draws()
)
n = len(result.dlsr_scores)
timing = st.columns(3)
timing[0].metric("Pixel DDPM", f"{result.pixel_seconds:.2f} s", help=pixel_model.setting.label())
timing[1].metric(
    "DLSR (backbone + diffusion)",
    f"{result.dlsr_seconds:.3f} s",
    help=f"backbone {result.backbone_seconds:.3f} s + diffusion {result.diffusion_seconds:.3f} s",
)
timing[2].metric("DLSR is faster by", f"{result.speed_ratio:.0f}×")
st.caption(
    f"Wall time for these {n} images on this machine (first call; a repeat is served from cache). "
    "`python -m benchmarks.compare` measures both on hundreds of images."
)

st.subheader("Pixel DDPM: original and reconstruction from each noise level")
rows = [("original", result.originals)] + [
    (f"from t = {level}", result.reconstructions[i]) for i, level in enumerate(result.levels)
]
for label, pictures in rows:
    cells = st.columns([1] + [1] * n)
    cells[0].markdown(f"**{label}**")
    for column, picture in zip(cells[1:], pictures, strict=True):
        column.image(picture, width=64, clamp=True)

st.subheader("Scores and their references")
table = pd.DataFrame(
    {
        "image": [f"{spec.removeprefix('demo:')} #{i}" for i in indices[:n]],
        "pixel DDPM score": result.pixel_scores,
        "pixel verdict": [explorer.verdict(s, result.pixel_threshold95) for s in result.pixel_scores],
        "DLSR MFsim": result.dlsr_scores,
        "DLSR verdict": [explorer.verdict(s, result.dlsr_threshold95) for s in result.dlsr_scores],
        **{f"cos stage {k + 1}": result.stage_cos[:, k] for k in range(result.stage_cos.shape[1])},
    }
)
st.dataframe(table, hide_index=True, width="stretch")
st.caption(
    f"Pixel DDPM score: mean over noise levels of the reconstruction error, in standard deviations of held-out ID "
    f"images' errors; ID threshold {result.pixel_threshold95:.3g} (95% of held-out Fashion-MNIST images score "
    f"at or below it). DLSR MFsim at t={timestep}: minus the mean per-stage cosine between features and their "
    f"reconstruction; ID threshold {result.dlsr_threshold95:.4g} (95% of the demo ID images). Above a threshold = "
    "OOD. `cos stage k`: how well DLSR reconstructed stage k's features (1 = perfectly)."
)
