"""A thin, streamlit-free façade over dlsr_core for the explorer app: one call per page action.

Pages keep only widgets, caching and plotting; everything that can be tested without a browser lives here
(upload decoding and scoring, thresholds, evaluation with baselines, failure cases, background training).
"""

from __future__ import annotations

import base64
import csv
import io
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dlsr_core.checkpoint import DEFAULT_RUN_DIR, LAST_NAME, CheckpointError
from dlsr_core.evaluation import EvaluationReport, EvaluationSettings, evaluate, timestep_sweep
from dlsr_core.features import FeatureSet, ProgressCallback
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, SCORE_NAMES, Detector

DEMO_ID_SET = "demo:fashion_mnist_test"
# Far OOD first, then near OOD (the paper's order of difficulty).
DEMO_OOD_SETS: dict[str, str] = {
    "demo:digits": "far",
    "demo:letters": "far",
    "demo:textures": "far",
    "demo:fashion_mnist_inverted": "near",
    "demo:fashion_mnist_rotated": "near",
}
BASELINE_TRAIN_SET = "fashion_mnist:train"
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")
SCORE_LABELS = {"mse": "MSE", "mfsim": "MFsim", "lr": "LR", "knn": "k-NN", "mahalanobis": "Mahalanobis"}
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
PREVIEW_SIZE = 256


# ------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoints_root() -> Path:
    """Folder whose sub-folders are selectable runs: $DLSR_CHECKPOINTS_DIR or the repository's checkpoints/."""
    return Path(os.environ.get("DLSR_CHECKPOINTS_DIR", DEFAULT_RUN_DIR.parent))


def default_run_dir() -> Path:
    """The run the app opens with: $DLSR_RUN_DIR or the shipped checkpoints/default."""
    return Path(os.environ.get("DLSR_RUN_DIR", DEFAULT_RUN_DIR))


def list_run_dirs(root: str | Path | None = None) -> list[Path]:
    """Selectable run directories: the default run first, then every sub-folder of `root` holding last.safetensors."""
    root = Path(root) if root is not None else checkpoints_root()
    runs: list[Path] = []
    default = default_run_dir()
    if (default / LAST_NAME).is_file():
        runs.append(default)
    if root.is_dir():
        for candidate in sorted(p for p in root.iterdir() if p.is_dir()):
            if (candidate / LAST_NAME).is_file() and candidate.resolve() not in {r.resolve() for r in runs}:
                runs.append(candidate)
    return runs


def run_fingerprint(run_dir: str | Path) -> str:
    """Changes whenever the run's final checkpoint is rewritten, so caches keyed by it follow retraining."""
    final = Path(run_dir) / LAST_NAME if Path(run_dir).is_dir() else Path(run_dir)
    try:
        stat = final.stat()
    except OSError:
        return f"{Path(run_dir).resolve()}|missing"
    return f"{Path(run_dir).resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


@dataclass(frozen=True)
class ModelSummary:
    """What the Home page says about a loaded detector."""

    run_dir: str
    backbone: str
    weights: str
    input_size: int
    dataset: str
    epoch: int
    feature_dim: int
    width: int
    depth: int
    parameters: int
    megabytes: float
    has_early: bool
    stage_dims: tuple[int, ...]


def summarize(detector: Detector, run_dir: str | Path) -> ModelSummary:
    """Backbone, training data, epochs and size of `detector`."""
    info = detector.info
    files = [detector.final.path] + ([detector.early.path] if detector.early is not None else [])
    return ModelSummary(
        run_dir=str(run_dir),
        backbone=info.backbone,
        weights=info.weights,
        input_size=info.input_size,
        dataset=info.dataset,
        epoch=info.epoch,
        feature_dim=info.config.feature_dim,
        width=info.config.width,
        depth=info.config.depth,
        parameters=sum(p.numel() for p in detector.final.model.parameters()),
        megabytes=sum(f.stat().st_size for f in files) / 1e6,
        has_early=detector.has_early,
        stage_dims=tuple(info.stage_dims),
    )


