"""What a sane option value is: the limits, and `argparse` type functions that enforce them at parse time.

Each function takes the raw string and returns the parsed value or raises argparse.ArgumentTypeError with a message
that says what is allowed, so a bad value ends the CLI before any slow work starts (exit 2, one line). Output paths
are checked the same way: a directory where a file is expected, a file where a directory is expected, or a parent
that cannot be written is refused before a long evaluation or training, not after it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

# Backbone input sizes: below 16 px the deepest stage of every backbone here sees less than one pixel; above 1024 px
# one image needs gigabytes of activations (the paper uses 224, EfficientNet-B4's native size is 380).
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 1024
MAX_WIDTH = 8192  # LFDN width; the paper's is 1440
MAX_DEPTH = 256  # LFDN residual blocks; the paper's is 16
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_TIMESTEP = 100_000  # parse-time bound only; the checkpoint's own T is checked when it is loaded
MAX_DRAWS = 1000
MAX_KNN_K = 1_000_000
SEED_LIMIT = 2**63  # seeds are non-negative 64-bit integers (torch.Generator.manual_seed's range)
MAX_LEARNING_RATE = 1e3  # larger is refused outright; anything that diverges below it is caught while training

_INTEGER = re.compile(r"[+-]?[0-9]+")  # fullmatch: `$` would accept a final "\n"


def _integer(text: str, what: str) -> int:
    cleaned = text.strip().replace("_", "")
    if not _INTEGER.fullmatch(cleaned):
        raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}")
    return int(cleaned)


def int_in(low: int, high: int, what: str = "value") -> Callable[[str], int]:
    """A parser for whole numbers in low..high (inclusive)."""

    def parse(text: str) -> int:
        value = _integer(text, what)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be in {low}..{high}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


def float_in(
    low: float, high: float, what: str = "value", low_inclusive: bool = True, high_inclusive: bool = True
) -> Callable[[str], float]:
    """A parser for finite numbers between low and high (NaN and Inf are always refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        above = value >= low if low_inclusive else value > low
        below = value <= high if high_inclusive else value < high
        if not math.isfinite(value) or not (above and below):
            span = f"{'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
            raise argparse.ArgumentTypeError(f"{what} must be a finite number in {span}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def seed(text: str) -> int:
    """A noise/training seed: a whole number in [0, 2**63). '1e23' is refused rather than rounded."""
    value = _integer(text, "seed")
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seed must be in 0..2**63-1, got {value}")
    return value


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(os.sep)


def _writable_parent(path: Path, what: str) -> None:
    """Refuse `path` when the folder it would be created in is missing-and-uncreatable or not writable."""
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{what} {path}: no permission to write in {existing}")


def output_file(text: str) -> str:
    """A file the command will write: not an existing folder, in a folder that exists or can be created."""
    if not text.strip():
        raise argparse.ArgumentTypeError("output file name is empty")
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"output file {path} is a folder; give a file name inside it")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"output file {path} exists and is not writable")
    _writable_parent(path, "output file")
    return str(path)


def output_dir(text: str) -> str:
    """A folder the command will write into: not an existing file, creatable, writable."""
    if not text.strip():
        raise argparse.ArgumentTypeError("output folder name is empty")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"output folder {path} is a file; give a folder")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"output folder {path} is not writable")
    _writable_parent(path, "output folder")
    return str(path)


input_size = int_in(MIN_INPUT_SIZE, MAX_INPUT_SIZE, "input size")
width = int_in(1, MAX_WIDTH, "width")
depth = int_in(1, MAX_DEPTH, "depth")
epochs = int_in(1, MAX_EPOCHS, "epochs")
batch_size = int_in(1, MAX_BATCH, "batch size")
checkpoint_every = int_in(1, MAX_EPOCHS, "checkpoint interval")
timestep = int_in(1, MAX_TIMESTEP, "timestep")
steps = int_in(0, MAX_TIMESTEP, "steps")
draws = int_in(1, MAX_DRAWS, "draws")
knn_k = int_in(1, MAX_KNN_K, "k")
learning_rate = float_in(0.0, MAX_LEARNING_RATE, "learning rate", low_inclusive=False)
weight_decay = float_in(0.0, 1e3, "weight decay")
ema_decay = float_in(0.0, 1.0, "EMA decay", high_inclusive=False)
eta = float_in(0.0, 1.0, "eta")


def time_mlp_width(text: str) -> str:
    """The LFDN timestep-MLP width: 'width', 'features' or a whole number in 1..MAX_WIDTH (kept as text)."""
    if text in ("width", "features"):
        return text
    return str(int_in(1, MAX_WIDTH, "--time-mlp-width (width, features or a number)")(text))


std_eps = float_in(0.0, 1.0, "--std-eps", low_inclusive=False, high_inclusive=False)  # as presets.validate_options
