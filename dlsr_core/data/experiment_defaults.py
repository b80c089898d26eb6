"""Experiments that nobody wrote by hand: the default evaluation sets of a training set, display names, the check
that a model is not evaluated on its own training images, and the experiment of a run (its file, a user's copy, or a
stated fallback for runs trained before experiments existed).

Defaults, as `train` writes them and the README states them:

- the ID evaluation set is the training set's own test split where one exists — `fashion_mnist:train` ->
  `fashion_mnist:test`, `torchvision:<Class>:train` -> `torchvision:<Class>:test` (Omniglot: background ->
  evaluation); a folder named `train`/`training` -> its sibling `test`, `val` or `validation` folder when there is
  one. Otherwise (a folder without such a sibling, a generated or demo set) the training set itself, which every
  page then flags with a warning: pass `--id-set` to name held-out images.
- no OOD sets: they are what the user studies the model against, and only the user knows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dlsr_core.data.dataset import DatasetError
from dlsr_core.data.experiment import (
    EXPERIMENT_NAME,
    MAX_NAME_LENGTH,
    Experiment,
    ExperimentError,
    NamedSet,
    load_experiment,
)
from dlsr_core.data.spec import DatasetSpec, parse_dataset
from dlsr_core.data.user_data import REPOSITORY, user_data_dir, user_experiment_path

# split of a training set -> the split that holds its test images (for sources with named splits)
TEST_SPLITS = {"train": "test", "training": "test", "background": "evaluation"}
TRAIN_FOLDERS = ("train", "training")
TEST_FOLDERS = ("test", "val", "validation")
# Demo sets drawn from a larger split (assets/demo/README.md): evaluating on one while training on the other reuses
# training images.
DRAWN_FROM = {
    "demo:fashion_mnist_test": "fashion_mnist:test",
    "demo:fashion_mnist_inverted": "fashion_mnist:test",
    "demo:fashion_mnist_rotated": "fashion_mnist:test",
}
_GENERIC_FOLDERS = {"images", "image", "imgs", "data", *TRAIN_FOLDERS, *TEST_FOLDERS}


def _parsed(spec: str) -> DatasetSpec | None:
    try:
        return parse_dataset(spec)
    except DatasetError:
        return None


def default_id_set(training_set: str) -> tuple[str, str]:
    """(ID evaluation spec, how it was chosen) for a model trained on `training_set` (see the module docstring)."""
    spec = _parsed(training_set)
    if spec is not None and spec.split is not None and spec.split.lower() in TEST_SPLITS:
        test = replace(spec, split=TEST_SPLITS[spec.split.lower()])
        return str(test), f"the {test.split} split of the training set"
    if spec is not None and spec.source == "folder" and spec.path:
        folder = Path(spec.path)
        if folder.name.lower() in TRAIN_FOLDERS:
            for name in TEST_FOLDERS:
                sibling = next((p for p in folder.parent.glob("*") if p.name.lower() == name and p.is_dir()), None)
                if sibling is not None:
                    return str(replace(spec, path=str(sibling))), f"the {sibling.name}/ folder beside {folder.name}/"
    return training_set, "the training set itself (no test split found): pass --id-set for held-out images"


def default_name(spec: str) -> str:
    """A short display name for a dataset spec: `SVHN`, `letters`, `cats`, `fashion_mnist test`, `dtd images`."""
    parsed = _parsed(spec)
    if parsed is None:
        name = spec
    elif parsed.source == "folder" and parsed.path:
        path = Path(parsed.path)
        name = f"{path.parent.name} {path.name}" if path.name.lower() in _GENERIC_FOLDERS else path.name
    elif parsed.source == "torchvision":
        name = parsed.name or "torchvision"
        name += f" {parsed.split}" if parsed.split and parsed.split.lower() not in ("test", "evaluation") else ""
    elif parsed.source == "demo":
        name = parsed.name or "demo"
    else:
        name = parsed.source + (f" {parsed.split}" if parsed.split else "")
    if parsed is not None and parsed.shifts:
        name += " " + " ".join(f"+{shift}" for shift in parsed.shifts)
    return name.strip()[:MAX_NAME_LENGTH].strip() or "set"


def unique_name(name: str, taken: Iterable[str]) -> str:
    """`name`, or `name (2)`, `name (3)`, … — the first that no name in `taken` equals (ignoring case)."""
    used = {other.casefold() for other in taken}
    unique, number = name, 2
    while unique.casefold() in used:
        unique, number = f"{name[: MAX_NAME_LENGTH - 5].rstrip()} ({number})", number + 1
    return unique


def _images_of(spec: str) -> tuple[str, str | None]:
    """(base spec without shifts, the larger split it was drawn from, if any)."""
    parsed = _parsed(spec)
    if parsed is None:
        return spec, None
    base = str(replace(parsed, shifts=()))
    return base, DRAWN_FROM.get(base)


def overlap_warning(experiment: Experiment) -> str | None:
    """A sentence when the ID evaluation images are (or are drawn from, or contain) the training images; else None."""
    train, train_source = _images_of(experiment.training_set)
    evaluated, evaluated_source = _images_of(experiment.id_set.spec)
    reason = None
    if experiment.training_set == experiment.id_set.spec:
        reason = "is the training set"
    elif train == evaluated:
        reason = "shows the training images (shifted)"
    elif evaluated_source is not None and evaluated_source == train:
        reason = f"is drawn from the training set {train}"
    elif train_source is not None and train_source == evaluated:
        reason = f"contains the training images ({experiment.training_set} is drawn from it)"
    else:
        paths = [getattr(_parsed(s), "path", None) for s in (train, evaluated)]
        if all(paths) and (Path(paths[0]) in Path(paths[1]).parents or Path(paths[1]) in Path(paths[0]).parents):
            reason = "shares image folders with the training set"
    if reason is None:
        return None
    return (
        f"The ID evaluation set {experiment.id_set.spec} {reason}: every ID score and metric is measured on images "
        "the model was trained on and looks better than it is. Evaluate on held-out images (train --id-set, or the "
        "Experiment / data page)."
    )


@dataclass(frozen=True)
class RunExperiment:
    """The experiment of a run, where it came from and where edits go.

    source: "file" (`<run>/experiment.json`), "user copy" (edits of a read-only run, kept in the user data folder),
    "fallback" (no file: derived from the training set, see `note`). problems: why a file could not be used.
    """

    experiment: Experiment
    run_dir: Path
    source: Literal["file", "user copy", "fallback"]
    path: Path | None
    edits_path: Path
    note: str = ""
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def overlap(self) -> str | None:
        return overlap_warning(self.experiment)


def _read_only(run_dir: Path) -> bool:
    """Runs whose folder is in the repository (the shipped model) or not writable keep their file unchanged."""
    resolved = run_dir.resolve()
    return resolved == REPOSITORY or REPOSITORY in resolved.parents or not os.access(run_dir, os.W_OK)


def edits_path(run_dir: str | Path) -> Path:
    """Where the app saves edits of `run_dir`'s experiment: the run's own file, or a user copy for read-only runs."""
    run_dir = Path(run_dir)
    return user_experiment_path(run_dir) if _read_only(run_dir) else run_dir / EXPERIMENT_NAME


def fallback_experiment(training_set: str, shipped: Experiment | None = None) -> tuple[Experiment, str]:
    """(experiment, sentence saying what was assumed) for a run without an experiment file: the shipped model's
    experiment when the run was trained on the same set, else the default ID evaluation set and no OOD sets."""
    if shipped is not None and shipped.training_set == training_set:
        return shipped, (
            f"trained on {training_set} like the shipped model, so it is evaluated on the shipped model's sets"
        )
    id_spec, how = default_id_set(training_set)
    experiment = Experiment(training_set=training_set, id_set=NamedSet(id_spec, default_name(id_spec)))
    return experiment, f"evaluated on {id_spec} ({how}) with no OOD sets yet"


def run_experiment(
    run_dir: str | Path, training_set: str, data_root: str | Path | None = None, shipped_run: Path | None = None
) -> RunExperiment:
    """The experiment of the run in `run_dir` trained on `training_set`: a user copy of a read-only run's edits,
    else `<run>/experiment.json`, else a fallback (stated in `note`). A damaged file never raises: it is named in
    `problems` and the fallback is used, so every page stays usable and says what is wrong."""
    run_dir = Path(run_dir)
    root = data_root if data_root is not None else user_data_dir()
    target = edits_path(run_dir)
    problems: list[str] = []
    candidates = [("user copy", target)] if target.parent != run_dir else []
    candidates.append(("file", run_dir / EXPERIMENT_NAME))
    for source, path in candidates:
        if not path.is_file():
            continue
        try:
            experiment = load_experiment(path, root)
        except ExperimentError as error:
            problems.append(str(error))
            continue
        note = f"your edits of this run's sets, kept in {path} (the run's own file is unchanged)"
        return RunExperiment(experiment, run_dir, source, path, target, note if source == "user copy" else "")
    shipped = None
    if shipped_run is not None and shipped_run.resolve() != run_dir.resolve():
        try:
            shipped = load_experiment(shipped_run / EXPERIMENT_NAME, root)
        except ExperimentError:
            shipped = None
    experiment, how = fallback_experiment(training_set, shipped)
    missing = "its experiment file cannot be used" if problems else f"no {EXPERIMENT_NAME}"
    note = f"This run has {missing}: it is {how}. Edits on the Experiment / data page are saved to {target}."
    return RunExperiment(experiment, run_dir, "fallback", None, target, note, tuple(problems))
