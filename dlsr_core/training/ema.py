"""The exponential moving average of the weights that checkpoints hold."""

from __future__ import annotations

import torch

from dlsr_core.diffusion import LFDN


def ema_update(ema_model: LFDN, model: LFDN, decay: float) -> None:
    """Move every EMA weight a fraction (1 - decay) of the way to the model's."""
    with torch.no_grad():
        for ema_param, param in zip(ema_model.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param, 1.0 - decay)


def ema_decay_at(decay: float, global_step: int) -> float:
    """The decay used after `global_step` steps: warmed up as (1 + step) / (10 + step), capped at `decay`.

    Warm-up keeps the early EMA (used by LR) from being dominated by the untrained initial weights.
    """
    return min(decay, (1 + global_step) / (10 + global_step))
