"""The ``folder:<path>`` source: every image file below a directory, recursively, decoded lazily.

Labels follow torchvision's ImageFolder convention: when every image lies inside a first-level subfolder, the
subfolder names (sorted) are the class names and each image is labelled with its own; otherwise there are no labels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from dlsr_core.data.dataset import DatasetError, ImageDataset
from dlsr_core.data.images import DECODE_RULE, IMAGE_EXTENSIONS, ImageLoadError, load_image

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints, ...
        files += [
            Path(dirpath) / f for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def open_folder(spec: DatasetSpec) -> ImageDataset:
    folder = Path(spec.path or "")
    if not folder.is_dir():
        raise DatasetError(f"{spec}: {folder} is not a directory")
    files = _folder_files(folder)
    if not files:
        raise DatasetError(f"{spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    digest = hashlib.sha256()
    for path in files:
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # broken symlink: still listed, will load as None
            size, mtime = -1, -1
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0{mtime}\n".encode())

    def load(i: int) -> Image.Image | None:
        try:
            return load_image(files[i])
        except ImageLoadError:
            return None

    identity = f"folder|n={len(files)}|{digest.hexdigest()[:20]}|{DECODE_RULE}"
    labels, class_names = folder_labels(folder, files)
    return ImageDataset(str(spec), identity, len(files), load, labels, class_names, tuple(files))


def folder_labels(folder: Path, files: list[Path]) -> tuple[list[int] | None, tuple[str, ...] | None]:
    """(label per file, class names) by first-level subfolder, or (None, None) when some file is not in one."""
    parts = [path.relative_to(folder).parts for path in files]
    if not parts or any(len(p) < 2 for p in parts):
        return None, None
    class_names = tuple(sorted({p[0] for p in parts}))
    index = {name: label for label, name in enumerate(class_names)}
    return [index[p[0]] for p in parts], class_names
