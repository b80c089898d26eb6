"""Training of the pixel DDPM until its held-out loss stops falling, resumable after a kill.

The held-out loss is the DDPM training loss (mean squared error of the predicted noise) of the EMA weights on a
fixed *probe*: fixed held-out images, one fixed timestep per image (evenly spread over 0..T-1) and fixed noise, so
two evaluations differ only by the weights and the curve is comparable across evaluations and across resumes.

Stopping rule (`PixelTrainConfig`): every `eval_every` steps the probe loss is measured; training stops when the
best loss has not been improved by at least `min_relative_improvement` (relative) in the last `patience`
evaluations, or when the accumulated wall-clock time reaches `max_seconds`, or after `max_steps`. The EMA weights
with the lowest probe loss are the ones kept.

Everything needed to continue (weights, EMA, best EMA, AdamW moments, the sampling generator's state, the curve)
is written atomically to one safetensors file every evaluation; nothing is unpickled when it is read back.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes, sha256_hex
from dlsr_core.baselines.pixel_ddpm import (
    PixelDDPM,
    PixelDDPMConfig,
    PixelRecord,
    ReconstructionSetting,
    build_unet,
    training_scheduler,
    validate_setting,
)
from dlsr_core.baselines.store import rounded_to_float16
from dlsr_core.diffusion import ConfigError
from dlsr_core.validation import TrainingData

RESUME_FORMAT = "dlsr-pixel-ddpm-resume"


@dataclass(frozen=True)
class PixelTrainConfig:
    """Optimisation and stopping rule of the pixel DDPM (see the module docstring for the rule)."""

    batch_size: int = 64
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    seed: int = 0
    max_steps: int = 1_000_000
    eval_every: int = 500
    patience: int = 4
    min_relative_improvement: float = 0.002


@dataclass(frozen=True)
class HeldOutProbe:
    """Fixed held-out pixels (N, C, S, S), one timestep (N,) and one noise tensor (N, C, S, S) per image."""

    pixels: Tensor
    timesteps: Tensor
    noise: Tensor


def make_probe(pixels: Tensor, num_train_timesteps: int, seed: int = 0) -> HeldOutProbe:
    """A probe of held-out pixels (N, C, S, S): timesteps evenly spread over 0..T-1 (in a seeded order) and seeded
    noise, both fixed by `seed` alone."""
    generator = torch.Generator().manual_seed(seed + 7_919)
    count = len(pixels)
    spread = ((torch.arange(count, dtype=torch.float64) + 0.5) * num_train_timesteps / count).long()
    timesteps = spread[torch.randperm(count, generator=generator)]
    noise = torch.randn(pixels.shape, generator=generator)
    return HeldOutProbe(pixels.float(), timesteps, noise)


@torch.inference_mode()
def heldout_loss(unet: torch.nn.Module, config: PixelDDPMConfig, probe: HeldOutProbe, batch_size: int = 250) -> float:
    """Mean squared error of the predicted noise over the probe: the training loss on fixed held-out draws."""
    ddpm = training_scheduler(config)
    was_training = unet.training
    unet.eval()
    total = 0.0
    for start in range(0, len(probe.pixels), batch_size):
        rows = slice(start, start + batch_size)
        timesteps = probe.timesteps[rows]
        noised = ddpm.add_noise(probe.pixels[rows], probe.noise[rows], timesteps)
        predicted = unet(noised.contiguous(memory_format=torch.channels_last), timesteps).sample
        total += (predicted - probe.noise[rows]).pow(2).sum().item()
    unet.train(was_training)
    return total / probe.noise.numel()


def plateau_reached(losses: list[float], patience: int, min_relative_improvement: float) -> bool:
    """True when none of the last `patience` losses beat the best loss before them by `min_relative_improvement`."""
    if len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) > best_before * (1.0 - min_relative_improvement)


def recent_slope(curve: list[dict], points: int = 4) -> float:
    """Least-squares slope of the last `points` probe losses, in loss per 1,000 steps (nan with < 2 points)."""
    recent = curve[-points:]
    if len(recent) < 2:
        return float("nan")
    steps = torch.tensor([point["step"] for point in recent], dtype=torch.float64) / 1000
    losses = torch.tensor([point["heldout_loss"] for point in recent], dtype=torch.float64)
    centred = steps - steps.mean()
    return float((centred * (losses - losses.mean())).sum() / centred.pow(2).sum())


@dataclass
class TrainingState:
    """Everything a resumed run continues from."""

    unet: torch.nn.Module
    ema: torch.nn.Module
    best: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)
    stopped: str | None = None
    running_loss: float | None = None  # exponential moving average of the training loss

    def best_point(self) -> dict | None:
        return min(self.curve, key=lambda point: point["heldout_loss"]) if self.curve else None


def new_state(config: PixelDDPMConfig, train_config: PixelTrainConfig) -> TrainingState:
    """Fresh weights (seeded), their EMA copies and AdamW."""
    torch.manual_seed(train_config.seed)
    # channels_last runs the convolutions about twice as fast on the project CPU (oneDNN); results are unchanged.
    unet = build_unet(config).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=train_config.learning_rate)
    generator = torch.Generator().manual_seed(train_config.seed)
    return TrainingState(unet, ema, copy.deepcopy(ema), optimizer, generator)


def _resume_identity(config: PixelDDPMConfig, train_config: PixelTrainConfig, data_digest: str) -> dict:
    """What must not change on resume; the step limit and the time budget may (to extend a run)."""
    train = {name: value for name, value in asdict(train_config).items() if name != "max_steps"}
    return json.loads(json.dumps({"model": asdict(config), "train": train, "data": data_digest}))  # as stored


def _with_defaults(stored: object) -> object:
    """A stored identity completed with the defaults of fields added since it was written (they cannot differ)."""
    if not isinstance(stored, dict) or not all(isinstance(stored.get(k), dict) for k in ("model", "train")):
        return stored
    model = {**json.loads(json.dumps(asdict(PixelDDPMConfig()))), **stored["model"]}
    defaults = {k: v for k, v in asdict(PixelTrainConfig()).items() if k != "max_steps"}
    return {**stored, "model": model, "train": {**defaults, **stored["train"]}}


def _limit_reached(state: TrainingState, train_config: PixelTrainConfig, max_seconds: float | None) -> str | None:
    if max_seconds is not None and state.seconds >= max_seconds:
        return "budget"
    if state.step >= train_config.max_steps:
        return "max_steps"
    return None


def save_state(path: Path, state: TrainingState, identity: dict) -> None:
    """Write the training state atomically (safetensors tensors + JSON metadata)."""
    tensors = {}
    for prefix, module in (("unet.", state.unet), ("ema.", state.ema), ("best.", state.best)):
        tensors.update({prefix + name: value for name, value in module.state_dict().items()})
    optimizer = state.optimizer.state_dict()
    for index, moments in optimizer["state"].items():
        tensors.update({f"optim.{index}.{name}": torch.as_tensor(value) for name, value in moments.items()})
    tensors["rng.generator"] = state.generator.get_state()
    progress = {
        "step": state.step,
        "seconds": state.seconds,
        "curve": state.curve,
        "stopped": state.stopped,
        "running_loss": state.running_loss,
    }
    metadata = {
        "format": RESUME_FORMAT,
        "identity": json.dumps(identity),
        "progress": json.dumps(progress),
        "param_groups": json.dumps(optimizer["param_groups"]),
    }
    stored = {name: value.detach().contiguous().clone() for name, value in tensors.items()}
    atomic_write_bytes(path, safetensors.torch.save(stored, metadata=metadata))


def load_state(path: Path, state: TrainingState, identity: dict) -> TrainingState:
    """Continue from `path` into a fresh `state`; ConfigError when it was written for other settings or data."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        stored_identity = json.loads(metadata.get("identity", "null"))
        progress = json.loads(metadata["progress"])
        param_groups = json.loads(metadata["param_groups"])
    except Exception as error:  # any damage means: do not continue from it
        raise ConfigError(f"{path} cannot be resumed from ({error}); delete it or pass --restart") from error
    if metadata.get("format") != RESUME_FORMAT or _with_defaults(stored_identity) != identity:
        raise ConfigError(
            f"{path} belongs to a run with other settings or training data; delete it or pass --restart to start over"
        )
    for prefix, module in (("unet.", state.unet), ("ema.", state.ema), ("best.", state.best)):
        module.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    moments: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            moments.setdefault(int(index), {})[key] = value
    state.optimizer.load_state_dict({"state": moments, "param_groups": param_groups})
    state.generator.set_state(tensors["rng.generator"])
    state.step, state.seconds = int(progress["step"]), float(progress["seconds"])
    state.curve, state.stopped = list(progress["curve"]), progress["stopped"]
    state.running_loss = progress.get("running_loss")
    return state


