"""Image data sources: parse a dataset spec string and open it as a sequence of RGB images.

Spec strings (``str(parse_dataset(text))`` is the canonical form)::

    fashion_mnist:train | fashion_mnist:test   Debian dataset-fashion-mnist files (or --data-root)
    digits                                     scikit-learn digits, 8x8 upscaled to 28x28 like MNIST
    letters                                    notMNIST-style letters A-J rendered from DejaVu fonts
    textures                                   crops of scikit-image's bundled public-domain photos
    demo:<name>                                assets/demo/<name>.npz (see list_demo_sets())
    torchvision:<Class>[:<split>]              any torchvision.datasets class, e.g. torchvision:CIFAR10:test
    folder:<path>                              every image file below <path>, recursively

Any spec may end in shift modifiers for near-OOD experiments, applied left to right:
``+invert``, ``+rot90``, ``+rot180``, ``+rot270``, ``+hflip``, ``+vflip``, ``+blur``, ``+contrast``
(e.g. ``fashion_mnist:test+invert``).

Every source yields ``PIL.Image.Image`` objects in mode ``"RGB"``; a folder item whose file cannot be
decoded yields ``None`` so the feature extractor can count it as skipped instead of aborting a long run.
Generated sources (digits, letters, textures) are light-on-dark 28x28 grayscale images (stored as RGB)
so that, like the Fashion-MNIST in-distribution data, they differ by content rather than by format.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import os
import re
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

__all__ = [
    "DEMO_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "LETTERS",
    "MAX_DECODED_SIDE",
    "MAX_IMAGE_PIXELS",
    "SHIFTS",
    "TEXTURE_IMAGES",
    "DatasetError",
    "DatasetSpec",
    "ImageDataset",
    "ImageLoadError",
    "describe_skipped",
    "digits_images",
    "item_name",
    "letter_fonts",
    "list_demo_sets",
    "load_fashion_mnist",
    "load_image",
    "open_dataset",
    "parse_dataset",
    "read_idx",
    "render_letter",
    "render_texture",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"
TORCHVISION_ROOT = Path("~/.cache/dlsr/datasets")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Below Pillow's own limit (~89 MP) so our clear error fires before Pillow's warning does.
MAX_IMAGE_PIXELS = 64_000_000
# Decoded images are reduced to at most this many pixels on their longest side (the largest backbone input size the
# CLI accepts): one decoded image then holds at most ~3 MB, and every path (folder, --images, uploads) decodes alike.
MAX_DECODED_SIDE = 1024
_DECODE_RULE = f"max{MAX_DECODED_SIDE}"  # part of folder identities, so cached features follow a change of the rule
SHIFTS = ("invert", "rot90", "rot180", "rot270", "hflip", "vflip", "blur", "contrast")

_BUILTIN_SOURCES = ("digits", "letters", "textures")
_SPLIT_SOURCES = {"fashion_mnist": ("train", "test")}
_SOURCE_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SPEC_HELP = (
    "expected one of: fashion_mnist:train, fashion_mnist:test, digits, letters, textures, "
    "demo:<name>, torchvision:<Class>[:<split>], folder:<path>, optionally followed by "
    f"shift modifiers {', '.join('+' + s for s in SHIFTS)}"
)

# Generated sources: fixed sizes and seeds so that an index always means the same image.
GENERATED_SIZE = 28
LETTERS_LENGTH = 5000
TEXTURES_LENGTH = 5000
_GENERATOR_VERSION = "1"
_LETTERS_SEED = 20240601
_TEXTURES_SEED = 20240602
LETTERS = "ABCDEFGHIJ"
# The 12 DejaVu faces that both matplotlib's bundled fonts and Debian's fonts-dejavu provide.
LETTER_FONTS = tuple(
    f"DejaVu{family}{style}.ttf"
    for family, styles in (
        ("Sans", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("SansMono", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("Serif", ("", "-Bold", "-Italic", "-BoldItalic")),
    )
    for style in styles
)
# Only scikit-image images that ship inside the wheel and state CC0 / public domain / no known
# copyright restrictions in their docstrings (so crops of them may be vendored in assets/demo).
TEXTURE_IMAGES = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "text",
    "clock",
    "hubble_deep_field",
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
)


class DatasetError(ValueError):
    """A dataset spec is malformed or its data cannot be found or read."""


class ImageLoadError(ValueError):
    """A file or byte string is not a decodable image (the message says why)."""


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec; build it with :func:`parse_dataset`, print it with ``str()``.

    source: "fashion_mnist" | "digits" | "letters" | "textures" | "demo" | "torchvision" | "folder".
    name: demo set name or torchvision class name. split: fashion_mnist/torchvision split.
    path: absolute folder path. shifts: modifiers from SHIFTS, applied left to right.
    """

    source: str
    name: str | None = None
    split: str | None = None
    path: str | None = None
    shifts: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.source == "fashion_mnist":
            base = f"fashion_mnist:{self.split}"
        elif self.source == "demo":
            base = f"demo:{self.name}"
        elif self.source == "torchvision":
            base = f"torchvision:{self.name}" + (f":{self.split}" if self.split else "")
        elif self.source == "folder":
            base = f"folder:{self.path}"
        else:
            base = self.source
        return base + "".join(f"+{s}" for s in self.shifts)


