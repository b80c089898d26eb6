"""LFDN checkpoints: safetensors weights + JSON metadata, loaded without unpickling and checked before any use.

A training run directory holds `first.safetensors` (the first saved epoch, needed by the LR score) and
`last.safetensors` (the newest), plus `resume.pt` for continuing training.

Writing: a checkpoint carries the SHA-256 of its content (metadata and tensors) inside its own metadata
(`content_sha256`), so weights and digest are replaced together by one atomic rename and a kill at any moment leaves
either the previous complete file or the new complete file. A `<name>.sha256` file is also written beside it, after
the rename, for `sha256sum -c`; any stale one is removed before the rename, so a checkpoint never sits next to the
digest of another. Checkpoints written before the embedded digest (the shipped default) rely on that file alone.

Reading trusts nothing: the header is parsed with size limits; the metadata is checked against the CheckpointInfo and
LFDNConfig dataclasses (unknown keys, types, ranges: dlsr_core.schema) and the option values it records (sampler,
timestep, pooling, ...: dlsr_core.presets); the tensor shapes are compared with those of a model built from the stored
config on the `meta` device (no memory is allocated, so a config claiming width 200000 fails in milliseconds); then the
digests are verified and every weight must be finite. Only then is a model built.

Reading while `train` saves: the header, the tensors and the digests all come from one open file, so a reader sees
either the previous checkpoint or the new one, never a mix. A `.sha256` file that does not match what was read is an
error only if the checkpoint was not replaced meanwhile; otherwise it belongs to the newer file and the read is
trusted on its embedded digest (or, for a file without one, repeated on the new file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

import safetensors.torch
import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes, sha256_hex
from dlsr_core.diffusion import LFDN, OFFICIAL_MIN_TIMESTEP, ConfigError, LFDNConfig, validate_config
from dlsr_core.features import stage_dims_problem
from dlsr_core.options import MAX_INPUT_SIZE, MIN_INPUT_SIZE
from dlsr_core.presets import FeatureOptions, ScoringOptions, options_from, validate_options
from dlsr_core.safetensors_header import header_tensors
from dlsr_core.schema import SchemaError, from_json

FORMAT_NAME = "dlsr-lfdn"
FORMAT_VERSION = 1
FIRST_NAME = "first.safetensors"
LAST_NAME = "last.safetensors"
DIGEST_KEY = "content_sha256"
METADATA_KEYS = frozenset({"format", "format_version", "info", DIGEST_KEY})
# safetensors' own limit for the JSON header.
MAX_HEADER_BYTES = 100_000_000
# Longest diffusion schedule accepted from a file (the paper uses 100); the schedule is the one size no tensor shows.
MAX_NUM_TIMESTEPS = 100_000
_SIZE_FIELDS = frozenset({"feature_dim", "width", "depth"})  # LFDNConfig fields that set tensor sizes or counts
_TENSOR_DTYPES = {"F16": 2, "BF16": 2, "F32": 4}
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # always fullmatch: `$` also matches before a final "\n"
# How often a load is repeated when the checkpoint is replaced (by a save) while a file without embedded digest is read.
READ_ATTEMPTS = 5
# The shipped default model (a run directory) lives in the repository's checkpoints/ folder.
DEFAULT_RUN_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
DEFAULT_RECREATE_COMMAND = (
    "python -m dlsr_core train -d fashion_mnist:fit --backbone efficientnet_lite0 --input-size 80 --width 512 "
    "--depth 6 --epochs 20 --train-batch-size 256 --lr 3e-4 --ema-decay 0.999 --checkpoint-every 20 --half "
    "--out checkpoints/default"
)


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, of an unknown format, or does not fit the features it is used with."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything a checkpoint says about how its model was made.

    preset names the preset it was trained under (dlsr_core.presets); pooling ... same_padding are the feature options
    its features were made with (scoring re-extracts with them); sampler, mfsim_stages and timestep are the scoring
    defaults it was trained for. Checkpoints written before presets existed read as the `paper` preset.
    """

    config: LFDNConfig
    backbone: str
    weights: str
    input_size: int = field(metadata={"range": (MIN_INPUT_SIZE, MAX_INPUT_SIZE)})
    stage_dims: tuple[int, ...] = field(metadata={"range": (1, None)})
    dataset: str
    epoch: int = field(metadata={"range": (0, None)})
    train_settings: dict = field(default_factory=dict)
    preset: str = "paper"
    pooling: str = "gap"
    std_eps: float = 1e-6
    resize: str = "model"
    normalization: str = "model"
    same_padding: str = "dynamic"
    sampler: str = "ddim"
    mfsim_stages: str = "all"
    timestep: int = 5


