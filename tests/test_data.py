"""Tests for dlsr_core.data: spec parsing, sources, image decoding edge cases and the demo assets."""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlsr_core import data
from dlsr_core.data import (
    DatasetError,
    DatasetSpec,
    ImageLoadError,
    list_demo_sets,
    load_image,
    open_dataset,
    parse_dataset,
    read_idx,
)

REPO = Path(__file__).resolve().parents[1]
HAVE_FASHION = (data.FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="Debian dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)"
)
DEMO_SIZES = {
    "fashion_mnist_test": 2000,
    "fashion_mnist_inverted": 1000,
    "fashion_mnist_rotated": 1000,
    "digits": 1000,
    "letters": 1000,
    "textures": 1000,
}


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format (MNIST's on-disk format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# --- idx parsing and Fashion-MNIST ----------------------------------------------------------------


def test_read_idx_round_trip_and_errors():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx_bytes(array)
    np.testing.assert_array_equal(read_idx(raw), array)
    np.testing.assert_array_equal(read_idx(gzip.compress(raw)), array)
    with pytest.raises(DatasetError, match="magic"):
        read_idx(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(DatasetError, match="data bytes"):
        read_idx(raw[:-1])


@needs_fashion
def test_fashion_mnist_known_answers():
    train = open_dataset("fashion_mnist:train")
    assert len(train) == 60000 and train.labels[0] == 9  # first training item is an ankle boot
    images, labels = data.load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    first = train[0]
    assert first.mode == "RGB" and first.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(first)[..., 0], images[0])
    test = open_dataset("fashion_mnist:test")
    assert len(test) == 10000 and test.class_names[9] == "Ankle boot"
    assert train.identity != test.identity


def test_fashion_mnist_missing_files_explain_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as info:
        open_dataset("fashion_mnist:test", data_root=tmp_path)
    assert "--data-root" in str(info.value)


def test_fashion_mnist_from_data_root_in_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([3, 1, 4, 1, 5], dtype=np.uint8)))
    ds = open_dataset("fashion_mnist:test+invert", data_root=tmp_path)
    assert len(ds) == 5 and ds.labels == [3, 1, 4, 1, 5] and ds.name == "fashion_mnist:test+invert"
    np.testing.assert_array_equal(np.asarray(ds[2])[..., 1], 255 - images[2])


# --- spec strings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "fashion_mnist:train",
        "fashion_mnist:test+invert",
        "fashion_mnist:test+rot90+blur",
        "digits",
        "letters",
        "textures+rot180",
        "demo:fashion_mnist_test",
        "torchvision:CIFAR10:test",
        "torchvision:SVHN:extra",
        "torchvision:LSUN",
        "folder:/data/my images/set+1",
    ],
)
def test_spec_round_trip(text):
    spec = parse_dataset(text)
    assert str(spec) == text
    assert parse_dataset(str(spec)) == spec
    assert hash(spec) == hash(parse_dataset(text))  # frozen, usable as a dict key


def test_spec_normalisation():
    assert parse_dataset(" Fashion-MNIST:TEST +Invert") == DatasetSpec(
        "fashion_mnist", split="test", shifts=("invert",)
    )
    folder = parse_dataset("folder:relative/dir")
    assert folder.path == os.path.abspath("relative/dir") and Path(folder.path).is_absolute()
    assert parse_dataset("torchvision:CIFAR10").split is None


@pytest.mark.parametrize(
    "text", ["", "fashion_mnist", "fashion_mnist:val", "digits:extra", "demo:", "demo:../x", "folder:", "mnist", "tv:X"]
)
def test_bad_specs_raise_dataset_error(text):
    with pytest.raises(DatasetError):
        parse_dataset(text)
    assert issubclass(DatasetError, ValueError)


# --- image decoding -------------------------------------------------------------------------------


