"""Feature vs pixel: the pixel DDPM's reconstructions next to the originals, DLSR's feature reconstruction quality,
and the time each took on the same images — the paper's argument for reconstructing features, made visible."""

import pandas as pd
import streamlit as st

from dlsr_core import explorer
from dlsr_core.checkpoint import CheckpointError
from pages import shared, widgets

st.title("Feature vs pixel")
st.markdown(
    "A pixel-level diffusion model (the paper's *DDPM* baseline) scores an image by noising **every pixel** to "
    "several levels and rebuilding it, one UNet pass per level and step. DLSR runs the backbone once and "
    "reconstructs a short **feature vector** with a small MLP. Same images, both methods, timed here."
)
detector, run_dir = shared.detector_or_stop()
experiment = shared.current_experiment(detector, run_dir).experiment


def _pixel_noise_std(config, levels: tuple[int, ...]) -> list[float]:
    """sqrt(1 - alpha_bar_t) of the pixel DDPM's linear schedule at each noise level."""
    import numpy as np

    betas = np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=np.float64)
    alpha_bar = np.cumprod(1.0 - betas)
    return [float(np.sqrt(1.0 - alpha_bar[level])) for level in levels]


@st.cache_resource(show_spinner="Loading the pixel DDPM…", max_entries=2)
def _pixel_model(path: str, fingerprint: str):
    del fingerprint  # cache key only: a retrained model is reloaded
    return explorer.load_pixel_model(path)


try:
    path = explorer.pixel_model_path()
    pixel_model = _pixel_model(str(path), explorer.run_fingerprint(path))
except CheckpointError as error:
    st.error(f"The pixel DDPM baseline is not available: {error}")
    st.stop()
pixel_training_set = explorer.baseline_training_set(pixel_model.info)
if pixel_training_set != experiment.training_set:
    st.info(
        f"No pixel DDPM trained on this model's training set ({experiment.training_set}) is available: the one in "
        f"`{path.parent}` {'records no training set' if pixel_training_set is None else 'was trained on other data'}, "
        "so comparing it with this model would compare detectors of different data. A pixel DDPM is trained with "
        "`python -m dlsr_core.baselines.train --only pixel_ddpm --out DIR` and read from `$DLSR_BASELINES_DIR`; this "
        "page uses it once its metadata records this model's training set."
    )
    st.stop()

timestep, steps, _ = widgets.sampling_controls(detector, with_score=False)
ready = shared.experiment_features(detector, experiment)
columns = st.columns(3)
spec = columns[0].selectbox("Images from", list(ready), format_func=experiment.name_of)
count = columns[1].slider("Images", 2, 12, 6)
last = max(len(ready[spec]) - count, 0)
start = columns[2].number_input("First image", 0, last, 0, step=count)
indices = tuple(int(i) for i in ready[spec].indices.numpy()[int(start) : int(start) + count])  # readable images

id_features = explorer.reference_subset(ready[experiment.id_set.spec])
extractor = shared.get_extractor(detector.backbone, detector.backbone_weights(), detector.feature_options)


@st.cache_data(max_entries=32, show_spinner="Scoring with both methods…")
def _compare(
    run_fingerprint: str,
    pixel_fingerprint: str,
    reference: str,
    spec: str,
    indices: tuple[int, ...],
    timestep: int,
    steps: int,
    draws,
):
    images = [image for image in explorer.dataset_images(spec, indices) if image is not None]
    return explorer.feature_vs_pixel(
        detector, pixel_model, extractor, images, timestep, steps, id_features=id_features.features, draws=draws
    )


result = _compare(
    shared.fingerprint(run_dir),
    explorer.run_fingerprint(path),
    id_features.dataset,
    spec,
    indices,
    timestep,
    steps,
    widgets.current_draws(),
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
speeds = explorer.measured_speeds(["mfsim", "pixel_ddpm"])
benchmark = ""
if speeds is not None and speeds.mfsim_over_pixel_ddpm is not None:
    rates = ", ".join(f"{label} {rate:,.0f}" for _, label, rate in speeds.rows)
    benchmark = (
        f" On many images the gap is wider: `python -m benchmarks.compare` measured DLSR "
        f"**{speeds.mfsim_over_pixel_ddpm:.1f}×** faster end to end ({rates} images/s, every method on the same "
        "decoded images). A handful of images is dominated by fixed costs — the first batch, Python overhead, the "
        "backbone's fixed-size passes — which hide most of DLSR's advantage."
    )
st.caption(f"Wall time for these {n} images on this machine (first call; a repeat is served from cache).{benchmark}")

st.subheader("Pixel DDPM: original and reconstruction from each noise level")
rows = [("original", result.originals)] + [
    (f"from t = {level}", result.reconstructions[i]) for i, level in enumerate(result.levels)
]
for label, pictures in rows:
    cells = st.columns([1] + [1] * n)
    cells[0].markdown(f"**{label}**")
    for column, picture in zip(cells[1:], pictures, strict=True):
        column.image(picture, width=64, clamp=True)

pixel_noise = _pixel_noise_std(pixel_model.config, result.levels)
dlsr_noise = float((1.0 - detector.schedule.alpha_bar[timestep]).sqrt())
st.caption(
    f"The two t are on different scales. The pixel DDPM counts {pixel_model.config.num_train_timesteps:,} steps and "
    f"noises pixels in [−1, 1]: at t = {result.levels[0]} … {result.levels[-1]} the noise has a spread of "
    f"{pixel_noise[0]:.2f} … {pixel_noise[-1]:.2f}, so most of the picture must be redrawn. DLSR counts "
    f"{detector.info.config.num_timesteps} steps and noises standardized feature vectors (spread 1): at t = {timestep} "
    f"the noise has a spread of {dlsr_noise:.2f}, a light touch."
)

st.subheader("Scores and their references")
table = pd.DataFrame(
    {
        "image": [f"{experiment.name_of(spec)} #{i}" for i in indices[:n]],
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
    f"images' errors; ID threshold {result.pixel_threshold95:.3g} (95% of held-out images of its training set "
    f"{pixel_training_set} score at or below it). DLSR MFsim at t={timestep}: minus the mean per-stage cosine between "
    f"features and their reconstruction; ID threshold {result.dlsr_threshold95:.4g} (95% of the "
    f"{len(id_features):,} ID evaluation images of {experiment.id_set.name}). Above a threshold = OOD. `cos stage k`: "
    "how well DLSR reconstructed stage k's features (1 = perfectly)."
)