def checksum_path(path: Path) -> Path:
    """The `.sha256` file that sits beside checkpoint `path`."""
    return path.with_name(path.name + ".sha256")


def _tensor_bytes(tensor: Tensor) -> memoryview:
    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def content_digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata (without the digest itself) and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: v for k, v in metadata.items() if k != DIGEST_KEY}, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: LFDN,
    info: CheckpointInfo,
    feature_mean: Tensor,
    feature_std: Tensor,
    half_precision: bool = False,
) -> None:
    """Write model weights (optionally float16), feature statistics (D,) and `info` with their digest, atomically.

    Raises CheckpointError, writing nothing, when a weight or statistic is NaN/Inf.
    """
    path = Path(path)
    dtype = torch.float16 if half_precision else torch.float32
    tensors = {
        f"model.{key}": value.detach().to("cpu", dtype).contiguous() for key, value in model.state_dict().items()
    }
    tensors["stats.feature_mean"] = feature_mean.detach().to("cpu", torch.float32).contiguous()
    tensors["stats.feature_std"] = feature_std.detach().to("cpu", torch.float32).contiguous()
    bad = [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"refusing to write {path}: {bad[0]} holds NaN/Inf values (after float conversion)")
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "info": json.dumps(asdict(info))}
    metadata[DIGEST_KEY] = content_digest(tensors, metadata)
    data = safetensors.torch.save(tensors, metadata=metadata)
    sidecar = checksum_path(path)
    sidecar.unlink(missing_ok=True)  # never leave the old file's digest beside the new file
    atomic_write_bytes(path, data)  # the one step that replaces the previous checkpoint
    atomic_write_bytes(sidecar, f"{sha256_hex(data)}  {path.name}\n".encode())


@dataclass(frozen=True)
class _Header:
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)
    metadata: dict[str, str]
    payload_bytes: int


def _read_header(path: Path, stream: BinaryIO) -> _Header:
    """Parse and bound-check the safetensors header of the open file `stream` (named `path`), reading no tensors."""
    damaged = f"{path} is not a readable safetensors file; the file is damaged or truncated"
    size = os.fstat(stream.fileno()).st_size
    stream.seek(0)
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise CheckpointError(f"{damaged} ({size} bytes)")
    length = int.from_bytes(prefix, "little")
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise CheckpointError(f"{damaged} (header of {length} bytes in a {size}-byte file)")
    raw = stream.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{damaged} (header is not JSON: {error})") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{damaged} (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: its metadata must map names to strings")
    payload = size - 8 - length
    return _Header(header_tensors(header, payload, _TENSOR_DTYPES, damaged, CheckpointError), metadata, payload)


