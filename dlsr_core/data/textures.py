"""The ``textures`` source: crops of scikit-image's bundled public-domain photos (far OOD)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dlsr_core.data.dataset import GENERATED_SIZE, GENERATOR_VERSION, DatasetError, ImageDataset

if TYPE_CHECKING:
    from dlsr_core.data.spec import DatasetSpec

TEXTURES_LENGTH = 5000
_TEXTURES_SEED = 20240602
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


def open_textures(spec: DatasetSpec) -> ImageDataset:
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
        str(spec), f"textures|v{GENERATOR_VERSION}|skimage{version}", TEXTURES_LENGTH, load, labels, TEXTURE_IMAGES
    )
