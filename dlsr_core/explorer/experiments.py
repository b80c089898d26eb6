"""The loaded model's experiment, for every page: which sets it is studied on, what each set holds, and the edits
the Experiment / data page makes (add, remove, retag sets; upload sets; load a template). Every page reads its
sets from `loaded_experiment(run_dir, detector)` — no page names a dataset of its own."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.data import (
    EXPERIMENT_NAME,
    DatasetError,
    Experiment,
    ExperimentError,
    NamedSet,
    OODSet,
    RunExperiment,
    StoredSet,
    default_name,
    load_experiment,
    open_dataset,
    parse_dataset,
    run_experiment,
    save_experiment,
    user_data_dir,
)
from dlsr_core.data.experiment_defaults import unique_name
from dlsr_core.scoring import Detector
from dlsr_core.validation import TrainingData, training_data_matches

# Experiment files of the paper's settings, openable from the Experiment / data page and used by
# benchmarks/reproduce_paper.py; their relative folder paths are read from the user data folder.
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "experiments"
ROLE_LABELS = {"training": "training", "id": "ID evaluation", "far": "OOD (far)", "near": "OOD (near)"}


def loaded_experiment(run_dir: str | Path, detector: Detector) -> RunExperiment:
    """The experiment of the run the app has loaded (dlsr_core.data.run_experiment): its file, the user's copy of
    a read-only run's edits, or the stated fallback for runs without one."""
    return run_experiment(run_dir, detector.info.dataset, shipped_run=DEFAULT_RUN_DIR)


def shipped_experiment() -> Experiment | None:
    """The shipped model's experiment (what the Train page starts from when no model can be loaded), or None."""
    try:
        return load_experiment(DEFAULT_RUN_DIR / EXPERIMENT_NAME, user_data_dir())
    except ExperimentError:
        return None


def experiment_caption(current: RunExperiment) -> str:
    """One Markdown line naming the loaded experiment: its ID evaluation set, its OOD sets, where it came from."""
    experiment = current.experiment
    far = sum(s.group == "far" for s in experiment.ood_sets)
    near = len(experiment.ood_sets) - far
    source = {"file": "", "user copy": " (your edits)", "fallback": " (fallback: no experiment file)"}[current.source]
    return f"**Experiment:** ID `{experiment.id_set.name}` · {far} far + {near} near OOD set(s){source}"


def experiment_version(run_dir: str | Path) -> str:
    """Changes whenever the run's experiment file (or the user's copy of it) is rewritten: a cache key."""
    from dlsr_core.data import edits_path

    parts = []
    for path in (Path(run_dir) / EXPERIMENT_NAME, edits_path(run_dir)):
        try:
            stat = path.stat()
            parts.append(f"{path}|{stat.st_mtime_ns}|{stat.st_size}")
        except OSError:
            parts.append(f"{path}|missing")
    return ";".join(parts)


@dataclass(frozen=True)
class SetInfo:
    """What one dataset of the experiment holds here: its image count and class names, or why it cannot be opened."""

    spec: str
    images: int | None = None
    classes: tuple[str, ...] | None = None
    problem: str | None = None


def describe_set(spec: str) -> SetInfo:
    """Open `spec` (never downloading) and say what it holds; a missing or malformed set gets its reason."""
    try:
        dataset = open_dataset(spec)
    except (DatasetError, OSError) as error:
        return SetInfo(spec, problem=str(error))
    classes = tuple(dataset.class_names) if dataset.labels is not None and dataset.class_names else None
    return SetInfo(spec, len(dataset), classes)


def set_rows(experiment: Experiment, infos: dict[str, SetInfo], features: dict[str, str]) -> list[dict[str, object]]:
    """The Experiment / data page's table: one row per set (training, ID evaluation, each OOD set) with what it
    holds and the state of its features (`features`: spec -> text)."""
    entries = [("training", default_name(experiment.training_set), experiment.training_set, "")]
    entries.append(("id", experiment.id_set.name, experiment.id_set.spec, ""))
    entries += [(s.group, s.name, s.spec, s.note) for s in experiment.ood_sets]
    rows = []
    for role, name, spec, note in entries:
        info = infos.get(spec, SetInfo(spec))
        problem = f"{info.problem} — {note}" if info.problem and note else info.problem
        classes = "—" if not info.classes else f"{len(info.classes)}: {', '.join(info.classes[:6])}"
        classes += " …" if info.classes and len(info.classes) > 6 else ""
        rows.append(
            {
                "role": ROLE_LABELS[role],
                "name": name,
                "dataset": spec,
                "images": info.images,
                "classes": classes,
                "features": f"unavailable: {problem}" if problem else features.get(spec, ""),
            }
        )
    return rows