def pixels_digest(pixels: Tensor) -> str:
    """SHA-256 of float32 pixels (N, C, S, S): a resumed run must see the same training images."""
    return sha256_hex(pixels.detach().float().contiguous().numpy().tobytes())


def _train_step(state: TrainingState, pixels: Tensor, ddpm, config: PixelDDPMConfig, train: PixelTrainConfig) -> float:
    """One AdamW step on a batch drawn with the state's generator; updates the EMA; returns the batch loss."""
    step = state.step + 1
    for group in state.optimizer.param_groups:
        group["lr"] = train.learning_rate * min(1.0, step / max(train.warmup_steps, 1))
    rows = torch.randint(0, len(pixels), (train.batch_size,), generator=state.generator)
    clean = pixels[rows].contiguous(memory_format=torch.channels_last)
    noise = torch.randn(clean.shape, generator=state.generator)
    timesteps = torch.randint(0, config.num_train_timesteps, (len(clean),), generator=state.generator)
    loss = torch.nn.functional.mse_loss(state.unet(ddpm.add_noise(clean, noise, timesteps), timesteps).sample, noise)
    if not torch.isfinite(loss):
        raise ConfigError(f"pixel DDPM loss became {loss.item()} at step {step}; lower the learning rate")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.unet.parameters(), 1.0)
    state.optimizer.step()
    with torch.no_grad():
        decay = min(train.ema_decay, (1 + step) / (10 + step))
        for ema_param, param in zip(state.ema.parameters(), state.unet.parameters(), strict=True):
            ema_param.lerp_(param, 1.0 - decay)
    state.step = step
    return loss.item()


