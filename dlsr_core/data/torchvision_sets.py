"""The ``torchvision:<Class>[:<split>]`` source: any torchvision.datasets class, split names translated per class."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dlsr_core.data.dataset import DatasetError, ImageDataset
from dlsr_core.data.images import to_rgb

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec

TORCHVISION_ROOT = Path("~/.cache/dlsr/datasets")


def _torchvision_datasets() -> Any:
    # tv_compat must run before torchvision is imported (it makes torchvision work on CPU-only torch).
    from dlsr_core import tv_compat  # noqa: F401

    # isort: split
    import torchvision.datasets

    return torchvision.datasets


def _split_kwargs(cls: type, split: str | None) -> dict[str, Any]:
    """Translate a split name into the class's own constructor argument (train=bool, split=str, ...)."""
    params = inspect.signature(cls.__init__).parameters
    if split is None:
        return {}
    lowered = split.lower()
    if "train" in params:
        if lowered not in ("train", "test"):
            raise DatasetError(f"{cls.__name__} has splits 'train' and 'test', not {split!r}")
        return {"train": lowered == "train"}
    if "split" in params:
        return {"split": split}
    if "background" in params:  # Omniglot
        if lowered not in ("background", "evaluation", "train", "test"):
            raise DatasetError(f"{cls.__name__} has splits 'background' (train) and 'evaluation' (test)")
        return {"background": lowered in ("background", "train")}
    if "classes" in params:  # LSUN: "train", "val", "test" or a category such as "bedroom_train"
        return {"classes": split if lowered in ("train", "val", "test") else [split]}
    raise DatasetError(f"{cls.__name__} does not take a split; use torchvision:{cls.__name__}")


def _torchvision_labels(dataset: Any) -> list[int] | None:
    for attr in ("targets", "labels", "_labels", "y"):
        values = getattr(dataset, attr, None)
        if values is None:
            continue
        try:
            array = np.asarray(values)
        except (TypeError, ValueError):
            continue
        if array.ndim == 1 and len(array) == len(dataset) and np.issubdtype(array.dtype, np.integer):
            return array.astype(np.int64).tolist()
    return None


def _to_pil_rgb(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    array = np.asarray(item.numpy() if hasattr(item, "numpy") else item)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # CHW tensors
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        return to_rgb(Image.fromarray(array.astype(np.float32)))
    return Image.fromarray(array).convert("RGB")


def open_torchvision(spec: DatasetSpec, root: Path | None, download: bool) -> ImageDataset:
    try:
        datasets = _torchvision_datasets()
    except ImportError as exc:
        raise DatasetError(f"torchvision is not importable ({exc}); `pip install torchvision`") from exc
    available = {n.lower(): n for n in dir(datasets) if isinstance(getattr(datasets, n), type)}
    class_name = available.get((spec.name or "").lower())
    if class_name is None:
        raise DatasetError(f"torchvision.datasets has no class {spec.name!r}; e.g. CIFAR10, SVHN, MNIST, KMNIST")
    cls = getattr(datasets, class_name)
    spec = replace(spec, name=class_name)
    folder = (root if root is not None else TORCHVISION_ROOT).expanduser()
    kwargs = _split_kwargs(cls, spec.split)
    if "download" in inspect.signature(cls.__init__).parameters:
        kwargs["download"] = download
    try:
        dataset = cls(str(folder), **kwargs)
    except TypeError as exc:  # the class needs arguments a spec string cannot express
        raise DatasetError(
            f"cannot build torchvision.datasets.{class_name}(root, {kwargs}): {exc}. "
            "Save its images to a directory and use folder:<path> instead."
        ) from exc
    except Exception as exc:  # torchvision raises RuntimeError/FileNotFoundError/URLError/... here
        if download:
            raise DatasetError(
                f"could not download or open {spec} into {folder}: {exc} "
                "(downloading needs network access; or put the files there yourself)"
            ) from exc
        raise DatasetError(
            f"{spec} is not available under {folder} ({exc}). Pass --download to fetch it (needs network) "
            "or point --data-root at a folder that already holds it in torchvision's layout."
        ) from exc

    def load(i: int) -> Image.Image | None:
        try:
            item = dataset[i]
            return _to_pil_rgb(item[0] if isinstance(item, tuple) else item)
        except (OSError, ValueError, SyntaxError):
            return None

    names = getattr(dataset, "classes", None)
    class_names = tuple(str(c) for c in names) if isinstance(names, (list, tuple)) else None
    return ImageDataset(
        str(spec), f"{spec}|n={len(dataset)}", len(dataset), load, _torchvision_labels(dataset), class_names
    )
