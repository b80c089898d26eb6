"""The paper's comparison on one machine: DLSR against pixel diffusion, a feature autoencoder, classifier-based and
distance-based detectors, scored on the same images, with metrics (ID = positive class), speed and training time.

`methods` (which methods exist, one call to score them), `inputs` (features, pre-logits and pixels of datasets),
`speed` (end-to-end images/s from decoded images), `report` (tables as Markdown/CSV/JSON).
"""

from dlsr_core.comparison.inputs import load_inputs
from dlsr_core.comparison.methods import (
    CLASSIFIER_METHODS,
    DISTANCE_METHODS,
    DLSR_METHODS,
    METHODS,
    Baselines,
    Method,
    MethodScores,
    MissingInputError,
    SetInputs,
    score_methods,
)
from dlsr_core.comparison.report import FPR95_NOTE, ComparisonReport
from dlsr_core.comparison.speed import end_to_end_images_per_second

__all__ = [
    "CLASSIFIER_METHODS",
    "DISTANCE_METHODS",
    "DLSR_METHODS",
    "FPR95_NOTE",
    "METHODS",
    "Baselines",
    "ComparisonReport",
    "Method",
    "MethodScores",
    "MissingInputError",
    "SetInputs",
    "end_to_end_images_per_second",
    "load_inputs",
    "score_methods",
]