def _evaluate(
    state: TrainingState, config: PixelDDPMConfig, probe: HeldOutProbe, epochs: float, running: float
) -> dict:
    """Measure the probe loss of the EMA weights, keep them if they are the best so far, append to the curve."""
    loss = heldout_loss(state.ema, config, probe)
    best = state.best_point()
    if best is None or loss < best["heldout_loss"]:
        state.best.load_state_dict(state.ema.state_dict())
    point = {
        "step": state.step,
        "epochs": epochs,
        "heldout_loss": loss,
        "train_loss_smoothed": running,
        "seconds": state.seconds,
    }
    state.curve.append(point)
    return point


def run_training(
    train_pixels: Tensor,
    probe: HeldOutProbe,
    config: PixelDDPMConfig,
    train_config: PixelTrainConfig,
    resume_path: Path | None = None,
    max_seconds: float | None = None,
    on_eval: Callable[[TrainingState], None] | None = None,
) -> TrainingState:
    """Train on pixels (N, C, S, S) until the stopping rule holds; continue from `resume_path` when it exists and
    save there at every evaluation. Returns the final state (its `best` module holds the kept EMA weights)."""
    expected = (config.channels, config.image_size, config.image_size)
    if train_pixels.ndim != 4 or tuple(train_pixels.shape[1:]) != expected:
        raise ConfigError(f"training pixels must be (N, {', '.join(map(str, expected))}), got {train_pixels.shape}")
    identity = _resume_identity(config, train_config, pixels_digest(train_pixels))
    state = new_state(config, train_config)
    if resume_path is not None and resume_path.is_file():
        state = load_state(resume_path, state, identity)
    if state.stopped in ("budget", "max_steps"):  # a larger budget or step limit continues a run stopped by one
        state.stopped = _limit_reached(state, train_config, max_seconds)
    ddpm = training_scheduler(config)
    state.unet.train()
    while state.stopped is None:
        started = time.perf_counter()
        for _ in range(train_config.eval_every):
            loss = _train_step(state, train_pixels, ddpm, config, train_config)
            running = state.running_loss
            state.running_loss = loss if running is None else 0.98 * running + 0.02 * loss
        epochs = state.step * train_config.batch_size / len(train_pixels)
        point = _evaluate(state, config, probe, epochs, state.running_loss)
        state.seconds += time.perf_counter() - started  # the budget counts evaluations too
        point["seconds"] = state.seconds
        losses = [entry["heldout_loss"] for entry in state.curve]
        if plateau_reached(losses, train_config.patience, train_config.min_relative_improvement):
            state.stopped = "plateau"
        else:
            state.stopped = _limit_reached(state, train_config, max_seconds)
        if resume_path is not None:
            save_state(resume_path, state, identity)
        if on_eval is not None:
            on_eval(state)
    return state


