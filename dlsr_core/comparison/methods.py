"""Every method of the paper's comparison behind one call: inputs of each set in, scores and scoring time out.

Methods differ in what they read: DLSR, the feature autoencoder, k-NN and Mahalanobis read the cached DLSR feature
vectors; the pixel DDPM and the classifier-based detectors (a CNN trained on the images) read the images as pixels.
`SetInputs` carries both for one set, and `score_methods` times each method on its own input only (fitting and
feature extraction excluded), so the numbers say what re-scoring cached inputs costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlsr_core.baselines.store import BaselineFileError, baselines_dir
from dlsr_core.evaluation import EvaluationSettings, score_all
from dlsr_core.presets import DEFAULT_FEATURES
from dlsr_core.scoring import Detector
from dlsr_core.validation import training_data_matches


@dataclass(frozen=True)
class Method:
    """One column of the comparison: its label, family, input and whether it needs ID class labels."""

    name: str
    label: str
    family: str
    input: str  # "features" (DLSR vectors) or "pixels" (the images)
    needs_labels: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mse", "DLSR MSE", "DLSR (feature diffusion)", "features"),
        Method("mfsim", "DLSR MFsim", "DLSR (feature diffusion)", "features"),
        Method("lr", "DLSR LR", "DLSR (feature diffusion)", "features"),
        Method("pixel_ddpm", "Pixel DDPM", "generative, pixels", "pixels"),
        Method("feature_ae", "Feature AE", "generative, features", "features"),
        Method("msp", "MSP", "classifier", "pixels", needs_labels=True),
        Method("energy", "EBO (energy)", "classifier", "pixels", needs_labels=True),
        Method("dice", "DICE", "classifier", "pixels", needs_labels=True),
        Method("ash_s", "ASH-S", "classifier", "pixels", needs_labels=True),
        Method("react", "ReAct", "classifier", "pixels", needs_labels=True),
        Method("vim", "ViM", "classifier", "pixels", needs_labels=True),
        Method("knn", "k-NN", "distance", "features"),
        Method("mahalanobis", "Mahalanobis", "distance", "features"),
    )
}
DLSR_METHODS = ("mse", "mfsim", "lr")
CLASSIFIER_METHODS = ("msp", "energy", "dice", "ash_s", "react", "vim")
DISTANCE_METHODS = ("knn", "mahalanobis")


@dataclass(frozen=True)
class SetInputs:
    """One set's inputs: DLSR features (N, D) and the images as pixels (N, 1, S, S) in [-1, 1] or None.

    Row i of each is the same image; `indices` (N,) are the images' positions in their dataset.
    """

    features: Tensor
    indices: Tensor
    pixels: Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class Baselines:
    """The trained baselines available to a comparison; any of them may be missing (None)."""

    pixel_ddpm: object | None = None  # dlsr_core.baselines.pixel_ddpm.PixelDDPM
    feature_ae: object | None = None  # dlsr_core.baselines.feature_ae.FeatureAEBaseline
    classifier: object | None = None  # dlsr_core.baselines.classifier.ClassifierBaselines
    distance_train: Tensor | None = None  # ID training features (N, D) for k-NN and Mahalanobis
    problems: dict[str, str] = field(default_factory=dict)  # kind -> why it could not be loaded (one line)

    @classmethod
    def load(cls, folder: str | Path | None = None, distance_train: Tensor | None = None) -> Baselines:
        """Load every baseline file in `folder` (default: baselines_dir()), each checked before it is built; a
        missing or damaged one is listed in `problems` (its BaselineFileError message) and the others load."""
        from dlsr_core.baselines.classifier import ClassifierBaselines
        from dlsr_core.baselines.feature_ae import FeatureAEBaseline
        from dlsr_core.baselines.pixel_ddpm import PixelDDPM

        folder = Path(folder) if folder is not None else baselines_dir()
        loaded: dict[str, object] = {}
        problems: dict[str, str] = {}
        for kind, loader in (
            ("pixel_ddpm", PixelDDPM.load),
            ("feature_ae", FeatureAEBaseline.load),
            ("classifier", ClassifierBaselines.load),
        ):
            try:
                loaded[kind] = loader(folder / f"{kind}.safetensors")
            except BaselineFileError as error:
                problems[kind] = str(error)
        return cls(**loaded, distance_train=distance_train, problems=problems)

    def available(self, detector: Detector) -> list[str]:
        """Method names that can be scored with these baselines and `detector`, in METHODS order. A baseline counts
        only when it was fitted on the detector's training data (dlsr_core.validation.training_data_matches); the
        feature autoencoder also only on features made like the detector's (backbone, weights, input size,
        feature options, size)."""
        dataset = detector.info.dataset
        names = [name for name in DLSR_METHODS if name != "lr" or detector.has_early]
        if self.pixel_ddpm is not None and training_data_matches(self.pixel_ddpm.info.training_set, dataset):
            names.append("pixel_ddpm")
        if self.feature_ae is not None and _same_features(self.feature_ae, detector):
            names.append("feature_ae")
        if self.classifier is not None and training_data_matches(self.classifier.info.training_set, dataset):
            names.extend(CLASSIFIER_METHODS)
        if self.distance_train is not None:
            names.extend(DISTANCE_METHODS)
        return names


def _same_features(feature_ae, detector: Detector) -> bool:
    """Whether the autoencoder was trained on features made exactly like `detector`'s, from its training data."""
    info = feature_ae.info
    made = (detector.backbone, detector.info.weights, detector.input_size)
    return (
        training_data_matches(info.training_set, detector.info.dataset)
        and (info.backbone, info.weights, info.input_size) == made
        and (info.feature_options or DEFAULT_FEATURES) == detector.feature_options
        and feature_ae.feature_dim == detector.info.config.feature_dim
    )


