"""The ``shapes`` source: filled geometric silhouettes drawn deterministically (the validation far-OOD set).

Light shapes on a dark background, like Fashion-MNIST garments: solid silhouettes of a new kind of object rather than
strokes (digits, letters) or natural crops (textures), so the settings chosen on them are not chosen on any set of
the test table. Item i is drawn from a generator seeded by i, at 4x resolution and box-downsampled (anti-aliased).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dlsr_core.data.dataset import GENERATED_SIZE, GENERATOR_VERSION, ImageDataset

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec

SHAPES_LENGTH = 5000
SHAPE_KINDS = ("ellipse", "triangle", "rectangle", "polygon", "star", "ring", "cross", "blobs")
_SHAPES_SEED = 20261203
_SCALE = 4


def _polygon(rng: np.random.Generator, center: tuple[float, float], radius: float, corners: int, star: bool) -> list:
    turn = rng.uniform(0, 2 * math.pi)
    points = []
    for k in range(corners * (2 if star else 1)):
        r = radius * (rng.uniform(0.35, 0.55) if star and k % 2 else rng.uniform(0.8, 1.0))
        angle = turn + 2 * math.pi * k / (corners * (2 if star else 1))
        points.append((center[0] + r * math.cos(angle), center[1] + r * math.sin(angle)))
    return points


def _draw_kind(draw: ImageDraw.ImageDraw, kind: str, rng: np.random.Generator, size: int, fill: int) -> None:
    cx, cy = rng.uniform(0.4, 0.6, size=2) * size
    radius = rng.uniform(0.22, 0.42) * size
    if kind == "ellipse":
        rx, ry = radius, radius * rng.uniform(0.45, 1.0)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon(rng, (cx, cy), radius, 3, star=False), fill=fill)
    elif kind == "rectangle":
        w, h = radius, radius * rng.uniform(0.4, 1.0)
        draw.rectangle((cx - w, cy - h, cx + w, cy + h), fill=fill)
    elif kind == "polygon":
        draw.polygon(_polygon(rng, (cx, cy), radius, int(rng.integers(5, 9)), star=False), fill=fill)
    elif kind == "star":
        draw.polygon(_polygon(rng, (cx, cy), radius, int(rng.integers(4, 8)), star=True), fill=fill)
    elif kind == "ring":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        inner = radius * rng.uniform(0.4, 0.65)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif kind == "cross":
        arm = radius * rng.uniform(0.25, 0.4)
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    else:  # blobs: two to four overlapping discs
        for _ in range(int(rng.integers(2, 5))):
            bx, by = rng.uniform(0.3, 0.7, size=2) * size
            r = rng.uniform(0.12, 0.25) * size
            draw.ellipse((bx - r, by - r, bx + r, by + r), fill=fill)


def render_shape(index: int) -> tuple[np.ndarray, int]:
    """Draw shapes item ``index``: (28, 28) uint8 grayscale, label = position of its kind in SHAPE_KINDS.

    Kinds cycle through SHAPE_KINDS; position, size, corners, brightness (120-255) and a slight blur come from a
    generator seeded by the index.
    """
    label = index % len(SHAPE_KINDS)
    rng = np.random.default_rng((_SHAPES_SEED, index))
    size = GENERATED_SIZE * _SCALE
    canvas = Image.new("L", (size, size), 0)
    _draw_kind(ImageDraw.Draw(canvas), SHAPE_KINDS[label], rng, size, int(rng.integers(120, 256)))
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5) * _SCALE))
    small = canvas.resize((GENERATED_SIZE, GENERATED_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).copy(), label


def open_shapes(spec: DatasetSpec) -> ImageDataset:
    def load(i: int) -> Image.Image:
        return Image.fromarray(render_shape(i)[0], "L").convert("RGB")

    labels = [i % len(SHAPE_KINDS) for i in range(SHAPES_LENGTH)]
    return ImageDataset(str(spec), f"shapes|v{GENERATOR_VERSION}", SHAPES_LENGTH, load, labels, SHAPE_KINDS)
