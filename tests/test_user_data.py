"""Uploaded sets (dlsr_core.data.user_data, archive): ImageFolder layout, skipped non-images, and every hostile upload
refused with a clear message while nothing already stored is lost."""

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlsr_core.data import (
    UploadError,
    archive,
    open_dataset,
    remove_stored_set,
    store_uploaded_set,
    user_data,
    user_data_dir,
)
from dlsr_core.data.archive import ArchiveError


def png(value: int = 100, size: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive_file:
        for name, data in members.items():
            archive_file.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive_file.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("DLSR_DATA_DIR", str(folder))
    return folder


def _untouched(data_dir: Path) -> list[str]:
    """Every path below the sets folder: what must not change when an upload is refused."""
    sets = data_dir / "sets"
    return sorted(str(p.relative_to(sets)) for p in sets.rglob("*")) if sets.exists() else []


def test_a_zip_becomes_an_image_folder_with_class_labels(data_dir):
    members = {f"pets/{label}/{i}.png": png(40 * i + 10) for label in ("cat", "dog") for i in range(3)}
    members.update({"pets/readme.txt": b"hello", "pets/cat/broken.png": b"not a png", "__MACOSX/._x.png": b"x"})
    stored = store_uploaded_set("My pets!", [("pets.zip", zip_bytes(members))])
    assert stored.path == data_dir / "sets" / "My_pets" and stored.images == 6
    assert stored.classes == ("cat", "dog")  # readme.txt sat beside the class folders, but is not an image
    skipped = dict(stored.skipped)
    assert "not an image file" in skipped["readme.txt"] and "not a readable image" in skipped["cat/broken.png"]
    assert skipped["__MACOSX/._x.png"] == "system or hidden file"
    dataset = open_dataset(stored.spec)
    assert len(dataset) == 6 and dataset.class_names == ("cat", "dog") and dataset.labels == [0, 0, 0, 1, 1, 1]
    assert user_data_dir() == data_dir


def test_loose_files_are_stored_flat_without_labels(data_dir):
    stored = store_uploaded_set("loose", [("a.png", png(1)), ("b.png", png(2)), ("notes.pdf", b"%PDF")])
    assert stored.images == 2 and stored.classes == () and len(stored.skipped) == 1
    assert open_dataset(stored.spec).labels is None
    duplicate = store_uploaded_set("twice", [("a.png", png(1)), ("a.png", png(2))])
    assert sorted(p.name for p in duplicate.path.iterdir()) == ["a (2).png", "a.png"]


def _refused(data_dir, files, message: str, error=UploadError) -> None:
    if not (data_dir / "sets" / "kept").exists():
        store_uploaded_set("kept", [("k.png", png(7))])
    before = _untouched(data_dir)
    with pytest.raises(error, match=message):
        store_uploaded_set("new", files)
    assert _untouched(data_dir) == before, "a refused upload changed what was stored"
    assert not (data_dir / "sets" / "new").exists()


def test_paths_outside_the_folder_are_refused(data_dir):
    _refused(data_dir, [("a.zip", zip_bytes({"../evil.png": png()}))], "outside the archive's folder", ArchiveError)
    _refused(data_dir, [("a.zip", zip_bytes({"/etc/evil.png": png()}))], "absolute path", ArchiveError)
    _refused(data_dir, [("a.zip", zip_bytes({"C:/evil.png": png()}))], "absolute path", ArchiveError)
    _refused(data_dir, [("a.zip", zip_bytes({"ok.png": png()}, symlinks=("link.png",)))], "symbolic link", ArchiveError)


def test_a_zip_bomb_is_refused_from_its_headers(data_dir):
    bomb = zip_bytes({"big.bmp": b"\0" * (8 * 1024 * 1024)})  # 8 MB of zeros compress about 1000-fold
    _refused(data_dir, [("bomb.zip", bomb)], "zip bomb", ArchiveError)


def test_a_zip_whose_headers_lie_is_refused_while_extracting(data_dir, monkeypatch):
    honest = zip_bytes({"a.png": png(1, size=200)})
    with zipfile.ZipFile(io.BytesIO(honest)) as archive_file:
        info = archive_file.infolist()[0]
        true_size, offset = info.file_size, info.header_offset
    # Declare 10 bytes in both the local and the central header: the member inflates past what it claims.
    forged = bytearray(honest)
    local_size = offset + 22
    forged[local_size : local_size + 4] = (10).to_bytes(4, "little")
    central = forged.rfind(b"PK\x01\x02")
    forged[central + 24 : central + 28] = (10).to_bytes(4, "little")
    assert true_size > 10
    # zipfile stops reading at the declared size, so the lie surfaces as a CRC mismatch; either way it is refused.
    _refused(data_dir, [("liar.zip", bytes(forged))], "does not match its header|inflates beyond", ArchiveError)


def test_limits_on_size_count_and_names(data_dir, monkeypatch):
    monkeypatch.setattr(user_data, "MAX_UPLOAD_BYTES", 1000)
    _refused(data_dir, [("big.png", b"\0" * 2000)], "one set may upload at most")
    monkeypatch.setattr(user_data, "MAX_UPLOAD_BYTES", 10**9)
    monkeypatch.setattr(user_data, "MAX_SET_FILES", 2)
    _refused(data_dir, [(f"{i}.png", png(i)) for i in range(3)], "at most 2 per set")
    monkeypatch.setattr(archive, "MAX_MEMBERS", 2)
    _refused(data_dir, [("a.zip", zip_bytes({f"{i}.png": png(i) for i in range(3)}))], "3 members", ArchiveError)
    _refused(data_dir, [("x.txt", b"text")], "none of the 1 uploaded file")
    _refused(data_dir, [("a.zip", b"PK\x03\x04 not really")], "not a readable ZIP", ArchiveError)
    with pytest.raises(UploadError, match="already stored"):
        store_uploaded_set("kept", [("k.png", png(8))])
    with pytest.raises(UploadError, match="cannot name a set"):
        store_uploaded_set("!!!", [("k.png", png(8))])
    assert not list((data_dir / "sets").glob(".incoming-*")), "no temporary folder is left behind"


def test_an_encrypted_member_is_skipped_with_its_reason(data_dir):
    plain = zip_bytes({"a.png": png(1), "b.png": png(2)})
    with zipfile.ZipFile(io.BytesIO(plain)) as archive_file:
        offset = archive_file.infolist()[1].header_offset
    flagged = bytearray(plain)
    flagged[offset + 6] |= 0x1  # the general-purpose "encrypted" bit, local header and central directory
    central = flagged.rfind(b"PK\x01\x02")
    flagged[central + 8] |= 0x1
    stored = store_uploaded_set("enc", [("e.zip", bytes(flagged))])
    assert stored.images == 1 and "encrypted" in dict(stored.skipped)["b.png"]


def test_the_data_folder_is_never_inside_the_repository(monkeypatch):
    monkeypatch.setenv("DLSR_DATA_DIR", str(Path(__file__).resolve().parent / "uploads"))
    with pytest.raises(UploadError, match="inside the repository"):
        store_uploaded_set("x", [("a.png", png())])


def test_only_uploaded_sets_can_be_removed(data_dir, tmp_path):
    stored = store_uploaded_set("gone", [("a.png", png())])
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UploadError, match="only those can be deleted"):
        remove_stored_set(tmp_path / "elsewhere")
    remove_stored_set(stored.path)
    assert not stored.path.exists() and (tmp_path / "elsewhere").is_dir()
