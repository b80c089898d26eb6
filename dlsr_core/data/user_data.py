"""The user data folder: image sets uploaded from the app, stored as ImageFolder trees, and users' edits of
experiments that belong to read-only runs.

`$DLSR_DATA_DIR`, by default `data/` beside the feature cache (`~/.cache/dlsr/data`), never inside the repository.
An upload (image files and/or ZIP archives) becomes `<data>/sets/<name>/`, its subfolders being the class labels
(the ImageFolder convention, as `folder:` reads it). Storing is all or nothing: files are checked and written into a
temporary folder beside the target, which is renamed into place only when everything went well, so a refused or
interrupted upload leaves no partial set and never touches a set already stored.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from dlsr_core.data.archive import (
    MAX_MEMBER_BYTES,
    MAX_TOTAL_BYTES,
    ArchiveError,
    SkippedMember,
    read_member,
    safe_members,
    without_common_root,
)
from dlsr_core.data.images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS

DATA_DIR_ENV = "DLSR_DATA_DIR"
SETS_FOLDER = "sets"
EXPERIMENTS_FOLDER = "experiments"
MAX_UPLOAD_BYTES = 1024**3  # everything uploaded for one set (Streamlit's own limit: .streamlit/config.toml)
MAX_SET_FILES = 100_000
REPOSITORY = Path(__file__).resolve().parents[2]
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
_SYSTEM_FILES = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")

ProgressCallback = Callable[[int, int], None]


class UploadError(ValueError):
    """An upload was refused as a whole; nothing was stored. The message says why and what to do."""


def user_data_dir() -> Path:
    """$DLSR_DATA_DIR, else `data/` beside the feature cache ($DLSR_CACHE_DIR's parent or ~/.cache/dlsr)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    from dlsr_core.cache import default_cache_dir

    return default_cache_dir().expanduser().parent / "data"


def _writable_data_dir(data_dir: str | Path | None) -> Path:
    folder = Path(data_dir).expanduser() if data_dir is not None else user_data_dir()
    resolved = folder.resolve()
    if resolved == REPOSITORY or REPOSITORY in resolved.parents:
        raise UploadError(
            f"the user data folder {folder} is inside the repository; set {DATA_DIR_ENV} to a folder outside it"
        )
    return folder


def set_folder_name(name: str) -> str:
    """The folder name an uploaded set is stored under: letters, digits, '_' and '-' (at most 40)."""
    slug = _SLUG.sub("_", name.strip()).strip("_-")[:40]
    if not slug:
        raise UploadError(f"{name!r} cannot name a set: use letters, digits, '_' or '-'")
    return slug


@dataclass(frozen=True)
class StoredSet:
    """An uploaded set on disk: its folder and `folder:` spec, how many images, its classes (subfolder names;
    empty when the images are not in class subfolders) and every file left out, with the reason."""

    path: Path
    images: int
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]

    @property
    def spec(self) -> str:
        return f"folder:{self.path}"


