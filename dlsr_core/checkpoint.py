"""LFDN checkpoints: safetensors weights + JSON metadata + a SHA-256 file beside them. Nothing is unpickled.

A training run directory holds `first.safetensors` (the first saved epoch, needed by the LR score) and
`last.safetensors` (the newest), each with `<name>.sha256` beside it, plus `resume.pt` for continuing training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes, sha256_hex
from dlsr_core.diffusion import LFDN, LFDNConfig

FORMAT_NAME = "dlsr-lfdn"
FORMAT_VERSION = 1
FIRST_NAME = "first.safetensors"
LAST_NAME = "last.safetensors"
# The shipped default model (a run directory) lives in the repository's checkpoints/ folder.
DEFAULT_RUN_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
DEFAULT_RECREATE_COMMAND = (
    "python -m dlsr_core train -d fashion_mnist:train --backbone efficientnet_lite0 --input-size 64 --width 512 "
    "--depth 6 --epochs 10 --train-batch-size 256 --lr 3e-4 --ema-decay 0.999 --half --out checkpoints/default"
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
    input_size: int
    stage_dims: tuple[int, ...]
    dataset: str
    epoch: int
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


def save_checkpoint(
    path: str | Path,
    model: LFDN,
    info: CheckpointInfo,
    feature_mean: Tensor,
    feature_std: Tensor,
    half_precision: bool = False,
) -> None:
    """Write model weights (optionally float16), feature statistics (D,) and `info` atomically, then the checksum."""
    path = Path(path)
    dtype = torch.float16 if half_precision else torch.float32
    tensors = {
        f"model.{key}": value.detach().to("cpu", dtype).contiguous() for key, value in model.state_dict().items()
    }
    tensors["stats.feature_mean"] = feature_mean.detach().to("cpu", torch.float32).contiguous()
    tensors["stats.feature_std"] = feature_std.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "info": json.dumps(asdict(info)),
    }
    data = safetensors.torch.save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    atomic_write_bytes(checksum_path(path), f"{sha256_hex(data)}  {path.name}\n".encode())


def _verify_checksum(path: Path, data: bytes) -> None:
    expected_file = checksum_path(path)
    if not expected_file.exists():
        return
    fields = expected_file.read_text().split()
    expected = fields[0] if fields else ""
    actual = sha256_hex(data)
    if expected != actual:
        raise CheckpointError(
            f"checkpoint {path} does not match its checksum file {expected_file.name} (expected {expected[:12]}…, "
            f"found {actual[:12]}…): the file is truncated or was altered. Re-download or retrain it."
        )


def _info_from_metadata(path: Path, metadata: dict[str, str] | None) -> CheckpointInfo:
    if not metadata or metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a DLSR LFDN checkpoint (no '{FORMAT_NAME}' metadata)")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this dlsr_core reads up to {FORMAT_VERSION}")
    raw = json.loads(metadata["info"])
    raw["config"] = LFDNConfig(**raw["config"])
    raw["stage_dims"] = tuple(raw["stage_dims"])
    return CheckpointInfo(**raw)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A rebuilt model in eval mode, its metadata, and the training feature statistics (D,)."""

    model: LFDN
    info: CheckpointInfo
    feature_mean: Tensor
    feature_std: Tensor
    path: Path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Verify, rebuild from the stored config and load a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    _verify_checksum(path, data)
    try:
        tensors = safetensors.torch.load(data)
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
    except Exception as error:  # safetensors raises several unrelated types for damaged files
        raise CheckpointError(f"{path} cannot be read as safetensors ({error}); the file is damaged") from error
    info = _info_from_metadata(path, metadata)
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
