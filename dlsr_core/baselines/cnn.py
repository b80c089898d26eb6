"""A small convolutional classifier trained from scratch on the ID images with their labels: the network the
classifier-based detectors (MSP, EBO, DICE, ASH-S, ReAct, ViM) sit on.

It is what a practitioner would deploy for 28 x 28 Fashion-MNIST on a CPU: `len(widths)` stages of two 3 x 3
convolutions (BatchNorm, ReLU), 2 x 2 max-pooling between stages, global average pooling to the penultimate features
(non-negative, as after a ReLU: DICE, ASH and ReAct assume that) and one linear layer to the class logits.
Nothing is specific to Fashion-MNIST: the number of classes comes from the labels, the input size and channels from
the images (dlsr_core.baselines.images), so the same code trains on a subset of classes or on a user's labelled
folder. Images enter as (N, C, S, S) float32 in [-1, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
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
