"""Feature extraction + LFDN training on a background thread for the Train page, with progress and Stop.

Messages from the core speak to command-line users ("pass --no-resume"); `gui_message` rewords them for the page.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from dlsr_core.data import Experiment
from dlsr_core.explorer.epochs import clear_snapshots, keep_snapshot
from dlsr_core.explorer.experiments import describe_set

# CLI advice in core messages -> what the Train page offers instead. Applied in order; the last rule marks any other
# `--option` as a command-line option, so a GUI user is never told to pass a flag the page does not have.
_GUI_WORDING: tuple[tuple[str, str], ...] = (
    (r"use another --out directory or pass --no-resume", "choose another run name, or tick **Start over**"),
    (r"another --out folder, or --restart", "another run name, or tick **Start over**"),
    (r"pass --restart to train", "tick **Start over** to train"),
    (r"start over with --restart", "tick **Start over**"),
    (r"(?:pass |use )?--(?:no-resume|restart)", "tick **Start over**"),
    (r"(?:use |choose )?(?:another |a different )--out(?: directory| folder)?", "choose another run name"),
    (r"[Ll]ower --lr\b", "Lower the **Learning rate**"),
    (r"[Pp]ass --download", "Tick **Allow download**"),
    (
        r"(?:pass --data-root pointing|point --data-root) at (a folder that [^.]*)",
        r"enter \1 in the **Data folder** field",
    ),
    (r"--backbone (\S+)", r"the **Backbone** \1"),
    (r"--dataset\b", "the **ID dataset**"),
    (r"--(lr|download|data-root|epochs|width|depth|batch-size|train-batch-size|input-size)\b", r"the **\1** setting"),
    (r"--([a-z][a-z-]*)", r"the command-line option --\1"),
)


def gui_message(text: str) -> str:
    """`text` with command-line advice reworded for the Train page's fields and buttons."""
    for pattern, replacement in _GUI_WORDING:
        text = re.sub(pattern, replacement, text)
    return text


def dataset_available(spec: str) -> bool:
    """Whether `spec` can be opened here without a download (the data are installed or generated locally)."""
    from dlsr_core.data import DatasetError, open_dataset

    try:
        open_dataset(spec)
    except (DatasetError, OSError, ValueError):
        return False
    return True


def poll_interval(job: TrainingJob | None, seconds: float = 1.0) -> float | None:
    """How often the Train page refreshes its progress: every `seconds` while `job` runs, never otherwise."""
    return seconds if job is not None and job.running else None


def default_training_set(experiment: Experiment) -> str:
    """The Train page's default: the loaded experiment's training set when it can be opened here, so that a new
    model is not trained on the images it is evaluated on; its ID evaluation set otherwise (the page warns)."""
    return experiment.training_set if dataset_available(experiment.training_set) else experiment.id_set.spec


def evaluation_sets(
    training_set: str, loaded: Experiment | None, id_text: str = "", ood: tuple[str, ...] | None = None
) -> Experiment:
    """The experiment a run trained on the Train page gets: the ID evaluation set typed (else the training set's
    test split, see dlsr_core.data.default_id_set) and the loaded experiment's OOD sets named in `ood` (default:
    all of them), minus any that is the training or the ID evaluation set."""
    from dlsr_core.data import NamedSet, default_id_set, default_name, parse_dataset

    id_spec = str(parse_dataset(id_text)) if id_text.strip() else default_id_set(training_set)[0]
    if loaded is not None and id_spec == loaded.id_set.spec:
        id_set, classes = loaded.id_set, loaded.class_names
    else:
        id_set, classes = NamedSet(id_spec, default_name(id_spec)), describe_set(id_spec).classes
    if loaded is None:
        return Experiment(training_set=training_set, id_set=id_set, class_names=classes)
    wanted = set(loaded.groups) if ood is None else set(ood)
    kept = tuple(s for s in loaded.ood_sets if s.spec in wanted and s.spec not in (training_set, id_spec))
    if id_set.name.casefold() in {s.name.casefold() for s in kept}:  # names must differ: mark the ID one
        id_set = NamedSet(id_set.spec, f"{id_set.name[:35]} (ID)")
    return Experiment(training_set=training_set, id_set=id_set, ood_sets=kept, class_names=classes)


def end_message(result, state: TrainState, epochs: int) -> str:
    """What the page says when `train` returned (result: training.TrainResult): how far it got, the loss the curve
    ends on, and where the checkpoints are — or that none was saved (a checkpoint is written at the end of an epoch,
    so a run stopped during its first epoch leaves no folder behind)."""
    phase = "stopped" if result.stopped_early else "finished"
    last_step = f"last step's loss {state.losses[-1]:.4f}" if state.losses else "no training step was taken"
    if not (Path(result.run_dir) / "last.safetensors").is_file():
        return (
            f"{phase} during epoch {max(state.epoch, 1)} of {epochs}, before its end, where the first checkpoint is "
            f"saved: nothing was saved ({last_step}). Let at least one epoch finish to get a usable model."
        )
    epoch_loss = (
        f"mean loss of the last whole epoch {result.last_loss:.4f}, " if result.last_loss == result.last_loss else ""
    )
    return (
        f"{phase} after {result.epochs_done}/{epochs} epochs ({epoch_loss}{last_step}); checkpoints in {result.run_dir}"
    )