def _write_mixed_folder(root: Path) -> dict[str, str]:
    """Write one file per tricky format; returns relative path -> expected outcome ("ok" or "bad")."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    gradient = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))  # 16x32
    rgb = Image.fromarray(np.stack([gradient, gradient[:, ::-1], np.full_like(gradient, 77)], axis=-1))
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[..., 0] = 250
    rgba[:, 16:, 3] = 255  # left half fully transparent
    high = (np.arange(16 * 32).reshape(16, 32) * 7).astype(np.uint16)  # max 3577 of 65535
    palette = Image.fromarray(gradient).convert("P")
    frames = [Image.new("RGB", (32, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    files = {
        "a_rgb.png": _encode(rgb, "PNG"),
        "b_photo.JPG": _encode(rgb, "JPEG", quality=90),
        "c.webp": _encode(rgb, "WEBP"),
        "d.bmp": _encode(rgb, "BMP"),
        "sub/e_16bit.tif": _encode(Image.fromarray(high), "TIFF"),
        "sub/f_palette.png": _encode(palette, "PNG", transparency=0),
        "sub/g_rgba.png": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "sub/deeper/h_gray.png": _encode(Image.fromarray(gradient, "L"), "PNG"),
        "sub/deeper/i_anim.gif": b"",
        "sub/j_corrupt.png": b"\x89PNG\r\n\x1a\n this is not really a png",
        "sub/k_empty.jpeg": b"",
        "sub/l_gray_alpha.png": _encode(Image.fromarray(gradient).convert("LA"), "PNG"),
        "sub/m_cmyk.tiff": _encode(rgb.convert("CMYK"), "TIFF"),
    }
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["sub/deeper/i_anim.gif"] = buffer.getvalue()
    for rel, payload in files.items():
        (root / rel).write_bytes(payload)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden" / "z.png").write_bytes(files["a_rgb.png"])
    return {rel: ("bad" if rel in ("sub/j_corrupt.png", "sub/k_empty.jpeg") else "ok") for rel in files}


def test_folder_dataset_mixed_formats(tmp_path):
    expected = _write_mixed_folder(tmp_path)
    ds = open_dataset(f"folder:{tmp_path}")
    rel = [p.relative_to(tmp_path).as_posix() for p in ds.paths]
    assert rel == sorted(expected)  # recursive, sorted, .txt and hidden folders ignored
    assert ds.labels is None and ds.name == f"folder:{tmp_path}"
    images = {r: ds[i] for i, r in enumerate(rel)}
    for name, outcome in expected.items():
        if outcome == "bad":
            assert images[name] is None, name
        else:
            assert images[name] is not None and images[name].mode == "RGB" and images[name].size == (32, 16), name
    rgba = np.asarray(images["sub/g_rgba.png"])
    assert rgba[0, 0].tolist() == [0, 0, 0] and rgba[0, 31].tolist() == [250, 0, 0]  # composited on black
    high = np.asarray(images["sub/e_16bit.tif"])[..., 0]
    assert high.max() == 255 and high[0, 0] == 0 and 100 < high[8, 16] < 155  # scaled by the actual range
    assert np.asarray(images["sub/deeper/i_anim.gif"])[0, 0].tolist() == [255, 0, 0]  # first frame
    assert np.asarray(images["sub/f_palette.png"])[0, 0].tolist() == [0, 0, 0]  # palette index 0 transparent
    gray = np.asarray(images["sub/deeper/h_gray.png"])
    assert (gray[..., 0] == gray[..., 2]).all() and gray[0, 31, 0] == 248


def test_folder_identity_tracks_file_changes(tmp_path):
    for i in range(3):
        Image.new("L", (8, 8), i * 50).save(tmp_path / f"{i}.png")
    first = open_dataset(f"folder:{tmp_path}").identity
    assert open_dataset(f"folder:{tmp_path}").identity == first
    Image.new("L", (9, 9), 200).save(tmp_path / "1.png")
    changed = open_dataset(f"folder:{tmp_path}").identity
    assert changed != first
    stat = (tmp_path / "1.png").stat()
    os.utime(tmp_path / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same size
    assert open_dataset(f"folder:{tmp_path}").identity != changed
    (tmp_path / "2.png").rename(tmp_path / "3.png")
    assert len({first, changed, open_dataset(f"folder:{tmp_path}").identity}) == 3


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        open_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no image files"):
        open_dataset(f"folder:{tmp_path}")


def test_load_image_rejects_bad_input(tmp_path):
    png = _encode(Image.new("RGB", (64, 64), (10, 20, 30)), "PNG")
    assert load_image(png).getpixel((5, 5)) == (10, 20, 30)
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        load_image(b"hello, I am a text file" * 10)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty file"):
        load_image(empty)
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(tmp_path / "nope.png")
    noisy = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        load_image(noisy[: len(noisy) // 2])
    assert issubclass(ImageLoadError, ValueError)


def test_load_image_decompression_bomb():
    # A valid PNG header claiming 100,000 x 100,000 pixels with almost no data: must fail before decoding.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    bomb += _png_chunk(b"IEND", b"")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(bomb)
    small = _encode(Image.new("L", (100, 100)), "PNG")
    with pytest.raises(ImageLoadError, match="10,000 x|limit"):
        load_image(small, max_pixels=5000)
    assert load_image(small, max_pixels=10_000).size == (100, 100)


def test_load_image_float_and_32bit_tiffs():
    values = np.linspace(-1.0, 3.0, 40, dtype=np.float32).reshape(4, 10)
    out = np.asarray(load_image(_encode(Image.fromarray(values, "F"), "TIFF")))[..., 0]
    assert out.min() == 0 and out.max() == 255 and (np.diff(out.ravel().astype(int)) >= 0).all()
    flat = np.asarray(load_image(_encode(Image.fromarray(np.zeros((3, 3), np.int32), "I"), "TIFF")))
    assert flat.shape == (3, 3, 3) and flat.max() == 0


# --- generated sources, shifts, demo assets ---------------------------------------------------------


@pytest.mark.parametrize("name, size, n_classes", [("letters", 5000, 10), ("textures", 5000, 12), ("digits", 1797, 10)])
def test_generated_sources(name, size, n_classes):
    ds = open_dataset(name)
    assert len(ds) == size and len(ds.labels) == size and len(set(ds.labels)) == n_classes
    first = ds[7]
    assert first.mode == "RGB" and first.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(open_dataset(name)[7]))  # deterministic
    assert np.asarray(first).std() > 0 and open_dataset(name).identity == ds.identity
    assert np.asarray(ds[-1]).shape == (28, 28, 3)
    with pytest.raises(IndexError):
        ds[size]


def test_shifts_transform_images():
    base = open_dataset("demo:digits")
    original = np.asarray(base[3])
    pairs = {
        "invert": 255 - original,
        "rot90": np.rot90(original),
        "rot180": np.rot90(original, 2),
        "hflip": original[:, ::-1],
    }
    for shift, expected in pairs.items():
        shifted = open_dataset(f"demo:digits+{shift}")
        np.testing.assert_array_equal(np.asarray(shifted[3]), expected)
        assert shifted.identity != base.identity and shifted.labels == base.labels
    blurred = np.asarray(open_dataset("demo:digits+blur")[3]).astype(int)
    assert np.abs(np.diff(blurred, axis=1)).sum() < np.abs(np.diff(original.astype(int), axis=1)).sum()


def test_demo_sets_have_documented_sizes():
    assert set(DEMO_SIZES) <= set(list_demo_sets())
    readme = (data.DEMO_DIR / "README.md").read_text()
    for name, size in DEMO_SIZES.items():
        ds = open_dataset(f"demo:{name}")
        assert len(ds) == size == len(ds.labels), name
        assert f"`{name}` | {size} |" in readme
        assert ds[0].mode == "RGB" and ds[0].size == (28, 28)
    assert np.bincount(open_dataset("demo:fashion_mnist_test").labels).tolist() == [200] * 10
    assert (REPO / "assets").is_dir() and sum(p.stat().st_size for p in (REPO / "assets").rglob("*")) < 10e6
    with pytest.raises(DatasetError, match="available"):
        open_dataset("demo:does_not_exist")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_demo_assets", REPO / "scripts" / "make_demo_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_fashion
def test_demo_build_is_deterministic_and_matches_vendored_fashion_sets(tmp_path):
    script = _load_script()
    first, second = script.build_demo_sets(), script.build_demo_sets()
    assert first.keys() == second.keys() == DEMO_SIZES.keys()
    for name in first:
        for key in first[name]:
            np.testing.assert_array_equal(first[name][key], second[name][key], err_msg=f"{name}/{key}")
        assert first[name]["images"].shape == (DEMO_SIZES[name], 28, 28) and first[name]["images"].dtype == np.uint8
    script.save_npz(tmp_path / "a.npz", first["letters"])
    script.save_npz(tmp_path / "b.npz", second["letters"])
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # vendored Fashion-MNIST sets really are (transformed) test-split images, disjoint from each other
    test_images, test_labels = data.load_fashion_mnist("test")
    used = []
    for name in ("fashion_mnist_test", "fashion_mnist_inverted", "fashion_mnist_rotated"):
        with np.load(data.DEMO_DIR / f"{name}.npz") as vendored:
            np.testing.assert_array_equal(vendored["images"], first[name]["images"])
            index = vendored["source_index"]
            np.testing.assert_array_equal(vendored["labels"], test_labels[index])
            used.append(set(index.tolist()))
    with np.load(data.DEMO_DIR / "fashion_mnist_inverted.npz") as inverted:
        np.testing.assert_array_equal(inverted["images"], 255 - test_images[inverted["source_index"]])
    assert not (used[0] & used[1]) and not (used[0] & used[2]) and not (used[1] & used[2])


# --- torchvision ----------------------------------------------------------------------------------


class _FakeBase:
    """Mimics a torchvision dataset: raises like torchvision when its files are missing."""

    def __init__(self, root: str, download: bool = False) -> None:
        self.root = root
        if not Path(root, "ready").exists():
            if not download:
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            raise OSError("network unreachable")
        self.targets = [0, 1, 2, 1]
        self.classes = ["zero", "one", "two"]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        if i == 3:
            raise OSError("corrupt file")
        return Image.new("L", (6, 5), 40 * i), self.targets[i]


class FakeTrainFlag(_FakeBase):
    def __init__(self, root: str, train: bool = True, transform=None, download: bool = False) -> None:
        super().__init__(root, download)
        self.train = train


class FakeSplit(_FakeBase):
    def __init__(self, root: str, split: str = "train", download: bool = False) -> None:
        super().__init__(root, download)
        self.split = split
        self.targets = None  # like SVHN, which only has .labels
        self.labels = np.array([5, 6, 7, 8])

    def __getitem__(self, i: int):
        return np.full((3, 5, 6), 9 * i, dtype=np.uint8), int(self.labels[i])  # CHW like a tensor


class FakeBackground(_FakeBase):
    def __init__(self, root: str, mode: str, background: bool = True, download: bool = False) -> None:
        super().__init__(root, download)
        self.background = background


@pytest.fixture
def fake_torchvision(monkeypatch):
    module = types.SimpleNamespace(FakeTrainFlag=FakeTrainFlag, FakeSplit=FakeSplit, FakeBackground=FakeBackground)
    monkeypatch.setattr(data.torchvision_sets, "_torchvision_datasets", lambda: module)
    return module


def test_torchvision_split_mapping_with_fakes(fake_torchvision, tmp_path):
    (tmp_path / "ready").touch()
    ds = open_dataset("torchvision:faketrainflag:test", data_root=tmp_path)
    assert ds.name == "torchvision:FakeTrainFlag:test"  # class name canonicalised
    assert len(ds) == 4 and ds.labels == [0, 1, 2, 1] and ds.class_names == ("zero", "one", "two")
    assert ds[1].mode == "RGB" and ds[1].getpixel((0, 0)) == (40, 40, 40)
    assert ds[3] is None  # unreadable item is skipped, not fatal
    split = open_dataset("torchvision:FakeSplit:extra+invert", data_root=tmp_path)
    assert split.labels == [5, 6, 7, 8] and split.name == "torchvision:FakeSplit:extra+invert"
    assert split[2].size == (6, 5) and split[2].getpixel((0, 0)) == (255 - 18,) * 3
    assert data.torchvision_sets._split_kwargs(FakeTrainFlag, "train") == {"train": True}
    assert data.torchvision_sets._split_kwargs(FakeSplit, "extra") == {"split": "extra"}
    assert data.torchvision_sets._split_kwargs(FakeBackground, "evaluation") == {"background": False}
    with pytest.raises(DatasetError, match="splits"):
        open_dataset("torchvision:FakeTrainFlag:val", data_root=tmp_path)
    with pytest.raises(DatasetError, match="no class"):
        open_dataset("torchvision:NotADataset", data_root=tmp_path)
    with pytest.raises(DatasetError, match="folder:"):  # constructor needs more than root + split
        open_dataset("torchvision:FakeBackground:evaluation", data_root=tmp_path)


def test_torchvision_missing_files_say_how_to_get_them(fake_torchvision, tmp_path):
    with pytest.raises(DatasetError, match="--download") as info:
        open_dataset("torchvision:FakeSplit:test", data_root=tmp_path)
    assert "--data-root" in str(info.value)
    with pytest.raises(DatasetError, match="network"):
        open_dataset("torchvision:FakeSplit:test", data_root=tmp_path, download=True)


def test_torchvision_real_mnist_class_on_local_fake_files(tmp_path):
    """The real torchvision.datasets.MNIST reading tiny idx files written in its raw/ layout."""
    try:
        data.torchvision_sets._torchvision_datasets()
    except (ImportError, RuntimeError) as exc:  # torchvision missing or unusable on this torch
        pytest.skip(f"torchvision not importable here: {exc}")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((3, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = np.array([50, 150, 250], np.uint8)[:, None, None]
    for prefix in ("train", "t10k"):  # MNIST checks that all four raw files exist
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([7, 2, 1], np.uint8)))
    ds = open_dataset("torchvision:MNIST:test", data_root=tmp_path)
    assert len(ds) == 3 and ds.labels == [7, 2, 1] and ds.class_names[7].startswith("7")
    assert ds[2].mode == "RGB" and ds[2].getpixel((12, 12)) == (250, 250, 250)
    with pytest.raises(DatasetError, match="--download"):
        open_dataset("torchvision:MNIST:test", data_root=tmp_path / "empty")