def named_set(text: str, name: str = "", download: bool = False, taken: tuple[str, ...] = ()) -> tuple[str, str]:
    """(canonical spec, display name) of a set typed on the page: parsed and opened now (with torchvision's
    download when `download`), so a typo is refused at once. Raises DatasetError with the reason."""
    spec = str(parse_dataset(text))
    open_dataset(spec, download=download)
    return spec, unique_name(name.strip() or default_name(spec), taken)


def with_uploaded_set(experiment: Experiment, stored: StoredSet, name: str, group: str) -> Experiment:
    """`experiment` with an uploaded set (dlsr_core.data.store_uploaded_set) added as an OOD set of `group`."""
    taken = tuple(experiment.names.values())
    spec, name = named_set(stored.spec, name, taken=taken)
    return experiment.with_ood_set(OODSet(spec, name, group))


def upload_summary(stored: StoredSet, name: str, shown: int = 5) -> str:
    """What an upload stored: images, classes, the files left out (the first `shown` with their reasons), folder."""
    classes = f" in {len(stored.classes)} classes ({', '.join(stored.classes[:8])})" if stored.classes else ""
    text = f"Stored **{name.strip()}**: {stored.images:,} images{classes}"
    if stored.skipped:
        reasons = "; ".join(f"{item}: {reason}" for item, reason in stored.skipped[:shown])
        more = " …" if len(stored.skipped) > shown else ""
        text += f"; {len(stored.skipped)} file(s) skipped ({reasons}{more})"
    return text + f". Folder: `{stored.path}`."


def with_id_set(experiment: Experiment, spec: str, name: str) -> Experiment:
    """`experiment` evaluated on another ID set; its class names come from that set's labels."""
    info = describe_set(spec)
    return experiment.with_id_set(NamedSet(spec, name), info.classes)


def save_edit(current: RunExperiment, experiment: Experiment) -> RunExperiment:
    """Save an edited experiment where the run keeps its edits (`current.edits_path`) and read it back."""
    save_experiment(current.edits_path, experiment, user_data_dir())
    return replace(
        current,
        experiment=load_experiment(current.edits_path, user_data_dir()),
        source="file" if current.edits_path.parent == current.run_dir else "user copy",
        path=current.edits_path,
        note="" if current.edits_path.parent == current.run_dir else current.note,
        problems=(),
    )


def reset_edits(current: RunExperiment) -> None:
    """Drop the user's copy of a read-only run's experiment (the run's own file is used again)."""
    if current.source == "user copy" and current.path is not None:
        os.remove(current.path)


def templates() -> dict[str, Path]:
    """Title -> file of every experiment template shipped in experiments/ (the paper's settings)."""
    found = {}
    for path in sorted(TEMPLATES_DIR.glob("*.json")):
        try:
            found[load_experiment(path).title or path.stem] = path
        except ExperimentError:
            continue
    return found


def from_template(experiment: Experiment, path: str | Path) -> tuple[Experiment, str | None]:
    """The template's evaluation sets for the loaded model (whose training set is kept), and a warning when the
    template was written for models trained on another set."""
    template = load_experiment(path, user_data_dir())
    result = replace(template, training_set=experiment.training_set)
    warning = None
    if template.training_set != experiment.training_set:
        warning = (
            f"The template is for models trained on {template.training_set}; this model was trained on "
            f"{experiment.training_set}, so its ID evaluation set may not be this model's in-distribution data."
        )
    return result, warning


def baseline_training_set(info: object) -> TrainingData | None:
    """The training-set record a loaded baseline keeps in its `info` (dlsr_core.validation.TrainingData: dataset
    spec, row rule, image count), or None when it records none. The comparison baselines (dlsr_core.baselines)
    write it when they are trained; one that records none cannot be matched to an experiment and is not offered."""
    record = getattr(info, "training_set", None)
    return record if isinstance(record, TrainingData) else None


def baseline_mismatch(info: object, training_set: str) -> str | None:
    """Why a baseline with training record `info` is not offered to a model trained on `training_set` ("records no
    training set" / "trained on another training set"), or None when it belongs to it. The one check is
    dlsr_core.validation.training_data_matches (the same dataset; a row rule that keeps every class, such as the
    fit set, counts as the same data)."""
    record = baseline_training_set(info)
    if training_data_matches(record, training_set):
        return None
    return "records no training set" if record is None else "trained on another training set"


def baselines_for_experiment(methods: list[str], baselines, training_set: str) -> tuple[list[str], dict[str, str]]:
    """(methods whose baseline was trained on `training_set`, {method: why another is not offered}).

    `methods` are comparison methods (explorer.addable_methods); `baselines` a dlsr_core.comparison.Baselines."""
    from dlsr_core.comparison import CLASSIFIER_METHODS

    offered, left_out = [], {}
    for method in methods:
        model = baselines.classifier if method in CLASSIFIER_METHODS else getattr(baselines, method, None)
        reason = baseline_mismatch(getattr(model, "info", None), training_set)
        if reason is None:
            offered.append(method)
        else:  # the other set is not named: the page is about this model's data
            left_out[method] = reason
    return offered, left_out
