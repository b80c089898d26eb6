"""A small convolutional classifier trained from scratch on the ID images with their labels: the network the
classifier-based detectors (MSP, EBO, DICE, ASH-S, ReAct, ViM) sit on.

It is what a practitioner would deploy for 28 x 28 Fashion-MNIST on a CPU: `len(widths)` stages of two 3 x 3
convolutions (BatchNorm, ReLU), 2 x 2 max-pooling between stages, global average pooling to the penultimate features
(non-negative, as after a ReLU: DICE, ASH and ReAct assume that) and one linear layer to the class logits.
Nothing is specific to Fashion-MNIST: the number of classes comes from the labels, the input size and channels from
the images (`infer_image_shape`), so the same code trains on a subset of classes or on a user's labelled folder.
Images enter as (N, C, S, S) float32 in [-1, 1] (`images_to_tensor`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from dlsr_core.diffusion import ConfigError

MAX_WIDTH = 1024
MAX_IMAGE_SIZE = 256
DEFAULT_WIDTHS = (32, 64, 128)


@dataclass(frozen=True)
class CNNConfig:
    """Architecture: input channels and size, class count, and the channel width of each stage."""

    num_classes: int = field(metadata={"range": (2, 10_000)})
    in_channels: int = field(default=1, metadata={"range": (1, 3)})
    image_size: int = field(default=28, metadata={"range": (8, MAX_IMAGE_SIZE)})
    widths: tuple[int, ...] = field(default=DEFAULT_WIDTHS, metadata={"range": (1, MAX_WIDTH)})

    def __post_init__(self) -> None:
        if not 1 <= len(self.widths) <= 6:
            raise ConfigError(f"a CNN has 1 to 6 stages, got widths {self.widths}")
        if self.image_size >> (len(self.widths) - 1) < 1:
            raise ConfigError(f"{len(self.widths)} stages pool a {self.image_size}-px image below one pixel")

    @property
    def feature_dim(self) -> int:
        """Size C of the penultimate features."""
        return self.widths[-1]


@dataclass(frozen=True)
class CNNTrainConfig:
    """AdamW with a cosine learning rate over `epochs`; augmentation by random shifts of up to `shift` pixels
    (zero padding) and, when `flip`, horizontal mirroring (right for clothes; turn it off for text or digits)."""

    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    shift: int = 2
    flip: bool = True
    seed: int = 0


class SmallCNN(nn.Module):
    """Images (N, C, S, S) -> penultimate features (N, widths[-1]) via `features`, -> logits (N, K) via `forward`."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for stage, width in enumerate(config.widths):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: Tensor) -> Tensor:
        """Globally pooled activations of the last stage: (N, C, S, S) -> (N, widths[-1]), all >= 0."""
        return self.body(images).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def build_cnn(config: CNNConfig) -> SmallCNN:
    """A CNN of `config` with freshly initialised weights (eval mode off)."""
    return SmallCNN(config)


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
    positions, labels = positions[chosen], labels[chosen]
    images = [dataset[int(i)] for i in positions]
    if any(image is None for image in images):
        raise ConfigError(f"{spec}: some images cannot be read; remove them before training a classifier")
    shape = shape or infer_image_shape(images[:256])
    relabel = {original: new for new, original in enumerate(kept)}
    targets = torch.as_tensor([relabel[int(label)] for label in labels], dtype=torch.long)
    return images_to_tensor(images, *shape), targets, tuple(names[k] for k in kept), shape


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
    """(channels, size) for a CNN on these images: 1 when every image is gray (R = G = B), else 3; the most common
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


def _augment(batch: Tensor, train: CNNTrainConfig, generator: torch.Generator) -> Tensor:
    """Random shifts (zero = -1 padding) and optional horizontal flips of a batch (B, C, S, S)."""
    if train.flip:
        flips = torch.rand(len(batch), generator=generator) < 0.5
        batch = torch.where(flips[:, None, None, None], batch.flip(3), batch)
    if train.shift:
        pad, size = train.shift, batch.shape[-1]
        padded = nn.functional.pad(batch, (pad, pad, pad, pad), value=-1.0)
        offsets = torch.randint(0, 2 * pad + 1, (len(batch), 2), generator=generator).tolist()
        batch = torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])
    return batch.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict(model: SmallCNN, images: Tensor, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """(penultimate features (N, C), logits (N, K)) of images (N, C, S, S) in eval mode."""
    model.eval()
    features = [
        model.features(chunk.contiguous(memory_format=torch.channels_last)) for chunk in images.split(batch_size)
    ]
    pooled = torch.cat(features) if features else torch.empty(0, model.config.feature_dim)
    return pooled, model.head(pooled)


def accuracy(model: SmallCNN, images: Tensor, labels: Tensor) -> float:
    """Fraction of images (N, C, S, S) whose arg-max logit is their label (N,)."""
    _, logits = predict(model, images)
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else float("nan")


def train_cnn(
    images: Tensor,
    labels: Tensor,
    config: CNNConfig,
    train: CNNTrainConfig = CNNTrainConfig(),
    validation: tuple[Tensor, Tensor] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[SmallCNN, dict]:
    """Train a CNN with cross-entropy on images (N, C, S, S) in [-1, 1] and labels (N,) in 0..K-1.

    `validation` (images, labels) is evaluated after every epoch (reported, never used to stop or select); returns
    the model after the last epoch (eval mode) and a record with the per-epoch curve and the training time."""
    expected = (config.in_channels, config.image_size, config.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or labels.shape != (len(images),):
        raise ConfigError(
            f"need images (N, {', '.join(map(str, expected))}) and labels (N,), got {tuple(images.shape)}"
        )
    if len(images) == 0 or labels.min() < 0 or labels.max() >= config.num_classes:
        raise ConfigError(f"need at least one image and labels in 0..{config.num_classes - 1}")
    torch.manual_seed(train.seed)
    model = build_cnn(config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    steps_per_epoch = -(-len(images) // train.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, train.learning_rate, total_steps=train.epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(train.seed)
    labels, curve, started = labels.long(), [], time.perf_counter()
    for epoch in range(1, train.epochs + 1):
        model.train()
        total = 0.0
        for rows in torch.randperm(len(images), generator=generator).split(train.batch_size):
            loss = nn.functional.cross_entropy(model(_augment(images[rows], train, generator)), labels[rows])
            if not torch.isfinite(loss):
                raise ConfigError(f"classifier loss became {loss.item()} in epoch {epoch}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        point = {"epoch": epoch, "train_loss": total / len(images), "seconds": time.perf_counter() - started}
        if validation is not None:
            point["validation_accuracy"] = accuracy(model, *validation)
        curve.append(point)
        if on_epoch is not None:
            on_epoch(point)
    record = {"train": asdict(train), "train_seconds": time.perf_counter() - started, "curve": curve}
    record["train_images"] = len(images)
    return model.eval().requires_grad_(False), record
