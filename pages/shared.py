"""Streamlit plumbing shared by the pages: cached loaders of the model, features and scores, with error display.

Heavy objects live behind st.cache_resource (model, backbone, feature sets: read-only, never copied) and derived
arrays behind st.cache_data keyed by the run's fingerprint, dataset, timestep and steps, so a widget change re-runs
only the cheap diffusion step and a page switch reloads nothing. This is not a page: app.py does not route to it.
The widgets the pages share are in pages/widgets.py, shared figures in pages/figures.py; anything that needs no
streamlit belongs in dlsr_core.explorer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import streamlit as st

from dlsr_core import explorer
from dlsr_core.checkpoint import CheckpointError
from dlsr_core.features import FeatureSet
from dlsr_core.presets import FeatureOptions
from dlsr_core.scoring import Detector
from pages.widgets import current_draws

RUN_KEY = "run_dir"
DEFAULT_TIMESTEP = 5  # the shipped model's; pages open at the loaded model's own (detector.scoring.timestep)
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


def reference_set(
    detector: Detector, run_dir: Path, id_features: FeatureSet, timestep: int, steps: int | None, score: str
) -> dict[str, np.ndarray]:
    """Scores and per-stage values (explorer.score_matrix) of every ID reference image at (timestep, steps) and
    the sidebar's draws, cached per run and setting. The set never shrinks: all 2,000 demo ID images, always.

    Measured with one torch thread (benchmarks/score_page.py, MFsim, t = 10): 0.4 s at 1 step, 1.8 s at 5, 3.6 s at
    10 (steps are capped at widgets.MAX_STEPS for that reason); LR doubles it and noise draws multiply it.
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
