"""The latent feature diffusion network (LFDN), its noise schedule and DDIM reconstruction.

The model works on feature vectors z0 of shape (N, D) (D = sum of the backbone's stage channels). It is trained
to predict z0 from a noised z_t (x0-parameterization), which makes DDIM reconstruction from a small start
timestep a direct measure of how well the model "knows" a feature vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dlsr_core.noise import keyed_standard_normal, row_noise_keys


class ConfigError(ValueError):
    """A configuration value is out of its valid range."""


@dataclass(frozen=True)
class LFDNConfig:
    """Architecture and noise schedule of an LFDN. Paper setting: width 1440, depth 16, T = 100.

    input_activation: "none", or "silu" for a SiLU before the input projection (the authors' released code).
    time_embed_width: width E of the timestep MLP (sinusoidal(width) -> E -> E, then Linear(E -> width) per block);
    0 means the LFDN width. The released code uses E = 720 (the feature size) with width 1440.
    """

    feature_dim: int
    width: int = 1440
    depth: int = 16
    num_timesteps: int = 100
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    input_activation: str = "none"
    time_embed_width: int = 0


def validate_config(config: LFDNConfig) -> None:
    """Raise ConfigError when a field of `config` cannot describe a working model."""
    if config.feature_dim < 1 or config.width < 1 or config.depth < 1:
        raise ConfigError(f"feature_dim, width and depth must be positive, got {config}")
    if config.num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be >= 1, got {config.num_timesteps}")
    if not 0 < config.beta_start <= config.beta_end < 1:
        raise ConfigError(f"need 0 < beta_start <= beta_end < 1, got {config.beta_start}, {config.beta_end}")
    if config.input_activation not in ("none", "silu"):
        raise ConfigError(f"input_activation must be 'none' or 'silu', got {config.input_activation!r}")
    if config.time_embed_width < 0:
        raise ConfigError(f"time_embed_width must be >= 0 (0: the LFDN width), got {config.time_embed_width}")


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Latent-diffusion "linear" schedule: betas = linspace(sqrt(start), sqrt(end), T)^2, shape (T,), float64."""
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64) ** 2


def timestep_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps (N,) -> (N, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps.device) / max(half, 1))
    angles = timesteps.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


class ResidualBlock(nn.Module):
    """GroupNorm(1) -> SiLU -> Linear, add the timestep embedding, GroupNorm(1) -> SiLU -> Linear (zero-init)."""

    def __init__(self, width: int, time_width: int | None = None) -> None:
        super().__init__()
        self.norm_in = nn.GroupNorm(1, width)
        self.linear_in = nn.Linear(width, width)
        self.time_projection = nn.Linear(time_width or width, width)
        self.norm_out = nn.GroupNorm(1, width)
        self.linear_out = nn.Linear(width, width)
        # Zero-initialised output makes every block start as the identity, which keeps deep stacks trainable.
        nn.init.zeros_(self.linear_out.weight)
        nn.init.zeros_(self.linear_out.bias)

    def forward(self, hidden: Tensor, time_features: Tensor) -> Tensor:
        """hidden (N, W), time_features (N, E) (already SiLU-activated) -> (N, W)."""
        update = self.linear_in(nn.functional.silu(self.norm_in(hidden)))
        update = update + self.time_projection(time_features)
        update = self.linear_out(nn.functional.silu(self.norm_out(update)))
        return hidden + update


class LFDN(nn.Module):
    """MLP denoiser: predicts z0 (N, D) from z_t (N, D) and integer timesteps t (N,) in 1..T."""

    def __init__(self, config: LFDNConfig) -> None:
        super().__init__()
        validate_config(config)
        self.config = config
        width = config.width
        time_width = config.time_embed_width or width
        self.input_projection = nn.Linear(config.feature_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, time_width), nn.SiLU(), nn.Linear(time_width, time_width))
        self.blocks = nn.ModuleList(ResidualBlock(width, time_width) for _ in range(config.depth))
        self.norm_final = nn.GroupNorm(1, width)
        self.output_projection = nn.Linear(width, config.feature_dim)
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def forward(self, z_t: Tensor, timesteps: Tensor) -> Tensor:
        time_features = nn.functional.silu(self.time_mlp(timestep_embedding(timesteps, self.config.width)))
        if self.config.input_activation == "silu":
            z_t = nn.functional.silu(z_t)
        hidden = self.input_projection(z_t)
        for block in self.blocks:
            hidden = block(hidden, time_features)
        return self.output_projection(nn.functional.silu(self.norm_final(hidden)))


