"""One training run per run folder at a time: `train` (the CLI and the Train page) holds `<run>/train.lock`.

A second run on the same folder would resume the first one's unfinished state and the two would overwrite each
other's checkpoints, so it is refused (RunInUseError, naming the holder: process, host, start time). Readers
(`score`, `evaluate`, the app's pages) take no lock: every save is atomic (dlsr_core.checkpoint).

When is a lock stale? The lock is an exclusive `flock` on the file, which also records its holder; the operating system
drops a `flock` when its process ends in any way (SIGKILL and power loss of a local disk included), so:

- a lock recorded on this host is stale exactly when its `flock` can be taken: the next run takes it over at once
  and says whose it was;
- a lock recorded on another host (a shared network folder) is honoured while its holder keeps it fresh: a live
  holder touches the file every HEARTBEAT_SECONDS, and a lock untouched for STALE_SECONDS is taken over (its host
  crashed or lost the folder). Filesystems that share locks between hosts refuse it anyway while it is held;
- where locks cannot be taken at all, a record of this host is stale when its process is gone.

Under torchrun, rank 0 holds the one lock of the run and every rank refuses together (dlsr_core.ranks).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dlsr_core.atomic import _try_lock
from dlsr_core.ranks import one_line, raise_together, rank_and_size

LOCK_NAME = "train.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0
logger = logging.getLogger("dlsr_core.training")
_held_here: set[tuple[str, int]] = set()  # (run folder, thread) pairs holding a lock: a nested request is granted


class RunInUseError(RuntimeError):
    """Another live run is training into the same run folder."""


@contextmanager
def run_lock(run_dir: str | Path, purpose: str = "python -m dlsr_core train") -> Iterator[None]:
    """Hold the lock of `run_dir` for the block; raise RunInUseError when another live run holds it.

    `purpose` is recorded for the message another run would show. Re-entrant within one thread. Under torchrun only
    rank 0 takes the lock, and every rank raises together when it cannot (a collective: every rank must call this).
    """
    run_dir = Path(run_dir)
    key = (str(run_dir.resolve()), threading.get_ident())
    taken, error = None, None
    if rank_and_size()[0] == 0 and key not in _held_here:
        try:
            taken = _Lock.acquire(run_dir, purpose)
        except (RunInUseError, OSError) as caught:
            error = caught
    raise_together(error, one_line(error) if error is not None else "")
    if taken is None:
        yield
        return
    _held_here.add(key)
    try:
        yield
    finally:
        _held_here.discard(key)
        taken.release()


class _Lock:
    """A taken lock: the open, flock'ed file (with its record), and the thread that keeps it fresh."""

    def __init__(self, run_dir: Path, descriptor: int, created_dir: bool) -> None:
        self.run_dir, self.path, self.descriptor = run_dir, run_dir / LOCK_NAME, descriptor
        self.created_dir = created_dir
        self.stopped = threading.Event()
        self.heartbeat = threading.Thread(target=self._beat, name=f"dlsr-lock-{run_dir.name}", daemon=True)
        self.heartbeat.start()

    @classmethod
    def acquire(cls, run_dir: Path, purpose: str) -> _Lock:
        created_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        for _ in range(10):  # the file may be removed by its releasing holder between our open and our flock
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                locked = _try_lock(descriptor)
                if locked is not False and not _still_named(descriptor, path):
                    os.close(descriptor)
                    continue
                _refuse_if_held(run_dir, descriptor, locked)
                _write_record(descriptor, purpose)
            except BaseException:
                os.close(descriptor)
                raise
            return cls(run_dir, descriptor, created_dir)
        raise RunInUseError(f"{run_dir}'s lock file {path} keeps being replaced; is another run starting there?")

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.descriptor)
            except (OSError, NotImplementedError):  # the folder went away or is read-only: the run will report it
                pass

    def release(self) -> None:
        """Remove the lock file (while still holding it) and let go; an empty run folder it created goes too."""
        self.stopped.set()
        self.heartbeat.join()
        try:
            if _still_named(self.descriptor, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self.descriptor)
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only when nothing was written into it
            except OSError:
                pass


def _still_named(descriptor: int, path: Path) -> bool:
    """Whether `path` is still the file open as `descriptor` (not removed or replaced meanwhile)."""
    try:
        mine, named = os.fstat(descriptor), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def _read_record(descriptor: int) -> dict:
    """The holder recorded in an open lock file ({} when empty or unreadable: a holder still writing it)."""
    try:
        text = os.pread(descriptor, 4096, 0).decode("utf-8", "replace")
        record = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(descriptor: int, purpose: str) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "by": purpose}
    data = json.dumps(record).encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, data, 0)
    os.fsync(descriptor)


def _refuse_if_held(run_dir: Path, descriptor: int, locked: bool | None) -> None:
    """RunInUseError when the lock file open as `descriptor` belongs to a live run (see the module docstring)."""
    record = _read_record(descriptor)
    age = time.time() - os.fstat(descriptor).st_mtime
    other_host = record.get("host", socket.gethostname()) != socket.gethostname()
    if locked is False:
        alive = True
    elif other_host:
        alive = age < STALE_SECONDS
    elif locked is None:
        alive = _process_alive(record.get("pid"))
    else:
        alive = False
    if alive:
        raise RunInUseError(_in_use_message(run_dir, record, age, other_host))
    if record:
        logger.info("taking over the lock of %s: %s is gone", run_dir, _holder_text(record))


def _process_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _holder_text(record: dict) -> str:
    if not record:
        return "a process that is just starting"
    started = record.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
        if isinstance(started, (int, float)) and not isinstance(started, bool)
        else "an unknown time"
    )
    by = f" ({record['by']})" if isinstance(record.get("by"), str) else ""
    return f"process {record.get('pid', '?')} on host {record.get('host', '?')}, started {when}{by}"


def _in_use_message(run_dir: Path, record: dict, age: float, other_host: bool) -> str:
    remote = ""
    if other_host:
        remote = (
            f" (last sign of life {age:.0f} s ago; a lock from another host is taken over after {STALE_SECONDS:.0f} s "
            "without one)"
        )
    return (
        f"{run_dir} is being trained by another run: {_holder_text(record)}{remote}. Wait for it to finish, or "
        "choose another --out folder"
    )
