"""Decoding one image file or byte string into a bounded 8-bit RGB image, with the decoding limits."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Below Pillow's own limit (~89 MP) so our clear error fires before Pillow's warning does.
MAX_IMAGE_PIXELS = 64_000_000
# Decoded images are reduced to at most this many pixels on their longest side (the largest backbone input size the
# CLI accepts): one decoded image then holds at most ~3 MB, and every path (folder, --images, uploads) decodes alike.
MAX_DECODED_SIDE = 1024
DECODE_RULE = f"max{MAX_DECODED_SIDE}"  # part of folder identities, so cached features follow a change of the rule


class ImageLoadError(ValueError):
    """A file or byte string is not a decodable image (the message says why)."""


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
    rgb = to_rgb(im)
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


def to_rgb(im: Image.Image) -> Image.Image:
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