def parse_dataset(text: str) -> DatasetSpec:
    """Parse a dataset spec string (see the module docstring); raises DatasetError if malformed.

    Source names and fashion_mnist splits are case-insensitive; folder paths are made absolute
    (``~`` expanded) so the canonical string does not depend on how the path was typed.
    """
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"empty dataset spec; {_SPEC_HELP}")
    body = text.strip()
    shifts: list[str] = []
    while "+" in body:
        head, _, tail = body.rpartition("+")
        if tail.strip().lower() not in SHIFTS:
            break
        shifts.insert(0, tail.strip().lower())
        body = head.strip()
    source, _, arg = body.partition(":")
    source = _SOURCE_ALIASES.get(source.strip().lower(), source.strip().lower())
    arg = arg.strip()
    shift_tuple = tuple(shifts)

    if source in _BUILTIN_SOURCES:
        if arg:
            raise DatasetError(f"{source!r} takes no argument, got {text!r}")
        return DatasetSpec(source, shifts=shift_tuple)
    if source in _SPLIT_SOURCES:
        split = arg.lower()
        if split not in _SPLIT_SOURCES[source]:
            choices = " or ".join(f"{source}:{s}" for s in _SPLIT_SOURCES[source])
            raise DatasetError(f"{text!r}: {source} needs a split, use {choices}")
        return DatasetSpec(source, split=split, shifts=shift_tuple)
    if source == "demo":
        if not _NAME_RE.match(arg):
            raise DatasetError(f"{text!r}: use demo:<name>, one of {list_demo_sets() or '(none found)'}")
        return DatasetSpec("demo", name=arg, shifts=shift_tuple)
    if source == "torchvision":
        name, _, split = arg.partition(":")
        name, split = name.strip(), split.strip()
        if not name.isidentifier():
            raise DatasetError(f"{text!r}: use torchvision:<Class>[:<split>], e.g. torchvision:CIFAR10:test")
        return DatasetSpec("torchvision", name=name, split=split or None, shifts=shift_tuple)
    if source == "folder":
        if not arg:
            raise DatasetError(f"{text!r}: use folder:<path to a directory of images>")
        return DatasetSpec("folder", path=os.path.abspath(os.path.expanduser(arg)), shifts=shift_tuple)
    hint = f" (to read the images in that directory use 'folder:{text.strip()}')" if os.path.isdir(text.strip()) else ""
    raise DatasetError(f"unknown dataset spec {text!r}{hint}; {_SPEC_HELP}")


