"""Pixel-level diffusion baseline: the paper's "DDPM" column, after Graham et al. 2023 (reconstruction-based OOD).

A small `diffusers` UNet2DModel is trained as an epsilon-predicting DDPM on the ID images themselves (28 x 28 grayscale
for Fashion-MNIST; any size, 1 or 3 channels; pixels in [-1, 1]). To score an image it is noised to several levels t,
each noised copy is reconstructed with diffusers' DDIM scheduler (deterministic, eta = 0), and the mean squared pixel
error of each level is turned into a z-score with the mean and standard deviation of that level's error on held-out ID
images. The score (higher = more OOD) is the mean z-score over levels. Graham et al. also use LPIPS, which needs
network-downloaded weights; the offline version here uses the pixel error only.

The forward noise of an image is keyed by its pixel values and the seed (dlsr_core.noise), so the same image always
gets the same score, whatever batch it is scored in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dlsr_core import tv_compat  # noqa: F401  (diffusers imports torchvision)

# isort: split
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from dlsr_core.baselines.images import adapt_pixels, images_to_tensor
from dlsr_core.baselines.store import (
    DEFAULT_BASELINES_DIR,
    BaselineKind,
    Header,
    TrainingRecord,
    bound_by_tensors,
    load_baseline,
    meta_shapes,
    save_baseline,
)
from dlsr_core.diffusion import ConfigError
from dlsr_core.metrics import ood_metrics
from dlsr_core.noise import keyed_standard_normal, row_noise_keys
from dlsr_core.validation import TrainingData

KIND = "pixel_ddpm"
DEFAULT_PATH = DEFAULT_BASELINES_DIR / "pixel_ddpm.safetensors"


@dataclass(frozen=True)
class PixelDDPMConfig:
    """UNet and noise schedule. Three resolutions (28, 14, 7), self-attention at 7 x 7, linear betas as in DDPM;
    `channels` 1 for grayscale images, 3 for RGB."""

    image_size: int = field(default=28, metadata={"range": (8, 256)})
    channels: int = field(default=1, metadata={"range": (1, 3)})
    block_out_channels: tuple[int, ...] = field(default=(32, 64, 64), metadata={"range": (1, 1024)})
    layers_per_block: int = field(default=1, metadata={"range": (1, 8)})
    attention_at_lowest: bool = True
    norm_num_groups: int = field(default=8, metadata={"range": (1, 1024)})
    num_train_timesteps: int = field(default=1000, metadata={"range": (2, 100_000)})
    beta_start: float = field(default=1e-4, metadata={"range": (1e-8, 0.5)})
    beta_end: float = field(default=0.02, metadata={"range": (1e-8, 0.999)})


@dataclass(frozen=True)
class ReconstructionSetting:
    """Noise levels (timesteps out of num_train_timesteps) and the DDIM stride used to come back from each.

    stride 0 means one step: the model's x0 estimate at the level itself. Otherwise every level must be a multiple
    of `stride`, and a level t costs t / stride UNet evaluations.
    """

    levels: tuple[int, ...] = field(default=(100, 200, 300, 400, 500), metadata={"range": (1, 100_000)})
    stride: int = field(default=0, metadata={"range": (0, 100_000)})

    def evaluations(self) -> int:
        """UNet evaluations per image."""
        return sum(1 if self.stride == 0 else level // self.stride for level in self.levels)

    def label(self) -> str:
        steps = "1 step each" if self.stride == 0 else f"DDIM stride {self.stride}"
        return f"t = {', '.join(map(str, self.levels))}; {steps} ({self.evaluations()} UNet passes/image)"


def validate_setting(setting: ReconstructionSetting, config: PixelDDPMConfig) -> None:
    """Raise ConfigError when a level or the stride does not fit the schedule."""
    if not setting.levels:
        raise ConfigError("a reconstruction setting needs at least one noise level")
    for level in setting.levels:
        if not 1 <= level < config.num_train_timesteps:
            raise ConfigError(f"noise level {level} must be in 1..{config.num_train_timesteps - 1}")
        if setting.stride and level % setting.stride:
            raise ConfigError(f"noise level {level} is not a multiple of the DDIM stride {setting.stride}")
    if setting.stride < 0 or (setting.stride and config.num_train_timesteps % setting.stride):
        raise ConfigError(f"the DDIM stride must be 0 or divide {config.num_train_timesteps}, got {setting.stride}")


def validate_config(config: PixelDDPMConfig) -> None:
    """Raise ConfigError for a UNet that cannot be built or run: 1-6 resolutions, an image size the down- and
    up-sampling map back onto itself, group norms that divide every width, betas that increase."""
    levels = len(config.block_out_channels)
    if config.channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {config.channels}")
    if not 1 <= levels <= 6:
        raise ConfigError(f"block_out_channels needs 1 to 6 entries, got {levels}")
    if config.image_size % (1 << (levels - 1)):
        raise ConfigError(
            f"image_size {config.image_size} must be divisible by {1 << (levels - 1)} for {levels} levels"
        )
    if any(width % config.norm_num_groups for width in config.block_out_channels):
        raise ConfigError(
            f"norm_num_groups {config.norm_num_groups} must divide every width {config.block_out_channels}"
        )
    if not config.beta_start < config.beta_end:
        raise ConfigError(f"beta_start {config.beta_start} must be below beta_end {config.beta_end}")


def build_unet(config: PixelDDPMConfig) -> UNet2DModel:
    """A diffusers UNet2DModel for (N, C, S, S) images; one down/up block per entry of `block_out_channels`."""
    levels = len(config.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention_at_lowest:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=config.norm_num_groups,
    )


def training_scheduler(config: PixelDDPMConfig) -> DDPMScheduler:
    """The DDPM noise schedule used for training (and for noising images before reconstruction)."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
    )


