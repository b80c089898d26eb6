"""DLSR scores from feature vectors. Every score is oriented "higher = more OOD".

- MSE: summed squared error between z0 and its reconstruction.
- MFsim: minus the mean over stages of the cosine similarity between z0 and its reconstruction, stage by stage (the
  `official` preset leaves stage 1 out of the mean, as the released code does).
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

from dlsr_core.checkpoint import CheckpointError, CheckpointInfo, LoadedCheckpoint, load_checkpoint, resolve_run
from dlsr_core.diffusion import ConfigError, NoiseSchedule, reconstruct
from dlsr_core.presets import FeatureOptions, ScoringOptions, options_from, validate_options

SCORE_NAMES = ("mse", "mfsim", "lr")
# Noise draws averaged per score. On the shipped model (benchmarks/noise_draws.py) one draw already gives the AUROC of
# sixteen (MFsim 98.76 at K = 1, 4 and 16); more draws only steady verdicts near the threshold (MFsim flips between
# seeds there: 8.1 % at K = 1, 4.2 % at 4, 2.6 % at 16) at K times the cost. 1 keeps scoring fast; raise it for stable
# verdicts on borderline images.
DEFAULT_DRAWS = 1
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


def stage_squared_error(z0: Tensor, reconstruction: Tensor, stage_dims: tuple[int, ...]) -> Tensor:
    """Summed squared error per sample and stage: (N, D), (N, D) -> (N, S); its row sums are the MSE score."""
    pairs = zip(split_stages(z0, stage_dims), split_stages(reconstruction, stage_dims), strict=True)
    return torch.stack([(a - b).pow(2).sum(dim=1) for a, b in pairs], dim=1)


def mse_score(z0: Tensor, reconstruction: Tensor) -> Tensor:
    """Summed squared error per sample: (N, D), (N, D) -> (N,)."""
    return (z0 - reconstruction).pow(2).sum(dim=1)


def mfsim_from_stage_cosines(stage_cos: Tensor, stages: str = "all") -> Tensor:
    """MFsim from per-stage cosines (N, S) -> (N,): minus their mean over all stages, or over stages 2..S when
    `stages` is "without-first" (the released code's stage pairing leaves the first stage out)."""
    if stages not in ("all", "without-first"):
        raise ConfigError(f"mfsim stages must be 'all' or 'without-first', got {stages!r}")
    if stages == "without-first" and stage_cos.shape[1] < 2:
        raise ConfigError("MFsim without the first stage needs at least two stages")
    return -(stage_cos if stages == "all" else stage_cos[:, 1:]).mean(dim=1)


def mfsim_score(z0: Tensor, reconstruction: Tensor, stage_dims: tuple[int, ...], stages: str = "all") -> Tensor:
    """Minus the mean per-stage cosine similarity: (N, D), (N, D) -> (N,); identical inputs give -1."""
    return mfsim_from_stage_cosines(stage_cosine_similarity(z0, reconstruction, stage_dims), stages)


def recorded_scoring(info: CheckpointInfo) -> ScoringOptions:
    """The scoring options a checkpoint was trained for (its preset's sampler, MFsim stages and timestep)."""
    return options_from(info, ScoringOptions)


@dataclass(frozen=True)
class ScoreResult:
    """Scores of N feature vectors, each the mean over `draws` noise draws.

    mse, mfsim, lr (N,); stage_cos and stage_sq_error (N, S): per-stage cosine similarity and summed squared error
    between z0 and its reconstruction; stage_lr (N, S): LR per stage (early minus final squared error, rows sum to
    lr), None without an early checkpoint; reconstruction (N, D): the reconstruction of the first draw.
    """

    mse: np.ndarray
    mfsim: np.ndarray
    lr: np.ndarray | None
    stage_cos: np.ndarray
    reconstruction: Tensor
    stage_sq_error: np.ndarray | None = None
    draws: int = 1
    stage_lr: np.ndarray | None = None

    def get(self, name: str) -> np.ndarray:
        """The score array called `name` (one of SCORE_NAMES)."""
        if name not in SCORE_NAMES:
            raise KeyError(f"unknown score {name!r}; choose one of {', '.join(SCORE_NAMES)}")
        values = getattr(self, name)
        if values is None:
            raise CheckpointError("the LR score needs an early checkpoint (first.safetensors) beside the final one")
        return values


# Rows (vectors x draws) that one pass of batched draws may hold: small sets (an upload, a traced image) draw all
# their noise in one pass; the 2,000 ID reference images, one draw per pass.
DRAW_BATCH_ROWS = 4096


def draw_groups(draws: int, rows: int, budget: int = DRAW_BATCH_ROWS) -> list[list[int]]:
    """The draws 0 .. draws - 1 in consecutive groups of at most max(1, budget // rows) each."""
    size = max(1, budget // max(rows, 1))
    return [list(range(start, min(start + size, draws))) for start in range(0, draws, size)]


class Detector:
    """A trained DLSR detector: final (and, for LR, early) LFDN checkpoints plus how their features were made.

    `scoring` (sampler, MFsim stages, default timestep) defaults to what the checkpoint records for its preset.
    """

    def __init__(
        self, final: LoadedCheckpoint, early: LoadedCheckpoint | None = None, scoring: ScoringOptions | None = None
    ) -> None:
        if early is not None and early.info.epoch >= final.info.epoch:
            early = None  # a single saved epoch gives no learning signal for LR
        if early is not None and early.info.config.feature_dim != final.info.config.feature_dim:
            raise CheckpointError(f"{early.path} and {final.path} were trained on different feature sizes")
        self.final = final
        self.early = early
        self.scoring = scoring if scoring is not None else recorded_scoring(final.info)
        validate_options(self.scoring)
        self.schedule = NoiseSchedule(final.info.config).to(next(final.model.parameters()).device)

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, scoring: ScoringOptions | None = None
    ) -> Detector:
        """Load from a run directory or a checkpoint file (its sibling first.safetensors is the early one)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        final_path, early_path = resolve_run(path)
        final = load_checkpoint(final_path, device)
        early = load_checkpoint(early_path, device) if early_path else None
        return cls(final, early, scoring)

    def with_scoring(self, scoring: ScoringOptions) -> Detector:
        """The same models scored with other options (sampler, MFsim stages, default timestep)."""
        return Detector(self.final, self.early, scoring)

    @property
    def preset(self) -> str:
        """The preset the checkpoint was trained under."""
        return self.final.info.preset

    @property
    def feature_options(self) -> FeatureOptions:
        """How this model's features must be made (pooling, standardization, resize, normalization, padding)."""
        return options_from(self.final.info, FeatureOptions)

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
        self,
        z0: Tensor,
        t: int | None = None,
        steps: int | None = DEFAULT_STEPS,
        eta: float = 1.0,
        seed: int = 0,
        draw: int | np.ndarray = 0,
        early: bool = False,
    ) -> Tensor:
        """Reconstruction of z0 (N, D) from timestep t (None: the scoring default) with the scoring sampler -> (N, D).

        The "ddim" sampler takes `steps` DDIM steps (None: one per timestep); the "official" one ignores `steps`.
        `early` uses the early checkpoint's model.
        """
        self.check_features(z0)
        model = self.early.model if early else self.final.model
        t = self.scoring.timestep if t is None else t
        return reconstruct(
            model, self.schedule, z0.to(self.device), t, steps, eta, seed, draw=draw, sampler=self.scoring.sampler
        )

    def score_features(
        self,
        z0: Tensor,
        t: int | None = None,
        steps: int | None = DEFAULT_STEPS,
        eta: float = 1.0,
        seed: int = 0,
        with_lr: bool = True,
        draws: int = DEFAULT_DRAWS,
    ) -> ScoreResult:
        """All scores for features z0 (N, D), each averaged over `draws` noise draws (t None: the scoring default).

        A row's noise depends only on its values, `seed` and the draw (dlsr_core.noise), so a vector's score does not
        depend on the rest of the batch. The early model, when present, uses the same noise as the final one.
        """
        if draws < 1:
            raise ConfigError(f"draws must be >= 1, got {draws}")
        z0 = z0.to(self.device).float()
        with_lr = with_lr and self.early is not None
        sums: dict[str, Tensor] = {}
        first_reconstruction = None
        for group in draw_groups(draws, len(z0)):
            # The draws of a group share one pass (a few vectors drawn 32 times cost one batch, not 32); a row's
            # reconstruction does not depend on its batch, so the result is the same as drawing one at a time.
            repeated = z0 if len(group) == 1 else z0.repeat(len(group), 1)
            ids = group[0] if len(group) == 1 else np.repeat(np.asarray(group), len(z0))
            finals = self.reconstruct(repeated, t, steps, eta, seed, ids).split(len(z0))
            earlies = self.reconstruct(repeated, t, steps, eta, seed, ids, early=True).split(len(z0)) if with_lr else ()
            for position, reconstruction in enumerate(finals):
                parts = {
                    "stage_sq_error": stage_squared_error(z0, reconstruction, self.stage_dims),
                    "stage_cos": stage_cosine_similarity(z0, reconstruction, self.stage_dims),
                }
                if with_lr:
                    early = earlies[position]
                    parts["lr"] = mse_score(z0, early) - parts["stage_sq_error"].sum(dim=1)
                    parts["stage_lr"] = stage_squared_error(z0, early, self.stage_dims) - parts["stage_sq_error"]
                for name, value in parts.items():  # summed in draw order, as one draw at a time would
                    sums[name] = sums[name] + value if name in sums else value
                if first_reconstruction is None:
                    first_reconstruction = reconstruction
        means = {name: (value / draws).cpu() for name, value in sums.items()}
        return ScoreResult(
            mse=means["stage_sq_error"].sum(dim=1).numpy(),
            mfsim=mfsim_from_stage_cosines(means["stage_cos"], self.scoring.mfsim_stages).numpy(),
            lr=means["lr"].numpy() if with_lr else None,
            stage_cos=means["stage_cos"].numpy(),
            reconstruction=first_reconstruction.cpu(),
            stage_sq_error=means["stage_sq_error"].numpy(),
            draws=draws,
            stage_lr=means["stage_lr"].numpy() if with_lr else None,
        )