class ImageDataset(Sequence[Image.Image | None]):
    """A lazily decoded, indexable sequence of RGB images (``None`` for unreadable files).

    name: canonical spec string. identity: stable string for cache keys; it changes when the
    underlying data does. labels: one int per item, or None. class_names: label names or None.
    paths: source file per item (folder datasets only), else None.
    """

    def __init__(
        self,
        name: str,
        identity: str,
        length: int,
        loader: Callable[[int], Image.Image | None],
        labels: list[int] | None = None,
        class_names: tuple[str, ...] | None = None,
        paths: tuple[Path, ...] | None = None,
    ) -> None:
        self.name = name
        self.identity = identity
        self.labels = labels
        self.class_names = class_names
        self.paths = paths
        self._length = length
        self._loader = loader

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Image.Image | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[Image.Image | None]: ...
    def __getitem__(self, index: int | slice) -> Image.Image | None | list[Image.Image | None]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        i = int(index)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"index {index} out of range for {self.name} ({self._length} images)")
        return self._loader(i)

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {self._length} images)"


def open_dataset(
    spec: str | DatasetSpec, *, data_root: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """Open a dataset spec as an :class:`ImageDataset`; raises DatasetError with a fix if unavailable.

    data_root: where fashion_mnist / torchvision data live (defaults: the Debian package path and
    ~/.cache/dlsr/datasets). download: allow torchvision to download missing files (needs network).
    """
    spec = parse_dataset(spec if isinstance(spec, str) else str(spec))
    root = Path(data_root).expanduser() if data_root is not None else None
    base = replace(spec, shifts=())
    if spec.source == "fashion_mnist":
        ds = _open_fashion_mnist(base, root)
    elif spec.source == "digits":
        ds = _open_digits(base)
    elif spec.source == "letters":
        ds = _open_letters(base)
    elif spec.source == "textures":
        ds = _open_textures(base)
    elif spec.source == "demo":
        ds = _open_demo(base)
    elif spec.source == "torchvision":
        ds = _open_torchvision(base, root, download)
    else:
        ds = _open_folder(base)
    if not spec.shifts:
        return ds
    inner = ds._loader

    def shifted(i: int) -> Image.Image | None:
        image = inner(i)
        return None if image is None else _apply_shifts(image, spec.shifts)

    name = ds.name + "".join(f"+{s}" for s in spec.shifts)
    return ImageDataset(
        name, f"{ds.identity}+{'+'.join(spec.shifts)}", len(ds), shifted, ds.labels, ds.class_names, ds.paths
    )


def list_demo_sets() -> list[str]:
    """Names of the bundled demo sets (``assets/demo/<name>.npz``), sorted; usable as ``demo:<name>``."""
    if not DEMO_DIR.is_dir():
        return []
    return sorted(p.stem for p in DEMO_DIR.glob("*.npz"))


# --------------------------------------------------------------------------------------------------
# Image decoding


def load_image(
    source: str | Path | bytes, *, max_pixels: int = MAX_IMAGE_PIXELS, max_side: int | None = MAX_DECODED_SIDE
) -> Image.Image:
    """Decode a file path or encoded bytes into an 8-bit RGB image at most `max_side` px on its longest side.

    Grayscale, palette, CMYK and other modes are converted; transparent pixels are composited onto
    black (the datasets here are light-on-dark). 16-bit and float images are scaled by their actual
    value range. Animated or multi-page files give their first frame; EXIF rotation is applied.
    Raises ImageLoadError for missing, empty, non-image, truncated or corrupt input and for images
    larger than ``max_pixels`` (decompression-bomb guard; Pillow's own ``Image.MAX_IMAGE_PIXELS``,
    about 89 MP, still applies on top, so raising ``max_pixels`` beyond it has no effect). Larger images are
    reduced while decoding where the format allows (JPEG DCT scaling) and right after otherwise, keeping the aspect
    ratio; ``max_side=None`` keeps the full size.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("empty input (0 bytes)")
        what, fp = "image bytes", io.BytesIO(bytes(source))
    else:
        path = Path(source)
        what = str(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageLoadError(f"{what}: cannot read file ({exc.strerror or exc})") from exc
        if not path.is_file():
            raise ImageLoadError(f"{what}: not a regular file")
        if size == 0:
            raise ImageLoadError(f"{what}: empty file (0 bytes)")
        fp = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{what}: {width}x{height} pixels exceeds the {max_pixels:,}-pixel limit "
                        "(possible decompression bomb)"
                    )
                im.seek(0)
                if max_side and im.format == "JPEG":
                    im.draft(im.mode, (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale when that is enough
                im.load()
                return _bounded(_exif_upright(im), max_side)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{what}: possible decompression bomb ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageLoadError(f"{what}: not a recognised image format") from exc
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise ImageLoadError(f"{what}: truncated image data ({exc})") from exc
        raise ImageLoadError(f"{what}: corrupt or unreadable image ({exc})") from exc
    except Exception as exc:  # Pillow plugins raise many types (SyntaxError, struct.error, ...) on bad data
        raise ImageLoadError(f"{what}: corrupt image ({type(exc).__name__}: {exc})") from exc


def _bounded(im: Image.Image, max_side: int | None) -> Image.Image:
    """RGB copy of `im` no larger than max_side; 8-bit images are box-reduced before conversion to save memory."""
    if max_side and max(im.size) > 2 * max_side and im.mode in ("1", "L", "RGB"):
        im = (im.convert("L") if im.mode == "1" else im).reduce(max(im.size) // max_side)
    rgb = _to_rgb(im)
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return rgb


def _exif_upright(im: Image.Image) -> Image.Image:
    try:
        if im.getexif().get(0x0112, 1) != 1:
            return ImageOps.exif_transpose(im)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, struct.error):
        pass  # a broken EXIF block should not make an otherwise fine image unreadable
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on black, high bit depth rescaled)."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I", "F") or mode.startswith("I;16"):
        values = np.nan_to_num(np.asarray(im, dtype=np.float64))
        low, high = min(0.0, float(values.min())), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "L", "RGB") and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "PA", "La", "RGBa", "RGBA"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def _apply_shifts(image: Image.Image, shifts: tuple[str, ...]) -> Image.Image:
    for shift in shifts:
        if shift == "invert":
            image = ImageOps.invert(image)
        elif shift == "rot90":
            image = image.transpose(Image.Transpose.ROTATE_90)
        elif shift == "rot180":
            image = image.transpose(Image.Transpose.ROTATE_180)
        elif shift == "rot270":
            image = image.transpose(Image.Transpose.ROTATE_270)
        elif shift == "hflip":
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif shift == "vflip":
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        elif shift == "blur":
            # one pixel of blur at 28x28, proportionally more for larger images
            image = image.filter(ImageFilter.GaussianBlur(max(image.size) / 28))
        elif shift == "contrast":
            image = ImageEnhance.Contrast(image).enhance(0.5)  # halfway to the image's mean grey
    return image


def _array_loader(images: np.ndarray) -> Callable[[int], Image.Image]:
    """images: (N,H,W) or (N,H,W,3) uint8 -> loader giving RGB PIL images."""

    def load(i: int) -> Image.Image:
        return Image.fromarray(images[i]).convert("RGB")

    return load


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(source: str | Path | bytes) -> np.ndarray:
    """Parse an idx file (MNIST format; ``.gz`` or raw, or its bytes) into an array of its shape.

    Raises DatasetError if the header or length is inconsistent.
    """
    if isinstance(source, (bytes, bytearray)):
        raw, what = bytes(source), "idx data"
    else:
        raw, what = Path(source).read_bytes(), str(source)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{what}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{what}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{what}: idx header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{what}: expected {expected} data bytes for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@lru_cache(maxsize=4)
def _read_fashion_mnist(images_path: Path, labels_path: Path, _mtimes: tuple[int, int]) -> tuple:
    image_bytes, label_bytes = images_path.read_bytes(), labels_path.read_bytes()
    images, labels = read_idx(image_bytes), read_idx(label_bytes)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DatasetError(f"{images_path}: images {images.shape} and labels {labels.shape} do not match")
    return images.astype(np.uint8), labels.astype(np.int64), _sha(image_bytes, label_bytes)


def load_fashion_mnist(split: str, data_root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as arrays: images (N,28,28) uint8, labels (N,) int64; N = 60000 train / 10000 test."""
    images, labels, _ = _fashion_mnist_arrays(split, Path(data_root).expanduser() if data_root else None)
    return images, labels


def _fashion_mnist_arrays(split: str, root: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    prefix = "train" if split == "train" else "t10k"
    folder = root if root is not None else FASHION_MNIST_DIR
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise DatasetError(
            f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], {prefix}-labels-idx1-ubyte[.gz]) "
            f"not found in {folder}. Install them with `sudo apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu) or pass --data-root pointing at a folder that holds them."
        )
    mtimes = (images_path.stat().st_mtime_ns, labels_path.stat().st_mtime_ns)
    return _read_fashion_mnist(images_path, labels_path, mtimes)


