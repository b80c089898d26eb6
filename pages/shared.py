"""Streamlit plumbing shared by the pages: cached loaders, the shared sampling widgets, error display.

Heavy objects live behind st.cache_resource (model, backbone, feature sets: read-only, never copied) and derived
arrays behind st.cache_data keyed by the run's fingerprint, dataset, timestep and steps, so a widget change re-runs
only the cheap diffusion step and a page switch reloads nothing. This is not a page: app.py does not route to it.
"""

from __future__ import annotations

import hashlib
import html
import threading
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dlsr_core import explorer
from dlsr_core.checkpoint import CheckpointError
from dlsr_core.diffusion import OFFICIAL_MIN_TIMESTEP
from dlsr_core.features import FeatureSet
from dlsr_core.presets import FeatureOptions
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

RUN_KEY = "run_dir"
# The timestep, steps, score and draws chosen on one page hold on every page. Streamlit drops a widget's value when a
# page without that widget is shown; the old fix, re-assigning st.session_state[key] at the top of app.py, never runs
# under AppTest after a page switch (it re-runs only the page script), and there the next page's widget came back with
# its first option (MSE) whatever was chosen (persist_state="session" did not help either, Streamlit 1.67). So each
# value is kept under a plain key, written by the widget's on_change, and assigned to the widget's key by the page
# itself just before the widget renders (_restore), which works in both.
KEPT_PREFIX = "_kept_"
DEFAULT_TIMESTEP = 5  # the shipped model's; pages open at the loaded model's own (detector.scoring.timestep)
MAX_TIMESTEP = 50
# DDIM steps offered in the app: one per timestep up to t = 10 covers the paper's range (t = 3-10), and re-scoring the
# 2,000 ID reference images stays near 3 s at 10 steps on one CPU thread (the CLI takes any number).
MAX_STEPS = 10
DRAWS_KEY = "draws"
DRAWS_CHOICES = (1, 2, 4, 8, 16)
UPLOADS_KEY = "score_uploads"


def current_run_dir() -> Path:
    """The run chosen on the Home page, else the default run."""
    return Path(st.session_state.get(RUN_KEY) or explorer.default_run_dir())


@st.cache_resource(show_spinner="Loading the DLSR model…", max_entries=4)
def _load_detector(path: str, fingerprint: str) -> Detector:
    del fingerprint  # part of the cache key only: a retrained run gets reloaded
    return Detector.load(path)


def load_detector(run_dir: Path) -> Detector:
    """The detector of `run_dir`, loaded once per checkpoint version."""
    return _load_detector(str(run_dir), explorer.run_fingerprint(run_dir))


@st.cache_resource(show_spinner="Loading the comparison baselines…")
def comparison_baselines():
    """The shipped baselines of the paper's comparison (dlsr_core.comparison.Baselines), loaded once per process."""
    return explorer.load_baselines()


@st.cache_resource(max_entries=4)
def _model_id(run_fingerprint: str, _detector: Detector) -> str:
    return explorer.model_id(_detector)


def model_id(detector: Detector, run_dir: Path) -> str:
    """The loaded model's content id for exports and stored maps (explorer.model_id), computed once per run."""
    return _model_id(fingerprint(run_dir), detector)


def detector_or_stop() -> tuple[Detector, Path]:
    """The current detector, or an explanation and st.stop() when it cannot be loaded."""
    run_dir = current_run_dir()
    try:
        return load_detector(run_dir), run_dir
    except CheckpointError as error:
        st.error(f"The model in `{run_dir}` cannot be used: {error}")
        st.info("Choose another checkpoint on the **Home / model** page or train one on the **Train** page.")
        st.stop()
        raise  # unreachable: st.stop() raises


def fingerprint(run_dir: Path) -> str:
    return explorer.run_fingerprint(run_dir)


@st.cache_resource(show_spinner="Loading the backbone…", max_entries=2)
def get_extractor(backbone: str, weights: str, options: FeatureOptions):
    from dlsr_core.backbones import create_feature_extractor

    return create_feature_extractor(backbone, weights=weights, options=options)


@st.cache_resource
def _feature_store() -> tuple[dict, threading.Lock]:
    """Process-wide memo of feature sets; filled outside st.cache_* so the progress bar is live, not replayed."""
    return {}, threading.Lock()


