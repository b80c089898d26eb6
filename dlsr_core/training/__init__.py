"""Training an LFDN on cached feature vectors, on one device or with DDP under `torchrun`.

x0-parameterization: the model sees z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps with t ~ U{1..T} and is trained
with the mean squared error to z0. Checkpoints hold the EMA weights; `resume.pt` holds everything needed to continue.

Faults: a resume file that cannot be trusted (truncated, empty, wrong keys, pickled code) is refused with
CheckpointError before anything is written. Divergence stops training with TrainingDivergedError and keeps the last
good checkpoint: the loss is NaN/Inf, or the mean loss of the last DIVERGENCE_WINDOW steps exceeds DIVERGENCE_FACTOR
times the loss of an untrained model (which predicts z0 = 0, the zero-initialised output layer's answer, so that loss
is mean(z0^2) of the training features and is known before the first step, also when a run is resumed).

The features may be a memory-mapped tensor (cache.cached_features(..., memory_map=True)): statistics are taken in
chunks whose pages are released, and batches are read from the file (mapped.gather_rows), so a set larger than RAM
trains with bounded resident memory.

Layout (a loop that reads top to bottom over named steps): ``loop`` holds ``train()``; ``batches`` the feature
statistics and each epoch's batches, ``step`` the loss and optimiser update, ``ema`` the averaged weights, ``guard``
the divergence rule, ``checkpointing`` what a finished epoch saves, ``resume`` the resume file, ``locking`` the lock
that keeps a second run out of a run folder, ``distributed`` the DDP helpers, ``config`` the settings and reports.
"""

from dlsr_core.training.batches import feature_statistics, steps_per_rank_epoch
from dlsr_core.training.config import EpochReport, Provenance, TrainConfig, TrainResult
from dlsr_core.training.distributed import distributed_context, end_process_group
from dlsr_core.training.guard import DIVERGENCE_FACTOR, DIVERGENCE_WINDOW, TrainingDivergedError
from dlsr_core.training.locking import LOCK_NAME, RunInUseError, run_lock
from dlsr_core.training.loop import train
from dlsr_core.training.resume import RESUME_KEYS, RESUME_NAME, ResumeState, check_fixed_settings, read_resume_state

__all__ = [
    "DIVERGENCE_FACTOR",
    "DIVERGENCE_WINDOW",
    "LOCK_NAME",
    "RESUME_KEYS",
    "RESUME_NAME",
    "EpochReport",
    "Provenance",
    "ResumeState",
    "RunInUseError",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "check_fixed_settings",
    "distributed_context",
    "end_process_group",
    "feature_statistics",
    "read_resume_state",
    "run_lock",
    "steps_per_rank_epoch",
    "train",
]