def _open_fashion_mnist(spec: DatasetSpec, root: Path | None) -> ImageDataset:
    images, labels, digest = _fashion_mnist_arrays(spec.split or "test", root)
    return ImageDataset(
        str(spec), f"{spec}|{digest}", len(images), _array_loader(images), labels.tolist(), FASHION_MNIST_CLASSES
    )


# --------------------------------------------------------------------------------------------------
# Generated far-OOD sources


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as MNIST-like images: (N,28,28) uint8 light-on-dark, labels (N,).

    Each 8x8 digit (values 0-16) is scaled to 0-255, resized to 20x20 and centred in a 28x28 frame,
    the layout MNIST uses.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.zeros((len(small), GENERATED_SIZE, GENERATED_SIZE), dtype=np.uint8)
    for i, digit in enumerate(small):
        big = Image.fromarray(digit, "L").resize((20, 20), Image.Resampling.BICUBIC)
        out[i, 4:24, 4:24] = np.asarray(big)
    return out, bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def _digits_cached() -> tuple[np.ndarray, np.ndarray]:
    return digits_images()


def _open_digits(spec: DatasetSpec) -> ImageDataset:
    images, labels = _digits_cached()
    return ImageDataset(
        str(spec),
        f"digits|v{_GENERATOR_VERSION}|{_sha(images.tobytes())}",
        len(images),
        _array_loader(images),
        labels.tolist(),
        tuple(str(d) for d in range(10)),
    )


