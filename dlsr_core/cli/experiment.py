"""The experiment on the command line: `train` writes one beside the run (--id-set, --far-ood, --near-ood,
--experiment), `evaluate` and `score --explain` read the checkpoint's when no set is named."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from dlsr_core.data.experiment import (
    EXPERIMENT_NAME,
    Experiment,
    ExperimentError,
    NamedSet,
    OODSet,
    load_experiment,
    save_experiment,
)

_NAMED = re.compile(r"^(?P<name>[^=:/\\]{1,40})=(?P<spec>.+)$")


def named_spec(text: str) -> tuple[str | None, str]:
    """`NAME=SPEC` -> (NAME, SPEC); a plain spec -> (None, SPEC). A name holds no ':', '/' or '\\', so a folder
    path containing '=' is still read as a plain spec."""
    match = _NAMED.match(text.strip())
    return (match["name"].strip(), match["spec"].strip()) if match else (None, text.strip())


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    """`train`'s options for the evaluation sets written to <out>/experiment.json."""
    group = parser.add_argument_group(
        "evaluation sets (written to <out>/experiment.json; evaluate and the app use them)",
        "Each set is a dataset spec, optionally NAME=SPEC for its display name (e.g. SVHN=torchvision:SVHN:test).",
    )
    group.add_argument(
        "--id-set",
        default=None,
        metavar="[NAME=]SPEC",
        help="held-out ID images to evaluate on (default: the training set's test split where one exists, e.g. "
        "fashion_mnist:test, torchvision:CIFAR10:test, or a test/ or val/ folder beside a train/ folder; otherwise "
        "the training set itself, which is flagged everywhere)",
    )
    group.add_argument("--far-ood", nargs="+", action="extend", default=[], metavar="[NAME=]SPEC", help="far OOD sets")
    group.add_argument(
        "--near-ood", nargs="+", action="extend", default=[], metavar="[NAME=]SPEC", help="near OOD sets"
    )
    group.add_argument(
        "--experiment",
        default=None,
        metavar="FILE",
        help="take the evaluation sets from this experiment file (e.g. experiments/cifar10_paper.json); the flags "
        "above replace its ID set or its OOD sets",
    )
    group.add_argument(
        "--sets-root",
        default=None,
        metavar="DIR",
        help="folder that relative folder: paths in --experiment are read from (default: $DLSR_DATA_DIR)",
    )


def _id_set(args, base: Experiment | None, training_set: str) -> NamedSet:
    from dlsr_core.data import default_id_set, default_name, parse_dataset

    if args.id_set:
        name, spec = named_spec(args.id_set)
        spec = str(parse_dataset(spec))
        return NamedSet(spec, name or default_name(spec))
    if base is not None:
        return base.id_set
    spec, how = default_id_set(training_set)
    args.experiment_notes.append(f"ID evaluation set: {spec} ({how})")
    return NamedSet(spec, default_name(spec))


def _ood_sets(args, base: Experiment | None) -> tuple[OODSet, ...]:
    from dlsr_core.data import default_name, parse_dataset
    from dlsr_core.data.experiment_defaults import unique_name

    if not (args.far_ood or args.near_ood):
        return base.ood_sets if base is not None else ()
    sets: list[OODSet] = []
    for group, texts in (("far", args.far_ood), ("near", args.near_ood)):
        for text in texts:
            name, spec = named_spec(text)
            spec = str(parse_dataset(spec))
            sets.append(OODSet(spec, unique_name(name or default_name(spec), (s.name for s in sets)), group))
    return tuple(sets)