def _info_from_metadata(path: Path, metadata: dict[str, str]) -> CheckpointInfo:
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a DLSR LFDN checkpoint (no '{FORMAT_NAME}' metadata)")
    unknown = sorted(set(metadata) - METADATA_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown metadata key(s) {', '.join(map(repr, unknown))}")
    version_text = metadata.get("format_version", "")
    if not re.fullmatch(r"[0-9]{1,6}", version_text) or not 1 <= int(version_text) <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version_text[:20]!r}; this dlsr_core reads versions 1..{FORMAT_VERSION}"
        )
    try:
        raw = json.loads(metadata.get("info", ""))
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: its 'info' metadata is not JSON ({error})") from error
    try:
        info = from_json(CheckpointInfo, raw, "info")
        validate_config(info.config)
        _check_recorded_options(info)
    except (SchemaError, ConfigError) as error:
        raise CheckpointError(f"{path}: invalid metadata: {error}") from error
    if sum(info.stage_dims) != info.config.feature_dim:
        raise CheckpointError(
            f"{path}: invalid metadata: stage sizes {info.stage_dims} sum to {sum(info.stage_dims)}, "
            f"the model expects {info.config.feature_dim}-d features"
        )
    problem = stage_dims_problem(info.backbone, info.stage_dims, exact=False)
    if problem:
        raise CheckpointError(f"{path}: invalid metadata: {problem}")
    return info


def _check_recorded_options(info: CheckpointInfo) -> None:
    """ConfigError when the feature or scoring options a checkpoint records could not be used to score with it."""
    validate_options(options_from(info, FeatureOptions))
    scoring = options_from(info, ScoringOptions)
    validate_options(scoring)
    top = info.config.num_timesteps
    if scoring.timestep > top:
        raise ConfigError(f"timestep must be in 1..{top} (the model's T), got {scoring.timestep}")
    if scoring.sampler == "official" and scoring.timestep < OFFICIAL_MIN_TIMESTEP:
        raise ConfigError(f"the official sampler needs timestep >= {OFFICIAL_MIN_TIMESTEP}, got {scoring.timestep}")
    if scoring.mfsim_stages == "without-first" and len(info.stage_dims) < 2:
        raise ConfigError("mfsim_stages 'without-first' needs at least two stages")


def _expected_tensors(path: Path, config: LFDNConfig, header: _Header) -> dict[str, tuple[int, ...]]:
    """Tensor shapes a model of `config` has, computed on the meta device after bounding every size field."""
    largest = max((max(shape, default=0) for _, shape in header.tensors.values()), default=0)
    bound = max(largest, len(header.tensors))
    for spec in fields(config):
        value = getattr(config, spec.name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if spec.name == "num_timesteps" and value > MAX_NUM_TIMESTEPS:
            raise CheckpointError(f"{path}: num_timesteps {value} is above the limit of {MAX_NUM_TIMESTEPS}")
        # Sizes are bounded by the tensors present (a width shows as a dimension, a depth as a count of tensors);
        # any other whole-number field only by a generous constant, so new fields do not need this code to change.
        if value > (bound if spec.name in _SIZE_FIELDS else max(bound, MAX_NUM_TIMESTEPS)):
            raise CheckpointError(
                f"{path}: the stored config asks for {spec.name} = {value}, but no tensor in the file is that large "
                f"(largest dimension {largest}, {len(header.tensors)} tensors): the metadata does not match the weights"
            )
    with torch.device("meta"):
        skeleton = LFDN(config)
    expected = {f"model.{key}": tuple(value.shape) for key, value in skeleton.state_dict().items()}
    expected["stats.feature_mean"] = expected["stats.feature_std"] = (config.feature_dim,)
    return expected


def _check_shapes(path: Path, info: CheckpointInfo, header: _Header) -> None:
    expected = _expected_tensors(path, info.config, header)
    found = {name: shape for name, (_, shape) in header.tensors.items()}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [name for name in sorted(set(expected) & set(found)) if expected[name] != found[name]]
    if missing or extra or wrong:
        if wrong:
            detail = f"{wrong[0]} is {list(found[wrong[0]])} in the file, {list(expected[wrong[0]])} for the config"
        elif missing:
            detail = f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"
        else:
            detail = f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}"
        config = info.config
        raise CheckpointError(
            f"{path}: the weights do not fit the stored config (feature_dim {config.feature_dim}, width "
            f"{config.width}, depth {config.depth}): {detail}"
        )


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CheckpointError(f"no checkpoint at {path}") from None


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """The validated metadata of a checkpoint file, checked against its tensor shapes; reads no weights."""
    path = Path(path)
    with _open(path) as stream:
        header = _read_header(path, stream)
    info = _info_from_metadata(path, header.metadata)
    _check_shapes(path, info, header)
    return info


