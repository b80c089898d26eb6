"""The command line's entry point: the parser of all commands, the dispatch, and how errors become exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import torch

from dlsr_core.checkpoint import CheckpointError
from dlsr_core.cli import evaluate, extract, score, train
from dlsr_core.diffusion import ConfigError
from dlsr_core.metrics import MetricInputError

# In the order `--help` lists them.
COMMANDS = {"extract": extract, "train": train, "score": score, "evaluate": evaluate}


class _UsageError(Exception):
    """A bad command line; reported as one line instead of argparse's usage block."""


class _Terminated(Exception):
    """SIGTERM arrived; raised in the main thread so that the normal clean-up and message run."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m dlsr_core`: one subcommand per module of COMMANDS."""
    parser = _Parser(
        prog="python -m dlsr_core",
        description="DLSR: unsupervised OOD detection by diffusion-based layer-wise semantic reconstruction. "
        "Datasets are named like fashion_mnist:train, demo:letters, digits, torchvision:CIFAR10:test, folder:PATH.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from dlsr_core.backbones import WeightsUnavailableError
    from dlsr_core.baselines import NotFittedError
    from dlsr_core.data import DatasetError, ExperimentError, ImageLoadError
    from dlsr_core.ranks import RankFailedError, RankMismatchError
    from dlsr_core.training import RunInUseError

    return (
        RunInUseError,
        RankMismatchError,
        RankFailedError,
        CheckpointError,
        ExperimentError,
        ConfigError,
        MetricInputError,
        DatasetError,
        ImageLoadError,
        WeightsUnavailableError,
        NotFittedError,
        KeyError,
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    return text.splitlines()[0] if text else type(error).__name__


def _os_error_line(error: OSError) -> str:
    """An OSError as the user's problem: what failed, on which path ('No space left on device: /data/x.csv')."""
    what = error.strerror or _one_line(error)
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    return f"{what}: {where}" if where else what


class _StderrHandler(logging.Handler):
    """Log records as 'warning: …' / plain lines on the current sys.stderr (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        print(prefix + record.getMessage(), file=sys.stderr)


def _configure_logging() -> None:
    package_logger = logging.getLogger("dlsr_core")
    if not any(isinstance(handler, _StderrHandler) for handler in package_logger.handlers):
        package_logger.addHandler(_StderrHandler())
    package_logger.setLevel(logging.INFO)


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (see the module docstring)."""
    from dlsr_core.training import TrainingDivergedError, end_process_group

    try:
        args = build_parser().parse_args(argv)
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.skipped_rows = []
    _configure_logging()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    kept = ""
    if args.command == "train":
        again = "the same command without --restart" if args.restart else "the same command"
        kept = f"; {args.out} keeps any checkpoint it saved, and {again} continues from it"
    try:
        COMMANDS[args.command].run(args)
    except TrainingDivergedError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 3
    except _user_errors() as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError) as error:
        print(
            f"error: not enough memory ({_one_line(error)[:120]}); try a smaller --batch-size, --width or dataset",
            file=sys.stderr,
        )
        return 2
    except OSError as error:
        print(f"error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted{kept}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"error: terminated{kept}", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        end_process_group()
    return 0