def _probe_image(data: bytes) -> str | None:
    """Why `data` is not a usable image file (None when it is): unknown format, too many pixels, damaged."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                return f"{width}x{height} pixels is above the {MAX_IMAGE_PIXELS:,}-pixel limit"
            image.verify()
    except Image.DecompressionBombError:
        return "too many pixels (a decompression bomb?)"
    except Exception as error:  # Pillow raises many types on non-images and damaged files
        return f"not a readable image ({type(error).__name__})"
    return None


@dataclass
class _Entry:
    """One file to store: where it goes inside the set and how to read it (bytes, or a ZIP member)."""

    path: PurePosixPath
    read: Callable[[], bytes]
    size: int


def _entries(files: Sequence[tuple[str, bytes]]) -> tuple[list[_Entry], list[zipfile.ZipFile]]:
    """Every file the upload holds: loose files under their own name, ZIP members under their (common-root-free)
    path. Raises ArchiveError for an unsafe archive."""
    entries, archives = [], []
    budget = [MAX_TOTAL_BYTES]
    for name, data in files:
        if name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04":
            try:
                archive = zipfile.ZipFile(io.BytesIO(data))
            except (zipfile.BadZipFile, ValueError, OSError) as error:
                raise ArchiveError(f"{name} is not a readable ZIP archive ({error})") from None
            archives.append(archive)
            try:
                members = safe_members(archive)
            except ArchiveError as error:
                raise ArchiveError(f"{name}: {error}") from None
            # System files (macOS metadata, thumbnails) are skipped anyway and must not hide a common top folder.
            kept = [m for m in members if not _system_file(m.path)]
            stripped = dict(zip((id(m) for m in kept), without_common_root([m.path for m in kept]), strict=True))
            for member in members:
                path = stripped.get(id(member), member.path)
                read = lambda a=archive, m=member: read_member(a, m, budget)  # noqa: E731
                entries.append(_Entry(path, read, member.info.file_size))
        else:
            own_name = PurePosixPath(PurePosixPath(name.replace("\\", "/")).name)  # a loose file keeps no folders
            entries.append(_Entry(own_name, lambda d=data: d, len(data)))
    return entries, archives


def _unique(path: PurePosixPath, taken: set[str]) -> PurePosixPath:
    candidate, number = path, 2
    while candidate.as_posix().casefold() in taken:
        candidate = path.with_name(f"{path.stem} ({number}){path.suffix}")
        number += 1
    taken.add(candidate.as_posix().casefold())
    return candidate


def _system_file(path: PurePosixPath) -> bool:
    return any(part in _SYSTEM_FILES or part.startswith(".") for part in path.parts)


def _skip_reason(path: PurePosixPath) -> str | None:
    if _system_file(path):
        return "system or hidden file"
    if not path.name.lower().endswith(IMAGE_EXTENSIONS):
        return f"not an image file (accepted: {', '.join(IMAGE_EXTENSIONS)})"
    return None


def _write_entries(
    entries: list[_Entry], folder: Path, progress: ProgressCallback | None
) -> tuple[int, list[tuple[str, str]]]:
    """Write every usable entry below `folder`; (images written, (file, reason) for each one left out)."""
    written, skipped, taken = 0, [], set()
    for done, entry in enumerate(entries, 1):
        reason = _skip_reason(entry.path)
        data = b""
        if reason is None:
            try:
                data = entry.read()
            except SkippedMember as why:
                reason = str(why)
        reason = reason or _probe_image(data)
        if reason is not None:
            skipped.append((entry.path.as_posix(), reason))
        else:
            target = folder / _unique(entry.path, taken)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written += 1
        if progress is not None:
            progress(done, len(entries))
    return written, skipped


def _classes(folder: Path) -> tuple[str, ...]:
    """Class subfolders of a stored set (the ImageFolder convention): empty unless every image is in one."""
    top = list(folder.iterdir())
    if not top or any(path.is_file() for path in top):
        return ()
    return tuple(sorted(path.name for path in top))


def store_uploaded_set(
    name: str,
    files: Sequence[tuple[str, bytes]],
    data_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> StoredSet:
    """Store uploaded image files and/or ZIP archives as the set `name` under `<data dir>/sets/`.

    Files that are not images are skipped and listed with the reason; an unsafe archive, an upload above
    MAX_UPLOAD_BYTES, more than MAX_SET_FILES files, a name already taken or no image at all refuse the whole
    upload (UploadError / ArchiveError), leaving every stored set as it was. `progress(done, total)` per file.
    """
    total = sum(len(data) for _, data in files)
    if total > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"the upload is {total / 1e9:.1f} GB; one set may upload at most {MAX_UPLOAD_BYTES / 1e9:.1f} GB (add a "
            "larger set by its folder path instead)"
        )
    if not files:
        raise UploadError("nothing was uploaded")
    sets = _writable_data_dir(data_dir) / SETS_FOLDER
    target = sets / set_folder_name(name)
    if target.exists():
        raise UploadError(f"a set named {target.name!r} is already stored ({target}); choose another name")
    entries, archives = _entries(files)
    if len(entries) > MAX_SET_FILES:
        raise UploadError(f"the upload holds {len(entries):,} files; at most {MAX_SET_FILES:,} per set")
    sets.mkdir(parents=True, exist_ok=True)
    needed = sum(min(entry.size, MAX_MEMBER_BYTES) for entry in entries)
    free = shutil.disk_usage(sets).free
    if needed > free:
        raise UploadError(f"{needed / 1e9:.2f} GB are needed but {free / 1e9:.2f} GB are free in {sets}")
    incoming = sets / f".incoming-{uuid.uuid4().hex[:12]}"
    incoming.mkdir()
    try:
        written, skipped = _write_entries(entries, incoming, progress)
        if written == 0:
            raise UploadError(f"none of the {len(entries)} uploaded file(s) is a readable image; nothing was stored")
        classes = _classes(incoming)
        os.rename(incoming, target)  # atomic on one filesystem: the set appears whole or not at all
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
        for archive in archives:
            archive.close()
    return StoredSet(target, written, classes, tuple(skipped))


def remove_stored_set(path: str | Path, data_dir: str | Path | None = None) -> None:
    """Delete an uploaded set's folder; refuses any folder that is not directly inside `<data dir>/sets/`."""
    sets = _writable_data_dir(data_dir) / SETS_FOLDER
    folder = Path(path)
    if folder.resolve().parent != sets.resolve() or not folder.is_dir():
        raise UploadError(f"{folder} is not an uploaded set in {sets}; only those can be deleted from the app")
    shutil.rmtree(folder)


def user_experiment_path(run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Where edits of a read-only run's experiment (the shipped model's) are kept: `<data dir>/experiments/`."""
    import hashlib

    resolved = Path(run_dir).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    folder = Path(data_dir).expanduser() if data_dir is not None else user_data_dir()
    return folder / EXPERIMENTS_FOLDER / f"{resolved.name}-{digest}.json"
