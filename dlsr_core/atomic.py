"""Atomic file writes: a killed process leaves either the old file or the new one, never a partial file.

The new content is written to a temporary `.<name>.XXXXXXXX.partial` file beside the target and renamed over it. A
writer killed before the rename leaves that temporary behind; it is removed by a later write of the same file
(`remove_stale_partials`). A live writer holds an exclusive lock on its temporary file for as long as it exists, and
a temporary is only removed when that lock can be taken (its writer is gone) and it has not changed for
PARTIAL_GRACE_SECONDS, so two processes writing the same file never remove each other's work.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: there, age alone decides (UNLOCKABLE_GRACE_SECONDS)
    fcntl = None

# A temporary younger than this is never removed: it may belong to a writer that has created it but not locked it yet,
# or to a writer on another host of a network filesystem whose locks this host cannot see.
PARTIAL_GRACE_SECONDS = 120
# Where locks cannot be tested (no fcntl, or a filesystem that refuses locks), only temporaries this old are removed.
UNLOCKABLE_GRACE_SECONDS = 24 * 3600
_PARTIAL_SUFFIX = ".partial"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and an atomic rename.

    Temporaries left beside `path` by killed writers are removed first (see remove_stale_partials).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent, path.name)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            _try_lock(stream.fileno())  # held until renamed and closed: marks a live writer
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
            # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_partials(folder: str | Path, name: str | None = None) -> int:
    """Remove the temporaries that killed writers left in `folder` (only those of target `name` when given).

    A temporary is removed only when its writer is gone (its lock can be taken) and it is older than
    PARTIAL_GRACE_SECONDS; without working locks, only when older than UNLOCKABLE_GRACE_SECONDS. Returns how many
    were removed; a folder that cannot be listed removes nothing.
    """
    target = re.escape(name) if name is not None else r".+"
    pattern = re.compile(rf"\.{target}\.[A-Za-z0-9_]{{8}}{re.escape(_PARTIAL_SUFFIX)}")
    try:
        candidates = [entry for entry in os.scandir(folder) if pattern.fullmatch(entry.name)]
    except OSError:
        return 0
    return sum(_remove_if_abandoned(Path(entry.path)) for entry in candidates)


def _remove_if_abandoned(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            age = time.time() - os.fstat(stream.fileno()).st_mtime
            if age < PARTIAL_GRACE_SECONDS:
                return False
            locked = _try_lock(stream.fileno())
            if locked is False or (locked is None and age < UNLOCKABLE_GRACE_SECONDS):
                return False  # a live writer holds it, or nobody can tell
            path.unlink()  # while holding its lock: no writer can be using it
            return True
    except OSError:  # gone already (its writer finished), or not ours to remove
        return False


def _try_lock(descriptor: int) -> bool | None:
    """Take an exclusive lock on an open file without waiting: True when taken, False when another process holds
    it, None when locks cannot be used here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 digest of `data`."""
    return hashlib.sha256(data).hexdigest()