@dataclass(frozen=True)
class MethodScores:
    """Scores (N,) of one method per set, and the seconds it spent scoring `count` images from its own input."""

    method: str
    scores: dict[str, np.ndarray]
    seconds: float
    count: int

    @property
    def images_per_second(self) -> float:
        return self.count / max(self.seconds, 1e-9)


class MissingInputError(ValueError):
    """A method was asked for but its input (pre-logits, pixels) or its trained model is not available."""


def _timed(function: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = function()
    return np.asarray(result, dtype=np.float64), time.perf_counter() - started


def score_methods(
    methods: Sequence[str],
    inputs: dict[str, SetInputs],
    detector: Detector,
    baselines: Baselines,
    settings: EvaluationSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, MethodScores]:
    """Scores of every method in `methods` on every set in `inputs`, each method timed on its own input.

    DLSR MSE and MFsim share one reconstruction (their time is that pass); LR adds the early model's pass; k-NN and
    Mahalanobis are fitted on `baselines.distance_train` (fit excluded from the time). `settings` (default
    EvaluationSettings()) sets DLSR's timestep, steps and seed. Raises MissingInputError
    naming the method when its model or input is missing.
    """
    settings = settings or EvaluationSettings()
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    count = sum(len(set_inputs) for set_inputs in inputs.values())
    results: dict[str, MethodScores] = {}
    feature_methods = [name for name in methods if name in DLSR_METHODS or name in DISTANCE_METHODS]
    if feature_methods:
        if "lr" in feature_methods and not detector.has_early:
            raise MissingInputError("DLSR LR needs the early checkpoint (first.safetensors) beside the final one")
        needs_distance = any(name in DISTANCE_METHODS for name in feature_methods)
        if needs_distance and baselines.distance_train is None:
            raise MissingInputError("k-NN and Mahalanobis need ID training features (Baselines.distance_train)")
        if progress:
            progress("DLSR" + (" + k-NN + Mahalanobis" if needs_distance else ""))
        features = {name: set_inputs.features for name, set_inputs in inputs.items()}
        scores, speed = score_all(detector, features, settings, baselines.distance_train if needs_distance else None)
        for name in feature_methods:
            results[name] = MethodScores(
                name, {s: scores[s][name] for s in inputs}, count / max(speed[name], 1e-9), count
            )
    for name in methods:
        if name in results:
            continue
        if progress:
            progress(METHODS[name].label)
        results[name] = _score_baseline(name, inputs, baselines, settings.seed, count)
    return {name: results[name] for name in methods}


def _score_baseline(name: str, inputs: dict[str, SetInputs], baselines: Baselines, seed: int, count: int):
    scorer: Callable[[SetInputs], np.ndarray]
    if name == "pixel_ddpm":
        model = _required(baselines.pixel_ddpm, name, baselines)
        _require_inputs(inputs, "pixels", name)
        scorer = lambda s: model.score_pixels(s.pixels, seed)  # noqa: E731
    elif name == "feature_ae":
        model = _required(baselines.feature_ae, name, baselines)
        scorer = lambda s: model.score(s.features)  # noqa: E731
    else:
        model = _required(baselines.classifier, "classifier", baselines)
        _require_inputs(inputs, "pixels", name)
        scorer = lambda s: model.score(name, s.pixels)  # noqa: E731
    scores, seconds = {}, 0.0
    with torch.inference_mode():
        for set_name, set_inputs in inputs.items():
            scores[set_name], elapsed = _timed(lambda s=set_inputs: scorer(s))
            seconds += elapsed
    return MethodScores(name, scores, seconds, count)


def _required(model: object | None, kind: str, baselines: Baselines) -> object:
    if model is None:
        reason = baselines.problems.get(kind, "not loaded")
        label = METHODS[kind].label if kind in METHODS else kind
        raise MissingInputError(f"{label} baseline unavailable: {reason}")
    return model


def _require_inputs(inputs: dict[str, SetInputs], field_name: str, method: str) -> None:
    missing = [name for name, set_inputs in inputs.items() if getattr(set_inputs, field_name) is None]
    if missing:
        raise MissingInputError(f"{METHODS[method].label} needs {field_name} for {', '.join(missing)}")
