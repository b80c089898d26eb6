"""Streamlit plumbing shared by the pages: cached loaders of the model, features and scores, with error display.

Heavy objects are loaded once per process (model, backbone, feature sets: read-only, never copied), and so are the
DLSR scores of each set per (model, timestep, steps, draws), shared by every page (ComputedOnce), so a widget change
re-runs only the cheap diffusion step and a page switch reloads nothing. After the first page, `warm_up` loads in the
background what the next pages need first. This is not a page: app.py does not route to it.
The widgets the pages share are in pages/widgets.py, shared figures in pages/figures.py; anything that needs no
streamlit belongs in dlsr_core.explorer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import streamlit as st

from dlsr_core import explorer
from dlsr_core.checkpoint import CheckpointError
from dlsr_core.features import FeatureSet
from dlsr_core.presets import FeatureOptions
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector
from pages.widgets import current_draws

RUN_KEY = "run_dir"
DEFAULT_TIMESTEP = 5  # the shipped model's; pages open at the loaded model's own (detector.scoring.timestep)
UPLOADS_KEY = "score_uploads"
DEMO_SPECS = (explorer.DEMO_ID_SET, *explorer.DEMO_OOD_SETS)


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


@st.cache_resource
def _once() -> explorer.ComputedOnce:
    """Process-wide: what warm_up loads in the background and the pages would otherwise load themselves."""
    return explorer.ComputedOnce()


def comparison_baselines():
    """The shipped baselines of the paper's comparison (dlsr_core.comparison.Baselines), loaded once per process
    (importing the pixel DDPM's diffusers takes about 2 s: warm_up starts it in the background)."""
    once = _once()
    if once.ready("baselines"):
        return once.get("baselines", explorer.load_baselines)
    with st.spinner("Loading the comparison baselines…"):
        return once.get("baselines", explorer.load_baselines)


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


def _build_extractor(backbone: str, weights: str, options: FeatureOptions):
    from dlsr_core.backbones import create_feature_extractor

    return create_feature_extractor(backbone, weights=weights, options=options)


def get_extractor(backbone: str, weights: str, options: FeatureOptions):
    """The frozen backbone, built once per process (importing timm takes about 2 s: warm_up starts it)."""
    once, key = _once(), ("extractor", backbone, weights, options)
    if once.ready(key):
        return once.get(key, lambda: _build_extractor(backbone, weights, options))
    with st.spinner("Loading the backbone…"):
        return once.get(key, lambda: _build_extractor(backbone, weights, options))


def weights_unavailable(error: BaseException) -> bool:
    """Whether `error` is backbones.WeightsUnavailableError, imported only when there is an error to look at:
    importing the backbones module imports timm (about 2 s)."""
    from dlsr_core.backbones import WeightsUnavailableError

    return isinstance(error, WeightsUnavailableError)


@st.cache_resource
def _running_pages() -> list:
    """[number of page scripts running now, its lock]: the warm-up steps aside while a user waits for a page."""
    return [0, threading.Lock()]


def page_started() -> None:
    running = _running_pages()
    with running[1]:
        running[0] += 1


def page_finished() -> None:
    running = _running_pages()
    with running[1]:
        running[0] -= 1


def _wait_for_idle_pages(longest: float = 30.0) -> None:
    """Sleep while a page script runs (at most `longest` seconds): background work would slow it down."""
    deadline = time.monotonic() + longest
    while _running_pages()[0] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def warm_up(detector: Detector, run_dir: Path) -> None:
    """Once per process, after the first page has rendered: load in a background thread, one step at a time and only
    while no page script runs, what the other pages need first — the demo features already on disk, the backbone
    (timm), the demo sets' scores at the model's own setting, the training set's identity (the stored k-NN and
    Mahalanobis scores are keyed by it), the comparison baselines (diffusers) — so that their first visit does not
    wait for it. Nothing is extracted or fitted here, and a failure is left for the page to report."""
    once = _once()
    store, lock = _feature_store()

    def run() -> None:
        tasks = [
            *(lambda spec=spec: _load_cached(detector, spec, store, lock) for spec in DEMO_SPECS),
            lambda: get_backbone(),
            # every demo set at the model's own setting, LR included: what Score distributions opens on
            *(lambda spec=spec: default_scores(spec) for spec in DEMO_SPECS),
            lambda: explorer.dataset_identity(explorer.BASELINE_TRAIN_SET),
            lambda: once.get("baselines", explorer.load_baselines),
        ]
        for task in tasks:
            _wait_for_idle_pages()
            try:
                task()
            except Exception:  # noqa: BLE001 - the page that needs it shows the error
                continue

    def default_scores(spec: str) -> None:
        features = store.get(_feature_key(detector, spec))
        if features is not None:
            timestep, with_lr = detector.scoring.timestep, detector.has_early
            set_scores(detector, fingerprint(run_dir), spec, features, timestep, DEFAULT_STEPS, with_lr, DEFAULT_DRAWS)

    def get_backbone():
        weights = detector.backbone_weights()
        key = ("extractor", detector.backbone, weights, detector.feature_options)
        return once.get(key, lambda: _build_extractor(detector.backbone, weights, detector.feature_options))

    # Not a daemon: the interpreter lets it finish its step (seconds) instead of killing it inside torch at exit.
    once.get("warm_up", lambda: threading.Thread(target=run, name="dlsr-warm-up", daemon=False).start())


def _load_cached(detector: Detector, spec: str, store: dict, lock: threading.Lock) -> None:
    key = _feature_key(detector, spec)
    with lock:
        if key not in store:
            found = explorer.load_features(detector, spec, cache_only=True)
            if found is not None:
                store[key] = found


@st.cache_resource
def _feature_store() -> tuple[dict, threading.Lock]:
    """Process-wide memo of feature sets; filled outside st.cache_* so the progress bar is live, not replayed."""
    return {}, threading.Lock()


def _feature_key(detector: Detector, spec: str) -> tuple:
    return (detector.backbone, detector.info.weights, detector.input_size, detector.feature_options, spec)


def features_or_stop(detector: Detector, spec: str) -> FeatureSet:
    """Features of `spec` for `detector`, extracted once with a progress bar; st.stop() with a message on failure."""
    from dlsr_core.data import DatasetError

    store, lock = _feature_store()
    key = _feature_key(detector, spec)
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
    except DatasetError as error:
        st.error(f"Dataset {spec} cannot be opened: {error}")
    except RuntimeError as error:
        if not weights_unavailable(error):
            raise
        st.error(f"The backbone weights for this checkpoint are not available offline: {error}")
    st.stop()
    raise RuntimeError("unreachable")


def set_scores_ready(
    run_fingerprint: str, spec: str, timestep: int, steps: int | None, with_lr: bool, draws: int
) -> bool:
    """Whether set_scores would answer at once (computed before in this process, by any page or warm_up)."""
    key = ("scores", run_fingerprint, spec, timestep, steps, draws)
    return _once().ready(key + (True,)) or _once().ready(key + (with_lr,))


def set_scores(
    detector: Detector,
    run_fingerprint: str,
    spec: str,
    features: FeatureSet,
    timestep: int,
    steps: int | None,
    with_lr: bool = False,
    draws: int | None = None,
) -> dict[str, np.ndarray]:
    """DLSR scores of a feature set at (timestep, steps) and `draws` (default: the sidebar's), computed once per
    process and shared by every page (explorer.score_matrix arrays; read-only). LR costs a second model pass, so it
    is computed only when asked for; scores computed with LR serve the pages that do not need it."""
    draws = current_draws() if draws is None else draws
    once = _once()
    with_both = ("scores", run_fingerprint, spec, timestep, steps, draws, True)
    if not with_lr and once.ready(with_both):
        return once.get(with_both, dict)
    return once.get(
        with_both[:-1] + (with_lr,),
        lambda: explorer.score_matrix(detector, features.features, timestep, steps, with_lr=with_lr, draws=draws),
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
        return set_scores(
            detector, fingerprint(run_dir), id_features.dataset, id_features, timestep, steps, score == "lr", draws
        )


def reference_scores(
    detector: Detector, run_dir: Path, id_features: FeatureSet, timestep: int, steps: int | None, score: str
) -> np.ndarray:
    """Scores (R,) of all ID reference images under `score` (see reference_set)."""
    return reference_set(detector, run_dir, id_features, timestep, steps, score)[score]