def _font_dirs() -> list[Path]:
    dirs = []
    try:  # matplotlib bundles the DejaVu fonts; prefer them so every machine renders the same faces
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    dirs += [
        Path("/usr/share/fonts/truetype/dejavu"),
        Path("/usr/share/fonts/dejavu"),
        Path("/usr/share/fonts/TTF"),
        Path("/usr/local/share/fonts"),
        Path("~/.local/share/fonts").expanduser(),
        Path("~/Library/Fonts").expanduser(),
        Path("/Library/Fonts"),
    ]
    return dirs


@lru_cache(maxsize=1)
def letter_fonts() -> tuple[Path, ...]:
    """Paths of the DejaVu faces (LETTER_FONTS) found on this machine, in LETTER_FONTS order."""
    found = []
    for name in LETTER_FONTS:
        for folder in _font_dirs():
            if (folder / name).is_file():
                found.append(folder / name)
                break
    return tuple(found)


@lru_cache(maxsize=256)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def render_letter(index: int, fonts: Sequence[Path] | None = None) -> tuple[np.ndarray, int]:
    """Render letters item ``index`` deterministically: (28,28) uint8 light-on-dark glyph, label 0-9 (A-J).

    Font face, size, stroke style, brightness, offset and a small rotation come from a generator
    seeded by the index. Drawn at 4x and downsampled for anti-aliasing, like notMNIST's renders.
    """
    fonts = letter_fonts() if fonts is None else tuple(fonts)
    if not fonts:
        raise DatasetError(
            "no DejaVu fonts found for the 'letters' source; install matplotlib (it bundles them) "
            "or the fonts-dejavu package"
        )
    label = index % len(LETTERS)
    rng = np.random.default_rng((_LETTERS_SEED, index))
    font_path = fonts[int(rng.integers(len(fonts)))]
    scale = 4
    canvas = GENERATED_SIZE * scale
    font = _font(font_path, int(rng.integers(72, 105)))
    outlined = rng.random() < 0.15
    brightness = int(rng.integers(190, 256))
    image = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), LETTERS[label], font=font)
    dx, dy = rng.integers(-6, 7, size=2)
    xy = ((canvas - (left + right)) / 2 + int(dx), (canvas - (top + bottom)) / 2 + int(dy))
    if outlined:
        draw.text(xy, LETTERS[label], fill=0, font=font, stroke_width=4, stroke_fill=brightness)
    else:
        draw.text(xy, LETTERS[label], fill=brightness, font=font)
    image = image.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC)
    small = image.resize((GENERATED_SIZE, GENERATED_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8), label


def _open_letters(spec: DatasetSpec) -> ImageDataset:
    fonts = letter_fonts()
    render_letter(0, fonts)  # fail now with the install hint rather than inside the extractor
    font_id = _sha("|".join(f"{p.name}:{p.stat().st_size}" for p in fonts).encode())

    def load(i: int) -> Image.Image:
        return Image.fromarray(render_letter(i, fonts)[0], "L").convert("RGB")

    labels = [i % len(LETTERS) for i in range(LETTERS_LENGTH)]
    return ImageDataset(
        str(spec), f"letters|v{_GENERATOR_VERSION}|{font_id}", LETTERS_LENGTH, load, labels, tuple(LETTERS)
    )


@lru_cache(maxsize=len(TEXTURE_IMAGES))
def _texture_source(name: str) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    return Image.fromarray(array).convert("L")


def render_texture(index: int) -> tuple[np.ndarray, int]:
    """Crop textures item ``index``: (28,28) uint8 grayscale, label = position in TEXTURE_IMAGES.

    Items cycle through TEXTURE_IMAGES; the crop size (24-128 px), position and a flip/rotation
    come from a generator seeded by the index.
    """
    label = index % len(TEXTURE_IMAGES)
    try:
        source = _texture_source(TEXTURE_IMAGES[label])
    except Exception as exc:  # skimage missing or a build without bundled data
        raise DatasetError(
            f"cannot load scikit-image sample image {TEXTURE_IMAGES[label]!r} ({exc}); `pip install scikit-image`"
        ) from exc
    rng = np.random.default_rng((_TEXTURES_SEED, index))
    width, height = source.size
    side = min(int(rng.integers(24, 129)), width, height)
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    crop = source.crop((x, y, x + side, y + side)).resize((GENERATED_SIZE, GENERATED_SIZE), Image.Resampling.BOX)
    array = np.rot90(np.asarray(crop, dtype=np.uint8), k=int(rng.integers(4)))
    if rng.random() < 0.5:
        array = array[:, ::-1]
    return np.ascontiguousarray(array), label


def _open_textures(spec: DatasetSpec) -> ImageDataset:
    render_texture(0)

    def load(i: int) -> Image.Image:
        return Image.fromarray(render_texture(i)[0], "L").convert("RGB")

    labels = [i % len(TEXTURE_IMAGES) for i in range(TEXTURES_LENGTH)]
    try:
        import skimage

        version = skimage.__version__
    except ImportError:
        version = "?"
    return ImageDataset(
        str(spec), f"textures|v{_GENERATOR_VERSION}|skimage{version}", TEXTURES_LENGTH, load, labels, TEXTURE_IMAGES
    )


# --------------------------------------------------------------------------------------------------
# Demo sets, torchvision, folders


def _open_demo(spec: DatasetSpec) -> ImageDataset:
    path = DEMO_DIR / f"{spec.name}.npz"
    if not path.is_file():
        raise DatasetError(
            f"demo set {spec.name!r} not found in {DEMO_DIR}; available: {list_demo_sets() or 'none'} "
            "(regenerate them with `python scripts/make_demo_assets.py`)"
        )
    raw = path.read_bytes()
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            images = npz["images"]
            labels = npz["labels"].astype(np.int64).tolist() if "labels" in npz.files else None
            names = tuple(str(n) for n in npz["class_names"]) if "class_names" in npz.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: not a valid demo set ({exc})") from exc
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DatasetError(f"{path}: 'images' must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise DatasetError(f"{path}: {len(labels)} labels for {len(images)} images")
    # identity hashes the arrays, not the file, so re-saving identical data keeps feature caches valid
    digest = _sha(images.tobytes(), str(images.shape).encode(), np.asarray(labels or [], np.int64).tobytes())
    return ImageDataset(str(spec), f"{spec}|{digest}", len(images), _array_loader(images), labels, names)


def _torchvision_datasets() -> Any:
    # tv_compat must run before torchvision is imported (it makes torchvision work on CPU-only torch).
    from dlsr_core import tv_compat  # noqa: F401

    # isort: split
    import torchvision.datasets

    return torchvision.datasets


def _split_kwargs(cls: type, split: str | None) -> dict[str, Any]:
    """Translate a split name into the class's own constructor argument (train=bool, split=str, ...)."""
    params = inspect.signature(cls.__init__).parameters
    if split is None:
        return {}
    lowered = split.lower()
    if "train" in params:
        if lowered not in ("train", "test"):
            raise DatasetError(f"{cls.__name__} has splits 'train' and 'test', not {split!r}")
        return {"train": lowered == "train"}
    if "split" in params:
        return {"split": split}
    if "background" in params:  # Omniglot
        if lowered not in ("background", "evaluation", "train", "test"):
            raise DatasetError(f"{cls.__name__} has splits 'background' (train) and 'evaluation' (test)")
        return {"background": lowered in ("background", "train")}
    if "classes" in params:  # LSUN: "train", "val", "test" or a category such as "bedroom_train"
        return {"classes": split if lowered in ("train", "val", "test") else [split]}
    raise DatasetError(f"{cls.__name__} does not take a split; use torchvision:{cls.__name__}")


def _torchvision_labels(dataset: Any) -> list[int] | None:
    for attr in ("targets", "labels", "_labels", "y"):
        values = getattr(dataset, attr, None)
        if values is None:
            continue
        try:
            array = np.asarray(values)
        except (TypeError, ValueError):
            continue
        if array.ndim == 1 and len(array) == len(dataset) and np.issubdtype(array.dtype, np.integer):
            return array.astype(np.int64).tolist()
    return None


def _to_pil_rgb(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    array = np.asarray(item.numpy() if hasattr(item, "numpy") else item)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # CHW tensors
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        return _to_rgb(Image.fromarray(array.astype(np.float32)))
    return Image.fromarray(array).convert("RGB")


def _open_torchvision(spec: DatasetSpec, root: Path | None, download: bool) -> ImageDataset:
    try:
        datasets = _torchvision_datasets()
    except ImportError as exc:
        raise DatasetError(f"torchvision is not importable ({exc}); `pip install torchvision`") from exc
    available = {n.lower(): n for n in dir(datasets) if isinstance(getattr(datasets, n), type)}
    class_name = available.get((spec.name or "").lower())
    if class_name is None:
        raise DatasetError(f"torchvision.datasets has no class {spec.name!r}; e.g. CIFAR10, SVHN, MNIST, KMNIST")
    cls = getattr(datasets, class_name)
    spec = replace(spec, name=class_name)
    folder = (root if root is not None else TORCHVISION_ROOT).expanduser()
    kwargs = _split_kwargs(cls, spec.split)
    if "download" in inspect.signature(cls.__init__).parameters:
        kwargs["download"] = download
    try:
        dataset = cls(str(folder), **kwargs)
    except TypeError as exc:  # the class needs arguments a spec string cannot express
        raise DatasetError(
            f"cannot build torchvision.datasets.{class_name}(root, {kwargs}): {exc}. "
            "Save its images to a directory and use folder:<path> instead."
        ) from exc
    except Exception as exc:  # torchvision raises RuntimeError/FileNotFoundError/URLError/... here
        if download:
            raise DatasetError(
                f"could not download or open {spec} into {folder}: {exc} "
                "(downloading needs network access; or put the files there yourself)"
            ) from exc
        raise DatasetError(
            f"{spec} is not available under {folder} ({exc}). Pass --download to fetch it (needs network) "
            "or point --data-root at a folder that already holds it in torchvision's layout."
        ) from exc

    def load(i: int) -> Image.Image | None:
        try:
            item = dataset[i]
            return _to_pil_rgb(item[0] if isinstance(item, tuple) else item)
        except (OSError, ValueError, SyntaxError):
            return None

    names = getattr(dataset, "classes", None)
    class_names = tuple(str(c) for c in names) if isinstance(names, (list, tuple)) else None
    return ImageDataset(
        str(spec), f"{spec}|n={len(dataset)}", len(dataset), load, _torchvision_labels(dataset), class_names
    )


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints, ...
        files += [
            Path(dirpath) / f for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _open_folder(spec: DatasetSpec) -> ImageDataset:
    folder = Path(spec.path or "")
    if not folder.is_dir():
        raise DatasetError(f"{spec}: {folder} is not a directory")
    files = _folder_files(folder)
    if not files:
        raise DatasetError(f"{spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    digest = hashlib.sha256()
    for path in files:
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # broken symlink: still listed, will load as None
            size, mtime = -1, -1
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0{mtime}\n".encode())

    def load(i: int) -> Image.Image | None:
        try:
            return load_image(files[i])
        except ImageLoadError:
            return None

    identity = f"folder|n={len(files)}|{digest.hexdigest()[:20]}|{_DECODE_RULE}"
    return ImageDataset(str(spec), identity, len(files), load, None, None, tuple(files))


def item_name(dataset: ImageDataset, index: int) -> str:
    """How a row is named in outputs: the file path for folder datasets, else `<dataset>#<index>`."""
    if dataset.paths is not None:
        return str(dataset.paths[index])
    return f"{dataset.name}#{index}"


def describe_skipped(dataset: ImageDataset, kept: Sequence[int]) -> list[tuple[str, str]]:
    """(item, reason) for each position of `dataset` not in `kept` — the items feature extraction skipped.

    Folder files are decoded again to recover the reason (only the skipped ones, so this is cheap).
    """
    kept_positions = {int(i) for i in kept}
    skipped = []
    for index in range(len(dataset)):
        if index in kept_positions:
            continue
        reason = "could not be decoded"
        if dataset.paths is not None:
            path = dataset.paths[index]
            try:
                load_image(path)
                reason = "could not be read when its features were extracted (it reads now: re-extract to use it)"
            except ImageLoadError as error:
                reason = str(error).removeprefix(f"{path}: ")
        skipped.append((item_name(dataset, index), reason))
    return skipped
