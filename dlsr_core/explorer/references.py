"""One image followed from page to page: a small reference that names it (a set and a position in it, or the digest
of an uploaded file) without holding its pixels, and the session's store of uploaded bytes it may point to.

A reference travels as a token in the `image` query parameter (`set:<index>:<spec>` or `upload:<sha256>`), so a
link opens the same image on How DLSR works or Score images, and a set image's link can be shared. An upload's
bytes never leave the session: its token finds them in the session's UploadStore, which also keeps the files a user
uploaded when the page that showed them is left and opened again.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

QUERY_KEY = "image"  # the query parameter that carries a reference between pages
_SET_PREFIX = "set:"
_UPLOAD_PREFIX = "upload:"
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Bytes of uploads one session keeps for returning to a page and following an image (oldest dropped first).
UPLOAD_STORE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImageRef:
    """An image of a set (`spec`, `index`: its position in the dataset) or an uploaded file (`digest`: the SHA-256
    hex of its bytes); exactly one of the two."""

    spec: str = ""
    index: int = -1
    digest: str = ""

    def __post_init__(self) -> None:
        if self.digest:
            if self.spec or self.index != -1:
                raise ValueError("an image reference names a set image or an upload, not both")
            if not _DIGEST.fullmatch(self.digest):
                raise ValueError(f"not a SHA-256 hex digest: {self.digest[:80]!r}")
        elif not self.spec or self.index < 0:
            raise ValueError(f"a set image needs a set and a position >= 0, got {self.spec!r} #{self.index}")

    @classmethod
    def of_set(cls, spec: str, index: int) -> ImageRef:
        return cls(spec=spec, index=int(index))

    @classmethod
    def of_upload(cls, digest: str) -> ImageRef:
        return cls(digest=digest)

    @property
    def is_upload(self) -> bool:
        return bool(self.digest)

    @property
    def token(self) -> str:
        """The query-parameter form: `set:<index>:<spec>` or `upload:<digest>` (from_token reads it back)."""
        return f"{_UPLOAD_PREFIX}{self.digest}" if self.is_upload else f"{_SET_PREFIX}{self.index}:{self.spec}"

    @classmethod
    def from_token(cls, token: str) -> ImageRef:
        """The reference a token names; ValueError saying what is wrong with a malformed one."""
        token = str(token).strip()
        if token.startswith(_UPLOAD_PREFIX):
            return cls.of_upload(token[len(_UPLOAD_PREFIX) :])
        if token.startswith(_SET_PREFIX):
            index, _, spec = token[len(_SET_PREFIX) :].partition(":")
            if index.isdigit() and spec:
                return cls.of_set(spec, int(index))
        raise ValueError(f"the image link {token[:80]!r} is not of the form set:<position>:<set> or upload:<sha256>")

    def label(self, names: Mapping[str, str] | None = None, upload_name: str | None = None) -> str:
        """How pages name the image: `<set name> #<index>`, or the upload's file name (else `upload <digest[:8]>`)."""
        if self.is_upload:
            return upload_name or f"upload {self.digest[:8]}"
        return f"{(names or {}).get(self.spec, self.spec)} #{self.index}"


def image_files(spec: str, indices: Sequence[int]) -> list[str]:
    """The source file of each image at dataset positions `indices` of `spec` (folder sets), "" where a set has
    none (the demo sets are arrays)."""
    from dlsr_core.data import open_dataset

    paths = open_dataset(spec).paths
    return [str(paths[int(i)]) if paths is not None else "" for i in indices]


def set_image_png(ref: ImageRef) -> bytes:
    """PNG bytes of a set image (what Score images scores when an image is opened there from another page); its
    score equals the set's own, as the same pixels give the same features whatever they come with."""
    from dlsr_core.explorer.sets import dataset_images
    from dlsr_core.explorer.uploads import encode_png

    image = dataset_images(ref.spec, [ref.index])[0]
    if image is None:
        raise ValueError(f"image {ref.index} of {ref.spec} cannot be read")
    return encode_png(image)


class UploadStore:
    """Uploaded files of one session by content digest: (name, bytes), newest kept, at most `limit` bytes in all.

    Pages put every file they are given here, so a file outlives its upload widget (which forgets it when the user
    opens another page) and an `upload:<digest>` reference can find it.
    """

    def __init__(self, limit: int = UPLOAD_STORE_BYTES) -> None:
        self.limit = limit
        self._files: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def put(self, name: str, data: bytes) -> str:
        """Keep one file; returns its digest. A file larger than the limit is not kept (its digest is returned)."""
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        self._files.pop(digest, None)
        if len(data) <= self.limit:
            self._files[digest] = (name, data)
        while sum(len(kept) for _, kept in self._files.values()) > self.limit:
            self._files.popitem(last=False)
        return digest

    def put_all(self, files: Sequence[tuple[str, bytes]]) -> list[str]:
        return [self.put(name, data) for name, data in files]

    def get(self, digest: str) -> tuple[str, bytes] | None:
        """(name, bytes) of a kept file, or None when it was never given or has been dropped."""
        return self._files.get(digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self._files

    def __len__(self) -> int:
        return len(self._files)