def curve_summary(state: TrainingState, train_config: PixelTrainConfig, train_images: int) -> dict:
    """The training record stored with the model: how far it got, why it stopped, the last slope."""
    best = state.best_point() or {}
    return {
        "train": asdict(train_config),
        "train_images": train_images,
        "steps_done": state.step,
        "epochs": state.step * train_config.batch_size / train_images,
        "train_seconds": state.seconds,
        "stopped": state.stopped,
        "stopping_rule": (
            f"probe loss every {train_config.eval_every} steps; stop when the best is not improved by "
            f"{100 * train_config.min_relative_improvement:g}% within {train_config.patience} evaluations"
        ),
        "best_step": best.get("step"),
        "best_heldout_loss": best.get("heldout_loss"),
        "last_heldout_loss": state.curve[-1]["heldout_loss"] if state.curve else None,
        "last_slope_per_1000_steps": None if math.isnan(slope := recent_slope(state.curve)) else slope,
        "parameters": sum(p.numel() for p in state.best.parameters()),
    }


def finished_model(
    state: TrainingState,
    config: PixelDDPMConfig,
    setting: ReconstructionSetting,
    calibration_pixels: Tensor,
    info: PixelRecord,
    seed: int = 0,
) -> PixelDDPM:
    """The kept (best) EMA weights, rounded to the float16 precision they are stored in, with `setting`'s per-level
    statistics measured on calibration pixels (so recalibrating the saved file reproduces them)."""
    validate_setting(setting, config)
    unet = rounded_to_float16(copy.deepcopy(state.best))
    return PixelDDPM.calibrated(unet, config, setting, calibration_pixels, info, seed)


@dataclass(frozen=True)
class PixelData:
    """The images of one pixel DDPM: training pixels (N, C, S, S), the probe's held-out pixels and the pixels its
    scores are normalised on (both held out of training), and the record of which images each group is."""

    train: Tensor
    probe: Tensor
    calibration: Tensor
    training_set: TrainingData
    probe_set: TrainingData
    calibration_set: TrainingData


def _report(run_dir: Path, log: Callable[[str], None]) -> Callable[[TrainingState], None]:
    def report(state: TrainingState) -> None:
        point = state.curve[-1]
        log(
            f"step {point['step']}  epochs {point['epochs']:.2f}  held-out loss {point['heldout_loss']:.5f}  "
            f"train loss {point['train_loss_smoothed']:.5f}  {point['seconds'] / 60:.1f} min"
            + (f"  stopped: {state.stopped}" if state.stopped else "")
        )
        atomic_write_bytes(run_dir / "curve.json", json.dumps(state.curve, indent=1).encode())

    return report


def train_pixel_baseline(
    data: PixelData,
    out: Path,
    run_dir: Path,
    config: PixelDDPMConfig | None = None,
    train_config: PixelTrainConfig | None = None,
    setting: ReconstructionSetting | None = None,
    max_seconds: float | None = None,
    restart: bool = False,
    machine: str | None = None,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> PixelDDPM:
    """Train (or continue, from `run_dir`) a pixel DDPM on `data.train` until its probe loss stops falling or the
    time budget ends, normalise `setting` (default: the shipped one) on `data.calibration`, and write to `out`:
    pixel_ddpm.safetensors, pixel_ddpm_curve.json / .png (the probe-loss curve) and pixel_ddpm_samples.png (64
    generated images). `config` defaults to the shipped UNet for the images' channels and size."""
    from dlsr_core.baselines import figures
    from dlsr_core.baselines.pixel_ddpm import sample_images

    config = config or PixelDDPMConfig(image_size=data.train.shape[-1], channels=data.train.shape[1])
    train_config = train_config or PixelTrainConfig()
    resume = run_dir / "resume.safetensors"
    if restart:
        resume.unlink(missing_ok=True)
    probe = make_probe(data.probe, config.num_train_timesteps, train_config.seed)
    report = _report(run_dir, log)
    state = run_training(data.train, probe, config, train_config, resume, max_seconds, report)
    info = PixelRecord(
        **curve_summary(state, train_config, len(data.train)),
        training_set=data.training_set,
        probe=data.probe_set,
        calibration=data.calibration_set,
        machine=machine,
        max_minutes=None if max_seconds is None else max_seconds / 60,
    )
    model = finished_model(state, config, setting or ReconstructionSetting(), data.calibration, info)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "pixel_ddpm_curve.json", json.dumps(state.curve, indent=1).encode())
    figures.loss_curve_png(out / "pixel_ddpm_curve.png", state.curve)
    figures.image_grid_png(out / "pixel_ddpm_samples.png", sample_images(model.unet, config, 64))
    model.save(out / "pixel_ddpm.safetensors")
    return model