@dataclass(frozen=True)
class TrainRequest:
    """What the Train page asks for."""

    dataset: str
    run_dir: Path
    backbone: str = "efficientnet_lite0"
    weights: str = "pretrained"
    input_size: int = 64
    width: int = 256
    depth: int = 4
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    cache_dir: str | None = None
    data_root: str | None = None
    download: bool = False
    resume: bool = True  # continue a run of the same name; False starts it over (its old checkpoints are replaced)
    keep_epochs: bool = True  # keep a few intermediate epochs in <run>/epochs/ for the epoch-evolution view
    experiment: Experiment | None = None  # written to <run>/experiment.json before training (train's own default)


@dataclass
class TrainState:
    """A snapshot of a running job, safe to read from the UI thread."""

    phase: str = "waiting"  # waiting | extracting | training | finished | stopped | failed
    extracted: int = 0
    to_extract: int = 0
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    losses: list[float] = field(default_factory=list)  # per step
    epoch_losses: list[float] = field(default_factory=list)
    checkpoints: int = 0
    message: str = ""


class _StopRequested(Exception):
    """Raised from the extraction progress callback to abandon extraction when the user presses Stop."""


class TrainingJob:
    """Feature extraction + LFDN training on a daemon thread; `stop()` ends it after saving the current state."""

    def __init__(self, request: TrainRequest) -> None:
        self.request = request
        self._state = TrainState(epochs=request.epochs)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dlsr-train-{request.run_dir.name}", daemon=True)
        self.started_at = 0.0

    def start(self) -> TrainingJob:
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def snapshot(self) -> TrainState:
        with self._lock:
            state = self._state
            return TrainState(
                **{**state.__dict__, "losses": list(state.losses), "epoch_losses": list(state.epoch_losses)}
            )

    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._state, key, value)

    def _extraction_progress(self, done: int, total: int) -> None:
        self._update(extracted=done, to_extract=total)
        if self._stop.is_set():
            raise _StopRequested

    def _write_experiment(self) -> None:
        """<run>/experiment.json, as `train` writes it: on a new run or a restart; a continued run keeps its own."""
        from dlsr_core.data import EXPERIMENT_NAME, save_experiment, user_data_dir

        request = self.request
        path = Path(request.run_dir) / EXPERIMENT_NAME
        if request.experiment is not None and (not request.resume or not path.is_file()):
            save_experiment(path, request.experiment, user_data_dir())

    def _run(self) -> None:
        from dlsr_core.training import RunInUseError, run_lock

        request = self.request
        try:
            with run_lock(request.run_dir, "the app's Train page"):  # before anything in the run folder is touched
                self._train_locked()
        except _StopRequested:
            self._update(phase="stopped", message="stopped during feature extraction; nothing was trained or cached")
        except RunInUseError as error:  # another run (the CLI, another browser tab) trains into this folder
            self._update(phase="failed", message=gui_message(str(error)))
        except Exception as error:  # shown in the page; the last saved checkpoint stays usable
            self._update(phase="failed", message=gui_message(f"{type(error).__name__}: {error}"))
            traceback.print_exc()

    def _train_locked(self) -> None:
        from dlsr_core.cache import cached_features
        from dlsr_core.diffusion import LFDNConfig
        from dlsr_core.training import Provenance, TrainConfig, train

        request = self.request
        if not request.resume:
            clear_snapshots(request.run_dir)
        self._update(phase="extracting", message=f"extracting features of {request.dataset}")
        features = cached_features(
            request.dataset,
            request.backbone,
            weights=request.weights,
            input_size=request.input_size,
            cache_dir=request.cache_dir,
            data_root=request.data_root,
            download=request.download,
            progress=self._extraction_progress,
        )
        if len(features) == 0:
            raise ValueError(f"{request.dataset} has no readable images ({features.skipped} skipped)")
        steps = -(-len(features) // request.batch_size)
        self._update(
            phase="training",
            steps_per_epoch=steps,
            message=f"training on {len(features)} feature vectors ({features.skipped} unreadable skipped)",
        )

        def on_step(epoch: int, step: int, loss: float) -> None:
            with self._lock:
                self._state.epoch, self._state.step = epoch, step
                self._state.losses.append(loss)

        def on_epoch(report) -> None:
            if report.checkpoint_saved and not self._state.checkpoints:
                self._write_experiment()  # with the first checkpoint: a failed run leaves no new file
            if report.checkpoint_saved and request.keep_epochs:
                keep_snapshot(request.run_dir, report.epoch)
            with self._lock:
                self._state.epoch_losses.append(report.loss)
                self._state.checkpoints += int(report.checkpoint_saved)

        result = train(
            features.features,
            request.run_dir,
            LFDNConfig(feature_dim=features.features.shape[1], width=request.width, depth=request.depth),
            TrainConfig(epochs=request.epochs, batch_size=request.batch_size, learning_rate=request.learning_rate),
            Provenance(request.backbone, request.weights, request.input_size, features.stage_dims, request.dataset),
            resume=request.resume,
            on_step=on_step,
            on_epoch=on_epoch,
            should_stop=self._stop.is_set,
        )
        phase = "stopped" if result.stopped_early else "finished"
        self._update(phase=phase, message=end_message(result, self.snapshot(), request.epochs))