def features_or_stop(detector: Detector, spec: str) -> FeatureSet:
    """Features of `spec` for `detector`, extracted once with a progress bar; st.stop() with a message on failure."""
    from dlsr_core.backbones import WeightsUnavailableError
    from dlsr_core.data import DatasetError

    store, lock = _feature_store()
    key = (detector.backbone, detector.info.weights, detector.input_size, detector.feature_options, spec)
    try:
        if key not in store:
            with lock:
                if key not in store:
                    label = f"Extracting {detector.backbone} features of {spec} (runs once, then cached on disk)…"
                    bar = st.progress(0.0, text=label)
                    store[key] = explorer.load_features(
                        detector, spec, progress=lambda done, total: bar.progress(done / max(total, 1), text=label)
                    )
                    bar.empty()
        features = store[key]
        detector.check_features(features.features, features.backbone)
        return features
    except CheckpointError as error:
        st.error(f"Wrong backbone for this checkpoint: {error}")
    except WeightsUnavailableError as error:
        st.error(f"The backbone weights for this checkpoint are not available offline: {error}")
    except DatasetError as error:
        st.error(f"Dataset {spec} cannot be opened: {error}")
    st.stop()
    raise RuntimeError("unreachable")


def set_scores(
    detector: Detector,
    run_fingerprint: str,
    spec: str,
    features: FeatureSet,
    timestep: int,
    steps: int | None,
    with_lr: bool = False,
) -> dict[str, np.ndarray]:
    """DLSR scores of a feature set at (timestep, steps) and the sidebar's noise draws; cached per run and spec.

    LR costs a second model pass, so it is computed only when asked for.
    """
    return _set_scores(detector, run_fingerprint, spec, features, timestep, steps, with_lr, current_draws())


@st.cache_data(max_entries=256, show_spinner=False)
def _set_scores(
    _detector: Detector,
    run_fingerprint: str,
    spec: str,
    _features: FeatureSet,
    timestep: int,
    steps: int | None,
    with_lr: bool,
    draws: int,
) -> dict[str, np.ndarray]:
    return explorer.score_matrix(_detector, _features.features, timestep, steps, with_lr=with_lr, draws=draws)


def _restore(key: str, default):
    """The value to show in widget `key`: the one kept from the last change (any page), else the current or default."""
    state = st.session_state
    value = state[KEPT_PREFIX + key] if KEPT_PREFIX + key in state else state.get(key, default)
    state[key] = state[KEPT_PREFIX + key] = value  # assigned here, after st.navigation: see KEPT_PREFIX
    return value


def _keep(key: str, value=None) -> None:
    """Remember widget `key`'s value (on_change callback), or `value` when a page clamps it."""
    state = st.session_state
    state[KEPT_PREFIX + key] = state[key] if value is None else value
    if value is not None:
        state[key] = value


def draws_control(container=None) -> int:
    """The sidebar's "noise draws per score" control; every page scores with its value (see current_draws)."""
    container = container or st.sidebar
    if _restore(DRAWS_KEY, DEFAULT_DRAWS) not in DRAWS_CHOICES:
        _keep(DRAWS_KEY, DEFAULT_DRAWS)
    return container.select_slider(
        "Noise draws per score",
        DRAWS_CHOICES,
        key=DRAWS_KEY,
        on_change=_keep,
        args=(DRAWS_KEY,),
        help="Each score is averaged over this many noise draws. One draw gives the same AUROC as sixteen on the "
        "shipped model; more draws steady the verdicts of images near the threshold (flips between seeds there: "
        "8.1 % at 1 draw, 4.2 % at 4, 2.6 % at 16, MFsim). Scoring time grows with the number of draws.",
    )


def current_draws() -> int:
    """Noise draws per score chosen in the sidebar (the default before the sidebar has rendered)."""
    return int(st.session_state.get(DRAWS_KEY, DEFAULT_DRAWS))


def sampling_controls(detector: Detector, container=None, with_score: bool = True) -> tuple[int, int, str]:
    """Timestep, DDIM steps and score widgets shared by the pages (their values hold across pages)."""
    container = container or st
    top = min(MAX_TIMESTEP, detector.info.config.num_timesteps)
    official = detector.scoring.sampler == "official"  # takes no steps setting, and no network step below t = 3
    low = OFFICIAL_MIN_TIMESTEP if official else 1
    # Default: the timestep the checkpoint's preset scores at (paper 5; official 4, where its sampler starts).
    timestep = int(_restore("timestep", detector.scoring.timestep))
    if not low <= timestep <= top:
        _keep("timestep", timestep := min(max(timestep, low), top))
    # Never more steps than the timestep allows: at t = 1 the (disabled) slider shows the 1 step actually used, and
    # that is the value kept afterwards, not a number nobody chose.
    steps = int(_restore("steps", DEFAULT_STEPS))
    if not 1 <= steps <= min(timestep, MAX_STEPS):
        _keep("steps", min(max(steps, 1), timestep, MAX_STEPS))
    columns = container.columns(3 if with_score else 2)
    timestep = columns[0].slider(
        "Sampling timestep t",
        low,
        top,
        key="timestep",
        on_change=_keep,
        args=("timestep",),
        help="Noise level the features are diffused to before reconstruction (paper: 3-10).",
    )
    steps = columns[1].slider(
        "DDIM steps",
        1,
        max(2, min(timestep, MAX_STEPS)),
        key="steps",
        on_change=_keep,
        args=("steps",),
        help=f"DDIM steps from t back to 0, at most t and at most {MAX_STEPS} here (default {DEFAULT_STEPS}: measured "
        "as accurate as one per timestep, and t times cheaper)."
        + (
            " This model scores with the official sampler, which visits every level and ignores it." if official else ""
        ),
        disabled=timestep == 1 or official,
    )
    steps = min(steps, timestep)
    score = score_control(detector, columns[2]) if with_score else "mfsim"
    return timestep, steps, score


