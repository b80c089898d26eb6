"""The divergence guard: stop with TrainingDivergedError when the loss is NaN/Inf or far above an untrained model's,
saying which checkpoint was kept."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import torch
from torch import Tensor

from dlsr_core.checkpoint import LAST_NAME, CheckpointError, read_checkpoint_info

# Divergence rule (see the module docstring): mean loss over this many steps above this many times the untrained loss.
DIVERGENCE_WINDOW = 20
DIVERGENCE_FACTOR = 100.0


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/Inf or far above an untrained model's; the last good checkpoint is left in place."""


def untrained_loss(feature_mean: Tensor, feature_std: Tensor, count: int) -> float:
    """The loss of a model that predicts z0 = 0: mean(z0^2) over all entries of the `count` training vectors.

    It is the mean over dimensions of (biased variance + mean^2), from the (D,) statistics, so it is known before the
    first step, also when a run is resumed.
    """
    return float((feature_std.double().pow(2) * (count - 1) / count + feature_mean.double().pow(2)).mean())


class DivergenceGuard:
    """Checks each step's loss (and each epoch's EMA weights) and raises TrainingDivergedError on divergence.

    The window is DIVERGENCE_WINDOW steps, at most one epoch's; the limit DIVERGENCE_FACTOR times `untrained`.
    """

    def __init__(self, untrained: float, steps_per_epoch: int, run_dir: Path, learning_rate: float) -> None:
        self.untrained = untrained
        self.limit = DIVERGENCE_FACTOR * max(untrained, 1e-8)
        self.window = min(DIVERGENCE_WINDOW, steps_per_epoch)
        self.run_dir = run_dir
        self.learning_rate = learning_rate
        self.recent: deque[float] = deque(maxlen=self.window)

    def start_epoch(self) -> None:
        """Forget the previous epoch's losses: the window never spans two epochs."""
        self.recent = deque(maxlen=self.window)

    def check_loss(self, loss: float, epoch: int, step: int) -> None:
        """Raise when `loss` is NaN/Inf or the mean of the last `window` losses is above the limit."""
        if not math.isfinite(loss):
            raise self._diverged(epoch, step, f"the loss became {loss}")
        self.recent.append(loss)
        if len(self.recent) == self.window and sum(self.recent) / self.window > self.limit:
            raise self._diverged(
                epoch,
                step,
                f"the mean loss of the last {self.window} step(s) is {sum(self.recent) / self.window:.3g}, more than "
                f"{DIVERGENCE_FACTOR:g}x the {self.untrained:.3g} of an untrained model",
            )

    def check_weights(self, ema_model: torch.nn.Module, epoch: int, step: int) -> None:
        """Raise when the averaged weights about to be saved hold NaN/Inf values."""
        if not all(torch.isfinite(p).all() for p in ema_model.parameters()):
            raise self._diverged(epoch, step, "the averaged (EMA) weights hold NaN/Inf values")

    def _diverged(self, epoch: int, step: int, what: str) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"training diverged at epoch {epoch}, step {step}: {what}. {_kept_checkpoint_message(self.run_dir)} "
            f"Lower --lr (it was {self.learning_rate:g}) or check the features for extreme values."
        )


def _kept_checkpoint_message(run_dir: Path) -> str:
    last = run_dir / LAST_NAME
    if not last.exists():
        return f"No checkpoint was written: {run_dir} holds no usable model."
    try:
        epoch = read_checkpoint_info(last).epoch
    except CheckpointError:
        return f"{last} was left as it was, but it cannot be loaded either."
    return f"The last good checkpoint (epoch {epoch}) is kept in {last}."
