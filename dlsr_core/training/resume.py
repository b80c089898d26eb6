"""Continuing a run: `resume.pt` (everything needed to go on) read, checked against the new settings, and written."""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes
from dlsr_core.checkpoint import LAST_NAME, CheckpointError
from dlsr_core.diffusion import LFDN, LFDNConfig
from dlsr_core.schema import SchemaError, from_json
from dlsr_core.training.config import Provenance, TrainConfig

RESUME_NAME = "resume.pt"
_TORCH_PICKLE_PROTOCOL = 2  # what torch.save writes, so every resume file; torch.load warns about any other
logger = logging.getLogger("dlsr_core.training")

# Settings a resumed run may change (they only steer the rest of the run) and those it must keep; the CLI options
# named in messages.
_RESUMABLE_CHANGES = ("epochs", "learning_rate", "weight_decay", "ema_decay", "checkpoint_every", "amp")
# drop_last changes the steps per epoch, so a run keeps it.
_FIXED_SETTINGS = {"batch_size": "--train-batch-size", "seed": "--seed", "drop_last": "--drop-last"}
_FIXED_ARCHITECTURE = {
    "feature_dim": "the feature size",
    "width": "--width",
    "depth": "--depth",
    "input_activation": "--input-activation",
    "time_embed_width": "--time-mlp-width",
}
_FIXED_PROVENANCE = {
    "backbone": "--backbone",
    "weights": "--weights",
    "input_size": "--input-size",
    "stage_dims": "the backbone's stages",
    "dataset": "--dataset",
    "pooling": "--pooling",
    "std_eps": "--std-eps",
    "resize": "--resize",
    "normalization": "--normalization",
    "same_padding": "--same-padding",
}
RESUME_KEYS = frozenset(
    {"model", "ema_model", "optimizer", "model_config", "train_config", "epoch", "global_step", "provenance"}
)
_OPTIONAL_RESUME_KEYS = frozenset({"provenance"})  # resume files written before it was stored lack it


@dataclass(frozen=True)
class ResumeState:
    """A validated `resume.pt`: configs rebuilt from their dataclasses, tensors not yet loaded into a model."""

    path: Path
    model_config: LFDNConfig
    train_config: TrainConfig
    provenance: Provenance | None
    epoch: int
    global_step: int
    raw: dict


def _resume_error(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"cannot resume from {path}: {reason}. Nothing was changed; start over with --restart (the run's "
        "checkpoints are then replaced from the first saved epoch) or delete that file"
    )


def _pickle_protocol(path: Path) -> int | None:
    """The protocol its first pickle declares (of data.pkl in a zip archive), read without unpickling; None when it
    declares none or the file is not readable as either format (torch.load then says what is wrong)."""
    with path.open("rb") as stream:
        head = stream.read(4)
        if head == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(stream) as archive:
                    pickles = [name for name in archive.namelist() if name.rpartition("/")[2] == "data.pkl"]
                    if not pickles:
                        return None
                    with archive.open(pickles[0]) as member:
                        head = member.read(2)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError):
                return None
    return head[1] if len(head) >= 2 and head[0] == pickle.PROTO[0] else None


