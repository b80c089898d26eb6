"""Building a timm features model and filling it from a local state dict file (checked key by key)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch

from dlsr_core import tv_compat  # noqa: F401  (must precede timm: see tv_compat)

# isort: split
import timm

from dlsr_core.backbones.spec import BackboneSpec, WeightsUnavailableError


def create_timm(spec: BackboneSpec, pretrained: bool) -> torch.nn.Module:
    return timm.create_model(
        spec.timm_name,
        pretrained=pretrained,
        features_only=True,
        out_indices=spec.out_indices,
    )


def read_state_dict_file(path: Path, spec: BackboneSpec) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file {path} for backbone {spec.name} does not exist. Pass an existing "
            "'.pth'/'.safetensors' state dict, or --weights pretrained / random."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, or pickled objects refused by weights_only
        raise WeightsUnavailableError(
            f"Could not read weights file {path} for backbone {spec.name}: {exc}. Expected a "
            "state dict saved with torch.save(model.state_dict(), ...) or safetensors."
        ) from exc
    # Training checkpoints often wrap the state dict.
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsUnavailableError(
            f"Weights file {path} does not contain a state dict (name -> tensor) for {spec.name}."
        )
    if data and all(k.startswith("module.") for k in data):  # saved from DataParallel
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def load_checked(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    spec: BackboneSpec,
    source: str,
) -> None:
    """Load every tensor the features model needs; extra keys (classifier head) are ignored."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    mismatched = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:2])})")
        raise WeightsUnavailableError(
            f"The weights in {source} do not fit backbone {spec.name} (timm {spec.timm_name}): "
            f"{' and '.join(details)}. Pass a state dict saved from this architecture."
        )
    model.load_state_dict({k: state_dict[k] for k in target}, strict=True)


@lru_cache(maxsize=16)
def _sha256_prefix_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def sha256_prefix(path: Path) -> str:
    stat = path.stat()
    return _sha256_prefix_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
