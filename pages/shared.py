"""Streamlit plumbing shared by the pages: cached loaders of the model, its experiment, features and scores, with
error display.

`current_experiment` is the one accessor of the sets a page studies (the loaded model's experiment);
`experiment_features` / `features_or_stop` give their features — read from the disk cache at once, or extracted in
the background (explorer.FeatureJobs) while the page shows progress and refreshes itself.

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
from dlsr_core.data import RunExperiment
from dlsr_core.features import FeatureSet
from dlsr_core.presets import FeatureOptions
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector
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


@st.cache_resource
def _once() -> explorer.ComputedOnce:
    """Process-wide: what warm_up loads in the background and the pages would otherwise load themselves."""
    return explorer.ComputedOnce()


def comparison_baselines():
    """The shipped baselines of the paper's comparison (dlsr_core.comparison.Baselines), loaded once per process
    (importing the pixel DDPM's diffusers takes about 2 s: warm_up starts it in the background)."""
    once, key = _once(), explorer.baselines_key()  # follows $DLSR_BASELINES_DIR and retrained files
    if once.ready(key):
        return once.get(key, explorer.load_baselines)
    with st.spinner("Loading the comparison baselines…"):
        return once.get(key, explorer.load_baselines)


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


@st.cache_resource(max_entries=8, show_spinner=False)
def _experiment(run_dir: str, run_fingerprint: str, version: str, _detector: Detector) -> RunExperiment:
    del run_fingerprint, version  # cache keys: a retrained run or an edited experiment is read again
    return explorer.loaded_experiment(run_dir, _detector)


def current_experiment(detector: Detector, run_dir: Path) -> RunExperiment:
    """The loaded model's experiment (training set, ID evaluation set, OOD sets, class names): what every page
    studies. `.experiment` holds the sets; `.source`, `.note`, `.problems` and `.overlap` say how it was found."""
    return _experiment(str(run_dir), fingerprint(run_dir), explorer.experiment_version(run_dir), detector)


def experiment_notes(current: RunExperiment, container=None) -> None:
    """The experiment's problems (a damaged file), its fallback note and the training/evaluation overlap warning."""
    container = container or st
    for problem in current.problems:
        container.error(f"The experiment file cannot be used: {problem}")
    if current.source == "fallback":
        container.info(current.note)
    if current.overlap:
        container.warning(current.overlap)


@st.cache_resource
def _feature_store() -> tuple[dict, threading.Lock]:
    """Process-wide memo of feature sets; filled outside st.cache_* so the progress bar is live, not replayed."""
    return {}, threading.Lock()


@st.cache_resource
def _feature_jobs() -> explorer.FeatureJobs:
    """Background extractions of sets whose features are not cached yet (one process-wide queue)."""
    return explorer.FeatureJobs()


def _feature_key(detector: Detector, spec: str) -> tuple:
    return (detector.backbone, detector.info.weights, detector.input_size, detector.feature_options, spec)


def _lookup(detector: Detector, spec: str, download: bool = False) -> FeatureSet | explorer.JobStatus | str:
    """The features of `spec` when ready (memo, then the disk cache); else the background job's status (the job is
    started when needed); or why the set cannot be used. A wrong-backbone checkpoint stops the page."""
    store, lock = _feature_store()
    jobs, key = _feature_jobs(), _feature_key(detector, spec)
    if key in store:
        try:  # memoised under this backbone, but a checkpoint may claim the backbone and want other features
            detector.check_features(store[key].features, store[key].backbone)
        except CheckpointError as error:
            st.error(f"Wrong backbone for this checkpoint: {error}")
            st.stop()
        return store[key]
    status = jobs.status(key)
    if status is None:
        from dlsr_core.data import DatasetError

        try:
            found = explorer.load_features(detector, spec, cache_only=True)
        except CheckpointError as error:
            st.error(f"Wrong backbone for this checkpoint: {error}")
            st.stop()
        except (DatasetError, OSError) as error:
            return str(error)
        if found is not None:
            with lock:
                store[key] = found
            return found
        jobs.submit(key, lambda progress: explorer.load_features(detector, spec, progress=progress, download=download))
        status = jobs.status(key)
    if status.state == "done":
        with lock:
            store[key] = jobs.result(key)
        jobs.forget(key)
        return store[key]
    if status.state == "failed":
        return status.error
    return status


def ready_features(detector: Detector, spec: str) -> FeatureSet | None:
    """The features of `spec` if they are ready now (memo, finished job or disk cache); never starts an extraction."""
    store, lock = _feature_store()
    key = _feature_key(detector, spec)
    status = _feature_jobs().status(key)
    if key in store or (status is not None and status.state == "done"):
        found = _lookup(detector, spec)
        return found if isinstance(found, FeatureSet) else None
    if status is not None:
        return None
    found = explorer.cached_features_only(detector, spec)
    if found is not None:
        with lock:
            store[key] = found
    return found


def extraction_status(detector: Detector, spec: str) -> explorer.JobStatus | None:
    """The background extraction of `spec`, if one was started."""
    return _feature_jobs().status(_feature_key(detector, spec))


def start_extraction(detector: Detector, spec: str, download: bool = False) -> None:
    """Extract `spec`'s features in the background now (a no-op when they are ready or being extracted)."""
    if ready_features(detector, spec) is None:
        status = extraction_status(detector, spec)
        if status is not None and status.state == "failed":
            retry_set(detector, spec)
        _lookup(detector, spec, download)


def retry_set(detector: Detector, spec: str) -> None:
    """Forget a failed extraction of `spec`, so that the next lookup tries again."""
    _feature_jobs().forget(_feature_key(detector, spec))


def _progress_text(name: str, status: explorer.JobStatus) -> str:
    if status.state == "queued":
        return f"{name}: waiting for the extraction of another set"
    if not status.total:
        return f"{name}: opening the dataset… ({status.seconds:.0f} s)"
    rate = status.done / max(status.seconds, 1e-6)
    left = f", about {(status.total - status.done) / rate:.0f} s left" if status.done and rate > 0 else ""
    return f"{name}: {status.done:,} of {status.total:,} images through the backbone{left}"


def show_extraction(detector: Detector, pending: dict[str, str]) -> None:
    """Progress of the background extractions of `pending` (spec -> display name), refreshed every second; the whole
    page reruns when they have all finished."""

    def poll() -> None:
        jobs = _feature_jobs()
        statuses = {spec: jobs.status(_feature_key(detector, spec)) for spec in pending}
        if all(status is None or status.finished for status in statuses.values()):
            st.rerun()
        st.caption(
            "Features of new sets are being extracted in the background (once; then they are cached on disk). "
            "This page updates by itself; you can use other pages meanwhile."
        )
        for spec, status in statuses.items():
            if status is not None and not status.finished:
                st.progress(status.fraction, text=_progress_text(pending[spec], status))

    st.fragment(run_every=1.0)(poll)()


def experiment_features(
    detector: Detector, experiment, specs: list[str] | None = None, required: tuple[str, ...] | None = None
) -> dict[str, FeatureSet]:
    """Features of the experiment's sets (`specs`, default: the ID set and every OOD set) that are ready now.

    Sets still being extracted show progress (the page refreshes when they are done); sets that cannot be opened are
    named with the reason. The page stops (with progress or the reason) while a `required` set (default: the ID
    evaluation set) is not ready.
    """
    specs = experiment.specs if specs is None else specs
    required = (experiment.id_set.spec,) if required is None else required
    ready, pending, unavailable = {}, {}, {}
    for spec in specs:
        found = _lookup(detector, spec)
        if isinstance(found, FeatureSet):
            ready[spec] = found
        elif isinstance(found, str):
            unavailable[spec] = found
        else:
            pending[spec] = experiment.name_of(spec)
    if unavailable:
        st.caption(
            "Not shown (unavailable here; see **Experiment / data**): "
            + "; ".join(f"**{experiment.name_of(spec)}** — {reason[:300]}" for spec, reason in unavailable.items())
        )
    if pending:
        show_extraction(detector, pending)
    missing = [spec for spec in required if spec not in ready]
    if missing:
        if any(spec in unavailable for spec in missing):
            spec = next(spec for spec in missing if spec in unavailable)
            st.error(
                f"The set {experiment.name_of(spec)} ({spec}) cannot be used: {unavailable[spec]}. Choose another on "
                "the **Experiment / data** page."
            )
        st.stop()
    return ready


def features_or_stop(detector: Detector, spec: str, name: str | None = None) -> FeatureSet:
    """Features of one set: at once when cached, else extracted in the background while the page shows progress
    (and stops until they are ready); a message and st.stop() when the set cannot be opened."""
    found = _lookup(detector, spec)
    if isinstance(found, FeatureSet):
        return found
    if isinstance(found, str):
        st.error(f"Dataset {name or spec} cannot be opened: {found}")
    else:
        show_extraction(detector, {spec: name or spec})
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


def image_statistics(spec: str, indices: tuple[int, ...], progress=None) -> dict[str, np.ndarray]:
    """explorer.image_statistics_of the images at `indices` of `spec`, measured once per process (by the Failure cases
    page or warm_up); `progress(done, total)` while this call measures them."""
    return _once().get(("statistics", spec, indices), lambda: explorer.image_statistics_of(spec, indices, progress))


def image_statistics_ready(spec: str, indices: tuple[int, ...]) -> bool:
    return _once().ready(("statistics", spec, indices))


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
    the sidebar's draws, cached per run and setting. The set never shrinks between settings: all images of the ID
    evaluation set (the caller passes a stated fixed subset when the set is large, see reference_rows).

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
    while no page script runs, what the other pages need first — the experiment's features already on disk, the
    backbone (timm), the sets' scores at the model's own setting and their image statistics, the first epoch's scores
    (Compare models' default model B), the training set's identity (the stored k-NN and Mahalanobis scores are keyed
    by it), the comparison baselines (diffusers) — so that their first visit does not wait for it. Nothing is
    extracted or fitted here, and a failure is left for the page to report."""
    once = _once()
    store, lock = _feature_store()
    experiment = current_experiment(detector, run_dir).experiment  # read here: st.cache_* belongs to the page thread
    specs = [*experiment.specs, f"{experiment.id_set.spec}+hflip"]  # + How DLSR works' first shift
    run_fingerprint = fingerprint(run_dir)

    def cached(spec: str) -> None:
        key = _feature_key(detector, spec)
        if key not in store:
            found = explorer.cached_features_only(detector, spec)
            if found is not None:
                with lock:
                    store.setdefault(key, found)

    def default_scores(spec: str) -> None:
        features = store.get(_feature_key(detector, spec))
        if features is not None and len(features) <= explorer.REFERENCE_LIMIT:
            timestep, with_lr = detector.scoring.timestep, detector.has_early
            set_scores(detector, run_fingerprint, spec, features, timestep, DEFAULT_STEPS, with_lr, DEFAULT_DRAWS)

    def first_epoch_scores(spec: str) -> None:  # Compare models opens with the first epoch as model B
        features, early = store.get(_feature_key(detector, spec)), detector.early  # the model LR uses, in memory
        if features is not None and early is not None:
            rows, timestep = explorer.reference_subset(features), detector.scoring.timestep
            model, key = Detector(early), fingerprint(early.path)
            set_scores(model, key, spec, rows, timestep, DEFAULT_STEPS, False, DEFAULT_DRAWS)

    def statistics(spec: str) -> None:
        features = store.get(_feature_key(detector, spec))
        if features is not None:
            subset = explorer.reference_subset(features, explorer.ANALYSED_ROWS)
            image_statistics(spec, tuple(int(i) for i in subset.indices.numpy()))

    def backbone():
        weights = detector.backbone_weights()
        key = ("extractor", detector.backbone, weights, detector.feature_options)
        return once.get(key, lambda: _build_extractor(detector.backbone, weights, detector.feature_options))

    def run() -> None:
        tasks = [
            *(lambda spec=spec: cached(spec) for spec in specs),
            backbone,
            *(lambda spec=spec: default_scores(spec) for spec in experiment.specs),
            *(lambda spec=spec: statistics(spec) for spec in experiment.specs),  # what Failure cases measures
            *(lambda spec=spec: first_epoch_scores(spec) for spec in experiment.specs),
            lambda: explorer.dataset_identity(experiment.training_set),
            lambda: once.get(explorer.baselines_key(), explorer.load_baselines),
        ]
        for task in tasks:
            _wait_for_idle_pages()
            try:
                task()
            except Exception:  # noqa: BLE001 - the page that needs it shows the error
                continue

    # Not a daemon: the interpreter lets it finish its step (seconds) instead of killing it inside torch at exit.
    once.get("warm_up", lambda: threading.Thread(target=run, name="dlsr-warm-up", daemon=False).start())


def features_in_memory(detector: Detector, spec: str) -> bool:
    """Whether this process holds `spec`'s features already (loaded by a page or a finished background job)."""
    status = extraction_status(detector, spec)
    return _feature_key(detector, spec) in _feature_store()[0] or (status is not None and status.state == "done")
