"""Any compared method's scores on the demo sets, for the Score-distributions page: cached features in, scores,
metrics and each method's timing out. The methods are those of dlsr_core.comparison (DLSR, pixel DDPM, feature
autoencoder, MSP / energy / DICE / ASH-S / ReAct / ViM, k-NN, Mahalanobis)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from dlsr_core.comparison import METHODS, Baselines, SetInputs, score_methods
from dlsr_core.evaluation import EvaluationSettings
from dlsr_core.explorer.distributions import MethodScores
from dlsr_core.features import FeatureSet, subsample_rows
from dlsr_core.metrics import OODMetrics, ood_metrics
from dlsr_core.scoring import DEFAULT_STEPS, Detector

METHOD_LABELS = {name: method.label for name, method in METHODS.items()}
# Methods the Score-distributions page already computes itself (DLSR scores, k-NN, Mahalanobis).
PAGE_METHODS = ("mse", "mfsim", "lr", "knn", "mahalanobis")

# The pixel DDPM costs a few UNet passes per image (seconds per hundred images on a laptop CPU), so the page scores
# at most this many images of each set with it; every other method scores all of them.
PIXEL_IMAGES_PER_SET = 200


@dataclass(frozen=True)
class MethodComparison:
    """Scores of several methods on an ID set and OOD sets.

    scores: method -> set -> (n,) scores of the rows `rows[method][set]` of that set's feature matrix (all rows for
    every method except the pixel DDPM, which gets a fixed random subset); seconds: each method's scoring time from
    its cached input (backbone excluded); images: how many images that time covers.
    """

    id_set: str
    scores: dict[str, dict[str, np.ndarray]]
    rows: dict[str, dict[str, np.ndarray]]
    seconds: dict[str, float]
    images: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def images_per_second(self, method: str) -> float:
        return self.images[method] / max(self.seconds[method], 1e-9)

    def metric(self, method: str, ood_set: str) -> OODMetrics:
        """AUROC, FPR95 (ID = positive), AUPR of `method` on `ood_set` against the ID set."""
        return ood_metrics(self.scores[method][self.id_set], self.scores[method][ood_set])

    def method_scores(self) -> list[MethodScores]:
        """Each method as the Score-distributions page's MethodScores, its note saying how it was sampled and fitted
        (speeds are compared end to end, in explorer.speeds: rates from different cached inputs are not comparable)."""
        entries = []
        for name in self.methods:
            method = METHODS[name]
            notes = []
            if name == "pixel_ddpm":
                most = max(map(len, self.rows[name].values()))
                notes.append(f"at most {most} fixed random images per set (it is slow)")
            if method.needs_labels:
                notes.append("needs the ID class labels (a classifier head), DLSR does not")
            entries.append(MethodScores(name, method.label, method.family, self.scores[name], "; ".join(notes)))
        return entries

    def metrics_rows(self) -> list[dict[str, object]]:
        """Table rows in percent, per OOD set and method, then the average over the OOD sets, with images/s."""
        ood_sets = [name for name in next(iter(self.scores.values())) if name != self.id_set]
        rows = []
        for ood_set in [*ood_sets, "average"]:
            for method in self.methods:
                chosen = ood_sets if ood_set == "average" else [ood_set]
                values = [self.metric(method, name) for name in chosen]
                rows.append(
                    {
                        "OOD set": ood_set,
                        "score": METHODS[method].label,
                        "AUROC %": 100 * float(np.mean([m.auroc for m in values])),
                        "FPR95 %": 100 * float(np.mean([m.fpr95 for m in values])),
                        "AUPR-In %": 100 * float(np.mean([m.aupr_in for m in values])),
                        "AUPR-Out %": 100 * float(np.mean([m.aupr_out for m in values])),
                        "img/s (cached input)": self.images_per_second(method),
                        "needs labels": METHODS[method].needs_labels,
                    }
                )
        return rows


def compare_methods(
    detector: Detector,
    methods: Sequence[str],
    id_set: str,
    features: dict[str, FeatureSet],
    timestep: int | None = None,
    steps: int | None = DEFAULT_STEPS,
    *,
    baselines: Baselines | None = None,
    pixel_images_per_set: int | None = PIXEL_IMAGES_PER_SET,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> MethodComparison:
    """Scores of `methods` on every set of `features` (spec -> cached DLSR FeatureSet; `id_set` among them).

    Pre-logits (classifier methods) come from the feature cache and are extracted once when missing; pixels (pixel
    DDPM) are decoded from the datasets. k-NN and Mahalanobis need `baselines.distance_train`. Raises
    comparison.MissingInputError naming what is missing, KeyError for an unknown method.
    """
    from dlsr_core.baselines.pixel_ddpm import images_to_pixels
    from dlsr_core.baselines.prelogits import cached_prelogits
    from dlsr_core.data import open_dataset

    if id_set not in features:
        raise KeyError(f"the ID set {id_set} is not among the feature sets given")
    baselines = baselines if baselines is not None else Baselines.load()
    settings = EvaluationSettings(timestep=timestep, steps=steps, seed=seed)
    wants_prelogits = any(METHODS[name].input == "prelogits" for name in methods)
    full: dict[str, SetInputs] = {}
    for spec, feature_set in features.items():
        detector.check_features(feature_set.features, feature_set.backbone)
        prelogits = None
        if wants_prelogits:
            if progress:
                progress(f"pre-logit features of {spec}")
            found = cached_prelogits(
                spec, detector.backbone, weights=detector.backbone_weights(), input_size=detector.input_size
            )
            prelogits = _aligned(found, feature_set.indices, spec)
        full[spec] = SetInputs(feature_set.features, feature_set.indices, prelogits)

    scores: dict[str, dict[str, np.ndarray]] = {}
    rows: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    images: dict[str, int] = {}
    notes: list[str] = []
    other = [name for name in methods if name != "pixel_ddpm"]
    if other:
        for name, result in score_methods(other, full, detector, baselines, settings, progress).items():
            scores[name], seconds[name], images[name] = result.scores, result.seconds, result.count
            rows[name] = {spec: np.arange(len(inputs)) for spec, inputs in full.items()}
    if "pixel_ddpm" in methods:
        subset: dict[str, SetInputs] = {}
        rows["pixel_ddpm"] = {}
        for spec, inputs in full.items():
            chosen = subsample_rows(len(inputs), pixel_images_per_set, seed)
            dataset = open_dataset(spec)
            pixels = images_to_pixels([dataset[int(inputs.indices[i])] for i in chosen])
            subset[spec] = SetInputs(inputs.features[torch.as_tensor(chosen)], inputs.indices[chosen], None, pixels)
            rows["pixel_ddpm"][spec] = chosen
        result = score_methods(["pixel_ddpm"], subset, detector, baselines, settings, progress)["pixel_ddpm"]
        scores["pixel_ddpm"], seconds["pixel_ddpm"], images["pixel_ddpm"] = result.scores, result.seconds, result.count
        if pixel_images_per_set is not None:
            notes.append(f"Pixel DDPM: at most {pixel_images_per_set} random images per set (it is slow)")
    ordered = [name for name in methods if name in scores]
    return MethodComparison(
        id_set,
        {name: scores[name] for name in ordered},
        {name: rows[name] for name in ordered},
        {name: seconds[name] for name in ordered},
        {name: images[name] for name in ordered},
        notes,
    )


def load_baselines() -> Baselines:
    """The shipped baselines (or those in $DLSR_BASELINES_DIR); missing or damaged ones are listed in `.problems`."""
    return Baselines.load()


def addable_methods(detector: Detector, baselines: Baselines) -> list[str]:
    """Methods the Score-distributions page can add to its table: the loaded baselines it does not compute itself."""
    return [name for name in baselines.available(detector) if name not in PAGE_METHODS]


def _aligned(found: FeatureSet | None, indices: Tensor, spec: str) -> Tensor:
    """The pre-logit rows of the images at dataset positions `indices`, in that order."""
    if found is None:
        raise ValueError(f"no pre-logit features for {spec}")
    position = {int(index): row for row, index in enumerate(found.indices.tolist())}
    try:
        return found.features[torch.as_tensor([position[int(i)] for i in indices])]
    except KeyError as error:
        raise ValueError(f"{spec}: pre-logits miss image {error}; clear the feature cache and retry") from error