def _class_names(spec: str, args, fallback: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The ID evaluation set's class names where it has labels (else `fallback`)."""
    from dlsr_core.data import DatasetError, open_dataset

    try:
        dataset = open_dataset(spec, data_root=args.data_root, download=args.download)
    except (DatasetError, OSError) as error:
        args.experiment_notes.append(f"note: the ID evaluation set {spec} cannot be opened here ({error})")
        return fallback
    if dataset.labels is None or dataset.class_names is None:
        return fallback
    return tuple(dataset.class_names)


def build_experiment(args, training_set: str) -> Experiment:
    """The experiment `train` writes: --experiment's sets (if given) with --id-set / --far-ood / --near-ood
    replacing its ID or OOD sets, the defaults for anything left unnamed, and the ID set's class names."""
    args.experiment_notes = []
    base = load_experiment(args.experiment, args.sets_root or _user_root()) if args.experiment else None
    if base is not None and base.training_set != training_set:
        args.experiment_notes.append(
            f"note: {args.experiment} names the training set {base.training_set}; this model is trained on "
            f"{training_set}, which the written experiment records"
        )
    id_set = _id_set(args, base, training_set)
    keep_names = base.class_names if base is not None and base.id_set.spec == id_set.spec else None
    return Experiment(
        training_set=training_set,
        id_set=id_set,
        ood_sets=tuple(s for s in _ood_sets(args, base) if s.spec != id_set.spec),
        class_names=_class_names(id_set.spec, args, keep_names),
        title=base.title if base is not None else "",
    )


def _user_root() -> Path:
    from dlsr_core.data import user_data_dir

    return user_data_dir()


def wants_experiment(args) -> bool:
    """Whether `train` (re)writes <out>/experiment.json: when sets are named, on --restart, and for a new run. A
    continued run keeps its file (or, trained before experiments existed, its stated fallback)."""
    from dlsr_core.checkpoint import LAST_NAME
    from dlsr_core.training import RESUME_NAME

    out = Path(args.out)
    named = bool(args.id_set or args.far_ood or args.near_ood or args.experiment)
    new_run = not any((out / name).exists() for name in (EXPERIMENT_NAME, RESUME_NAME, LAST_NAME))
    return named or args.restart or new_run


def write_experiment(args, experiment: Experiment) -> None:
    """Save `experiment` beside the run."""
    save_experiment(Path(args.out) / EXPERIMENT_NAME, experiment, _user_root())


def with_experiment(args, experiment: Experiment, on_epoch):
    """`on_epoch` that also writes the experiment when the run saves its first checkpoint of this command."""
    written = []

    def on_epoch_writing(report) -> None:
        on_epoch(report)
        if report.checkpoint_saved and not written:
            write_experiment(args, experiment)
            written.append(True)

    return on_epoch_writing


def report_experiment(args, experiment: Experiment) -> None:
    """After training: what the written experiment holds (stdout), sets this machine cannot open yet, and a warning
    (stderr) when the ID evaluation images are the training images. Nothing with --quiet; nothing when training
    failed, whose error stays the only line."""
    from dlsr_core.data import DatasetError, open_dataset, overlap_warning

    if args.quiet:
        return
    for note in getattr(args, "experiment_notes", []):
        print(note)
    for spec in experiment.specs:
        try:
            open_dataset(spec, data_root=args.data_root)
        except (DatasetError, OSError) as error:
            print(f"note: {spec} cannot be opened here yet ({error}); it is listed as unavailable")
    groups = ", ".join(f"{s.name} ({s.group})" for s in experiment.ood_sets) or "none yet"
    print(f"experiment: ID {experiment.id_set.spec}; OOD {groups} -> {Path(args.out) / EXPERIMENT_NAME}")
    warning = overlap_warning(experiment)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def checkpoint_experiment(args, detector):
    """The experiment `evaluate` and `score --explain` fall back on: --experiment FILE when given, else the run's
    (dlsr_core.data.run_experiment: its experiment.json, or the stated fallback)."""
    from dlsr_core.checkpoint import DEFAULT_RUN_DIR
    from dlsr_core.data import run_experiment

    given = getattr(args, "experiment", None)
    if given:
        return load_experiment(given, getattr(args, "sets_root", None) or _user_root()), f"from {given}"
    checkpoint = Path(args.checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    found = run_experiment(run_dir, detector.info.dataset, shipped_run=DEFAULT_RUN_DIR)
    if found.problems:  # the app falls back and shows the error; a command does not guess
        raise ExperimentError(f"{found.problems[0]} (fix or delete the file, or name the sets with --id/--ood)")
    where = f"from {found.path}" if found.path is not None else f"(fallback) {found.note}"
    return found.experiment, where
