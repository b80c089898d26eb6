"""Experiments: what a model is studied on — its training set, its ID evaluation set, its OOD sets (each tagged far
or near, with a short display name) and the class names where the data have labels.

An experiment is one small JSON file beside a run (`<run>/experiment.json`), written by `train`, edited from the app
and read by `evaluate`, `score --explain` and every page. Like the checkpoint metadata it is read without trusting
it: size-limited, parsed as plain JSON (never unpickled), checked field by field against the dataclasses below
(dlsr_core.schema: unknown keys, wrong types and values out of range are refused with the field named), and
written atomically. Dataset specs inside it are *not* opened here: a spec that names a dataset this machine does
not have (or does not parse) loads fine and is reported as unavailable where the set is used, never as a crash.

The file (format version 1)::

    {
      "format": "dlsr-experiment", "format_version": 1,
      "title": "optional one-line description",
      "training_set": "fashion_mnist:train",
      "id_set": {"spec": "demo:fashion_mnist_test", "name": "fashion_mnist_test"},
      "ood_sets": [{"spec": "demo:digits", "name": "digits", "group": "far", "note": ""}, ...],
      "class_names": ["T-shirt/top", ...] or null
    }

A `folder:` path written relative (`folder:LSUN`) is read relative to a *data root* (the user data folder,
$DLSR_DATA_DIR, unless the caller passes another, e.g. `--ood-root`); on writing, folders inside the data root are
stored relative to it again, so a file keeps working when the data folder moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from dlsr_core.atomic import atomic_write_bytes
from dlsr_core.data.dataset import DatasetError
from dlsr_core.data.spec import parse_dataset
from dlsr_core.schema import SchemaError, from_json

FORMAT_NAME = "dlsr-experiment"
FORMAT_VERSION = 1
EXPERIMENT_NAME = "experiment.json"
GROUPS = ("far", "near")
MAX_FILE_BYTES = 1_000_000
MAX_OOD_SETS = 32
MAX_NAME_LENGTH = 40
MAX_CLASSES = 10_000
_ENVELOPE = ("format", "format_version")


class ExperimentError(ValueError):
    """An experiment file or edit is invalid; the message names the file or the field and says how to fix it."""


def _check_name(name: str, where: str) -> None:
    if not name.strip() or name != name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ExperimentError(
            f"{where} must be 1-{MAX_NAME_LENGTH} characters without leading/trailing spaces, got {name!r}"
        )
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise ExperimentError(f"{where} contains control characters: {name!r}")


def _check_spec(spec: str, where: str) -> None:
    if not spec.strip() or any(char in spec for char in "\n\r\0"):
        raise ExperimentError(f"{where} must be a dataset spec on one line, got {spec!r}")


@dataclass(frozen=True)
class NamedSet:
    """A dataset of the experiment: its spec (anything `open_dataset` accepts) and a short display name."""

    spec: str
    name: str


@dataclass(frozen=True)
class OODSet:
    """An OOD set: spec, display name, its group (far OOD: other content; near OOD: close to the ID data) and an
    optional note (e.g. where to get it)."""

    spec: str
    name: str
    group: Literal["far", "near"] = "far"
    note: str = ""


@dataclass(frozen=True)
class Experiment:
    """What a model is studied on. Build it directly, with `load_experiment`, or with the `with_*` edits; every
    construction is validated (unique specs and names, valid groups, at most MAX_OOD_SETS OOD sets)."""

    training_set: str
    id_set: NamedSet
    ood_sets: tuple[OODSet, ...] = ()
    class_names: tuple[str, ...] | None = None
    title: str = ""

    def __post_init__(self) -> None:
        _check_spec(self.training_set, "training_set")
        _check_spec(self.id_set.spec, "id_set.spec")
        _check_name(self.id_set.name, "id_set.name")
        if len(self.ood_sets) > MAX_OOD_SETS:
            raise ExperimentError(f"at most {MAX_OOD_SETS} OOD sets, got {len(self.ood_sets)}")
        for position, ood in enumerate(self.ood_sets):
            _check_spec(ood.spec, f"ood_sets[{position}].spec")
            _check_name(ood.name, f"ood_sets[{position}].name")
            if ood.group not in GROUPS:
                raise ExperimentError(f"ood_sets[{position}].group must be one of {GROUPS}, got {ood.group!r}")
        specs = [self.id_set.spec, *(s.spec for s in self.ood_sets)]
        names = [self.id_set.name.casefold(), *(s.name.casefold() for s in self.ood_sets)]
        for what, values in (("dataset", specs), ("name", names)):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                raise ExperimentError(f"each set needs its own {what}; listed more than once: {', '.join(repeated)}")
        if self.class_names is not None:
            if not 1 <= len(self.class_names) <= MAX_CLASSES:
                raise ExperimentError(f"class_names must hold 1-{MAX_CLASSES} names, got {len(self.class_names)}")
            if any(not name.strip() or len(name) > 200 for name in self.class_names):
                raise ExperimentError("class_names must be non-empty names of at most 200 characters")

    @property
    def specs(self) -> list[str]:
        """Dataset specs of the ID evaluation set and every OOD set, in display order."""
        return [self.id_set.spec, *(s.spec for s in self.ood_sets)]

    @property
    def groups(self) -> dict[str, str]:
        """OOD spec -> "far" | "near", in display order."""
        return {s.spec: s.group for s in self.ood_sets}

    @property
    def names(self) -> dict[str, str]:
        """Spec -> display name, for the ID set and every OOD set."""
        return {self.id_set.spec: self.id_set.name, **{s.spec: s.name for s in self.ood_sets}}

    def name_of(self, spec: str) -> str:
        """The display name of one of the experiment's sets (the spec itself for any other)."""
        return self.names.get(spec, spec)

    def ood_set(self, spec: str) -> OODSet:
        for ood in self.ood_sets:
            if ood.spec == spec:
                return ood
        raise KeyError(f"{spec} is not an OOD set of this experiment")

    @property
    def key(self) -> str:
        """A short digest of the whole experiment: caches keyed by it follow every edit."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def with_ood_set(self, ood: OODSet) -> Experiment:
        """The experiment with `ood` added (or replacing the OOD set with the same spec)."""
        if ood.spec == self.id_set.spec:
            raise ExperimentError(f"{ood.spec} is the ID evaluation set; it cannot also be an OOD set")
        kept = [s for s in self.ood_sets if s.spec != ood.spec]
        position = next((i for i, s in enumerate(self.ood_sets) if s.spec == ood.spec), len(kept))
        return replace(self, ood_sets=tuple(kept[:position] + [ood] + kept[position:]))

    def without_ood_set(self, spec: str) -> Experiment:
        self.ood_set(spec)  # KeyError naming it when absent
        return replace(self, ood_sets=tuple(s for s in self.ood_sets if s.spec != spec))

    def with_id_set(self, id_set: NamedSet, class_names: tuple[str, ...] | None = None) -> Experiment:
        """A new ID evaluation set (its class names replace the old ones); it may not also be an OOD set."""
        if id_set.spec in self.groups:
            raise ExperimentError(f"{id_set.spec} is an OOD set of this experiment; remove it there first")
        return replace(self, id_set=id_set, class_names=class_names)


def resolve_spec(spec: str, data_root: str | Path | None) -> str:
    """The canonical form of `spec` (str(parse_dataset(...))), with a relative `folder:` path taken relative to
    `data_root` (the current directory when None). A spec that does not parse is returned unchanged: it is listed
    as unavailable where it is used."""
    head, colon, rest = spec.partition(":")
    if colon and head.strip().lower() == "folder" and data_root is not None:
        path = os.path.expanduser(rest.strip())
        if path and not os.path.isabs(path):
            spec = f"folder:{Path(data_root).expanduser() / path}"
    try:
        return str(parse_dataset(spec))
    except DatasetError:
        return spec


def portable_spec(spec: str, data_root: str | Path | None) -> str:
    """`spec` as written to a file: a folder inside `data_root` relative to it, everything else unchanged."""
    if data_root is None or not spec.startswith("folder:"):
        return spec
    try:
        parsed = parse_dataset(spec)
        relative = Path(parsed.path or "").relative_to(Path(data_root).expanduser().resolve())
    except (DatasetError, ValueError):
        return spec
    suffix = "".join(f"+{shift}" for shift in parsed.shifts)
    return f"folder:{relative.as_posix()}{suffix}" if relative.parts else spec


def _mapped(experiment: Experiment, convert) -> Experiment:
    return replace(
        experiment,
        training_set=convert(experiment.training_set),
        id_set=replace(experiment.id_set, spec=convert(experiment.id_set.spec)),
        ood_sets=tuple(replace(s, spec=convert(s.spec)) for s in experiment.ood_sets),
    )


def experiment_from_dict(document: object, data_root: str | Path | None = None) -> Experiment:
    """An Experiment from a parsed JSON document (the file's content); raises ExperimentError naming the field."""
    if not isinstance(document, dict):
        raise ExperimentError(f"an experiment must be a JSON object, got {type(document).__name__}")
    if document.get("format") != FORMAT_NAME:
        raise ExperimentError(f"not an experiment file (format {document.get('format')!r}, expected {FORMAT_NAME!r})")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ExperimentError(
            f"format_version {version!r} is not one this version reads (1..{FORMAT_VERSION}); update DLSR Explorer"
        )
    body = {key: value for key, value in document.items() if key not in _ENVELOPE}
    try:
        experiment = from_json(Experiment, body, "experiment")
    except SchemaError as error:
        raise ExperimentError(str(error)) from None
    return _mapped(experiment, lambda spec: resolve_spec(spec, data_root))


def experiment_to_dict(experiment: Experiment, data_root: str | Path | None = None) -> dict:
    """The JSON document of `experiment` (folders inside `data_root` written relative to it)."""
    portable = _mapped(experiment, lambda spec: portable_spec(spec, data_root))
    document: dict = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    if portable.title:
        document["title"] = portable.title
    document["training_set"] = portable.training_set
    document["id_set"] = asdict(portable.id_set)
    # Empty notes are left out: the file stays short enough to read and edit by hand.
    document["ood_sets"] = [{k: v for k, v in asdict(s).items() if k != "note" or v} for s in portable.ood_sets]
    document["class_names"] = list(portable.class_names) if portable.class_names is not None else None
    return document


def load_experiment(path: str | Path, data_root: str | Path | None = None) -> Experiment:
    """Read and validate an experiment file; raises ExperimentError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ExperimentError(f"{path}: {size:,} bytes is too large for an experiment file (at most 1 MB)")
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ExperimentError(f"{path}: cannot read the experiment file ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ExperimentError(f"{path}: not a UTF-8 text file; the experiment file is damaged") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExperimentError(f"{path}: not valid JSON ({error}); the experiment file is damaged") from None
    try:
        return experiment_from_dict(document, data_root)
    except ExperimentError as error:
        raise ExperimentError(f"{path}: {error}") from None


def save_experiment(path: str | Path, experiment: Experiment, data_root: str | Path | None = None) -> None:
    """Write `experiment` to `path` atomically (the old file or the new one, never half of one)."""
    document = experiment_to_dict(experiment, data_root)
    atomic_write_bytes(path, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
