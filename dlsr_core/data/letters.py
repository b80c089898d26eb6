"""The ``letters`` source: notMNIST-style letters A-J rendered deterministically from DejaVu fonts (far OOD)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dlsr_core.data.dataset import GENERATED_SIZE, GENERATOR_VERSION, DatasetError, ImageDataset, sha

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec

LETTERS_LENGTH = 5000
_LETTERS_SEED = 20240601
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


def open_letters(spec: DatasetSpec) -> ImageDataset:
    fonts = letter_fonts()
    render_letter(0, fonts)  # fail now with the install hint rather than inside the extractor
    font_id = sha("|".join(f"{p.name}:{p.stat().st_size}" for p in fonts).encode())

    def load(i: int) -> Image.Image:
        return Image.fromarray(render_letter(i, fonts)[0], "L").convert("RGB")

    labels = [i % len(LETTERS) for i in range(LETTERS_LENGTH)]
    return ImageDataset(
        str(spec), f"letters|v{GENERATOR_VERSION}|{font_id}", LETTERS_LENGTH, load, labels, tuple(LETTERS)
    )
