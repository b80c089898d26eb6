"""Baseline files on disk: safetensors + JSON metadata + a SHA-256 digest. Nothing is unpickled, nothing is built
before the file has been checked.

Every baseline (pixel DDPM, feature autoencoder, classifier with its fitted detector statistics) is one file
`<kind>.safetensors` whose metadata names its kind and format version and holds two JSON objects: `config` (what
rebuilds the model) and `info` (the training record). Writing embeds the SHA-256 of metadata and tensors in the
metadata (`content_sha256`) and writes a `.sha256` file beside it; both replace the old ones atomically.

Reading trusts nothing, in this order, and refuses with `BaselineFileError` (one line naming the file and the
problem) at the first failure: the file size is bounded and the file is read once (a concurrent rewrite is seen
whole or not at all); the header is parsed with size limits; the metadata keys, format and kind are checked; `config`
and `info` are rebuilt field by field from their dataclasses (dlsr_core.schema: types, ranges, unknown and missing
keys); the kind's own checks bound every size from the tensors actually present, so a config asking for a huge
model is refused in milliseconds; the tensor names and shapes are compared with a model built on the `meta` device
(no memory); the digests are verified; every tensor must be finite. Only then is the model built by the caller.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes, sha256_hex
from dlsr_core.checkpoint import DIGEST_KEY, CheckpointError, checksum_path, content_digest
from dlsr_core.safetensors_header import header_tensors
from dlsr_core.schema import SchemaError, from_json
from dlsr_core.validation import TrainingData

FORMAT_NAME = "dlsr-baseline"
FORMAT_VERSION = 2  # 2: typed config/info records and the embedded digest
METADATA_KEYS = frozenset({"format", "format_version", "kind", "config", "info", DIGEST_KEY})
# The shipped baselines together stay under 8 MB; no baseline file this code writes comes near this bound.
MAX_FILE_BYTES = 256 * 1024 * 1024
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}
# The files of a baselines folder: <kind>.safetensors.
BASELINE_KINDS = ("pixel_ddpm", "feature_ae", "classifier")
# The shipped baselines live beside the default DLSR model.
DEFAULT_BASELINES_DIR = Path(__file__).resolve().parent.parent.parent / "checkpoints" / "baselines"


class BaselineFileError(CheckpointError):
    """A baseline file is missing, damaged, or describes a model that is refused; the message names the file and
    what is wrong, in one line."""


def baselines_dir() -> Path:
    """Where baselines are loaded from: $DLSR_BASELINES_DIR, or the shipped checkpoints/baselines."""
    return Path(os.environ.get("DLSR_BASELINES_DIR", DEFAULT_BASELINES_DIR))


@dataclass(frozen=True)
class TrainingRecord:
    """What every baseline records about its training (each kind's record adds its own fields): which images it
    was fitted on, the training settings, the time it took and on what machine."""

    training_set: TrainingData | None = None
    train: dict | None = None
    train_seconds: float | None = None
    machine: str | None = None


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header: tensor name -> (dtype, shape), and the metadata strings."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]

    def largest_dimension(self) -> int:
        return max((max(shape, default=0) for _, shape in self.tensors.values()), default=0)


@dataclass(frozen=True)
class BaselineKind:
    """How one kind of baseline is checked: its config and info dataclasses, `bound` (raises ValueError when the
    config asks for sizes the tensors present cannot hold; runs before anything is built) and `shapes` (the
    expected tensor name -> shape, computed on the meta device); `check_values` (config, info, float32 tensors)
    raises ValueError for values no model should hold (runs after the digest and finiteness checks)."""

    name: str
    config_type: type
    info_type: type
    bound: Callable[[Any, Header], None]
    shapes: Callable[[Any], dict[str, tuple[int, ...]]]
    check_values: Callable[[Any, Any, dict[str, Tensor]], None] = lambda config, info, tensors: None


@dataclass(frozen=True)
class StoredBaseline:
    """A verified baseline file: float32 (and int64) tensors, the validated config and info records."""

    kind: str
    tensors: dict[str, Tensor]
    config: Any
    info: Any
    path: Path


def save_baseline(
    path: str | Path, kind: str, tensors: dict[str, Tensor], config: Any, info: Any, half_keys: tuple[str, ...] = ()
) -> None:
    """Write tensors (those whose name starts with one of `half_keys` as float16), the config and info dataclasses
    and their digest atomically, then the checksum file. Writes nothing and raises BaselineFileError when a value
    is NaN/Inf (a tensor after the float16 conversion, or a number in the config or info)."""
    path = Path(path)
    stored = {}
    for name, value in tensors.items():
        dtype = torch.float16 if name.startswith(half_keys) and value.is_floating_point() else value.dtype
        stored[name] = value.detach().to("cpu", dtype).contiguous()
        if stored[name].is_floating_point() and not torch.isfinite(stored[name]).all():
            raise BaselineFileError(f"refusing to write {path}: {name} holds NaN/Inf values")
    try:
        config_text = json.dumps(asdict(config), allow_nan=False)
        info_text = json.dumps(asdict(info), allow_nan=False)
    except ValueError as error:
        raise BaselineFileError(f"refusing to write {path}: its config or info holds NaN/Inf ({error})") from error
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "config": config_text,
        "info": info_text,
    }
    metadata[DIGEST_KEY] = content_digest(stored, metadata)
    data = safetensors.torch.save(stored, metadata=metadata)
    sidecar = checksum_path(path)
    sidecar.unlink(missing_ok=True)  # never leave the old file's digest beside the new file
    atomic_write_bytes(path, data)
    atomic_write_bytes(sidecar, f"{sha256_hex(data)}  {path.name}\n".encode())


def parse_header(path: Path, data: bytes) -> Header:
    """The bound-checked safetensors header of file content `data`; raises BaselineFileError when damaged."""
    damaged = f"{path} is not a readable safetensors file; the file is damaged or truncated"
    if len(data) < 8:
        raise BaselineFileError(f"{damaged} ({len(data)} bytes)")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise BaselineFileError(f"{damaged} (header of {length} bytes in a {len(data)}-byte file)")
    try:
        header = json.loads(data[8 : 8 + length])
    except (ValueError, RecursionError) as error:
        raise BaselineFileError(f"{damaged} (header is not JSON)") from error
    if not isinstance(header, dict):
        raise BaselineFileError(f"{damaged} (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BaselineFileError(f"{path}: its metadata must map names to strings")
    tensors = header_tensors(header, len(data) - 8 - length, _DTYPE_BYTES, damaged, BaselineFileError)
    return Header(tensors, metadata)


def _read_bytes(path: Path, kind: str) -> bytes:
    if not path.is_file():
        raise BaselineFileError(
            f"no {kind} baseline at {path}; train it with `python -m dlsr_core.baselines.train --only {kind}`"
        )
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BaselineFileError(f"{path} is {size:,} bytes, above the {MAX_FILE_BYTES:,}-byte limit for a baseline")
    with path.open("rb") as stream:
        data = stream.read(size + 1)  # +1: a file that grew since stat() shows it (read() allocates its argument)
    if len(data) > MAX_FILE_BYTES:
        raise BaselineFileError(f"{path} is above the {MAX_FILE_BYTES:,}-byte limit for a baseline")
    return data


def _check_metadata(path: Path, metadata: dict[str, str], kind: BaselineKind) -> tuple[Any, Any]:
    """The validated (config, info) records of the file's metadata."""
    unknown = sorted(set(metadata) - METADATA_KEYS)
    if unknown:
        raise BaselineFileError(f"{path}: unknown metadata key(s) {', '.join(map(repr, unknown))}")
    if metadata.get("format") != FORMAT_NAME or metadata.get("kind") != kind.name:
        found = str(metadata.get("kind"))[:40]
        raise BaselineFileError(f"{path} is not a {kind.name} baseline (metadata kind {found!r})")
    version = metadata.get("format_version", "")
    if not re.fullmatch(r"[0-9]{1,6}", version) or int(version) != FORMAT_VERSION:
        raise BaselineFileError(
            f"{path} has format version {version[:20]!r}; this dlsr_core reads version {FORMAT_VERSION}: retrain it "
            f"with `python -m dlsr_core.baselines.train --only {kind.name}`"
        )
    records = []
    for key, record_type in (("config", kind.config_type), ("info", kind.info_type)):
        if key not in metadata:
            raise BaselineFileError(f"{path}: its metadata has no {key!r}")
        try:
            raw = json.loads(metadata[key], parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            raise BaselineFileError(f"{path}: its {key!r} metadata is not JSON ({error})") from error
        try:
            records.append(from_json(record_type, raw, key))
        except (SchemaError, ValueError, TypeError) as error:
            raise BaselineFileError(f"{path}: invalid {key}: {error}") from error
    return records[0], records[1]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_shapes(path: Path, kind: BaselineKind, config: Any, header: Header) -> None:
    try:
        kind.bound(config, header)
        expected = kind.shapes(config)
    except (ValueError, TypeError, RuntimeError) as error:  # a config no model can be built from
        raise BaselineFileError(f"{path}: the stored config is refused: {error}") from error
    found = {name: shape for name, (_, shape) in header.tensors.items()}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [name for name in sorted(set(expected) & set(found)) if expected[name] != found[name]]
    if wrong:
        name = wrong[0]
        detail = f"{name} is {list(found[name])} in the file, {list(expected[name])} for the config"
    elif missing:
        detail = f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"
    elif extra:
        detail = f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}"
    else:
        return
    raise BaselineFileError(f"{path}: the tensors do not fit the stored config: {detail}")


def _verify_digests(path: Path, data: bytes, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    sidecar = checksum_path(path)
    if sidecar.is_file():
        recorded = (sidecar.read_text(errors="replace").split() or [""])[0].lower()
        if recorded != sha256_hex(data):
            raise BaselineFileError(
                f"{path} does not match its checksum file {sidecar.name}: the file is truncated or was altered. "
                "Re-download or retrain it."
            )
    if content_digest(tensors, metadata) != metadata.get(DIGEST_KEY):
        raise BaselineFileError(
            f"{path} does not match the digest stored inside it: the file is truncated or was altered. "
            "Re-download or retrain it."
        )


def load_baseline(path: str | Path, kind: BaselineKind) -> StoredBaseline:
    """Check and read a file written by `save_baseline` (see the module docstring for the checks, in order).

    Tensors come back as float32 (int64 ones unchanged). Raises BaselineFileError, and nothing else, for any
    problem with the file."""
    path = Path(path)
    data = _read_bytes(path, kind.name)
    header = parse_header(path, data)
    config, info = _check_metadata(path, header.metadata, kind)
    _check_shapes(path, kind, config, header)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises several unrelated types for damaged files
        raise BaselineFileError(f"{path} cannot be read as safetensors ({error}); the file is damaged") from error
    _verify_digests(path, data, tensors, header.metadata)
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BaselineFileError(f"{path}: {name} holds NaN/Inf values; retrain this baseline")
    tensors = {name: value.float() if value.is_floating_point() else value for name, value in tensors.items()}
    try:
        kind.check_values(config, info, tensors)
    except ValueError as error:
        raise BaselineFileError(f"{path}: {error}") from error
    return StoredBaseline(kind.name, tensors, config, info, path)


def meta_shapes(build: Callable[[], torch.nn.Module], prefix: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of the state dict of the module `build()` makes on the meta device (allocates nothing)."""
    with torch.device("meta"):
        module = build()
    return {prefix + name: tuple(value.shape) for name, value in module.state_dict().items()}


def bound_by_tensors(values: dict[str, int], header: Header) -> None:
    """Raise ValueError when a size in `values` (name -> value) exceeds every dimension of the tensors present:
    a size the weights would show, that no tensor shows, means the metadata does not match the weights."""
    largest = header.largest_dimension()
    for name, value in values.items():
        if value > largest:
            raise ValueError(
                f"{name} = {value}, but no tensor in the file is that large (largest dimension {largest}): "
                "the metadata does not match the weights"
            )


def rounded_to_float16(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every floating weight rounded to float16 precision (kept in float32): what a file stores with
    `half_keys`. Statistics fitted after this (detector state, score normalisation) match the loaded model exactly."""
    state = module.state_dict()
    module.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in state.items()})
    return module