@dataclass(frozen=True)
class _Snapshot:
    """One checkpoint file read whole through one open file: its checked header and info, its bytes, its identity."""

    header: _Header
    info: CheckpointInfo
    data: bytes
    identity: tuple[int, int]  # (device, inode) of the file that was read


def _read_snapshot(path: Path, stream: BinaryIO) -> _Snapshot:
    """Check the header and metadata of the open file `stream` (named `path`), then read its bytes."""
    status = os.fstat(stream.fileno())
    identity = (status.st_dev, status.st_ino)
    try:
        header = _read_header(path, stream)
        info = _info_from_metadata(path, header.metadata)
        _check_shapes(path, info, header)  # before reading the weights: a crafted header costs no memory
    except CheckpointError:
        stream.seek(0)
        _check_sidecar(path, hashlib.file_digest(stream, "sha256").hexdigest(), identity)  # the plainer reason
        raise
    stream.seek(0)
    return _Snapshot(header, info, stream.read(), identity)


def _check_sidecar(path: Path, actual: str, identity: tuple[int, int]) -> bool:
    """True when the `.sha256` file beside `path` is absent or holds `actual`; False when it belongs to a newer file
    (`path` has been replaced since the file with `identity` was opened); CheckpointError when it disagrees.

    The file with `identity` must still be open, so that its inode number cannot have been given to a newer file."""
    expected = _sidecar_digest(path)
    if expected is None or expected == actual:
        return True
    if _replaced_since(path, identity):
        return False
    raise CheckpointError(
        f"checkpoint {path} does not match its checksum file {checksum_path(path).name} (expected {expected[:12]}…, "
        f"found {actual[:12]}…): the file is truncated or was altered. Re-download or retrain it."
    )


