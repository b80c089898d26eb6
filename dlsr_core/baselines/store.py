"""Baseline weights on disk: safetensors + JSON metadata + a SHA-256 file beside them. Nothing is unpickled.

Every baseline (pixel DDPM, feature autoencoder, classifier head with its fitted detector statistics) is one file
`<name>.safetensors` whose metadata names its kind, format version, config and training record, so the model is
rebuilt from the stored config. The checksum file is verified on every load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes, sha256_hex
from dlsr_core.checkpoint import CheckpointError, checksum_path

FORMAT_NAME = "dlsr-baseline"
FORMAT_VERSION = 1
# The shipped baselines live beside the default DLSR model.
DEFAULT_BASELINES_DIR = Path(__file__).resolve().parent.parent.parent / "checkpoints" / "baselines"


def baselines_dir() -> Path:
    """Where baselines are loaded from: $DLSR_BASELINES_DIR, or the shipped checkpoints/baselines."""
    return Path(os.environ.get("DLSR_BASELINES_DIR", DEFAULT_BASELINES_DIR))


@dataclass(frozen=True)
class StoredBaseline:
    """What a baseline file holds: float32 tensors, the config that rebuilds the model, and the training record."""

    kind: str
    tensors: dict[str, Tensor]
    config: dict
    info: dict
    path: Path


def save_baseline(
    path: str | Path,
    kind: str,
    tensors: dict[str, Tensor],
    config: dict,
    info: dict,
    half_keys: tuple[str, ...] = (),
) -> None:
    """Write tensors (those whose name starts with one of `half_keys` as float16) and metadata atomically, then
    the checksum file."""
    path = Path(path)
    stored = {}
    for name, value in tensors.items():
        dtype = torch.float16 if name.startswith(half_keys) and value.is_floating_point() else None
        stored[name] = value.detach().to("cpu", dtype or value.dtype).contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "config": json.dumps(config),
        "info": json.dumps(info),
    }
    data = safetensors.torch.save(stored, metadata=metadata)
    atomic_write_bytes(path, data)
    atomic_write_bytes(checksum_path(path), f"{sha256_hex(data)}  {path.name}\n".encode())


def load_baseline(path: str | Path, kind: str) -> StoredBaseline:
    """Verify the checksum and read a file written by `save_baseline`; raises CheckpointError with the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no {kind} baseline at {path}; train it with `python -m dlsr_core.baselines.train --only {kind}`"
        )
    data = path.read_bytes()
    expected_file = checksum_path(path)
    if not expected_file.is_file():
        raise CheckpointError(f"{path} has no checksum file {expected_file.name} beside it; retrain or re-download it")
    expected = (expected_file.read_text().split() or [""])[0]
    if expected != sha256_hex(data):
        raise CheckpointError(
            f"{path} does not match its checksum file {expected_file.name}: the file is truncated or was altered. "
            "Re-download or retrain it."
        )
    try:
        tensors = safetensors.torch.load(data)
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several unrelated types for damaged files
        raise CheckpointError(f"{path} cannot be read as safetensors ({error}); the file is damaged") from error
    if metadata.get("format") != FORMAT_NAME or metadata.get("kind") != kind:
        raise CheckpointError(f"{path} is not a {kind} baseline (metadata kind {metadata.get('kind')!r})")
    if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has a newer format version than this dlsr_core reads ({FORMAT_VERSION})")
    return StoredBaseline(
        kind=kind,
        tensors={name: value.float() if value.is_floating_point() else value for name, value in tensors.items()},
        config=json.loads(metadata["config"]),
        info=json.loads(metadata["info"]),
        path=path,
    )
