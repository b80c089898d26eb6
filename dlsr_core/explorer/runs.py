"""Which trained runs the app can open, and what the Home page says about the loaded one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dlsr_core.atomic import sha256_hex
from dlsr_core.checkpoint import DEFAULT_RUN_DIR, LAST_NAME, checksum_path
from dlsr_core.presets import describe_preset
from dlsr_core.scoring import SCORE_NAMES, Detector


def checkpoints_root() -> Path:
    """Folder whose sub-folders are selectable runs: $DLSR_CHECKPOINTS_DIR or the repository's checkpoints/."""
    return Path(os.environ.get("DLSR_CHECKPOINTS_DIR", DEFAULT_RUN_DIR.parent))


def default_run_dir() -> Path:
    """The run the app opens with: $DLSR_RUN_DIR or the shipped checkpoints/default."""
    return Path(os.environ.get("DLSR_RUN_DIR", DEFAULT_RUN_DIR))


def list_run_dirs(root: str | Path | None = None) -> list[Path]:
    """Selectable run directories: the default run first, then every sub-folder of `root` holding last.safetensors."""
    root = Path(root) if root is not None else checkpoints_root()
    runs: list[Path] = []
    default = default_run_dir()
    if (default / LAST_NAME).is_file():
        runs.append(default)
    if root.is_dir():
        for candidate in sorted(p for p in root.iterdir() if p.is_dir()):
            if (candidate / LAST_NAME).is_file() and candidate.resolve() not in {r.resolve() for r in runs}:
                runs.append(candidate)
    return runs


def run_fingerprint(run_dir: str | Path) -> str:
    """Changes whenever the run's final checkpoint is rewritten, so caches keyed by it follow retraining."""
    final = Path(run_dir) / LAST_NAME if Path(run_dir).is_dir() else Path(run_dir)
    try:
        stat = final.stat()
    except OSError:
        return f"{Path(run_dir).resolve()}|missing"
    return f"{Path(run_dir).resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


def model_id(detector: Detector) -> str:
    """`<run folder>@<first 12 hex digits of the final checkpoint's SHA-256>`: names a model by its content, so
    exports and cached maps made with one model are never mistaken for another's."""
    path = detector.final.path
    fields = checksum_path(path).read_text().split() if checksum_path(path).is_file() else []
    digest = fields[0] if fields else sha256_hex(path.read_bytes())
    return f"{path.parent.name}@{digest[:12]}"


@dataclass(frozen=True)
class ModelSummary:
    """What the Home page says about a loaded detector."""

    run_dir: str
    backbone: str
    weights: str
    input_size: int
    dataset: str
    epoch: int
    feature_dim: int
    width: int
    depth: int
    parameters: int
    megabytes: float
    has_early: bool
    stage_dims: tuple[int, ...]
    preset: str = "paper"  # its dlsr_core.presets preset, with any options changed from it


def summarize(detector: Detector, run_dir: str | Path) -> ModelSummary:
    """Backbone, training data, epochs and size of `detector`."""
    info = detector.info
    files = [detector.final.path] + ([detector.early.path] if detector.early is not None else [])
    return ModelSummary(
        run_dir=str(run_dir),
        backbone=info.backbone,
        weights=info.weights,
        input_size=info.input_size,
        dataset=info.dataset,
        epoch=info.epoch,
        feature_dim=info.config.feature_dim,
        width=info.config.width,
        depth=info.config.depth,
        parameters=sum(p.numel() for p in detector.final.model.parameters()),
        megabytes=sum(f.stat().st_size for f in files) / 1e6,
        has_early=detector.has_early,
        stage_dims=tuple(info.stage_dims),
        preset=describe_preset(detector.preset, detector.feature_options, detector.scoring),
    )


def available_scores(detector: Detector) -> list[str]:
    """DLSR score names this detector can compute (LR needs the early checkpoint)."""
    return [name for name in SCORE_NAMES if name != "lr" or detector.has_early]


def model_caption(detector: Detector, run_dir: Path) -> str:
    """One Markdown line naming the loaded model: run folder, backbone and input size, training set, epoch."""
    info = detector.info
    return (
        f"**Model:** `{run_dir.name}` · {info.backbone} @ {info.input_size}px · trained on {info.dataset} · "
        f"epoch {info.epoch}"
    )
