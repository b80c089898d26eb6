"""DLSR as a pytorch-ood detector, so a pytorch-ood user can put it into their own benchmark next to its detectors.

    from dlsr_core.ood_detector import DLSR
    detector = DLSR.from_run()                        # the shipped model, with its backbone as encoder
    loader = DataLoader(my_dataset_with(detector.transform), batch_size=64)
    scores = torch.cat([detector(x) for x, _ in loader])     # higher = more OOD, like every pytorch-ood detector

It follows pytorch-ood's `FeaturesDetector` contract: `fit(loader)` / `predict(images)` go through the encoder (the
frozen backbone that makes DLSR's layer-wise feature vectors); `fit_features(z, y)` / `predict_features(z)` work on
those vectors directly. Fitting trains an LFDN on the ID vectors (labels are ignored: DLSR is unsupervised; samples
labelled < 0, pytorch-ood's mark for OOD, are left out). Scores equal `dlsr_core.scoring.Detector.score_features`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from dlsr_core import tv_compat  # noqa: F401  (pytorch_ood imports torchvision)

# isort: split
from pytorch_ood.api import (
    DetectorInfo,
    FeaturesDetector,
    ModelNotSetException,
    Paper,
    RequiresFittingException,
    Task,
)
from pytorch_ood.utils import extract_features, is_known

from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, SCORE_NAMES, Detector
from dlsr_core.training import Provenance, TrainConfig, train


class DLSR(FeaturesDetector):
    """Diffusion-based layer-wise semantic reconstruction (Yang et al., NeurIPS 2024) as a pytorch-ood detector."""

    info = DetectorInfo(
        paper=Paper(
            title="Diffusion-based Layer-wise Semantic Reconstruction for Unsupervised Out-of-Distribution Detection",
            venue="NeurIPS",
            year=2024,
            url="https://arxiv.org/abs/2411.10701",
        ),
        tasks={Task.CLASSIFICATION},
    )
    requires_fit = True
    hyperparameter_space = {"timestep": [3, 5, 8, 10], "score": list(SCORE_NAMES)}

    def __init__(
        self,
        encoder=None,
        detector: Detector | None = None,
        score: str = "mfsim",
        timestep: int | None = None,  # None: the model's own scoring timestep
        steps: int | None = DEFAULT_STEPS,
        seed: int = 0,
        draws: int = DEFAULT_DRAWS,
        model_config: LFDNConfig | None = None,
        train_config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        input_size: int | None = None,
        weights: str = "pretrained",
    ) -> None:
        """
        :param encoder: a dlsr_core FeatureExtractor (images (B, 3, H, W) -> DLSR vectors (B, D)); optional when only
            ``fit_features`` / ``predict_features`` are used with a ready ``detector``
        :param detector: a trained dlsr_core Detector; None until ``fit`` trains one
        :param score: "mfsim" (the paper's recommendation), "mse" or "lr"
        :param model_config, train_config: the LFDN and its training for ``fit`` (default: the shipped recipe's
            width 512, depth 6, 10 epochs)
        :param run_dir: where ``fit`` writes checkpoints (default: a temporary folder)
        :param input_size, weights: the encoder's input size and weights name ("pretrained"/"random"), recorded in
            the checkpoints ``fit`` writes (taken from ``detector`` when it is given)
        """
        if score not in SCORE_NAMES:
            raise ValueError(f"score must be one of {SCORE_NAMES}, got {score!r}")
        self.encoder = encoder
        self.detector = detector
        self.score = score
        self.timestep = timestep
        self.steps = steps
        self.seed = seed
        self.draws = draws
        self.model_config = model_config
        self.train_config = train_config or TrainConfig(epochs=10, learning_rate=3e-4)
        self.run_dir = run_dir
        self.input_size = input_size or (detector.input_size if detector is not None else None)
        self.weights = weights

    @classmethod
    def from_run(cls, run_dir: str | Path = DEFAULT_RUN_DIR, with_encoder: bool = True, **options) -> DLSR:
        """A fitted detector from a trained run (default: the shipped model), with its backbone as encoder."""
        detector = Detector.load(run_dir, device="cpu")
        encoder = None
        if with_encoder:
            from dlsr_core.backbones import create_feature_extractor

            encoder = create_feature_extractor(
                detector.backbone, weights=detector.backbone_weights(), device="cpu", options=detector.feature_options
            )
        return cls(encoder=encoder, detector=detector, weights=detector.backbone_weights(), **options)

    def transform(self, image: Image.Image) -> Tensor:
        """One PIL image -> the encoder's input (3, S, S): its resize and normalization, for a Dataset transform."""
        if self.encoder is None or self.input_size is None:
            raise ModelNotSetException("DLSR.transform needs an encoder and its input_size")
        return self.encoder.preprocess([image], self.input_size)[0]

    def fit(self, data_loader: DataLoader) -> DLSR:
        """Encode the loader's ID images (labels < 0 are skipped) and fit on their feature vectors."""
        if self.encoder is None:
            raise ModelNotSetException
        features, labels = extract_features(data_loader, self.encoder, device=None)
        return self.fit_features(features, labels)

    def fit_features(self, x: Tensor, y: Tensor | None = None) -> DLSR:
        """Train an LFDN on ID feature vectors x (N, D); y (N,) only marks OOD rows (< 0) to leave out."""
        if y is not None:
            x = x[is_known(y)]
        if self.encoder is None or not hasattr(self.encoder, "stage_dims") or self.input_size is None:
            raise ModelNotSetException("DLSR.fit_features needs a dlsr_core encoder (stage sizes) and input_size")
        stage_dims = tuple(self.encoder.stage_dims)
        config = self.model_config or LFDNConfig(feature_dim=x.shape[1], width=512, depth=6)
        run_dir = Path(self.run_dir or tempfile.mkdtemp(prefix="dlsr-pytorch-ood-"))
        provenance = Provenance(
            backbone=self.encoder.name,
            weights=self.weights,
            input_size=self.input_size,
            stage_dims=stage_dims,
            dataset="pytorch-ood fit",
        )
        train(x.detach().cpu().float(), run_dir, config, self.train_config, provenance, resume=False)
        self.detector = Detector.load(run_dir, device="cpu")
        return self

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores (B,) of encoder inputs x (B, 3, S, S)."""
        if self.encoder is None:
            raise ModelNotSetException
        return self.predict_features(self.encoder(x))

    def predict_features(self, x: Tensor) -> Tensor:
        """Outlier scores (B,) of DLSR feature vectors x (B, D); higher = more OOD."""
        if self.detector is None:
            raise RequiresFittingException()
        with torch.inference_mode():
            result = self.detector.score_features(
                x, self.timestep, self.steps, 1.0, self.seed, with_lr=self.score == "lr", draws=self.draws
            )
        return torch.from_numpy(result.get(self.score).copy())
