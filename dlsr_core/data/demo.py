"""The ``demo:<name>`` source: the small bundled sets in ``assets/demo/<name>.npz``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dlsr_core.data.dataset import DatasetError, ImageDataset, array_loader, sha

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec

DEMO_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo"


def list_demo_sets() -> list[str]:
    """Names of the bundled demo sets (``assets/demo/<name>.npz``), sorted; usable as ``demo:<name>``."""
    if not DEMO_DIR.is_dir():
        return []
    return sorted(p.stem for p in DEMO_DIR.glob("*.npz"))


def open_demo(spec: DatasetSpec) -> ImageDataset:
    path = DEMO_DIR / f"{spec.name}.npz"
    if not path.is_file():
        raise DatasetError(
            f"demo set {spec.name!r} not found in {DEMO_DIR}; available: {list_demo_sets() or 'none'} "
            "(regenerate them with `python scripts/make_demo_assets.py`)"
        )
    raw = path.read_bytes()
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            images = npz["images"]
            labels = npz["labels"].astype(np.int64).tolist() if "labels" in npz.files else None
            names = tuple(str(n) for n in npz["class_names"]) if "class_names" in npz.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: not a valid demo set ({exc})") from exc
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DatasetError(f"{path}: 'images' must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise DatasetError(f"{path}: {len(labels)} labels for {len(images)} images")
    # identity hashes the arrays, not the file, so re-saving identical data keeps feature caches valid
    digest = sha(images.tobytes(), str(images.shape).encode(), np.asarray(labels or [], np.int64).tobytes())
    return ImageDataset(str(spec), f"{spec}|{digest}", len(images), array_loader(images), labels, names)
