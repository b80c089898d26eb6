"""Dataset spec strings: parse one into a :class:`DatasetSpec`, print its canonical form with ``str()``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dlsr_core.data.dataset import DatasetError
from dlsr_core.data.demo import list_demo_sets
from dlsr_core.data.shifts import SHIFTS

_BUILTIN_SOURCES = ("digits", "letters", "textures", "shapes")
# fit / val: the validation protocol's split of Fashion-MNIST train (dlsr_core.validation).
_SPLIT_SOURCES = {"fashion_mnist": ("train", "test", "fit", "val")}
_CLASSES_PREFIX = "classes="
_SOURCE_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist"}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")  # always fullmatch: `$` also matches before a final "\n"
_SPEC_HELP = (
    "expected one of: fashion_mnist:train|test|fit|val[:classes=0,2-4], digits, letters, textures, shapes, "
    "demo:<name>[:classes=...], torchvision:<Class>[:<split>], folder:<path>, optionally followed by "
    f"shift modifiers {', '.join('+' + s for s in SHIFTS)}"
)


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec; build it with :func:`parse_dataset`, print it with ``str()``.

    source: "fashion_mnist" | "digits" | "letters" | "textures" | "shapes" | "demo" | "torchvision" | "folder".
    name: demo set name or torchvision class name. split: fashion_mnist/torchvision split.
    path: absolute folder path. shifts: modifiers from SHIFTS, applied left to right.
    classes: for fashion_mnist and demo sets, the sorted labels kept (None: all), e.g. the known classes of a
    held-out-class experiment.
    """

    source: str
    name: str | None = None
    split: str | None = None
    path: str | None = None
    shifts: tuple[str, ...] = ()
    classes: tuple[int, ...] | None = None

    def __str__(self) -> str:
        if self.source == "fashion_mnist":
            base = f"fashion_mnist:{self.split}"
        elif self.source == "demo":
            base = f"demo:{self.name}"
        elif self.source == "torchvision":
            base = f"torchvision:{self.name}" + (f":{self.split}" if self.split else "")
        elif self.source == "folder":
            base = f"folder:{self.path}"
        else:
            base = self.source
        if self.classes is not None:
            base += f":{_CLASSES_PREFIX}{format_classes(self.classes)}"
        return base + "".join(f"+{s}" for s in self.shifts)


def parse_dataset(text: str) -> DatasetSpec:
    """Parse a dataset spec string (see the module docstring); raises DatasetError if malformed.

    Source names and fashion_mnist splits are case-insensitive; folder paths are made absolute
    (``~`` expanded) so the canonical string does not depend on how the path was typed.
    """
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"empty dataset spec; {_SPEC_HELP}")
    body = text.strip()
    shifts: list[str] = []
    while "+" in body:
        head, _, tail = body.rpartition("+")
        if tail.strip().lower() not in SHIFTS:
            break
        shifts.insert(0, tail.strip().lower())
        body = head.strip()
    source, _, arg = body.partition(":")
    source = _SOURCE_ALIASES.get(source.strip().lower(), source.strip().lower())
    arg = arg.strip()
    shift_tuple = tuple(shifts)

    if source in _BUILTIN_SOURCES:
        if arg:
            raise DatasetError(f"{source!r} takes no argument, got {text!r}")
        return DatasetSpec(source, shifts=shift_tuple)
    if source in _SPLIT_SOURCES:
        split, _, selection = arg.partition(":")
        split = split.strip().lower()
        if split not in _SPLIT_SOURCES[source]:
            choices = ", ".join(f"{source}:{s}" for s in _SPLIT_SOURCES[source])
            raise DatasetError(f"{text!r}: {source} needs a split, use one of {choices}")
        classes = _parse_classes(selection.strip(), text) if selection.strip() else None
        return DatasetSpec(source, split=split, shifts=shift_tuple, classes=classes)
    if source == "demo":
        name, _, selection = arg.partition(":")
        if not _NAME_RE.fullmatch(name.strip()):
            raise DatasetError(f"{text!r}: use demo:<name>, one of {list_demo_sets() or '(none found)'}")
        classes = _parse_classes(selection.strip(), text) if selection.strip() else None
        return DatasetSpec("demo", name=name.strip(), shifts=shift_tuple, classes=classes)
    if source == "torchvision":
        name, _, split = arg.partition(":")
        name, split = name.strip(), split.strip()
        if not name.isidentifier():
            raise DatasetError(f"{text!r}: use torchvision:<Class>[:<split>], e.g. torchvision:CIFAR10:test")
        return DatasetSpec("torchvision", name=name, split=split or None, shifts=shift_tuple)
    if source == "folder":
        if not arg:
            raise DatasetError(f"{text!r}: use folder:<path to a directory of images>")
        return DatasetSpec("folder", path=os.path.abspath(os.path.expanduser(arg)), shifts=shift_tuple)
    hint = f" (to read the images in that directory use 'folder:{text.strip()}')" if os.path.isdir(text.strip()) else ""
    raise DatasetError(f"unknown dataset spec {text!r}{hint}; {_SPEC_HELP}")


def format_classes(classes: tuple[int, ...]) -> str:
    """Sorted labels as the spec writes them: runs of three or more as ranges (0,1,2,5 -> "0-2,5")."""
    runs: list[list[int]] = []
    for label in classes:
        if runs and label == runs[-1][-1] + 1:
            runs[-1].append(label)
        else:
            runs.append([label])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)) for run in runs)


def _parse_classes(selection: str, text: str) -> tuple[int, ...]:
    """ "classes=0,2-4" -> (0, 2, 3, 4); raises DatasetError naming the spec when malformed."""
    usage = f"{text!r}: select classes with :classes=<labels>, e.g. fashion_mnist:test:classes=0-3,5"
    if not selection.lower().startswith(_CLASSES_PREFIX):
        raise DatasetError(usage)
    labels: set[int] = set()
    for part in selection[len(_CLASSES_PREFIX) :].split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise DatasetError(usage)
        first, last = int(low), int(high) if dash else int(low)
        if first > last:
            raise DatasetError(f"{text!r}: class range {part.strip()} is empty")
        labels.update(range(first, last + 1))
    return tuple(sorted(labels))
