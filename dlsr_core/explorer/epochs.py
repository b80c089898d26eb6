"""How training separates ID from OOD (the paper's Figure 3): scores under earlier checkpoints of the same run.

Every run keeps its first epoch (first.safetensors, which the LR score needs) and its last (last.safetensors). Runs
trained from the app's Train page also keep a few epochs in between, in `<run>/epochs/`, at roughly doubling
intervals (`SNAPSHOT_EPOCHS`), so a run of E epochs keeps about 2·log2(E) small files; `keep_snapshot` copies the
just-saved last.safetensors there. The shipped model has only its first and last epochs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes
from dlsr_core.checkpoint import LAST_NAME, CheckpointError, checksum_path, load_checkpoint
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

SNAPSHOT_DIR = "epochs"
_SNAPSHOT_NAME = re.compile(r"epoch_([0-9]{4,})\.safetensors")  # fullmatch: `$` would accept a final "\n"


def is_snapshot_epoch(epoch: int) -> bool:
    """Epochs kept in between: 2, 3, 4, 6, 8, 12, 16, 24, 32, … (powers of two and 1.5 times them)."""
    if epoch < 2:
        return False
    power = 1 << (epoch.bit_length() - 1)
    return epoch == power or epoch == power + power // 2


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / f"epoch_{epoch:04d}.safetensors"


def keep_snapshot(run_dir: str | Path, epoch: int) -> Path | None:
    """Copy the run's last.safetensors (just written for `epoch`) and its checksum into epochs/ when `epoch` is a
    snapshot epoch; returns the copy's path, else None. Atomic: a crash leaves no half-written snapshot."""
    if not is_snapshot_epoch(epoch):
        return None
    source = Path(run_dir) / LAST_NAME
    target = snapshot_path(run_dir, epoch)
    atomic_write_bytes(target, source.read_bytes())
    if checksum_path(source).is_file():
        text = checksum_path(source).read_text().replace(LAST_NAME, target.name)
        atomic_write_bytes(checksum_path(target), text.encode())
    return target


def clear_snapshots(run_dir: str | Path) -> None:
    """Remove the epochs/ folder of a run that is being trained again from scratch."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    if folder.is_dir():
        shutil.rmtree(folder)


@dataclass(frozen=True)
class EpochCheckpoint:
    """One saved state of a run: its epoch, where it is, and what to call it."""

    epoch: int
    path: Path
    label: str


def epoch_checkpoints(detector: Detector) -> list[EpochCheckpoint]:
    """The run's saved epochs, oldest first: the first epoch (when kept), any snapshots, and the final one."""
    final = detector.final
    found = {final.info.epoch: EpochCheckpoint(final.info.epoch, final.path, f"epoch {final.info.epoch} (final)")}
    if detector.early is not None:
        early = detector.early
        found.setdefault(early.info.epoch, EpochCheckpoint(early.info.epoch, early.path, f"epoch {early.info.epoch}"))
    for epoch, path in snapshot_files(final.path.parent):
        if epoch < final.info.epoch:
            found.setdefault(epoch, EpochCheckpoint(epoch, path, f"epoch {epoch}"))
    return [found[epoch] for epoch in sorted(found)]


def snapshot_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, file) of the snapshots a run kept in its epochs/ folder, oldest first (none for most runs)."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _SNAPSHOT_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def detector_at(detector: Detector, checkpoint: EpochCheckpoint) -> Detector:
    """A detector that scores with the model saved at `checkpoint` (the loaded ones are reused, not re-read)."""
    for loaded in (detector.final, detector.early):
        if loaded is not None and loaded.path == checkpoint.path:
            return Detector(loaded)
    loaded = load_checkpoint(checkpoint.path, detector.device)
    if loaded.info.config != detector.info.config or loaded.info.stage_dims != detector.stage_dims:
        raise CheckpointError(f"{checkpoint.path} belongs to a different model than {detector.final.path}")
    return Detector(loaded)


def epoch_scores(
    detector: Detector,
    features: dict[str, Tensor],
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    draws: int = DEFAULT_DRAWS,
    rows: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """`score` ("mse" or "mfsim") of each set (features (N, D)) under one checkpoint's model: set -> (N,) or the
    chosen `rows`. LR is not defined for a single checkpoint."""
    if score not in ("mse", "mfsim"):
        raise ValueError(f"epoch evolution shows MSE or MFsim, not {score!r} (LR compares two checkpoints)")
    out = {}
    for name, matrix in features.items():
        chosen = matrix if rows is None else matrix[torch.as_tensor(rows[name])]
        with torch.inference_mode():
            out[name] = detector.score_features(chosen, timestep, steps, 1.0, seed, with_lr=False, draws=draws).get(
                score
            )
    return out


@dataclass(frozen=True)
class EpochSummary:
    """What one checkpoint does to the demo sets: its epoch, median ID and OOD scores, and their AUROC."""

    epoch: int
    id_median: float
    ood_median: float
    auroc: float


def _moved(before: float, after: float, floor: float) -> tuple[str, float]:
    """('fell' | 'rose' | 'stayed about the same', after's distance from `floor` as a share of before's)."""
    share = (after - floor) / (before - floor) if before != floor else float("nan")
    if abs(after - before) <= 0.01 * abs(before - floor):
        return "stayed about the same", share
    return ("fell" if after < before else "rose"), share


def training_effect(score_label: str, before: EpochSummary, after: EpochSummary) -> str:
    """One sentence reading Figure 3 from its numbers: how ID and OOD scores moved between two epochs, and whether
    that separated them. Distances are measured from a perfect reconstruction (MFsim -1, MSE 0)."""
    floor = -1.0 if score_label == "MFsim" else 0.0
    id_verb, id_share = _moved(before.id_median, after.id_median, floor)
    ood_verb, ood_share = _moved(before.ood_median, after.ood_median, floor)
    text = (
        f"From epoch {before.epoch} to epoch {after.epoch}, ID scores {id_verb} (median {before.id_median:.4g} → "
        f"{after.id_median:.4g}) and OOD scores {ood_verb} (median {before.ood_median:.4g} → {after.ood_median:.4g})."
    )
    if id_verb == ood_verb == "fell":
        further = "further" if id_share < ood_share else "less far"
        text += (
            f" Training rebuilds both better, ID scores {further}: to {id_share:.0%} of their epoch-{before.epoch} "
            f"distance from a perfect reconstruction ({score_label} = {floor:g}), OOD scores to {ood_share:.0%}."
        )
    gap = "grew" if after.auroc > before.auroc else "shrank" if after.auroc < before.auroc else "did not change"
    return text + f" The separation {gap}: AUROC {100 * before.auroc:.1f} % → {100 * after.auroc:.1f} %."