def score_control(detector: Detector, container=None) -> str:
    """The score selectbox (its value holds across pages); only scores this checkpoint can compute."""
    container = container or st
    scores = explorer.available_scores(detector)
    if _restore("score", "mfsim") not in scores:
        _keep("score", "mfsim" if "mfsim" in scores else scores[0])
    return container.selectbox(
        "Score",
        scores,
        key="score",
        on_change=_keep,
        args=("score",),
        format_func=lambda s: explorer.SCORE_LABELS[s],
        help="MFsim: per-stage cosine; MSE: squared error; LR: early minus final MSE. Higher = more OOD for all.",
    )


@st.cache_data(max_entries=16, show_spinner="Running the backbone on the uploaded images…")
def prepared_uploads(
    backbone: str,
    weights: str,
    input_size: int,
    digests: tuple[tuple[str, str], ...],
    _files: tuple[tuple[str, bytes], ...],
    options: FeatureOptions,
) -> explorer.UploadBatch:
    """Decode + embed uploads once per file content; a timestep change re-uses the features."""
    del digests  # cache key: (name, sha256) of every file
    return explorer.prepare_uploads(get_extractor(backbone, weights, options), input_size, list(_files))


def digest_files(files: list[tuple[str, bytes]]) -> tuple[tuple[str, str], ...]:
    return tuple((name, hashlib.sha256(data).hexdigest()) for name, data in files)


def model_caption(detector: Detector, run_dir: Path) -> str:
    info = detector.info
    return (
        f"**Model:** `{run_dir.name}` · {info.backbone} @ {info.input_size}px · trained on {info.dataset} · "
        f"epoch {info.epoch}"
    )


def reference_set(
    detector: Detector, run_dir: Path, id_features: FeatureSet, timestep: int, steps: int | None, score: str
) -> dict[str, np.ndarray]:
    """Scores and per-stage values (explorer.score_matrix) of every ID reference image at (timestep, steps) and
    the sidebar's draws, cached per run and setting. The set never shrinks: all 2,000 demo ID images, always.

    Measured with one torch thread (benchmarks/score_page.py, MFsim, t = 10): 0.4 s at 1 step, 1.8 s at 5, 3.6 s at
    10 (steps are capped at MAX_STEPS for that reason); LR doubles it and noise draws multiply it.
    """
    draws = current_draws()
    work = f"t={timestep}, {steps or timestep} DDIM step(s), {draws} noise draw(s)"
    work += ", LR: two models" if score == "lr" else ""
    with st.spinner(f"Scoring all {len(id_features):,} ID reference images at {work} (once per setting)…"):
        return _set_scores(
            detector, fingerprint(run_dir), id_features.dataset, id_features, timestep, steps, score == "lr", draws
        )


def reference_scores(
    detector: Detector, run_dir: Path, id_features: FeatureSet, timestep: int, steps: int | None, score: str
) -> np.ndarray:
    """Scores (R,) of all ID reference images under `score` (see reference_set)."""
    return reference_set(detector, run_dir, id_features, timestep, steps, score)[score]


PROFILE_COLOURS = {"worse": "#b83b3b", "better": "#3b6fb6", "normal": "#9a9a9a"}