def _replaced_since(path: Path, identity: tuple[int, int]) -> bool:
    """True when `path` no longer names the file with `identity` (a save has renamed a new file over it)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return True
    return (status.st_dev, status.st_ino) != identity


def _sidecar_digest(path: Path) -> str | None:
    """The digest in the `.sha256` file beside `path`, or None when there is none (a save may be rewriting it)."""
    try:
        words = checksum_path(path).read_text(errors="replace").split()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return words[0].lower() if words else ""


def _verified_snapshot(path: Path) -> tuple[_Snapshot, dict[str, Tensor]]:
    """A snapshot of `path` that matches its `.sha256` file (when one belongs to it) and its embedded digest, with its
    tensors. Raises CheckpointError when the file is damaged; see the module docstring for reads during a save."""
    for _ in range(READ_ATTEMPTS):
        with _open(path) as stream:
            snapshot = _read_snapshot(path, stream)
            current = _check_sidecar(path, sha256_hex(snapshot.data), snapshot.identity)
        if current or DIGEST_KEY in snapshot.header.metadata:  # else nothing vouches for it: read the new file
            return snapshot, _embedded_verified_tensors(path, snapshot)
    raise CheckpointError(
        f"{path} was replaced {READ_ATTEMPTS} times while it was read; try again when the run writing it has finished"
    )


def _embedded_verified_tensors(path: Path, snapshot: _Snapshot) -> dict[str, Tensor]:
    try:
        tensors = safetensors.torch.load(snapshot.data)
    except Exception as error:  # safetensors raises several unrelated types for damaged files
        raise CheckpointError(f"{path} cannot be read as safetensors ({error}); the file is damaged") from error
    expected_digest = snapshot.header.metadata.get(DIGEST_KEY)
    if expected_digest is not None and content_digest(tensors, snapshot.header.metadata) != expected_digest:
        raise CheckpointError(
            f"checkpoint {path} does not match the digest stored inside it: the file is truncated or was altered. "
            "Re-download or retrain it."
        )
    return tensors


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A rebuilt model in eval mode, its metadata, and the training feature statistics (D,)."""

    model: LFDN
    info: CheckpointInfo
    feature_mean: Tensor
    feature_std: Tensor
    path: Path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Verify, rebuild from the stored config and load a checkpoint written by `save_checkpoint`.

    Raises CheckpointError for anything wrong with the file: see the module docstring for what is checked.
    """
    path = Path(path)
    snapshot, tensors = _verified_snapshot(path)
    info = snapshot.info
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"{path}: {name} holds NaN/Inf values, so every score would be meaningless; retrain the model "
                "(the run diverged) or use another checkpoint"
            )
    model = LFDN(info.config)
    state = {key.removeprefix("model."): value.float() for key, value in tensors.items() if key.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the stored config {info.config}: {error}") from error
    model.to(device).eval().requires_grad_(False)
    return LoadedCheckpoint(
        model=model,
        info=info,
        feature_mean=tensors["stats.feature_mean"],
        feature_std=tensors["stats.feature_std"],
        path=path,
    )


def resolve_run(path: str | Path) -> tuple[Path, Path | None]:
    """(final checkpoint, early checkpoint or None) for a run directory or a checkpoint file inside one."""
    path = Path(path)
    if path.resolve() == DEFAULT_RUN_DIR and not (path / LAST_NAME).exists():
        raise CheckpointError(
            f"the shipped default model is missing from {DEFAULT_RUN_DIR}; recreate it (needs "
            f"`apt-get install dataset-fashion-mnist`, about 30 min on 2 CPU cores) with: {DEFAULT_RECREATE_COMMAND}"
        )
    if path.is_dir():
        final = path / LAST_NAME
        if not final.exists():
            raise CheckpointError(
                f"{path} holds no {LAST_NAME}; train one with `python -m dlsr_core train --out {path} ...`"
            )
    else:
        final = path
        if not final.exists():
            raise CheckpointError(f"no checkpoint at {path}")
    early = final.with_name(FIRST_NAME)
    if early == final or not early.exists():
        return final, None
    return final, early


def run_dir_for_name(name: str, root: str | Path) -> Path:
    """The folder directly inside `root` that a run called `name` trains into; raises CheckpointError otherwise.

    A name is one plain folder name (letters, digits, '_', '-', '.'; not starting with '.'), so '..', '.', 'a/b',
    absolute paths and empty names are refused; so is the shipped default model and anything at that place that is
    not a run folder of its own (a file, a symbolic link, a folder with other content).
    """
    root = Path(root)
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise CheckpointError(
            f"run name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', not starting with '.' "
            "(a run is always a new folder directly inside the checkpoints folder)"
        )
    candidate = root / name
    if candidate.resolve().parent != root.resolve():
        raise CheckpointError(f"run name {name!r} does not name a folder directly inside {root}")
    if candidate.resolve() == DEFAULT_RUN_DIR or name == DEFAULT_RUN_DIR.name:
        raise CheckpointError(f"{name!r} is the shipped default model; pick another run name")
    if candidate.is_symlink() or (candidate.exists() and not candidate.is_dir()):
        raise CheckpointError(f"{candidate} exists and is not a run folder; pick another run name")
    if candidate.is_dir() and any(candidate.iterdir()):
        # "experiment.json": the run's sets (dlsr_core.data.experiment.EXPERIMENT_NAME), written before training;
        # "train.lock": a training run's lock (dlsr_core.training.locking.LOCK_NAME), left behind by a killed one
        known = {FIRST_NAME, LAST_NAME, "resume.pt", "experiment.json", "train.lock"}
        known.add(checksum_path(Path(FIRST_NAME)).name)
        known.add(checksum_path(Path(LAST_NAME)).name)
        if not all(entry.name in known or entry.name.endswith(".partial") for entry in candidate.iterdir()):
            raise CheckpointError(f"{candidate} already holds other files; pick another run name")
    return candidate
