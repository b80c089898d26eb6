"""Images as the baselines read them: (N, C, S, S) float32 in [-1, 1], C = 1 (grayscale) or 3 (RGB).

The pixel DDPM and the classifier CNN both read images this way. `images_to_tensor` converts decoded images,
`adapt_pixels` converts a tensor made for another model (channels, size), `infer_image_shape` picks the channels and
size for a new model from the data itself, and `dataset_images` / `labelled_images` load a dataset spec
(dlsr_core.data: Fashion-MNIST, demo sets, a user's folder...) restricted to a row subset and, for labelled data, to
chosen classes; a folder's labels come from its ImageFolder layout (<folder>/<class>/<image>).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from dlsr_core.diffusion import ConfigError


def images_to_tensor(images: Sequence[Image.Image | np.ndarray], channels: int, size: int) -> Tensor:
    """PIL images or uint8 arrays (H, W) / (H, W, 3), any size -> (N, channels, size, size) float32 in [-1, 1]
    (grayscale when channels = 1, RGB when 3; bilinear resize when the size differs)."""
    if channels not in (1, 3):
        raise ConfigError(f"images have 1 or 3 channels, got {channels}")
    batch = np.empty((len(images), size, size, channels), dtype=np.float32)
    for position, image in enumerate(images):
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        converted = image.convert("L" if channels == 1 else "RGB")
        if converted.size != (size, size):
            converted = converted.resize((size, size), Image.Resampling.BILINEAR)
        batch[position] = np.asarray(converted, dtype=np.float32).reshape(size, size, channels)
    return torch.from_numpy(batch / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def adapt_pixels(pixels: Tensor, channels: int, size: int) -> Tensor:
    """Images (N, 1 or 3, H, W) in [-1, 1] as (N, channels, size, size): gray <-> RGB by channel averaging or
    repetition, bilinear resize when the size differs; unchanged when they already fit."""
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ConfigError(f"images must be (N, 1 or 3, H, W) in [-1, 1], got {tuple(pixels.shape)}")
    if pixels.shape[1] != channels:
        pixels = pixels.mean(dim=1, keepdim=True) if channels == 1 else pixels.expand(-1, 3, -1, -1)
    if pixels.shape[-2:] != (size, size):
        pixels = nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    return pixels.float()


def dataset_images(
    spec: str, rows: np.ndarray | None = None, shape: tuple[int, int] | None = None
) -> tuple[Tensor, tuple[int, int]]:
    """(images (N, C, S, S) in [-1, 1], (C, S)) of the rows `rows` (default all) of a dataset spec; `shape`
    defaults to `infer_image_shape` on up to 256 of them. Unreadable images are refused."""
    from dlsr_core.data import open_dataset

    dataset = open_dataset(spec)
    positions = np.arange(len(dataset)) if rows is None else np.asarray(rows)
    images = [dataset[int(i)] for i in positions]
    if any(image is None for image in images):
        raise ConfigError(f"{spec}: some images cannot be read; remove them before training a baseline")
    shape = shape or infer_image_shape(images[:256])
    return images_to_tensor(images, *shape), shape


def labelled_images(
    spec: str,
    rows: np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
    keep_classes: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, tuple[str, ...], tuple[int, int]]:
    """(images (N, C, S, S) in [-1, 1], labels (N,) in 0..K-1, the K class names, (C, S)) of a labelled dataset
    spec (dlsr_core.data), restricted to `rows` and then to the original classes `keep_classes` (relabelled
    0..K-1 in that order). `shape` (channels, size) defaults to `infer_image_shape` on up to 256 of the images."""
    from dlsr_core.data import open_dataset

    dataset = open_dataset(spec)
    all_labels, names = dataset.labels, dataset.class_names
    if all_labels is None:
        all_labels, names = _folder_classes(spec, dataset)
    positions = np.arange(len(dataset)) if rows is None else np.asarray(rows)
    labels = np.asarray(all_labels)[positions]
    names = names or tuple(str(k) for k in range(int(labels.max()) + 1))
    kept = list(range(len(names))) if keep_classes is None else [int(k) for k in keep_classes]
    if len(kept) < 2 or len(set(kept)) != len(kept) or not all(0 <= k < len(names) for k in kept):
        raise ConfigError(f"keep at least two distinct classes of {len(names)}, got {keep_classes}")
    chosen = np.isin(labels, kept)
    images, shape = dataset_images(spec, positions[chosen], shape)
    relabel = {original: new for new, original in enumerate(kept)}
    targets = torch.as_tensor([relabel[int(label)] for label in labels[chosen]], dtype=torch.long)
    return images, targets, tuple(names[k] for k in kept), shape


def _folder_classes(spec: str, dataset) -> tuple[list[int], tuple[str, ...]]:
    """Labels from an ImageFolder layout (<root>/<class>/<image>): one class per top-level subfolder, in name order."""
    from dlsr_core.data import parse_dataset

    root = parse_dataset(spec).path
    if dataset.paths is None or root is None:
        raise ConfigError(f"{spec} has no class labels; a classifier baseline needs labelled images")
    parts = [path.relative_to(root).parts for path in dataset.paths]
    if any(len(part) < 2 for part in parts):
        raise ConfigError(f"{spec}: put every image in a subfolder named after its class (<folder>/<class>/<image>)")
    names = tuple(sorted({part[0] for part in parts}))
    index = {name: position for position, name in enumerate(names)}
    return [index[part[0]] for part in parts], names


def infer_image_shape(images: Sequence[Image.Image], max_size: int = 64) -> tuple[int, int]:
    """(channels, size) for a model of these images: 1 when every image is gray (R = G = B), else 3; the most common
    shorter side, capped at `max_size` (a CPU-sized model) and at least 8."""
    if not images:
        raise ConfigError("need at least one image to infer the input shape")
    gray, sides = True, []
    for image in images:
        rgb = np.asarray(image.convert("RGB"))
        gray = gray and bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        sides.append(min(image.size))
    values, counts = np.unique(sides, return_counts=True)
    return (1 if gray else 3), int(min(max(values[counts.argmax()], 8), max_size))
