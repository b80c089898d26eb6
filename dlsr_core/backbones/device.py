"""Which torch device the backbone runs on: auto-selection and clear errors for devices this machine lacks."""

from __future__ import annotations

import torch

from dlsr_core.backbones.spec import DeviceUnavailableError


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """Pick a torch device: ``None``/``"auto"`` means cuda > mps > cpu; otherwise validate it."""
    if preferred is None or (isinstance(preferred, str) and preferred.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"Unknown device {preferred!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"Device {preferred!r} requested but this torch build/machine has no CUDA GPU "
                f"(torch {torch.__version__}). Use --device cpu or --device auto."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"Device {preferred!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailableError(
                f"Device {preferred!r} requested but Apple MPS is not available here. "
                "Use --device cpu or --device auto."
            )
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"Unsupported device {preferred!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return device
