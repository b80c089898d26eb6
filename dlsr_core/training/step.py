"""One optimisation step of the x0-parameterised LFDN: the denoising loss, then the (scaled) update."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from dlsr_core.diffusion import LFDN, LFDNConfig, NoiseSchedule
from dlsr_core.training.config import TrainConfig


def build_model(
    model_config: LFDNConfig, train_config: TrainConfig, device: torch.device
) -> tuple[LFDN, LFDN, torch.optim.Optimizer, NoiseSchedule]:
    """A fresh LFDN on `device` (initialised from torch's current seed), its EMA copy, AdamW over it with the run's
    learning rate and weight decay, and the noise schedule."""
    model = LFDN(model_config).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    return model, ema_model, optimizer, NoiseSchedule(model_config).to(device)


def denoising_loss(
    model: torch.nn.Module, schedule: NoiseSchedule, z0: Tensor, timesteps: Tensor, noise: Tensor, use_amp: bool
) -> Tensor:
    """MSE between the model's prediction of z0 from z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise, and z0.

    z0, noise: (B, D); timesteps: (B,) in 1..T. fp16 autocast on CUDA when `use_amp`; the loss is float32.
    """
    device = z0.device
    z_t = schedule.q_sample(z0, timesteps.to(device), noise.to(device))
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        prediction = model(z_t, timesteps.to(device))
    return torch.nn.functional.mse_loss(prediction.float(), z0)


def optimiser_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Back-propagate `loss` and update the weights (through the gradient scaler, a pass-through without AMP)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
