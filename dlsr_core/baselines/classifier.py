"""Classifier-based detectors from pytorch-ood on a CNN trained with the ID labels (dlsr_core.baselines.cnn). They
need labels; DLSR does not.

The CNN is trained from scratch on the ID training images (the fit set for Fashion-MNIST); its penultimate layer
(globally pooled ReLU activations, C values >= 0) feeds the detectors. Each detector is pytorch-ood's own
implementation, fitted on the training images' penultimate features and called through its public API:

| name | pytorch-ood | input | fitted state kept here |
|---|---|---|---|
| msp | MaxSoftmax | logits | none |
| energy | EnergyBased (EBO) | logits | none |
| dice | DICE (energy of the sparsified head) | penultimate features | mean training activation (C,) |
| ash_s | ASH, variant ash-s (energy) | penultimate features as (B, C, 1, 1) maps | none |
| react | ReAct (energy of the clipped activations) | penultimate features as (B, C, 1, 1) maps | clip threshold |
| vim | ViM | penultimate features | principal subspace (C, d) and alpha |

Hyperparameters are the papers' or pytorch-ood's defaults, fixed before looking at any OOD data (not tuned). The
network is stored in float16 and the detectors are fitted on exactly those float16 weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dlsr_core import tv_compat  # noqa: F401  (pytorch_ood imports torchvision)
from dlsr_core.baselines.cnn import (
    DEFAULT_WIDTHS,
    CNNConfig,
    CNNTrainConfig,
    SmallCNN,
    accuracy,
    build_cnn,
    predict,
    train_cnn,
)
from dlsr_core.baselines.distance import NotFittedError
from dlsr_core.baselines.images import adapt_pixels, images_to_tensor
from dlsr_core.baselines.store import (
    DEFAULT_BASELINES_DIR,
    BaselineKind,
    Header,
    TrainingRecord,
    bound_by_tensors,
    load_baseline,
    meta_shapes,
    rounded_to_float16,
    save_baseline,
)
from dlsr_core.diffusion import ConfigError
from dlsr_core.validation import TrainingData

KIND = "classifier"
DEFAULT_PATH = DEFAULT_BASELINES_DIR / "classifier.safetensors"
DETECTOR_NAMES = ("msp", "energy", "dice", "ash_s", "react", "vim")


@dataclass(frozen=True)
class DetectorSettings:
    """DICE keeps the top 10% of weight contributions (p = 0.9, the DICE paper's CIFAR setting); ASH-S prunes the
    lowest 90% of activations (the ASH paper's ASH-S@90); ReAct clips at the 90th percentile of ID activations (its
    paper's default); ViM uses a d-dimensional principal subspace of the C-dimensional features, d = C / 2 by
    default (the ViM paper's choice for features narrower than 1,500)."""

    dice_p: float = field(default=0.9, metadata={"range": (0.0, 0.999)})
    ash_percentile: float = field(default=0.9, metadata={"range": (0.0, 0.999)})
    react_percentile: float = field(default=0.9, metadata={"range": (0.001, 1.0)})
    vim_dim: int | None = field(default=None, metadata={"range": (1, None)})


@dataclass(frozen=True)
class ClassifierRecord(TrainingRecord):
    """The training record stored with the classifier: its data, classes, training curve and accuracies."""

    classes: tuple[str, ...] | None = None
    train_images: int | None = None
    curve: list | None = None
    validation_set: TrainingData | None = None
    validation_accuracy: float | None = None
    test_set: str | None = None
    test_accuracy: float | None = None
    fit_detectors_seconds: float | None = None


@dataclass(frozen=True)
class ClassifierFile:
    """The config stored in a classifier file: the network, the detector settings and their fitted scalars."""

    cnn: CNNConfig
    settings: DetectorSettings
    react_threshold: float = field(metadata={"range": (0.0, None)})
    vim_alpha: float = field(metadata={"range": (0.0, None)})


def _as_maps(features: Tensor) -> Tensor:
    """Pooled features (B, C) as the (B, C, 1, 1) feature maps ASH and ReAct act on."""
    return features[:, :, None, None]


@dataclass
class ClassifierBaselines:
    """A trained CNN and the fitted state of every pytorch-ood detector on its penultimate features."""

    net: SmallCNN
    settings: DetectorSettings
    mean_activation: Tensor  # (C,) DICE
    react_threshold: float
    vim_principal: Tensor  # (C, d) principal subspace of the centred training features
    vim_alpha: float
    info: ClassifierRecord = field(default_factory=ClassifierRecord)
    _detectors: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # One memory layout for trained and loaded networks (channels_last is the faster one on CPUs), so that a
        # model scores exactly as before after a save and load.
        self.net = self.net.to(memory_format=torch.channels_last).eval().requires_grad_(False)

    @classmethod
    def fit(
        cls,
        net: SmallCNN,
        images: Tensor,
        labels: Tensor,
        settings: DetectorSettings = DetectorSettings(),
        info: ClassifierRecord | None = None,
    ) -> ClassifierBaselines:
        """Round `net` to float16 precision, then fit DICE, ReAct and ViM (pytorch-ood's `fit_features` /
        `fit_feature_maps`) on the penultimate features of training images (N, C_in, S, S) with labels (N,)."""
        from pytorch_ood.detector import DICE, ReAct, ViM

        net = rounded_to_float16(net).eval().requires_grad_(False)
        features, _ = predict(net, images)
        labels, head = labels.long(), net.head
        vim_dim = settings.vim_dim or max(1, features.shape[1] // 2)
        dice = DICE(None, head.weight, head.bias, p=settings.dice_p).fit_features(features, labels)
        react = ReAct(None, head, percentile=settings.react_percentile).fit_feature_maps(_as_maps(features), labels)
        vim = ViM(None, vim_dim, head.weight, head.bias).fit_features(features, labels)
        # pytorch-ood keeps the (C, C - d) residual basis; its complement, the (C, d) principal basis, is smaller.
        principal = _orthogonal_complement(vim.principal_subspace)
        return cls(
            net=net,
            settings=replace(settings, vim_dim=vim.d),
            mean_activation=dice.mean_activation.clone(),
            react_threshold=float(react.threshold),
            vim_principal=principal,
            vim_alpha=float(vim.alpha),
            info=info or ClassifierRecord(),
        )

    @property
    def config(self) -> CNNConfig:
        return self.net.config

    def prepare(self, pixels: Tensor) -> Tensor:
        """Images (N, 1 or 3, H, W) in [-1, 1] as the network's input (N, C_in, S, S) (images.adapt_pixels)."""
        return adapt_pixels(pixels, self.config.in_channels, self.config.image_size)

    def features(self, pixels: Tensor) -> Tensor:
        """Penultimate features (N, C) of images (N, 1 or 3, H, W) in [-1, 1]."""
        return predict(self.net, self.prepare(pixels))[0]

    def logits(self, pixels: Tensor) -> Tensor:
        """Class logits (N, K) of images (N, 1 or 3, H, W) in [-1, 1]."""
        return predict(self.net, self.prepare(pixels))[1]

    def detectors(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """name -> function penultimate features (N, C) -> scores (N,), each a pytorch-ood detector's public
        predict method."""
        if self._detectors is None:
            self._detectors = self._build_detectors()
        return self._detectors

    def _build_detectors(self) -> dict[str, Callable[[Tensor], Tensor]]:
        from pytorch_ood.detector import ASH, DICE, EnergyBased, MaxSoftmax, ReAct, ViM

        head = self.net.head
        on_maps = lambda maps: head(maps.flatten(1))  # noqa: E731  (ASH and ReAct call the head on (B, C, 1, 1))
        msp, energy = MaxSoftmax(None), EnergyBased(None)
        # DICE's fitted state is the mean training activation: fitting on that one vector reproduces it exactly.
        dice = DICE(None, head.weight, head.bias, p=self.settings.dice_p)
        dice.fit_features(self.mean_activation[None, :], torch.zeros(1, dtype=torch.long))
        ash = ASH(backbone=None, head=on_maps, variant="ash-s", percentile=self.settings.ash_percentile)
        react = ReAct(None, on_maps, threshold=self.react_threshold)
        vim = ViM(None, self.vim_principal.shape[1], head.weight, head.bias)
        # ViM scores with the residual outside the principal subspace; any orthonormal basis of that residual space
        # gives the same norms, so it is rebuilt from the stored principal directions instead of being stored.
        vim.principal_subspace = _orthogonal_complement(self.vim_principal)
        vim.alpha = self.vim_alpha
        return {
            "msp": lambda z: msp.predict_logits(head(z)),
            "energy": lambda z: energy.predict_logits(head(z)),
            "dice": dice.predict_features,
            "ash_s": lambda z: ash.predict_feature_maps(_as_maps(z)),
            "react": lambda z: react.predict_feature_maps(_as_maps(z)),
            "vim": vim.predict_features,
        }

    def score_features(self, name: str, features: Tensor) -> np.ndarray:
        """Scores (N,) of detector `name` for penultimate features (N, C); higher = more OOD."""
        if name not in DETECTOR_NAMES:
            raise KeyError(f"unknown classifier detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}")
        if features.ndim != 2 or features.shape[1] != self.config.feature_dim:
            raise ConfigError(f"penultimate features must be (N, {self.config.feature_dim}), got {features.shape}")
        with torch.no_grad():
            return self.detectors()[name](features.float()).double().numpy()

    def score(self, name: str, pixels: Tensor) -> np.ndarray:
        """Scores (N,) of detector `name` for images (N, 1 or 3, H, W) in [-1, 1]; higher = more OOD."""
        return self.score_features(name, self.features(pixels))

    def score_images(self, name: str, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Scores (N,) of PIL images or uint8 arrays (any size and mode)."""
        return self.score(name, images_to_tensor(images, self.config.in_channels, self.config.image_size))

    def save(self, path: str | Path) -> None:
        """The network in float16 (it was rounded to that before fitting), the detector state in float32."""
        tensors = {f"net.{key}": value for key, value in self.net.state_dict().items()}
        tensors.update({"dice.mean_activation": self.mean_activation, "vim.principal": self.vim_principal})
        stored = ClassifierFile(self.config, self.settings, self.react_threshold, self.vim_alpha)
        save_baseline(path, KIND, tensors, stored, self.info, half_keys=("net.",))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> ClassifierBaselines:
        """Check and rebuild saved classifier baselines (see `save`); raises store.BaselineFileError."""
        stored = load_baseline(path, FILE_KIND)
        net = build_cnn(stored.config.cnn)
        net.load_state_dict({k.removeprefix("net."): v for k, v in stored.tensors.items() if k.startswith("net.")})
        return cls(
            net=net.eval().requires_grad_(False),
            settings=stored.config.settings,
            mean_activation=stored.tensors["dice.mean_activation"],
            react_threshold=stored.config.react_threshold,
            vim_principal=stored.tensors["vim.principal"],
            vim_alpha=stored.config.vim_alpha,
            info=stored.info,
        )


def _bound(stored: ClassifierFile, header: Header) -> None:
    sizes = {f"widths[{i}]": width for i, width in enumerate(stored.cnn.widths)}
    sizes["num_classes"] = stored.cnn.num_classes
    bound_by_tensors(sizes, header)
    vim_dim = stored.settings.vim_dim
    if vim_dim is None or vim_dim >= stored.cnn.feature_dim:
        raise ValueError(
            f"settings.vim_dim = {vim_dim} must be set and below the feature size {stored.cnn.feature_dim}"
        )


def _shapes(stored: ClassifierFile) -> dict[str, tuple[int, ...]]:
    shapes = meta_shapes(lambda: build_cnn(stored.cnn), "net.")
    shapes["dice.mean_activation"] = (stored.cnn.feature_dim,)
    shapes["vim.principal"] = (stored.cnn.feature_dim, stored.settings.vim_dim)
    return shapes


def _check_values(stored: ClassifierFile, info: ClassifierRecord, tensors: dict[str, Tensor]) -> None:
    if info.classes is not None and len(info.classes) != stored.cnn.num_classes:
        raise ValueError(f"info.classes names {len(info.classes)} classes, the network has {stored.cnn.num_classes}")
    if (tensors["dice.mean_activation"] < 0).any():
        raise ValueError("dice.mean_activation must be >= 0 (a mean of ReLU activations)")
    principal = tensors["vim.principal"].double()
    gram = principal.T @ principal
    if not torch.allclose(gram, torch.eye(len(gram), dtype=gram.dtype), atol=1e-3):
        raise ValueError("vim.principal must have orthonormal columns (a basis of the principal subspace)")


FILE_KIND = BaselineKind(KIND, ClassifierFile, ClassifierRecord, _bound, _shapes, _check_values)


def _orthogonal_complement(basis: Tensor) -> Tensor:
    """An orthonormal basis (C, C - d) of the space orthogonal to the orthonormal columns of `basis` (C, d)."""
    if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
        raise NotFittedError(f"a ViM subspace basis must be (C, d) with d <= C, got {tuple(basis.shape)}")
    complete, _ = torch.linalg.qr(basis.double(), mode="complete")
    return complete[:, basis.shape[1] :].float().contiguous()


def train_classifier(
    images: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    training_set: TrainingData,
    train: CNNTrainConfig | None = None,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    validation: tuple[Tensor, Tensor, TrainingData] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    machine: str | None = None,
) -> ClassifierBaselines:
    """Train a CNN on labelled images (N, C_in, S, S) in [-1, 1] (labels (N,) in 0..len(classes)-1; channels and
    size from the tensor) and fit every detector on the same images. `training_set` says which data these are;
    `validation` (images, labels, which data) is evaluated after every epoch, reported only."""
    config = CNNConfig(
        num_classes=len(classes), in_channels=images.shape[1], image_size=images.shape[-1], widths=widths
    )
    checked = None if validation is None else validation[:2]
    net, record = train_cnn(images, labels, config, train or CNNTrainConfig(), checked, on_epoch)
    started = time.perf_counter()
    info = ClassifierRecord(
        training_set=training_set,
        classes=tuple(classes),
        train=record["train"],
        train_images=record["train_images"],
        train_seconds=record["train_seconds"],
        curve=record["curve"],
        machine=machine,
    )
    model = ClassifierBaselines.fit(net, images, labels, info=info)
    if validation is not None:  # measured on the float16 weights that are stored
        valid_accuracy = accuracy(model.net, model.prepare(validation[0]), validation[1])
        info = replace(info, validation_set=validation[2], validation_accuracy=valid_accuracy)
    model.info = replace(info, fit_detectors_seconds=time.perf_counter() - started)
    return model