def available_scores(detector: Detector) -> list[str]:
    """DLSR score names this detector can compute (LR needs the early checkpoint)."""
    return [name for name in SCORE_NAMES if name != "lr" or detector.has_early]


# ------------------------------------------------------------------------------------------------
# Features


def load_features(
    detector: Detector,
    spec: str,
    *,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    extractor=None,
    cache_only: bool = False,
) -> FeatureSet | None:
    """Features (N, D) of dataset `spec` under the detector's backbone, from the disk cache or extracted once.

    With `cache_only`, None instead of an extraction when they are not cached yet. Raises CheckpointError when the
    features do not fit the detector (a wrong-backbone checkpoint).
    """
    from dlsr_core.cache import cached_features

    features = cached_features(
        spec,
        detector.backbone,
        weights=detector.backbone_weights(),
        input_size=detector.input_size,
        cache_dir=cache_dir,
        progress=progress,
        extractor=extractor,
        cache_only=cache_only,
    )
    if features is not None:
        detector.check_features(features.features, features.backbone)
    return features


def cached_features_only(detector: Detector, spec: str, cache_dir: str | Path | None = None) -> FeatureSet | None:
    """The detector-compatible features of `spec` if they are already on disk; None (never extracts) otherwise."""
    try:
        return load_features(detector, spec, cache_dir=cache_dir, cache_only=True)
    except (CheckpointError, ValueError, OSError):  # dataset absent here, or features from another backbone
        return None


# ------------------------------------------------------------------------------------------------
# Scores


def score_matrix(
    detector: Detector,
    features: Tensor,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    seed: int = 0,
    with_lr: bool = True,
    draws: int = DEFAULT_DRAWS,
) -> dict[str, np.ndarray]:
    """DLSR scores (N,) for features (N, D) plus 'stage_cos' and 'stage_sq_error' (N, S); only the cheap diffusion
    step runs, `draws` times.

    'lr' is included when `with_lr` and the detector has an early checkpoint (it doubles the cost).
    """
    with torch.inference_mode():
        result = detector.score_features(
            features, timestep, steps, 1.0, seed, with_lr=with_lr and detector.has_early, draws=draws
        )
    out = {
        "mse": result.mse,
        "mfsim": result.mfsim,
        "stage_cos": result.stage_cos,
        "stage_sq_error": result.stage_sq_error,
    }
    if result.lr is not None:
        out["lr"] = result.lr
    return out


