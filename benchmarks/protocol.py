"""The validation protocol: every setting is chosen on validation sets, then frozen and reported on the test table.

Sets (dataset names of dlsr_core.data; the split is dlsr_core.validation's, shared by every method):

- fit: `fashion_mnist:fit`, the 55,000 Fashion-MNIST training images every model is trained or fitted on;
- validation ID: `fashion_mnist:val`, the other 5,000 training images (index i % 12 == 11);
- validation OOD: `shapes` (far: generated filled silhouettes) and `fashion_mnist:val+rollx` / `+rolly` (near: the
  validation images with their halves swapped, which keeps every local pattern and breaks the layout). None of them
  is, or is made like, a set of the test table (digits, letters, textures; inverted and rotated clothes);
- test: the shipped model's experiment (checkpoints/default/experiment.json: the demo sets of the README's table and
  the app), read only after every choice is made.

A choice is a function of validation scores only: `choose` gets its candidates' scores through a
:class:`GuardedSource`, which refuses to hand out a test set (tests/test_protocol.py checks this with a source that
records every set opened). The objective is the mean of the far and near validation AUROCs (each averaged over its
sets), mirroring the test table's two goals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.data import EXPERIMENT_NAME, load_experiment
from dlsr_core.metrics import ood_metrics

FIT_SET = "fashion_mnist:fit"
VALIDATION_ID = "fashion_mnist:val"
VALIDATION_OOD: dict[str, str] = {
    "shapes": "far",
    "fashion_mnist:val+rollx": "near",
    "fashion_mnist:val+rolly": "near",
}
# The test table: the shipped model's experiment, the sets the app shows (ID Fashion-MNIST test images; far, near OOD).
_SHIPPED = load_experiment(DEFAULT_RUN_DIR / EXPERIMENT_NAME)
TEST_ID = _SHIPPED.id_set.spec
TEST_OOD: dict[str, str] = dict(_SHIPPED.groups)
TEST_SETS = frozenset({TEST_ID, *TEST_OOD})
VALIDATION_SETS = frozenset({VALIDATION_ID, *VALIDATION_OOD})


class SelectionLeak(RuntimeError):
    """A choice asked for a set of the test table."""


Source = Callable[..., object]  # (dataset name, *how) -> what a candidate needs from it (features, pixels...)


class GuardedSource:
    """A source that hands out only validation and fit sets, and records every name it was asked for.

    source: the real `name -> data` function. allowed: names that may be read while choosing (default: the fit set
    and the validation sets). Any other name raises SelectionLeak, so a selection that would read a test set stops
    before it reads it.
    """

    def __init__(self, source: Source, allowed: frozenset[str] | None = None) -> None:
        self._source = source
        self.allowed = allowed if allowed is not None else VALIDATION_SETS | {FIT_SET}
        self.opened: list[str] = []

    def __call__(self, name: str, *how: object) -> object:
        """The data of set `name` (made the way `how` says, e.g. a backbone and input size), if it may be read."""
        if name not in self.allowed or name in TEST_SETS:
            raise SelectionLeak(f"a setting was about to be chosen on {name!r}, which is not a validation set")
        self.opened.append(name)
        return self._source(name, *how)


def group_aurocs(
    id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray], groups: Mapping[str, str]
) -> dict[str, float]:
    """AUROC (fraction) of every OOD set against the ID scores, plus "far", "near" (averages over each group's sets)
    and "objective" (the mean of far and near; the average of whichever group exists when one is empty)."""
    result = {name: ood_metrics(id_scores, scores).auroc for name, scores in ood_scores.items()}
    for group in ("far", "near"):
        members = [result[name] for name in ood_scores if groups[name] == group]
        result[group] = float(np.mean(members)) if members else float("nan")
    present = [result[g] for g in ("far", "near") if not np.isnan(result[g])]
    result["objective"] = float(np.mean(present))
    return result


C = TypeVar("C")


@dataclass(frozen=True)
class Choice(Generic[C]):
    """The outcome of one choice: the winner, and every candidate's validation AUROCs (rows in candidate order).

    eligible: per candidate, whether it met the constraints (e.g. >= 200 images/s); only eligible ones can win.
    """

    best: C
    candidates: tuple[C, ...]
    validation: tuple[dict[str, float], ...]
    eligible: tuple[bool, ...]
    opened: tuple[str, ...] = field(default=())

    @property
    def best_index(self) -> int:
        return self.candidates.index(self.best)


def choose(
    candidates: Sequence[C],
    validation_scores: Callable[[C, GuardedSource], tuple[np.ndarray, dict[str, np.ndarray]]],
    source: Source,
    eligible: Callable[[C], bool] = lambda candidate: True,
    default: C | None = None,
    margin: float = 0.0,
) -> Choice[C]:
    """The candidate with the highest validation objective among the eligible ones (the first on a tie); eligibility
    is asked after every candidate's validation scores. With a `default` candidate, it is kept unless the best one
    beats it by more than `margin` (AUROC fraction): a setting users see is not moved for a gain within the noise.

    validation_scores(candidate, guarded) -> (ID scores (N,), {validation OOD set: scores (M,)}), reading data only
    through `guarded`; higher scores = more OOD. Raises SelectionLeak if it asks for a test set, ValueError when no
    candidate is eligible.
    """
    if not candidates:
        raise ValueError("nothing to choose from")
    guarded = GuardedSource(source)
    rows = []
    for candidate in candidates:
        id_scores, ood_scores = validation_scores(candidate, guarded)
        unknown = set(ood_scores) - set(VALIDATION_OOD)
        if unknown:
            raise SelectionLeak(f"validation scores were returned for {sorted(unknown)}, which are not validation sets")
        rows.append(group_aurocs(id_scores, ood_scores, VALIDATION_OOD))
    # Constraints are checked once every candidate has been scored, so a measurement (e.g. speed) can compare them
    # all side by side.
    allowed = [bool(eligible(candidate)) for candidate in candidates]
    ranked = [i for i in range(len(candidates)) if allowed[i]]
    if not ranked:
        raise ValueError("no candidate meets the constraints")
    best = max(ranked, key=lambda i: (rows[i]["objective"], -i))
    if default is not None and default in candidates:
        kept = candidates.index(default)
        if kept in ranked and rows[best]["objective"] - rows[kept]["objective"] <= margin:
            best = kept
    return Choice(candidates[best], tuple(candidates), tuple(rows), tuple(allowed), tuple(guarded.opened))
