"""EfficientNet-B4 (the paper's backbone, timm hub weights) and TF "same" padding fixed for one input size, as the
authors' EfficientNet port with a static image size pads (``--same-padding static-native``)."""

from __future__ import annotations

import math

import torch

from dlsr_core.backbones.spec import BackboneSpec

EFFICIENTNET_B4 = BackboneSpec(
    name="efficientnet_b4",
    timm_name="tf_efficientnet_b4",
    out_indices=(0, 1, 2, 3, 4),
    feature_dim=720,
    pretrained_source="timm-hub",
    description="EfficientNet-B4 (the paper's backbone), all 5 stages, weights from the timm hub",
)


def static_same_padding(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """TensorFlow "same" padding (left, right, top, bottom) of a convolution for an input of `size` (H, W)."""
    pads = []
    for length, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        total = max((math.ceil(length / s) - 1) * s + (k - 1) * d + 1 - length, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class StaticPaddedConv2d(torch.nn.Conv2d):
    """A convolution with a fixed F.pad in front (TF "same" padding computed once for one input size).

    It shares the weight and bias Parameters of the convolution it replaces, so parameter names are unchanged.
    """

    def __init__(self, source: torch.nn.Conv2d, padding: tuple[int, int, int, int]) -> None:
        super().__init__(
            source.in_channels,
            source.out_channels,
            source.kernel_size,
            source.stride,
            0,
            source.dilation,
            source.groups,
            source.bias is not None,
        )
        self.weight = source.weight
        self.bias = source.bias
        self.static_padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nn.functional.pad(x, self.static_padding))


def fix_same_padding(model: torch.nn.Module, image_size: int) -> dict[str, tuple[int, int, int, int]]:
    """Replace every dynamically padded TF-"same" convolution (timm ``Conv2dSame``) of `model` by one whose padding
    is fixed for `image_size`-px inputs, as EfficientNet ports with a static image size do.

    At other input sizes the padding of a strided convolution can then differ from the dynamic one (EfficientNet-B4
    at 224 px with padding for 380 px: the stride-2 5x5 convolution of stage 3 pads (2, 2) instead of (1, 2)).
    Returns the padding chosen per replaced module name (empty for models without such convolutions).
    """
    from timm.layers import Conv2dSame

    targets = {name: module for name, module in model.named_modules() if isinstance(module, Conv2dSame)}
    if not targets:
        return {}
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, module in targets.items()
    ]
    was_training = model.training
    try:
        model.eval()  # a train-mode pass would update BatchNorm running statistics
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    chosen = {}
    for name, conv in targets.items():
        padding = static_same_padding(sizes[name], conv.kernel_size, conv.stride, conv.dilation)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, StaticPaddedConv2d(conv, padding))
        chosen[name] = padding
    return chosen
