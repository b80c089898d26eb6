"""DLSR scores from feature vectors. Every score is oriented "higher = more OOD".

- MSE: summed squared error between z0 and its reconstruction.
- MFsim: minus the mean over stages of the cosine similarity between z0 and its reconstruction, stage by stage.
- LR: MSE under the early (first-epoch) checkpoint minus MSE under the final one, i.e. how much training on ID data
  improved the reconstruction. Measured on the shipped Fashion-MNIST model, this gain is larger for OOD features
  than for ID features (the early model already reconstructs the typical ID feature well; later epochs mostly
  sharpen a general-purpose denoiser), so early - final is the orientation where higher = more OOD. The opposite
  sign gave AUROC 0.16 instead of 0.84 there (benchmarks/ablation_default_model.py). Treat LR as the weakest of the
  three scores; MFsim is the paper's recommended one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlsr_core.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, resolve_run
from dlsr_core.diffusion import NoiseSchedule, ddim_reconstruct

SCORE_NAMES = ("mse", "mfsim", "lr")
# One DDIM step from t straight to the x0 prediction. On the shipped model, 1 step and t steps gave the same AUROC
# (t=5: MFsim far 99.58 vs 99.61, near 97.54 vs 97.62) at a t-th of the cost; pass steps=None for one per timestep.
DEFAULT_STEPS = 1


def split_stages(features: Tensor, stage_dims: tuple[int, ...]) -> tuple[Tensor, ...]:
    """Split (N, D) into per-stage blocks (N, C_i); raises CheckpointError when sum(stage_dims) != D."""
    if sum(stage_dims) != features.shape[-1]:
        raise CheckpointError(f"stage sizes {stage_dims} sum to {sum(stage_dims)}, features have {features.shape[-1]}")
    return features.split(list(stage_dims), dim=-1)


def stage_cosine_similarity(z0: Tensor, reconstruction: Tensor, stage_dims: tuple[int, ...]) -> Tensor:
    """Cosine similarity per sample and stage: (N, D), (N, D) -> (N, S)."""
    pairs = zip(split_stages(z0, stage_dims), split_stages(reconstruction, stage_dims), strict=True)
    return torch.stack([torch.nn.functional.cosine_similarity(a, b, dim=1) for a, b in pairs], dim=1)


def mse_score(z0: Tensor, reconstruction: Tensor) -> Tensor:
    """Summed squared error per sample: (N, D), (N, D) -> (N,)."""
    return (z0 - reconstruction).pow(2).sum(dim=1)


def mfsim_score(z0: Tensor, reconstruction: Tensor, stage_dims: tuple[int, ...]) -> Tensor:
    """Minus the mean per-stage cosine similarity: (N, D), (N, D) -> (N,); identical inputs give -1."""
    return -stage_cosine_similarity(z0, reconstruction, stage_dims).mean(dim=1)


@dataclass(frozen=True)
class ScoreResult:
    """Scores (N,) for N feature vectors, per-stage cosine similarities (N, S) and the reconstruction (N, D)."""

    mse: np.ndarray
    mfsim: np.ndarray
    lr: np.ndarray | None
    stage_cos: np.ndarray
    reconstruction: Tensor

    def get(self, name: str) -> np.ndarray:
        """The score array called `name` (one of SCORE_NAMES)."""
        if name not in SCORE_NAMES:
            raise KeyError(f"unknown score {name!r}; choose one of {', '.join(SCORE_NAMES)}")
        values = getattr(self, name)
        if values is None:
            raise CheckpointError("the LR score needs an early checkpoint (first.safetensors) beside the final one")
        return values


class Detector:
    """A trained DLSR detector: final (and, for LR, early) LFDN checkpoints plus how their features were made."""

    def __init__(self, final: LoadedCheckpoint, early: LoadedCheckpoint | None = None) -> None:
        if early is not None and early.info.epoch >= final.info.epoch:
            early = None  # a single saved epoch gives no learning signal for LR
        if early is not None and early.info.config.feature_dim != final.info.config.feature_dim:
            raise CheckpointError(f"{early.path} and {final.path} were trained on different feature sizes")
        self.final = final
        self.early = early
        self.schedule = NoiseSchedule(final.info.config).to(next(final.model.parameters()).device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> Detector:
        """Load from a run directory or a checkpoint file (its sibling first.safetensors is the early one)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        final_path, early_path = resolve_run(path)
        final = load_checkpoint(final_path, device)
        early = load_checkpoint(early_path, device) if early_path else None
        return cls(final, early)

    @property
    def info(self):
        return self.final.info

    @property
    def backbone(self) -> str:
        return self.final.info.backbone

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return self.final.info.stage_dims

    @property
    def input_size(self) -> int:
        return self.final.info.input_size

    def backbone_weights(self) -> str:
        """The `weights` argument that rebuilds this model's backbone ("pretrained"/"random").

        A checkpoint made on features from a local weights file stores only that file's hash, which cannot be
        reopened: CheckpointError then says to extract the features with the file first.
        """
        weights = self.final.info.weights
        if weights.startswith("file:"):
            raise CheckpointError(
                f"the checkpoint's backbone used a local weights file ({weights[:20]}…); extract its features with "
                "`python -m dlsr_core extract --weights FILE` first"
            )
        return weights

    @property
    def has_early(self) -> bool:
        return self.early is not None

    @property
    def device(self) -> torch.device:
        return next(self.final.model.parameters()).device

    def check_features(self, features: Tensor, backbone: str | None = None) -> None:
        """Raise CheckpointError, naming both sides, when features (N, D) do not come from this model's backbone."""
        expected_dim = self.final.info.config.feature_dim
        if (backbone is not None and backbone != self.backbone) or features.shape[-1] != expected_dim:
            raise CheckpointError(
                f"the checkpoint {self.final.path.name} was trained on {self.backbone} features ({expected_dim}-d), "
                f"but the features given come from {backbone or 'an unknown backbone'} ({features.shape[-1]}-d). "
                f"Extract features with --backbone {self.backbone} or pick a checkpoint trained on {backbone}."
            )

    def reconstruct(
        self, z0: Tensor, t: int = 5, steps: int | None = DEFAULT_STEPS, eta: float = 1.0, seed: int = 0
    ) -> Tensor:
        """DDIM reconstruction of z0 (N, D) from timestep t in `steps` steps (None: one per timestep) -> (N, D)."""
        self.check_features(z0)
        return ddim_reconstruct(self.final.model, self.schedule, z0.to(self.device), t, steps, eta, seed)

    def score_features(
        self,
        z0: Tensor,
        t: int = 5,
        steps: int | None = DEFAULT_STEPS,
        eta: float = 1.0,
        seed: int = 0,
        with_lr: bool = True,
    ) -> ScoreResult:
        """All scores for features z0 (N, D). The early model, when present, uses the same noise (same seed)."""
        z0 = z0.to(self.device).float()
        reconstruction = self.reconstruct(z0, t, steps, eta, seed)
        mse = mse_score(z0, reconstruction)
        stage_cos = stage_cosine_similarity(z0, reconstruction, self.stage_dims)
        lr = None
        if with_lr and self.early is not None:
            early_reconstruction = ddim_reconstruct(self.early.model, self.schedule, z0, t, steps, eta, seed)
            lr = (mse_score(z0, early_reconstruction) - mse).cpu().numpy()
        return ScoreResult(
            mse=mse.cpu().numpy(),
            mfsim=(-stage_cos.mean(dim=1)).cpu().numpy(),
            lr=lr,
            stage_cos=stage_cos.cpu().numpy(),
            reconstruction=reconstruction.cpu(),
        )
