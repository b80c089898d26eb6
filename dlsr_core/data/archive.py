"""Reading untrusted ZIP archives of images: every member checked before anything is written.

A ZIP names its own paths and sizes, and both can be hostile. Refused outright, for the whole archive: a member whose
path is absolute, holds `..` or a drive letter (it would land outside the target folder), a symbolic link, more
members or more declared bytes than the limits, and a zip bomb — a member that declares a compression ratio above
MAX_RATIO (checked from the headers, before extraction) or that inflates past its declared size or the limits while
it is read (checked during extraction, since headers can lie). Encrypted members cannot be read and are skipped
with a reason.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one image file; far above any real photo, far below a bomb
MAX_TOTAL_BYTES = 2 * 1024**3  # everything one archive may expand to
MAX_RATIO = 100  # uncompressed / compressed; PNG and JPEG are near 1, raw BMP/TIFF rarely above 20
RATIO_FREE_BYTES = 1024 * 1024  # small members may compress any amount (a blank 1 MB BMP is harmless)
_CHUNK = 1024 * 1024


class ArchiveError(ValueError):
    """The archive is unsafe or unreadable; nothing of it was kept. The message says what and which member."""


class SkippedMember(Exception):
    """One member cannot be used (encrypted, too large for an image); the rest of the archive is fine."""


@dataclass(frozen=True)
class Member:
    """A regular file of the archive: its cleaned relative path and its header."""

    path: PurePosixPath
    info: zipfile.ZipInfo


def _clean_path(name: str) -> PurePosixPath:
    """The member's path as a safe relative POSIX path; ArchiveError when it would escape the target folder."""
    text = name.replace("\\", "/")
    if "\0" in text:
        raise ArchiveError(f"member {name!r} has a NUL byte in its name: refusing the archive")
    path = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or path.is_absolute():
        raise ArchiveError(f"member {name!r} has an absolute path: refusing the archive")
    if ".." in path.parts:
        raise ArchiveError(f"member {name!r} points outside the archive's folder ('..'): refusing the archive")
    parts = [part for part in path.parts if part not in ("", ".")]
    if not parts:
        raise ArchiveError(f"member {name!r} has an empty path: refusing the archive")
    return PurePosixPath(*parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)  # 3: Unix; other systems cannot store links


def safe_members(archive: zipfile.ZipFile) -> list[Member]:
    """Every regular file of `archive`, checked from the headers (paths, links, counts, sizes, ratios).

    Raises ArchiveError for anything unsafe; directories are left out (their files carry the paths).
    """
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ArchiveError(f"the archive has {len(infos):,} members; at most {MAX_MEMBERS:,} are accepted")
    members, total = [], 0
    for info in infos:
        path = _clean_path(info.filename)
        if _is_symlink(info):
            raise ArchiveError(f"member {info.filename!r} is a symbolic link: refusing the archive")
        if info.is_dir():
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FREE_BYTES and ratio > MAX_RATIO:
            raise ArchiveError(
                f"member {info.filename!r} expands {ratio:,.0f}-fold ({info.compress_size:,} -> {info.file_size:,} "
                f"bytes; at most {MAX_RATIO}-fold is accepted): a zip bomb? Refusing the archive"
            )
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise ArchiveError(
                f"the archive expands to more than {MAX_TOTAL_BYTES / 1024**3:.0f} GB: refusing it (upload the set "
                "in parts, or add its folder by path)"
            )
        members.append(Member(path, info))
    return members


def read_member(archive: zipfile.ZipFile, member: Member, budget: list[int]) -> bytes:
    """The bytes of `member`, read in chunks and counted against its declared size and the shared `budget` ([bytes
    left for the whole archive]); ArchiveError as soon as one is exceeded, SkippedMember when it cannot be used."""
    info = member.info
    if info.flag_bits & 0x1:
        raise SkippedMember("encrypted (password-protected ZIP members cannot be read)")
    if info.file_size > MAX_MEMBER_BYTES:
        raise SkippedMember(
            f"{info.file_size / 1e6:,.0f} MB; image files of at most {MAX_MEMBER_BYTES / 1e6:.0f} MB are accepted"
        )
    limit = info.file_size
    chunks, size = [], 0
    try:
        with archive.open(info) as stream:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                size += len(chunk)
                budget[0] -= len(chunk)
                if size > limit or budget[0] < 0:
                    raise ArchiveError(
                        f"member {info.filename!r} inflates beyond its declared {info.file_size:,} bytes: a zip "
                        "bomb? Refusing the archive"
                    )
                chunks.append(chunk)
    except NotImplementedError as error:  # a compression method zipfile cannot read (e.g. Deflate64)
        raise SkippedMember(f"cannot be decompressed here ({error})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        # zipfile stops a member at its declared size, so a header that lies ends here, as a CRC mismatch
        raise ArchiveError(
            f"member {info.filename!r} is damaged or does not match its header ({error}): refusing the archive"
        ) from None
    return b"".join(chunks)


def without_common_root(paths: list[PurePosixPath]) -> Iterator[PurePosixPath]:
    """`paths` with the top folders they all share removed (a ZIP of `pets/cat/1.jpg, pets/dog/2.jpg` holds the
    classes cat and dog, not one class `pets`), never removing a file's own name."""
    depth = 0
    while paths and all(len(p.parts) > depth + 1 for p in paths) and len({p.parts[depth] for p in paths}) == 1:
        depth += 1
    return (PurePosixPath(*p.parts[depth:]) for p in paths)