def read_resume_state(path: str | Path) -> ResumeState:
    """Read and check `resume.pt` (never executes code: weights_only); raises CheckpointError saying what is wrong."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise _resume_error(path, "the file is empty (0 bytes)")
        protocol = _pickle_protocol(path)
        if protocol is not None and protocol != _TORCH_PICKLE_PROTOCOL:  # torch.load would warn before refusing it
            reason = f"it is pickled with protocol {protocol}, which no resume file is written with (refused unread)"
            raise _resume_error(path, reason)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            reason = "it holds objects other than tensors and numbers (refused; nothing in it was run)"
            raise _resume_error(path, reason) from error
        raise _resume_error(path, "the file is truncated or not a resume file") from error
    except Exception as error:  # torch.load raises many types for truncated or foreign files
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise _resume_error(path, f"the file is truncated or not a resume file ({first_line})") from error
    if not isinstance(state, dict):
        raise _resume_error(path, f"it holds a {type(state).__name__}, not a dictionary")
    missing = sorted(RESUME_KEYS - _OPTIONAL_RESUME_KEYS - set(state))
    unknown = sorted(set(state) - RESUME_KEYS)
    if missing or unknown:
        raise _resume_error(path, f"wrong keys (missing {missing or 'none'}, unknown {unknown or 'none'})")
    try:
        model_config = from_json(LFDNConfig, state["model_config"], "model_config")
        train_config = from_json(TrainConfig, state["train_config"], "train_config")
        provenance = from_json(Provenance, state["provenance"], "provenance") if "provenance" in state else None
    except SchemaError as error:
        raise _resume_error(path, str(error)) from error
    for key in ("epoch", "global_step"):
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _resume_error(path, f"{key} must be a whole number >= 0, got {value!r}")
    for key in ("model", "ema_model"):
        weights = state[key]
        if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
            raise _resume_error(path, f"{key} is not a dictionary of tensors")
        if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
            raise _resume_error(path, f"{key} holds NaN/Inf weights")
    if not isinstance(state["optimizer"], dict):
        raise _resume_error(path, "optimizer is not a dictionary")
    return ResumeState(path, model_config, train_config, provenance, state["epoch"], state["global_step"], state)


def resume_or_start(
    run_dir: Path,
    resume: bool,
    model: LFDN,
    ema_model: LFDN,
    optimizer: torch.optim.Optimizer,
    model_config: LFDNConfig,
    train_config: TrainConfig,
    provenance: Provenance,
    device: torch.device,
) -> tuple[int, int]:
    """(epoch, global step) to go on from: those of `run_dir`'s resume file, loaded into the model, EMA and optimizer
    when `resume` and it exists; else (0, 0). Refuses (CheckpointError) a run_dir with checkpoints but no resume
    file."""
    resume_path = run_dir / RESUME_NAME
    if resume and resume_path.exists():
        return _resume_into(resume_path, model, ema_model, optimizer, model_config, train_config, provenance, device)
    if resume and (run_dir / LAST_NAME).exists():
        raise CheckpointError(
            f"{run_dir} already holds a trained model but no {RESUME_NAME} to continue it; pass --restart to train a "
            "new model over it (its checkpoints are replaced from the first saved epoch) or choose another --out"
        )
    return 0, 0


def _resume_into(
    path: Path,
    model: LFDN,
    ema_model: LFDN,
    optimizer: torch.optim.Optimizer,
    model_config: LFDNConfig,
    train_config: TrainConfig,
    provenance: Provenance,
    device: torch.device,
) -> tuple[int, int]:
    """Load a checked resume file into the model, EMA and optimizer; returns (epoch, global step)."""
    saved = read_resume_state(path)
    check_fixed_settings(saved, asdict(model_config), train_config, asdict(provenance))
    raw = saved.raw
    try:
        model.load_state_dict({k: v.to(device) for k, v in raw["model"].items()})
        ema_model.load_state_dict({k: v.to(device) for k, v in raw["ema_model"].items()})
        optimizer.load_state_dict(raw["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise _resume_error(path, f"its weights do not fit the model ({first_line})") from error
    changes = [
        f"{key} {getattr(train_config, key)} (was {getattr(saved.train_config, key)})"
        for key in _RESUMABLE_CHANGES
        if getattr(train_config, key) != getattr(saved.train_config, key)
    ]
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = train_config.learning_rate, train_config.weight_decay
    if changes:
        logger.info("resuming %s from epoch %d with %s", path.parent, saved.epoch, ", ".join(changes))
    return saved.epoch, saved.global_step


def check_fixed_settings(
    saved: ResumeState, model_fields: dict, train_config: TrainConfig, provenance_fields: dict
) -> None:
    """Raise CheckpointError naming each setting that differs from the run's in `saved` and cannot change on resume.

    `model_fields` and `provenance_fields` (LFDNConfig / Provenance fields by name) may hold only some fields: before
    the training features are extracted, their size and stage sizes are not known, and the others are checked early.
    """
    then = asdict(saved.model_config)
    refused = [
        f"{option} ({model_fields[key]} now, {then[key]} in the run)"
        for key, option in _FIXED_ARCHITECTURE.items()
        if key in model_fields and model_fields[key] != then[key]
    ]
    others = [key for key, value in model_fields.items() if key not in _FIXED_ARCHITECTURE and value != then.get(key)]
    if others and not refused:
        changes = ", ".join(f"{key} {model_fields[key]} now, {then.get(key)} in the run" for key in others)
        refused.append(f"the model configuration ({changes})")
    refused += [
        f"{option} ({getattr(train_config, key)} now, {getattr(saved.train_config, key)} in the run)"
        for key, option in _FIXED_SETTINGS.items()
        if getattr(train_config, key) != getattr(saved.train_config, key)
    ]
    if saved.provenance is not None:
        recorded = asdict(saved.provenance)
        refused += [
            f"{option} ({provenance_fields[key]} now, {recorded[key]} in the run)"
            for key, option in _FIXED_PROVENANCE.items()
            if key in provenance_fields and key in recorded and provenance_fields[key] != recorded[key]
        ]
    if refused:
        raise CheckpointError(
            f"{saved.path.parent} was trained with other settings that cannot change on resume: {'; '.join(refused)}. "
            "Use the run's settings, another --out folder, or --restart"
        )


def save_resume_state(
    path: Path,
    model: LFDN,
    ema_model: LFDN,
    optimizer: torch.optim.Optimizer,
    model_config: LFDNConfig,
    train_config: TrainConfig,
    provenance: Provenance,
    epoch: int,
    global_step: int,
) -> None:
    """Write everything needed to continue the run (weights, EMA, optimizer, configs, position) atomically."""
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "ema_model": ema_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "model_config": asdict(model_config),
            "train_config": asdict(train_config),
            "provenance": {**asdict(provenance), "stage_dims": list(provenance.stage_dims)},
            "epoch": epoch,
            "global_step": global_step,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())