def id_threshold95(id_scores: np.ndarray) -> float:
    """The score at or below which 95% of ID samples fall (equals ood_metrics(...).threshold95 for ties-free data)."""
    scores = np.asarray(id_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("need at least one ID score for a threshold")
    return float(np.quantile(scores, 0.95, method="inverted_cdf"))


def verdict(score: float, threshold: float) -> str:
    """'OOD' above the 95%-TPR threshold, else 'ID' (higher score = more OOD)."""
    return "OOD" if score > threshold else "ID"


@dataclass(frozen=True)
class UploadBatch:
    """Decoded uploads: names, RGB previews (at most PREVIEW_SIZE px) and features (M, D) of the readable files;
    errors of the others."""

    names: list[str]
    images: list[Image.Image]
    features: Tensor
    errors: list[tuple[str, str]]
    notes: list[tuple[str, str]] = field(default_factory=list)  # readable files that were converted on the way


def _conversion_note(data: bytes) -> str | None:
    """Why a readable image was not scored exactly as stored (animation, high bit depth), or None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames, mode = getattr(image, "n_frames", 1), image.mode
    except Exception:  # load_image already accepted the bytes; a failing probe only loses the note
        return None
    notes = []
    if frames > 1:
        notes.append(f"animated/multi-page ({frames} frames): the first frame was scored")
    if mode in ("I", "F") or mode.startswith("I;16"):
        notes.append(f"{'16-bit' if '16' in mode else mode + '-mode'} image rescaled to 8 bits by its value range")
    return "; ".join(notes) or None


def decode_uploads(
    files: Sequence[tuple[str, bytes]],
) -> tuple[list[tuple[str, Image.Image]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Decode (name, bytes) pairs in memory (nothing is written to disk).

    Returns (name, RGB image) for readable files, (name, reason) errors for the others and (name, note) for
    readable files that were converted (first frame of an animation, 16-bit rescaled).
    """
    from dlsr_core.data import ImageLoadError, load_image

    good: list[tuple[str, Image.Image]] = []
    errors: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    for name, data in files:
        if len(data) > MAX_UPLOAD_BYTES:
            errors.append((name, f"file is {len(data) / 1e6:.0f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB"))
            continue
        try:
            good.append((name, load_image(bytes(data))))
        except ImageLoadError as error:
            errors.append((name, str(error).replace("image bytes: ", "")))
            continue
        except Exception as error:  # a decoder bug must not take the rest of the batch down
            errors.append((name, f"could not be decoded ({type(error).__name__}: {error})"))
            continue
        note = _conversion_note(bytes(data))
        if note:
            notes.append((name, note))
    return good, errors, notes


def embed_images(extractor, input_size: int, images: Sequence[Image.Image], batch_size: int = 8) -> Tensor:
    """Backbone features (M, D) of RGB images; (0, D) for none."""
    rows = [
        extractor(extractor.preprocess(list(images[i : i + batch_size]), input_size)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(rows) if rows else torch.empty(0, extractor.feature_dim)


def prepare_uploads(extractor, input_size: int, files: Sequence[tuple[str, bytes]]) -> UploadBatch:
    """Decode uploads in memory and run the readable ones through the backbone (the slow step, done once)."""
    good, errors, notes = decode_uploads(files)
    features = embed_images(extractor, input_size, [image for _, image in good])
    return UploadBatch([name for name, _ in good], [_preview(image) for _, image in good], features, errors, notes)


def _preview(image: Image.Image, size: int = PREVIEW_SIZE) -> Image.Image:
    """A copy no larger than size x size: a batch of big photos must not be kept (and cached) at full size."""
    preview = image.copy()
    preview.thumbnail((size, size))
    return preview


@dataclass(frozen=True)
class ImageScore:
    """One uploaded image scored against the ID reference set."""

    name: str
    score: float
    threshold: float
    verdict: str
    id_percentile: float  # share of ID reference scores below this image's score, in percent
    stage_cos: tuple[float, ...]


def score_uploads(
    detector: Detector,
    features: Tensor,
    names: Sequence[str],
    id_scores: np.ndarray,
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    seed: int = 0,
) -> list[ImageScore]:
    """Score upload features (M, D) under `score`, placed against the ID reference scores at the same timestep."""
    if len(names) == 0:
        return []
    detector.check_features(features)
    scores = score_matrix(detector, features, timestep, steps, seed, with_lr=score == "lr")
    if score not in scores:
        raise CheckpointError(f"score {score!r} is not available for this checkpoint")
    threshold = id_threshold95(id_scores)
    reference = np.sort(np.asarray(id_scores, dtype=np.float64))
    results = []
    for row, name in enumerate(names):
        value = float(scores[score][row])
        below = np.searchsorted(reference, value, side="left")
        results.append(
            ImageScore(
                name=name,
                score=value,
                threshold=threshold,
                verdict=verdict(value, threshold),
                id_percentile=100.0 * below / len(reference),
                stage_cos=tuple(float(v) for v in scores["stage_cos"][row]),
            )
        )
    return results


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (used for sample images and thumbnails, in memory)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_uri(image: Image.Image, size: int = 56) -> str:
    """A data: URI of a small PNG thumbnail, for hover labels in HTML."""
    thumb = image.copy()
    thumb.thumbnail((size, size))
    return "data:image/png;base64," + base64.b64encode(encode_png(thumb)).decode()


def dataset_images(spec: str, indices: Sequence[int]) -> list[Image.Image | None]:
    """Images at dataset positions `indices` of `spec`."""
    from dlsr_core.data import open_dataset

    dataset = open_dataset(spec)
    return [dataset[int(i)] for i in indices]


def sample_uploads(per_set: int = 2, seed: int = 0) -> list[tuple[str, bytes]]:
    """A few demo images (ID and OOD) as in-memory PNG "uploads", for a demo without files at hand."""
    rng = np.random.default_rng(seed)
    files = []
    for spec in [DEMO_ID_SET, *DEMO_OOD_SETS]:
        from dlsr_core.data import open_dataset

        dataset = open_dataset(spec)
        for index in rng.choice(len(dataset), size=per_set, replace=False):
            files.append((f"{spec.removeprefix('demo:')}_{int(index)}.png", encode_png(dataset[int(index)])))
    return files


# ------------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class Evaluation:
    """An evaluation report plus which ID rows were evaluated and where the baselines' training data came from."""

    report: EvaluationReport
    id_rows: np.ndarray  # rows of the ID feature matrix that were scored
    baseline_note: str


def baseline_split(
    id_features: Tensor, train_features: Tensor | None, max_train: int = 5000, seed: int = 0
) -> tuple[Tensor, np.ndarray, str]:
    """(baseline training features, ID rows to evaluate, note) for k-NN / Mahalanobis.

    With cached ID training features, a random subset of at most `max_train` of them is used and all ID rows are
    evaluated. Without, the ID set is split deterministically: even rows fit the baselines, odd rows are evaluated.
    """
    if train_features is not None and len(train_features) > 0:
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(train_features), generator=generator)[:max_train]
        note = f"k-NN and Mahalanobis fitted on {len(chosen)} cached {BASELINE_TRAIN_SET} features"
        return train_features[chosen.sort().values], np.arange(len(id_features)), note
    rows = np.arange(len(id_features))
    note = (
        f"no cached {BASELINE_TRAIN_SET} features: k-NN and Mahalanobis fitted on the even rows of the ID set "
        f"({len(rows[0::2])} images); every score is evaluated on the odd rows ({len(rows[1::2])} images)"
    )
    return id_features[rows[0::2]], rows[1::2], note


def evaluate_sets(
    detector: Detector,
    id_name: str,
    id_features: Tensor,
    ood_features: dict[str, Tensor],
    settings: EvaluationSettings,
    train_features: Tensor | None = None,
    with_baselines: bool = True,
) -> Evaluation:
    """AUROC/FPR95/AUPR of every DLSR score and, optionally, the k-NN and Mahalanobis baselines."""
    if with_baselines:
        train, id_rows, note = baseline_split(id_features, train_features)
    else:
        train, id_rows, note = None, np.arange(len(id_features)), "baselines not computed"
    report = evaluate(detector, id_name, id_features[torch.as_tensor(id_rows)], ood_features, settings, train)
    return Evaluation(report, id_rows, note)


def metrics_rows(report: EvaluationReport) -> list[dict[str, object]]:
    """Table rows (percent) per OOD set and score, then the average over OOD sets."""
    rows = []
    for ood_set in [*report.ood_sets, "average"]:
        for score in report.score_names:
            m = report.average(score) if ood_set == "average" else report.metric(ood_set, score)
            rows.append(
                {
                    "OOD set": ood_set,
                    "score": SCORE_LABELS.get(score, score),
                    "AUROC %": 100 * m.auroc,
                    "FPR95 %": 100 * m.fpr95,
                    "AUPR-In %": 100 * m.aupr_in,
                    "AUPR-Out %": 100 * m.aupr_out,
                }
            )
    return rows


def subsample_rows(count: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row positions: all of them, or `limit` drawn without replacement."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def sweep(
    detector: Detector,
    id_features: Tensor,
    ood_features: dict[str, Tensor],
    timesteps: Sequence[int],
    score: str,
    steps: int | None = DEFAULT_STEPS,
    max_per_set: int | None = 500,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """AUROC per OOD set at each timestep (Figure 4), on at most `max_per_set` rows per set for speed."""
    pick = lambda matrix: matrix[torch.as_tensor(subsample_rows(len(matrix), max_per_set))]  # noqa: E731
    with torch.inference_mode():
        return timestep_sweep(
            detector,
            pick(id_features),
            {name: pick(m) for name, m in ood_features.items()},
            list(timesteps),
            score=score,
            steps=steps,
            progress=progress,
        )


# ------------------------------------------------------------------------------------------------
# Failure cases


@dataclass(frozen=True)
class FailureCase:
    """An ID image scored OOD-like or an OOD image scored ID-like."""

    kind: str  # "ID scored as OOD" | "OOD scored as ID"
    dataset: str
    index: int  # position in the dataset
    score: float
    rank: int  # 1 = worst
    stage_cos: tuple[float, ...]


def failure_cases(
    id_name: str,
    scores: dict[str, np.ndarray],
    stage_cos: dict[str, np.ndarray],
    indices: dict[str, np.ndarray],
    k: int = 12,
) -> list[FailureCase]:
    """The k ID rows with the highest score and the k OOD rows (over all OOD sets) with the lowest.

    scores[set] (N,), stage_cos[set] (N, S), indices[set] (N,) dataset positions; `id_name` is one of the sets.
    """
    cases: list[FailureCase] = []
    order = np.argsort(-scores[id_name], kind="stable")[:k]
    for rank, row in enumerate(order, 1):
        cases.append(
            FailureCase(
                "ID scored as OOD",
                id_name,
                int(indices[id_name][row]),
                float(scores[id_name][row]),
                rank,
                tuple(float(v) for v in stage_cos[id_name][row]),
            )
        )
    pooled = [(float(value), name, row) for name in scores if name != id_name for row, value in enumerate(scores[name])]
    pooled.sort(key=lambda item: item[0])
    for rank, (value, name, row) in enumerate(pooled[:k], 1):
        cases.append(
            FailureCase(
                "OOD scored as ID",
                name,
                int(indices[name][row]),
                value,
                rank,
                tuple(float(v) for v in stage_cos[name][row]),
            )
        )
    return cases


def failure_csv(cases: Sequence[FailureCase], score: str, threshold: float | None = None) -> str:
    """CSV: kind, rank, dataset, index, score, verdict at the threshold, per-stage cosine similarities."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    stages = len(cases[0].stage_cos) if cases else 0
    writer.writerow(
        [
            "kind",
            "rank",
            "dataset",
            "index",
            f"score_{score}",
            "threshold95",
            *(f"cos_stage{i + 1}" for i in range(stages)),
        ]
    )
    for case in cases:
        writer.writerow(
            [
                case.kind,
                case.rank,
                case.dataset,
                case.index,
                f"{case.score:.6g}",
                "" if threshold is None else f"{threshold:.6g}",
                *(f"{v:.4f}" for v in case.stage_cos),
            ]
        )
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# Training in the background


@dataclass(frozen=True)
class TrainRequest:
    """What the Train page asks for."""

    dataset: str
    run_dir: Path
    backbone: str = "efficientnet_lite0"
    weights: str = "pretrained"
    input_size: int = 64
    width: int = 256
    depth: int = 4
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    cache_dir: str | None = None
    data_root: str | None = None
    download: bool = False


@dataclass
class TrainState:
    """A snapshot of a running job, safe to read from the UI thread."""

    phase: str = "waiting"  # waiting | extracting | training | finished | stopped | failed
    extracted: int = 0
    to_extract: int = 0
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    losses: list[float] = field(default_factory=list)  # per step
    epoch_losses: list[float] = field(default_factory=list)
    checkpoints: int = 0
    message: str = ""


class _StopRequested(Exception):
    """Raised from the extraction progress callback to abandon extraction when the user presses Stop."""


class TrainingJob:
    """Feature extraction + LFDN training on a daemon thread; `stop()` ends it after saving the current state."""

    def __init__(self, request: TrainRequest) -> None:
        self.request = request
        self._state = TrainState(epochs=request.epochs)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dlsr-train-{request.run_dir.name}", daemon=True)
        self.started_at = 0.0

    def start(self) -> TrainingJob:
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def snapshot(self) -> TrainState:
        with self._lock:
            state = self._state
            return TrainState(
                **{**state.__dict__, "losses": list(state.losses), "epoch_losses": list(state.epoch_losses)}
            )

    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._state, key, value)

    def _extraction_progress(self, done: int, total: int) -> None:
        self._update(extracted=done, to_extract=total)
        if self._stop.is_set():
            raise _StopRequested

    def _run(self) -> None:
        from dlsr_core.cache import cached_features
        from dlsr_core.diffusion import LFDNConfig
        from dlsr_core.training import Provenance, TrainConfig, train

        request = self.request
        try:
            self._update(phase="extracting", message=f"extracting features of {request.dataset}")
            features = cached_features(
                request.dataset,
                request.backbone,
                weights=request.weights,
                input_size=request.input_size,
                cache_dir=request.cache_dir,
                data_root=request.data_root,
                download=request.download,
                progress=self._extraction_progress,
            )
            if len(features) == 0:
                raise ValueError(f"{request.dataset} has no readable images ({features.skipped} skipped)")
            steps = -(-len(features) // request.batch_size)
            self._update(
                phase="training",
                steps_per_epoch=steps,
                message=f"training on {len(features)} feature vectors ({features.skipped} unreadable skipped)",
            )

            def on_step(epoch: int, step: int, loss: float) -> None:
                with self._lock:
                    self._state.epoch, self._state.step = epoch, step
                    self._state.losses.append(loss)

            def on_epoch(report) -> None:
                with self._lock:
                    self._state.epoch_losses.append(report.loss)
                    self._state.checkpoints += int(report.checkpoint_saved)

            result = train(
                features.features,
                request.run_dir,
                LFDNConfig(feature_dim=features.features.shape[1], width=request.width, depth=request.depth),
                TrainConfig(epochs=request.epochs, batch_size=request.batch_size, learning_rate=request.learning_rate),
                Provenance(request.backbone, request.weights, request.input_size, features.stage_dims, request.dataset),
                on_step=on_step,
                on_epoch=on_epoch,
                should_stop=self._stop.is_set,
            )
            phase = "stopped" if result.stopped_early else "finished"
            self._update(
                phase=phase,
                message=f"{phase} after {result.epochs_done}/{request.epochs} epochs, final "
                f"loss {result.last_loss:.4f}; checkpoints in {result.run_dir}",
            )
        except _StopRequested:
            self._update(phase="stopped", message="stopped during feature extraction; nothing was trained or cached")
        except Exception as error:  # shown in the page; the last saved checkpoint stays usable
            self._update(phase="failed", message=f"{type(error).__name__}: {error}")
            traceback.print_exc()


# ------------------------------------------------------------------------------------------------
# Feature map inputs


@dataclass(frozen=True)
class MapPoints:
    """Rows to embed: original features and (optionally) their reconstructions, with labels for each row.

    matrix (P, D); sets, kinds ("original" | "reconstructed"), dataset indices and scores are length P.
    """

    matrix: np.ndarray
    sets: list[str]
    kinds: list[str]
    indices: np.ndarray
    scores: np.ndarray


def map_points(
    detector: Detector,
    features: dict[str, Tensor],
    dataset_indices: dict[str, np.ndarray],
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    per_set: int = 200,
    with_reconstructions: bool = True,
    seed: int = 0,
) -> MapPoints:
    """Subsample each set to `per_set` rows, score them and stack originals (+ reconstructions) for a 2-D map."""
    blocks, sets, kinds, indices, scores = [], [], [], [], []
    for name, matrix in features.items():
        rows = subsample_rows(len(matrix), per_set, seed)
        chosen = matrix[torch.as_tensor(rows)]
        with torch.inference_mode():
            result = detector.score_features(chosen, timestep, steps, 1.0, seed, with_lr=score == "lr")
        values = result.get(score)
        parts = [("original", chosen)] + ([("reconstructed", result.reconstruction)] if with_reconstructions else [])
        for kind, block in parts:
            blocks.append(block.float().cpu().numpy())
            sets += [name] * len(rows)
            kinds += [kind] * len(rows)
            indices.append(np.asarray(dataset_indices[name])[rows])
            scores.append(values)
    return MapPoints(np.concatenate(blocks), sets, kinds, np.concatenate(indices), np.concatenate(scores))