def reconstruction_scheduler(config: PixelDDPMConfig) -> DDIMScheduler:
    """DDIM over the same betas; x0 estimates are clipped to the pixel range [-1, 1]."""
    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        steps_offset=0,
    )


def images_to_pixels(images: Sequence[Image.Image | np.ndarray], image_size: int = 28, channels: int = 1) -> Tensor:
    """PIL images or uint8 arrays (H, W) / (H, W, 3) -> pixels (N, channels, S, S) float32 in [-1, 1] (grayscale by
    default, as the shipped model reads them)."""
    return images_to_tensor(images, channels, image_size)


def _noised(ddpm: DDPMScheduler, pixels: Tensor, level: int, keys: np.ndarray, stream: int) -> Tensor:
    noise = keyed_standard_normal(keys, stream, pixels[0].numel()).view_as(pixels).to(pixels.device)
    timesteps = torch.full((len(pixels),), level, dtype=torch.long)
    return ddpm.add_noise(pixels, noise, timesteps)


@torch.inference_mode()
def reconstruct(unet: UNet2DModel, config: PixelDDPMConfig, noised: Tensor, level: int, stride: int) -> Tensor:
    """DDIM from `noised` (N, C, S, S) at timestep `level` back to an x0 estimate (N, C, S, S) in [-1, 1].

    stride 0: one step (the x0 estimate at `level`); otherwise level / stride steps through level, level - stride,
    ..., stride, returning the last step's x0 estimate.
    """
    ddim = reconstruction_scheduler(config)
    step = stride or level
    if stride:
        ddim.set_timesteps(config.num_train_timesteps // stride)
    sample = noised
    estimate = noised
    for timestep in range(level, 0, -step):
        sample = sample.contiguous(memory_format=torch.channels_last)
        predicted_noise = unet(sample, torch.full((len(sample),), timestep, dtype=torch.long)).sample
        if stride:
            output = ddim.step(predicted_noise, timestep, sample, eta=0.0)
            sample, estimate = output.prev_sample, output.pred_original_sample
        else:  # one step: DDIM's x0 estimate at the level itself
            alpha_bar = ddim.alphas_cumprod[timestep]
            estimate = ((sample - (1 - alpha_bar).sqrt() * predicted_noise) / alpha_bar.sqrt()).clamp(-1.0, 1.0)
    return estimate


def reconstruct_levels(
    unet: UNet2DModel, config: PixelDDPMConfig, pixels: Tensor, setting: ReconstructionSetting, seed: int = 0
) -> Tensor:
    """Reconstructions of pixels (N, C, S, S) from each noise level of `setting`: (L, N, C, S, S) in [-1, 1]."""
    validate_setting(setting, config)
    ddpm = training_scheduler(config)
    keys = row_noise_keys(pixels.flatten(1), seed)
    estimates = []
    for position, level in enumerate(setting.levels):
        noised = _noised(ddpm, pixels, level, keys, position)
        estimates.append(reconstruct(unet, config, noised, level, setting.stride))
    return torch.stack(estimates)


def level_errors(
    unet: UNet2DModel,
    config: PixelDDPMConfig,
    pixels: Tensor,
    setting: ReconstructionSetting,
    seed: int = 0,
    batch_size: int = 64,
) -> Tensor:
    """Mean squared pixel error of the reconstruction from each noise level: pixels (N, C, S, S) -> (N, L).

    Chunks of 64 images were the fastest on the project CPU (large batches fall out of the cache)."""
    rows = [
        (reconstruct_levels(unet, config, chunk, setting, seed) - chunk).pow(2).flatten(2).mean(dim=2).T
        for chunk in pixels.split(batch_size)
    ]
    return torch.cat(rows) if rows else torch.empty(0, len(setting.levels))


@dataclass(frozen=True)
class PixelRecord(TrainingRecord):
    """The training record stored with a pixel DDPM (dlsr_core.baselines.pixel_training writes it)."""

    calibration: TrainingData | None = None
    probe: TrainingData | None = None
    train_images: int | None = None
    steps_done: int | None = None
    epochs: float | None = None
    stopped: str | None = None
    stopping_rule: str | None = None
    best_step: int | None = None
    best_heldout_loss: float | None = None
    last_heldout_loss: float | None = None
    last_slope_per_1000_steps: float | None = None
    parameters: int | None = None
    max_minutes: float | None = None
    calibration_seconds: float | None = None


@dataclass(frozen=True)
class PixelFile:
    """The config stored in a pixel DDPM file: the UNet, the reconstruction setting and the ID 95% threshold."""

    model: PixelDDPMConfig
    setting: ReconstructionSetting
    id_threshold95: float


def _bound(stored: PixelFile, header: Header) -> None:
    validate_config(stored.model)
    validate_setting(stored.setting, stored.model)
    widths = {f"block_out_channels[{i}]": width for i, width in enumerate(stored.model.block_out_channels)}
    bound_by_tensors(widths, header)
    if stored.model.layers_per_block > len(header.tensors):
        raise ValueError(f"layers_per_block = {stored.model.layers_per_block} needs more tensors than the file holds")


def _shapes(stored: PixelFile) -> dict[str, tuple[int, ...]]:
    shapes = meta_shapes(lambda: build_unet(stored.model), "unet.")
    shapes["stats.id_mean"] = shapes["stats.id_std"] = (len(stored.setting.levels),)
    return shapes


def _check_values(stored: PixelFile, info: PixelRecord, tensors: dict[str, Tensor]) -> None:
    if (tensors["stats.id_std"] <= 0).any():
        raise ValueError("stats.id_std must be positive (a standard deviation per level)")


FILE_KIND = BaselineKind(KIND, PixelFile, PixelRecord, _bound, _shapes, _check_values)


class PixelDDPM:
    """A trained pixel DDPM with one reconstruction setting and its ID error statistics per level."""

    def __init__(
        self,
        unet: UNet2DModel,
        config: PixelDDPMConfig,
        setting: ReconstructionSetting,
        id_mean: Tensor,
        id_std: Tensor,
        info: PixelRecord | None = None,
        id_threshold95: float = float("nan"),
    ) -> None:
        validate_setting(setting, config)
        if id_mean.shape != (len(setting.levels),) or id_std.shape != id_mean.shape:
            raise ConfigError(f"need one ID mean and std per level ({len(setting.levels)}), got {tuple(id_mean.shape)}")
        self.unet = unet.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.config = config
        self.setting = setting
        self.id_mean = id_mean.float()
        self.id_std = id_std.float().clamp(min=1e-12)
        self.info = info or PixelRecord()
        # The score at or below which 95% of the held-out ID images fall: the reference for a verdict.
        self.id_threshold95 = id_threshold95

    @classmethod
    def calibrated(
        cls,
        unet: UNet2DModel,
        config: PixelDDPMConfig,
        setting: ReconstructionSetting,
        id_pixels: Tensor,
        info: PixelRecord | None = None,
        seed: int = 0,
    ) -> PixelDDPM:
        """A model whose per-level statistics and 95% threshold are measured on ID pixels (N, C, S, S)."""
        errors = level_errors(unet, config, id_pixels, setting, seed)
        model = cls(unet, config, setting, errors.mean(dim=0), errors.std(dim=0), info)
        model.id_threshold95 = float(np.quantile(model.normalise(errors), 0.95, method="inverted_cdf"))
        return model

    def prepare(self, pixels: Tensor) -> Tensor:
        """Images (N, 1 or 3, H, W) in [-1, 1] as this model's input (N, C, S, S) (images.adapt_pixels)."""
        return adapt_pixels(pixels, self.config.channels, self.config.image_size)

    def errors(self, pixels: Tensor, seed: int = 0) -> Tensor:
        """Per-level reconstruction errors (N, L) of images (N, 1 or 3, H, W) in [-1, 1]."""
        return level_errors(self.unet, self.config, self.prepare(pixels), self.setting, seed)

    def reconstructions(self, pixels: Tensor, seed: int = 0) -> Tensor:
        """The reconstruction of images (N, 1 or 3, H, W) from every level: (L, N, C, S, S) in [-1, 1]."""
        return reconstruct_levels(self.unet, self.config, self.prepare(pixels), self.setting, seed)

    def normalise(self, errors: Tensor) -> np.ndarray:
        """Mean over levels of the ID-normalised errors: (N, L) -> (N,), higher = more OOD."""
        return ((errors - self.id_mean) / self.id_std).mean(dim=1).numpy()

    def score_pixels(self, pixels: Tensor, seed: int = 0) -> np.ndarray:
        """Scores (N,) of pixels (N, C, S, S) in [-1, 1]."""
        return self.normalise(self.errors(pixels, seed))

    def score_images(self, images: Sequence[Image.Image | np.ndarray], seed: int = 0) -> np.ndarray:
        """Scores (N,) of PIL images or uint8 arrays (any size and mode; converted to the model's S x S and C)."""
        return self.score_pixels(images_to_pixels(images, self.config.image_size, self.config.channels), seed)

    def with_setting(
        self, setting: ReconstructionSetting, id_pixels: Tensor, seed: int = 0, calibration: TrainingData | None = None
    ) -> PixelDDPM:
        """The same UNet under another setting, its statistics measured on ID pixels (N, C, S, S); `calibration`
        records which images those are (default: the ones recorded for the current setting)."""
        info = self.info if calibration is None else replace(self.info, calibration=calibration)
        return PixelDDPM.calibrated(self.unet, self.config, setting, id_pixels, info, seed)

    def save(self, path: str | Path) -> None:
        """safetensors: UNet weights in float16, statistics in float32; config, setting and record in the metadata."""
        tensors = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        tensors.update({"stats.id_mean": self.id_mean, "stats.id_std": self.id_std})
        stored = PixelFile(self.config, self.setting, self.id_threshold95)
        save_baseline(path, KIND, tensors, stored, self.info, half_keys=("unet.",))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> PixelDDPM:
        """Check and rebuild a saved pixel DDPM (see `save`); raises store.BaselineFileError for any bad file."""
        stored = load_baseline(path, FILE_KIND)
        config, setting = stored.config.model, stored.config.setting
        unet = build_unet(config)
        unet.load_state_dict({k.removeprefix("unet."): v for k, v in stored.tensors.items() if k.startswith("unet.")})
        mean, std = stored.tensors["stats.id_mean"], stored.tensors["stats.id_std"]
        return cls(unet, config, setting, mean, std, stored.info, stored.config.id_threshold95)


@torch.inference_mode()
def sample_images(unet: UNet2DModel, config: PixelDDPMConfig, count: int, steps: int = 50, seed: int = 0) -> Tensor:
    """`count` images (count, C, S, S) in [-1, 1] generated from seeded noise with `steps` DDIM steps (eta = 0)."""
    ddim = reconstruction_scheduler(config)
    ddim.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn((count, config.channels, config.image_size, config.image_size), generator=generator)
    for timestep in ddim.timesteps:
        sample = sample.contiguous(memory_format=torch.channels_last)
        predicted = unet(sample, torch.full((count,), int(timestep), dtype=torch.long)).sample
        sample = ddim.step(predicted, timestep, sample, eta=0.0).prev_sample
    return sample.clamp(-1.0, 1.0)


@dataclass(frozen=True)
class SettingScores:
    """A reconstruction setting scored on given ID and OOD images: the recalibrated model, its scores (N,) per
    set, AUROC and FPR95 (ID = positive) of each OOD set against the ID images, and the scoring throughput."""

    model: PixelDDPM
    scores: dict[str, np.ndarray]
    auroc: dict[str, float]
    fpr95: dict[str, float]
    images_per_second: float


def score_setting(
    model: PixelDDPM,
    setting: ReconstructionSetting,
    calibration_pixels: Tensor,
    id_pixels: Tensor,
    ood_pixels: dict[str, Tensor],
    seed: int = 0,
    calibration: TrainingData | None = None,
) -> SettingScores:
    """How well `setting` separates `id_pixels` (N, C, S, S) from each of `ood_pixels` (name -> (M, C, S, S)).

    The setting's per-level statistics are measured on `calibration_pixels` (held-out ID images, recorded as
    `calibration`). For a fair selection all three image groups are validation data: choosing on the test sets
    makes the result an oracle."""
    candidate = model.with_setting(setting, calibration_pixels, seed, calibration)
    started = time.perf_counter()
    scores = {"id": candidate.score_pixels(id_pixels, seed)}
    scores.update({name: candidate.score_pixels(pixels, seed) for name, pixels in ood_pixels.items()})
    seconds = time.perf_counter() - started
    metrics = {name: ood_metrics(scores["id"], scores[name]) for name in ood_pixels}
    count = len(id_pixels) + sum(len(pixels) for pixels in ood_pixels.values())
    return SettingScores(
        candidate,
        scores,
        {name: m.auroc for name, m in metrics.items()},
        {name: m.fpr95 for name, m in metrics.items()},
        count / max(seconds, 1e-9),
    )
