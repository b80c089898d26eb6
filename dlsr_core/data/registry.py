"""Open a dataset spec: one opener per source, shifts applied on top."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from PIL import Image

from dlsr_core.data.dataset import DatasetError, ImageDataset
from dlsr_core.data.demo import list_demo_sets, open_demo
from dlsr_core.data.digits import open_digits
from dlsr_core.data.fashion_mnist import open_fashion_mnist
from dlsr_core.data.folder import open_folder
from dlsr_core.data.letters import open_letters
from dlsr_core.data.shapes import open_shapes
from dlsr_core.data.shifts import apply_shifts
from dlsr_core.data.spec import DatasetSpec, format_classes, parse_dataset
from dlsr_core.data.textures import open_textures
from dlsr_core.data.torchvision_sets import open_torchvision

# source -> opener(spec without shifts, data root, download allowed)
SOURCES: dict[str, Callable[[DatasetSpec, Path | None, bool], ImageDataset]] = {
    "fashion_mnist": lambda spec, root, download: open_fashion_mnist(spec, root),
    "digits": lambda spec, root, download: open_digits(spec),
    "letters": lambda spec, root, download: open_letters(spec),
    "textures": lambda spec, root, download: open_textures(spec),
    "shapes": lambda spec, root, download: open_shapes(spec),
    "demo": lambda spec, root, download: open_demo(spec),
    "torchvision": open_torchvision,
    "folder": lambda spec, root, download: open_folder(spec),
}


def builtin_sets() -> list[str]:
    """Sets that need no path or download: the demo sets, Fashion-MNIST's training split and its fit part (Debian
    package) and the generated sources — what the Train page offers as "Built-in"."""
    generated = ["digits", "letters", "textures", "shapes"]
    return [f"demo:{name}" for name in list_demo_sets()] + ["fashion_mnist:train", "fashion_mnist:fit", *generated]


def open_dataset(
    spec: str | DatasetSpec, *, data_root: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """Open a dataset spec as an :class:`ImageDataset`; raises DatasetError with a fix if unavailable.

    data_root: where fashion_mnist / torchvision data live (defaults: the Debian package path and
    ~/.cache/dlsr/datasets). download: allow torchvision to download missing files (needs network).
    """
    spec = parse_dataset(spec if isinstance(spec, str) else str(spec))
    root = Path(data_root).expanduser() if data_root is not None else None
    base = replace(spec, shifts=(), classes=None)
    ds = SOURCES[spec.source](base, root, download)
    if spec.classes is not None:
        ds = select_classes(ds, spec.classes)
    if not spec.shifts:
        return ds
    inner = ds._loader

    def shifted(i: int) -> Image.Image | None:
        image = inner(i)
        return None if image is None else apply_shifts(image, spec.shifts)

    name = ds.name + "".join(f"+{s}" for s in spec.shifts)
    return ImageDataset(
        name, f"{ds.identity}+{'+'.join(spec.shifts)}", len(ds), shifted, ds.labels, ds.class_names, ds.paths
    )


def select_classes(ds: ImageDataset, classes: tuple[int, ...]) -> ImageDataset:
    """The items of `ds` whose label is in `classes`, in their order, labels and class names unchanged."""
    if ds.labels is None:
        raise DatasetError(f"{ds.name} has no labels, so it cannot be restricted to classes {list(classes)}")
    wanted = set(classes)
    rows = [i for i, label in enumerate(ds.labels) if label in wanted]
    if not rows:
        raise DatasetError(f"{ds.name}: no image has one of the classes {list(classes)}")
    inner = ds._loader
    selection = format_classes(classes)
    return ImageDataset(
        f"{ds.name}:classes={selection}",
        f"{ds.identity}|classes={selection}",
        len(rows),
        lambda i: inner(rows[i]),
        [ds.labels[i] for i in rows],
        ds.class_names,
        None if ds.paths is None else tuple(ds.paths[i] for i in rows),
    )