class NoiseSchedule(nn.Module):
    """Cumulative products of the schedule as buffers, indexed by t in 0..T (alpha_bar[0] = 1)."""

    alpha_bar: Tensor

    def __init__(self, config: LFDNConfig) -> None:
        super().__init__()
        betas = linear_betas(config.num_timesteps, config.beta_start, config.beta_end)
        alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, dim=0)])
        self.num_timesteps = config.num_timesteps
        # Not persistent: the schedule is rebuilt from the config, so checkpoints hold only learned weights.
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    def q_sample(self, z0: Tensor, timesteps: Tensor, noise: Tensor) -> Tensor:
        """z_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise; z0, noise (N, D), timesteps (N,)."""
        alpha_bar = self.alpha_bar[timesteps][:, None]
        return alpha_bar.sqrt() * z0 + (1.0 - alpha_bar).sqrt() * noise


def ddim_timesteps(start: int, steps: int) -> list[int]:
    """Decreasing timesteps from `start` to 0 visited by `steps` DDIM steps, e.g. (5, 5) -> [5, 4, 3, 2, 1, 0]."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    steps = min(steps, start)
    grid = torch.linspace(start, 0, steps + 1).round().long().tolist()
    return sorted(set(grid), reverse=True)


# LFDN rows are computed in chunks of at least this many rows (short chunks are padded): on CPU, BLAS picks other
# kernels for very short matrices, which changed a row's output in the last bits depending on the batch it came in.
MIN_CHUNK_ROWS = 64


def _denoise(denoiser: nn.Module, z: Tensor, timestep: int, batch_size: int) -> Tensor:
    """x0 predictions (N, D) for z (N, D) at one timestep, in chunks padded to at least MIN_CHUNK_ROWS rows."""
    outputs = []
    for chunk in z.split(max(batch_size, MIN_CHUNK_ROWS)):
        rows = chunk.shape[0]
        if rows < MIN_CHUNK_ROWS:
            chunk = torch.cat([chunk, chunk.new_zeros(MIN_CHUNK_ROWS - rows, chunk.shape[1])])
        timesteps = torch.full((chunk.shape[0],), timestep, device=z.device, dtype=torch.long)
        outputs.append(denoiser(chunk, timesteps)[:rows].float())
    return torch.cat(outputs)


def _first_streams(draw: int | np.ndarray, rows: int) -> np.ndarray:
    """The first noise stream of each row's draw, (rows,) uint64: draw * 2**20."""
    draws = np.asarray(draw).reshape(-1)
    if draws.size not in (1, rows):
        raise ConfigError(f"need one draw number or one per row ({rows}), got {draws.size}")
    if (draws < 0).any():
        raise ConfigError(f"draw must be >= 0, got {int(draws.min())}")
    return np.broadcast_to(draws.astype(np.uint64) << np.uint64(20), (rows,))


@torch.inference_mode()
def ddim_reconstruct(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    z0: Tensor,
    start: int,
    steps: int | None = None,
    eta: float = 1.0,
    seed: int = 0,
    batch_size: int = 4096,
    draw: int | np.ndarray = 0,
) -> Tensor:
    """Noise z0 (N, D) to timestep `start` and reconstruct it with DDIM; returns the reconstruction (N, D).

    `steps` defaults to `start` (one step per timestep). Each row's noise is a function of the row's values, `seed`
    and `draw` only (see dlsr_core.noise), so a vector gets the same reconstruction whatever else is in the batch,
    in which position, on which device; `draw` = 0, 1, ... gives independent noise for repeated draws (one for all
    rows, or (N,) per row: several draws of a vector then share one pass).
    """
    if not 1 <= start <= schedule.num_timesteps:
        raise ConfigError(f"start timestep must be in 1..{schedule.num_timesteps}, got {start}")
    if not math.isfinite(eta) or eta < 0:
        raise ConfigError(f"eta must be a finite number >= 0, got {eta}")
    first_streams = _first_streams(draw, len(z0))
    device = z0.device
    keys = row_noise_keys(z0, seed)
    noise_calls = 0

    def fresh_noise() -> Tensor:
        nonlocal noise_calls
        # Streams of one draw are consecutive; 2**20 calls per draw is far above any number of DDIM steps.
        noise = keyed_standard_normal(keys, first_streams + np.uint64(noise_calls), z0.shape[1])
        noise_calls += 1
        return noise.to(device)

    alpha_bar = schedule.alpha_bar.to(device)
    z0 = z0.float()
    z = alpha_bar[start].sqrt() * z0 + (1.0 - alpha_bar[start]).sqrt() * fresh_noise()
    path = ddim_timesteps(start, steps if steps is not None else start)
    for current, following in zip(path[:-1], path[1:], strict=True):
        predicted_z0 = _denoise(denoiser, z, current, batch_size)
        if following == 0:
            z = predicted_z0
            break
        a_t, a_s = alpha_bar[current], alpha_bar[following]
        predicted_noise = (z - a_t.sqrt() * predicted_z0) / (1.0 - a_t).sqrt()
        sigma = eta * ((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)).sqrt()
        direction = (1.0 - a_s - sigma**2).clamp(min=0.0).sqrt() * predicted_noise
        z = a_s.sqrt() * predicted_z0 + direction + sigma * fresh_noise()
    return z


