"""Streamlit plumbing shared by the pages: cached loaders, the shared sampling widgets, error display.

Heavy objects live behind st.cache_resource (model, backbone, feature sets: read-only, never copied) and derived
arrays behind st.cache_data keyed by the run's fingerprint, dataset, timestep and steps, so a widget change re-runs
only the cheap diffusion step and a page switch reloads nothing. This is not a page: app.py does not route to it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import streamlit as st

from dlsr_core import explorer
from dlsr_core.checkpoint import CheckpointError
from dlsr_core.features import FeatureSet
from dlsr_core.presets import DEFAULT_FEATURES, FeatureOptions
from dlsr_core.scoring import DEFAULT_STEPS, Detector

RUN_KEY = "run_dir"
# Widget values that should survive page switches (Streamlit drops a widget's state when its page is not shown).
PERSISTENT_KEYS = ("timestep", "steps", "score")
DEFAULT_TIMESTEP = 5
MAX_TIMESTEP = 50
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
def get_extractor(backbone: str, weights: str, options: FeatureOptions = DEFAULT_FEATURES):
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


@st.cache_data(max_entries=256, show_spinner=False)
def set_scores(
    _detector: Detector,
    run_fingerprint: str,
    spec: str,
    _features: FeatureSet,
    timestep: int,
    steps: int | None,
    with_lr: bool = False,
) -> dict[str, np.ndarray]:
    """DLSR scores of a feature set at (timestep, steps); keyed by run fingerprint and spec, not the tensors.

    LR costs a second model pass, so it is computed only when asked for.
    """
    return explorer.score_matrix(_detector, _features.features, timestep, steps, with_lr=with_lr)


def sampling_controls(detector: Detector, container=None, with_score: bool = True) -> tuple[int, int, str]:
    """Timestep, DDIM steps and score widgets shared by the pages (their values persist across pages)."""
    container = container or st
    top = min(MAX_TIMESTEP, detector.info.config.num_timesteps)
    state = st.session_state
    state.setdefault("timestep", DEFAULT_TIMESTEP)
    state["timestep"] = int(min(max(state["timestep"], 1), top))
    state.setdefault("steps", DEFAULT_STEPS)
    state["steps"] = int(min(max(state["steps"], 1), max(state["timestep"], 2)))
    columns = container.columns(3 if with_score else 2)
    timestep = columns[0].slider(
        "Sampling timestep t",
        1,
        top,
        key="timestep",
        help="Noise level the features are diffused to before reconstruction (paper: 3-10).",
    )
    steps = columns[1].slider(
        "DDIM steps",
        1,
        max(timestep, 2) if timestep > 1 else 2,
        key="steps",
        help=f"DDIM steps from t back to 0 (default {DEFAULT_STEPS}: measured as accurate as one per timestep, "
        "and t times cheaper).",
        disabled=timestep == 1,
    )
    steps = min(steps, timestep)
    score = "mfsim"
    if with_score:
        scores = explorer.available_scores(detector)
        if state.get("score") not in scores:
            state["score"] = "mfsim" if "mfsim" in scores else scores[0]
        score = columns[2].selectbox(
            "Score",
            scores,
            key="score",
            format_func=lambda s: explorer.SCORE_LABELS[s],
            help="MFsim: per-stage cosine; MSE: squared error; LR: early minus final MSE. Higher = more OOD for all.",
        )
    return timestep, steps, score


@st.cache_data(max_entries=16, show_spinner="Running the backbone on the uploaded images…")
def prepared_uploads(
    backbone: str,
    weights: str,
    input_size: int,
    digests: tuple[tuple[str, str], ...],
    _files: tuple[tuple[str, bytes], ...],
    options: FeatureOptions = DEFAULT_FEATURES,
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


# The Score page places uploads among the scores of ID reference images, re-scored at each (t, steps). Their number
# is sized by a work budget (images x DDIM steps) so that a widget change answers in about a second on a small CPU:
# all 2,000 demo ID images at 1-2 steps, a fixed random subset (at least 500) for more steps. Measured on the
# 2-core machine with one torch thread: 2,000 images x 1 step 0.33 s, x 5 steps 1.7 s.
REFERENCE_BUDGET = 4000
REFERENCE_MINIMUM = 500


def reference_size(available: int, steps: int) -> int:
    """How many ID reference images the Score page re-scores at `steps` DDIM steps."""
    return min(available, max(REFERENCE_MINIMUM, REFERENCE_BUDGET // max(steps, 1)))


def reference_scores(
    detector: Detector, run_dir: Path, id_features: FeatureSet, timestep: int, steps: int | None, score: str
) -> np.ndarray:
    """Scores of the ID reference subset at (timestep, steps), cached per run and setting."""
    return _reference_scores(detector, fingerprint(run_dir), id_features, timestep, steps, score == "lr")[score]


@st.cache_data(max_entries=256, show_spinner=False)
def _reference_scores(
    _detector: Detector, run_fingerprint: str, _features: FeatureSet, timestep: int, steps: int | None, with_lr: bool
) -> dict[str, np.ndarray]:
    rows = explorer.subsample_rows(len(_features), reference_size(len(_features), steps or timestep))
    return explorer.score_matrix(_detector, _features.features[rows], timestep, steps, with_lr=with_lr)


def stage_bars_html(stage_cos: tuple[float, ...]) -> str:
    """A tiny horizontal bar chart of per-stage cosine similarities; the least familiar stage is red."""
    lowest = min(stage_cos)
    rows = []
    for stage, value in enumerate(stage_cos, 1):
        width = max(0.0, min(1.0, value)) * 100
        colour = "#b83b3b" if value == lowest else "#7fa6dc"
        rows.append(
            f'<div style="display:flex;align-items:center;gap:6px;font-size:12px;line-height:16px">'
            f'<span style="width:52px">stage {stage}</span>'
            f'<span style="flex:1;background:#eee;height:10px"><span style="display:block;height:10px;'
            f'width:{width:.1f}%;background:{colour}"></span></span><span style="width:40px">{value:.3f}</span></div>'
        )
    title = '<div style="font-size:12px;color:#555">cosine(z₀, ẑ₀) per stage (red: least familiar)</div>'
    return title + "".join(rows)
