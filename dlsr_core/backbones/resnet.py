"""ResNet-50 (stages 1-3, timm hub weights)."""

from __future__ import annotations

from dlsr_core.backbones.spec import BackboneSpec

RESNET50 = BackboneSpec(
    name="resnet50",
    timm_name="resnet50",
    out_indices=(1, 2, 3),
    feature_dim=1792,
    pretrained_source="timm-hub",
    description="ResNet-50 stages 1-3, weights from the timm hub",
)
