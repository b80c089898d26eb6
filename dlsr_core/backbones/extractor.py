"""The frozen backbone as a module: images -> preprocessed tensors -> DLSR feature vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dlsr_core import tv_compat  # noqa: F401  (must precede timm: see tv_compat)

# isort: split
import timm
import timm.data

from dlsr_core.backbones.efficientnet import fix_same_padding
from dlsr_core.backbones.pooling import pool_and_standardize
from dlsr_core.backbones.spec import BackboneSpec
from dlsr_core.fixed_batches import cpu_chunk, fixed_chunk_forward
from dlsr_core.presets import DEFAULT_FEATURES, FeatureOptions, validate_options

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

        An image's features do not depend on what it is batched with: the backbone always sees the same
        number of images at a time (``fixed_batches.cpu_chunk(H)`` on CPU, one thread per pass;
        ``batch_size_for(H)`` elsewhere), see dlsr_core.fixed_batches.
        The result lives on ``device`` and is an ordinary (non-inference) tensor.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        on_cpu, size = self.device.type == "cpu", int(images.shape[-1])
        chunk = cpu_chunk(size) if on_cpu else self.batch_size_for(size)
        return fixed_chunk_forward(self.single_pass, images, chunk, pin_cpu_threads=on_cpu)

    def single_pass(self, images: torch.Tensor) -> torch.Tensor:
        """One backbone pass over images (B, 3, H, W) -> (B, feature_dim), whose last bits depend on B and the
        thread count (use ``forward``; this is for benchmarks/batch_invariance.py)."""
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
