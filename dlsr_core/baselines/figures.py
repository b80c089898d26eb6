"""Small PNG figures for the baselines' model card, drawn with Pillow alone (no plotting library needed).

- `loss_curve_png`: the pixel DDPM's held-out loss (and smoothed training loss) against training steps.
- `image_grid_png`: a grid of generated images.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes

_HELD_OUT = (31, 119, 180)
_TRAIN = (255, 127, 14)
_BEST = (44, 160, 44)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image_grid_png(path: str | Path, pixels: Tensor, columns: int = 8, scale: int = 2) -> None:
    """Write images (N, C, S, S) in [-1, 1], C = 1 or 3, as one PNG grid (grayscale or RGB), `columns` wide, each
    image enlarged `scale` times."""
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3) or len(pixels) == 0:
        raise ValueError(f"need images (N, 1 or 3, S, S), got {tuple(pixels.shape)}")
    images = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    count, size, channels = len(images), images.shape[1], images.shape[-1]
    rows = math.ceil(count / columns)
    grid = np.full((rows * (size + 2) + 2, columns * (size + 2) + 2, channels), 255, dtype=np.uint8)
    for position, image in enumerate(images):
        top, left = 2 + (position // columns) * (size + 2), 2 + (position % columns) * (size + 2)
        grid[top : top + size, left : left + size] = image
    picture = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode="L" if channels == 1 else "RGB")
    picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    atomic_write_bytes(path, _png_bytes(picture))


def _polyline(points: list[tuple[float, float]], box: tuple[float, float, float, float], limits: tuple) -> list:
    """Data points -> pixel coordinates inside box (left, top, right, bottom) for limits (x0, x1, y0, y1)."""
    left, top, right, bottom = box
    x0, x1, y0, y1 = limits
    return [
        (
            left + (x - x0) / max(x1 - x0, 1e-12) * (right - left),
            bottom - (y - y0) / max(y1 - y0, 1e-12) * (bottom - top),
        )
        for x, y in points
    ]


def loss_curve_png(path: str | Path, curve: list[dict], width: int = 560, height: int = 320) -> None:
    """Write the held-out loss (blue, dots), the smoothed training loss (orange) and the best point (green) of
    `curve` (dicts with step, heldout_loss, train_loss_smoothed) against steps, with the axis range written out."""
    if not curve:
        raise ValueError("the loss curve is empty")
    held = [(p["step"], p["heldout_loss"]) for p in curve]
    train = [(p["step"], p["train_loss_smoothed"]) for p in curve if math.isfinite(p["train_loss_smoothed"])]
    values = [y for _, y in held + train]
    limits = (0.0, float(max(x for x, _ in held)), min(values) * 0.97, max(values) * 1.03)
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    box = (60.0, 30.0, width - 20.0, height - 40.0)
    draw.rectangle(box, outline=(0, 0, 0))
    for series, colour in ((train, _TRAIN), (held, _HELD_OUT)):
        if len(series) > 1:
            draw.line(_polyline(series, box, limits), fill=colour, width=2)
    for x, y in _polyline(held, box, limits):
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=_HELD_OUT)
    best = min(held, key=lambda point: point[1])
    bx, by = _polyline([best], box, limits)[0]
    draw.ellipse((bx - 5, by - 5, bx + 5, by + 5), outline=_BEST, width=2)
    draw.text((box[0], 8), "pixel DDPM: held-out loss (blue), smoothed training loss (orange), kept (green)", fill=0)
    draw.text((4, box[1]), f"{limits[3]:.4f}", fill=0)
    draw.text((4, box[3] - 10), f"{limits[2]:.4f}", fill=0)
    draw.text((box[0], box[3] + 6), "step 0", fill=0)
    draw.text((box[2] - 80, box[3] + 6), f"step {int(limits[1]):,}", fill=0)
    draw.text((box[0] + 120, box[3] + 22), f"best {best[1]:.4f} at step {int(best[0]):,}", fill=0)
    atomic_write_bytes(path, _png_bytes(picture))
