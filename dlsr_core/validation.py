"""The validation split of Fashion-MNIST train, shared by every method of the comparison.

Settings (DLSR's t and steps, input size, model sizes, the pixel DDPM's reconstruction levels, k of k-NN...) are
chosen on validation data disjoint from the test table, then frozen and reported on the test sets. The validation ID
images are the Fashion-MNIST *training* images with index i % 12 == 11 (5,000 of 60,000, every class about equally
represented because the split is by index, not by class); the other 55,000 are the *fit* set. Every model of the
reported comparison is trained or fitted on the fit set only, so a validation image is never seen in training and a
test image is never seen before the test table.

Indices refer to the order of the official training file (raw images by index; rows of the cached
`fashion_mnist:train` features by row, which follow the same order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRAIN_SET = "fashion_mnist:train"
TRAIN_SIZE = 60_000
VALIDATION_PERIOD = 12
VALIDATION_REMAINDER = 11
VALIDATION_RULE = f"i % {VALIDATION_PERIOD} == {VALIDATION_REMAINDER}"
FIT_RULE = f"i % {VALIDATION_PERIOD} != {VALIDATION_REMAINDER}"


def _checked_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"the number of training images must be a non-negative integer, got {n!r}")
    return int(n)


def validation_indices(n: int = TRAIN_SIZE) -> np.ndarray:
    """Sorted int64 indices (M,) of the validation ID images among n training images (M = 5,000 for n = 60,000)."""
    return np.arange(VALIDATION_REMAINDER, _checked_count(n), VALIDATION_PERIOD, dtype=np.int64)


def fit_indices(n: int = TRAIN_SIZE) -> np.ndarray:
    """Sorted int64 indices (n - M,) of the images models are fitted on: every index not in `validation_indices`."""
    everything = np.arange(_checked_count(n), dtype=np.int64)
    return everything[everything % VALIDATION_PERIOD != VALIDATION_REMAINDER]


def evenly_spaced(indices: np.ndarray, count: int, offset: int = 0) -> np.ndarray:
    """`count` of `indices` (K,) taken at a fixed stride from position `offset`: a fixed, class-balanced subset.

    Used where a method needs fewer validation images than the 5,000 (e.g. the pixel DDPM's score normalisation),
    so that every such subset is a documented function of the split, not a random draw that is not shipped."""
    if count < 1 or count > len(indices):
        raise ValueError(f"cannot take {count} of {len(indices)} indices")
    stride = len(indices) // count
    if not 0 <= offset < stride:
        raise ValueError(f"offset must be in 0..{stride - 1} to take {count} of {len(indices)}, got {offset}")
    return np.asarray(indices)[offset::stride][:count]


@dataclass(frozen=True)
class TrainingData:
    """Which images a model was fitted on: a dataset spec, the rule selecting its rows (None = all of them) and how
    many images that gave. Stored with every baseline, so the app offers a baseline only where the data match."""

    dataset: str
    subset: str | None = None
    images: int | None = field(default=None, metadata={"range": (1, None)})


# Row rules that keep every class of the dataset (a random-like split by index): a model fitted on such a subset
# learned the same ID distribution as one fitted on all rows. A class-restricting rule (a held-out-class experiment)
# is not among them, so it matches only itself.
CLASS_PRESERVING_SUBSETS = (None, FIT_RULE)


def training_set_record(
    dataset: str = TRAIN_SET, subset: str | None = FIT_RULE, count: int | None = None
) -> TrainingData:
    """The record of a model fitted on `subset` of `dataset` (default: the fit set of Fashion-MNIST train)."""
    return TrainingData(dataset, subset, count)


# Dataset names of the split's parts (dlsr_core.data): a model trained on `fashion_mnist:fit` saw FIT_RULE's rows.
SPLIT_NAMES = {"fashion_mnist:fit": (TRAIN_SET, FIT_RULE), "fashion_mnist:val": (TRAIN_SET, VALIDATION_RULE)}


def training_data_matches(record: TrainingData | None, dataset: str, subset: str | None = None) -> bool:
    """Whether a baseline fitted on `record` belongs to a model trained on `subset` of `dataset`: the same dataset
    spec, and the same row rule or two rules that both keep every class. A part of the split named as a dataset
    (`fashion_mnist:fit`) is its rows of `fashion_mnist:train`. An unknown record matches nothing."""
    if record is None:
        return False
    dataset, subset = _as_rows(dataset, subset)
    recorded, rule = _as_rows(record.dataset, record.subset)
    if recorded != dataset:
        return False
    return rule == subset or (rule in CLASS_PRESERVING_SUBSETS and subset in CLASS_PRESERVING_SUBSETS)


def _as_rows(dataset: str, subset: str | None) -> tuple[str, str | None]:
    """(dataset, row rule) with a split part named as a dataset written as its rows of fashion_mnist:train."""
    return SPLIT_NAMES[dataset] if subset is None and dataset in SPLIT_NAMES else (dataset, subset)