def profile_html(profile: explorer.LayerProfile) -> str:
    """The layer profile as small HTML rows: per stage, the ID 5-95 % band (grey) on a 0-100 percentile track and
    this image's place on it; a stage is coloured only outside the band (red: less ID-like, blue: more)."""
    rows = []
    for name, percent, z_score, status in zip(
        profile.names, profile.worse_than, profile.z_scores, profile.status, strict=True
    ):
        colour = PROFILE_COLOURS[status]
        position = min(max(float(percent), 0.0), 100.0)
        rows.append(
            f'<div style="display:flex;align-items:center;gap:6px;font-size:12px;line-height:17px" '
            f'title="{html.escape(name.label)}: worse than {percent:.1f} % of ID images, z = {z_score:+.1f}">'
            f'<span style="width:128px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis">'
            f"{name.number} · {html.escape(name.role)}</span>"
            f'<span style="position:relative;flex:1;height:12px;background:#f1f1f1;min-width:60px">'
            f'<span style="position:absolute;left:5%;width:90%;top:3px;height:6px;background:#d9d9d9"></span>'
            f'<span style="position:absolute;left:calc({position:.1f}% - 4px);top:1px;width:8px;height:10px;'
            f'border-radius:2px;background:{colour}"></span></span>'
            f'<span style="width:52px;text-align:right;color:{colour if status != "normal" else "#333"}">'
            f"{explorer.percent_text(percent)} %</span></div>"
        )
    title = (
        f'<div style="font-size:12px;color:#555">Layer profile ({html.escape(profile.quantity)}): stage · role, '
        f"worse than … % of {profile.reference_size:,} ID images; grey band = ID 5–95 %</div>"
    )
    sentence = f'<div style="font-size:12px;margin-top:4px">{html.escape(profile.sentence)}</div>'
    return title + "".join(rows) + sentence


def id_histogram(
    id_scores: np.ndarray,
    threshold: float,
    score_label: str,
    markers: list[tuple[str, str, float, str]],
    title: str,
    height: int = 320,
) -> go.Figure:
    """The ID reference histogram with the 95%-TPR threshold and numbered image markers below it.

    markers: (number, name, score, verdict) per image. Markers that would overlap are stacked in rows
    (explorer.marker_rows) instead of piling labels on one spot; hovering a marker shows the image's name.
    """
    from plotly.subplots import make_subplots

    values = [score for _, _, score, _ in markers]
    span = float(max([*values, float(np.max(id_scores))]) - min([*values, float(np.min(id_scores))])) or 1.0
    rows = explorer.marker_rows(values, 0.025 * span) if markers else np.zeros(0, dtype=int)
    strip = max(1, int(rows.max()) + 1 if len(rows) else 1)
    # The marker strip grows with its rows (about 22 px each) so that stacked markers never overlap.
    histogram_px, strip_px = 0.72 * height, max(0.28 * height, 22.0 * strip + 16.0)
    total_px = histogram_px + strip_px
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[histogram_px / total_px, strip_px / total_px],
        vertical_spacing=0.03,
    )
    figure.add_trace(
        go.Histogram(x=id_scores, nbinsx=60, name="ID reference", marker_color="#7fa6dc", opacity=0.85), row=1, col=1
    )
    for verdict, colour in (("OOD", "#b83b3b"), ("ID", "#3c8d47")):
        chosen = [i for i, marker in enumerate(markers) if marker[3] == verdict]
        if not chosen:
            continue
        figure.add_trace(
            go.Scatter(
                x=[markers[i][2] for i in chosen],
                y=[-float(rows[i]) for i in chosen],
                mode="markers+text",
                text=[markers[i][0] for i in chosen],
                textfont=dict(color="white", size=10),
                marker=dict(size=17, color=colour, line=dict(color="white", width=1)),
                customdata=[[markers[i][1]] for i in chosen],
                hovertemplate=f"#%{{text}} %{{customdata[0]}}<br>{score_label} %{{x:.4g}}<extra>{verdict}</extra>",
                name=f"your image, verdict {verdict}",
            ),
            row=2,
            col=1,
        )
    for row in (1, 2):
        figure.add_vline(x=threshold, line_dash="dash", line_color="black", row=row, col=1)
    figure.add_annotation(
        x=threshold, y=1.0, yref="y domain", text="95%-TPR threshold", showarrow=False, xanchor="left", row=1, col=1
    )
    figure.update_yaxes(title_text="ID images", row=1, col=1)
    figure.update_yaxes(visible=False, range=[-strip + 0.4, 0.6], row=2, col=1)
    figure.update_xaxes(title_text=f"{score_label} score (higher = more OOD)", row=2, col=1)
    figure.update_layout(
        title=dict(text=title, font_size=12),
        height=round(total_px) + 60,
        margin=dict(l=10, r=10, t=40, b=70),
        # below the axis title, in plot-area fractions: clear of the title and of Plotly's toolbar
        legend=dict(orientation="h", yanchor="top", y=-48 / (total_px - 50), x=0),
        bargap=0.02,
    )
    return figure