@torch.inference_mode()
def official_reconstruct(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    z0: Tensor,
    start: int = 4,
    eta: float = 1.0,
    seed: int = 0,
    batch_size: int = 4096,
    draw: int | np.ndarray = 0,
) -> Tensor:
    """The authors' released DDIM variant: noise z0 (N, D) to `start` and return the state it ends in (N, D).

    In their 0-indexed levels (level k is our t = k + 1) it starts at level start - 1 and visits levels
    start - 1, ..., 1. At level k the network predicts x0 at level k (our t = k + 1) and the noise is derived from that
    prediction with that level's alpha; the DDIM update then re-derives x0 and steps with the alphas of one level lower:
    "current" alpha_bar[k] and "previous" alpha_bar[k - 1] in our indexing. At k = 1 both are their level 0, sigma is 0
    and the update returns its input unchanged, so that step is skipped here (it would only cost a network pass). The
    result is that noisy state, not the last x0 prediction. Their default (3 DDIM timesteps) is start = 4: two network
    passes. Unlike theirs, the noise is keyed by each row's values, `seed` and `draw` (dlsr_core.noise), so a vector
    gets the same reconstruction in any batch.
    """
    if not 1 <= start <= schedule.num_timesteps:
        raise ConfigError(f"start timestep must be in 1..{schedule.num_timesteps}, got {start}")
    if not math.isfinite(eta) or eta < 0:
        raise ConfigError(f"eta must be a finite number >= 0, got {eta}")
    first_stream = _first_streams(draw, len(z0))
    device = z0.device
    keys = row_noise_keys(z0, seed)
    alpha_bar = schedule.alpha_bar.to(device)
    z0 = z0.float()
    # The same noise streams as ddim_reconstruct: stream 0 starts, stream k + 1 is the k-th step's noise.
    noise = keyed_standard_normal(keys, first_stream, z0.shape[1]).to(device)
    z = alpha_bar[start].sqrt() * z0 + (1.0 - alpha_bar[start]).sqrt() * noise
    for number, level in enumerate(range(start - 1, 1, -1), start=1):
        predicted_z0 = _denoise(denoiser, z, level + 1, batch_size)
        a_model = alpha_bar[level + 1]
        predicted_noise = (z - a_model.sqrt() * predicted_z0) / (1.0 - a_model).sqrt()
        a_t, a_s = alpha_bar[level], alpha_bar[level - 1]
        shifted_z0 = (z - (1.0 - a_t).sqrt() * predicted_noise) / a_t.sqrt()
        sigma = eta * ((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)).sqrt()
        direction = (1.0 - a_s - sigma**2).clamp(min=0.0).sqrt() * predicted_noise
        step_noise = keyed_standard_normal(keys, first_stream + np.uint64(number), z0.shape[1]).to(device)
        z = a_s.sqrt() * shifted_z0 + direction + sigma * step_noise
    return z


SAMPLERS = ("ddim", "official")
# The official sampler's first network step is at level start - 1 >= 2: from t = 1 or 2 it returns the noised input.
OFFICIAL_MIN_TIMESTEP = 3


def reconstruct(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    z0: Tensor,
    start: int,
    steps: int | None = None,
    eta: float = 1.0,
    seed: int = 0,
    batch_size: int = 4096,
    draw: int | np.ndarray = 0,
    sampler: str = "ddim",
) -> Tensor:
    """Reconstruction of z0 (N, D) from timestep `start` with `sampler`: "ddim" (ddim_reconstruct, the paper's
    equations) or "official" (official_reconstruct, the released code's variant; it takes no `steps`)."""
    if sampler == "ddim":
        return ddim_reconstruct(denoiser, schedule, z0, start, steps, eta, seed, batch_size, draw)
    if sampler == "official":
        return official_reconstruct(denoiser, schedule, z0, start, eta, seed, batch_size, draw)
    raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
