"""The held-out-class benchmark: train on 6 Fashion-MNIST classes, treat the other 4 classes' test images as OOD.

    python -m benchmarks.heldout --stage train       # DLSR on the known classes -> checkpoints/heldout_classes
    python -m benchmarks.heldout --stage baselines   # feature AE (and, where available, the classifier CNN)

A standard open-set protocol (Neal et al. 2018 use 6 known / 4 unknown classes on MNIST-like data). The split keeps
T-shirt/top, Trouser, Pullover, Dress, Sandal and Sneaker and holds out Coat, Shirt, Bag and Ankle boot: three of the
four held-out classes have a close kept relative (Coat ~ Pullover, Shirt ~ T-shirt/top and Pullover, Ankle boot ~
Sneaker and Sandal), so the benchmark is hard and *semantic* — the same kind of image, another kind of object — and
Bag, with no relative, is the easier control. Every setting is frozen from the main protocol (the backbone, input
size, epochs and scoring chosen on validation for the shipped model; the k of k-NN too); only the LFDN is smaller
(HELDOUT_LFDN), to keep the shipped checkpoints small. Nothing is chosen on this benchmark. Models are trained on the
fit set's images of the known classes only; the evaluation (python -m benchmarks.evidence) reads the test split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.protocol import FIT_SET
from dlsr_core.data.spec import format_classes

KNOWN_CLASSES = (0, 1, 2, 3, 5, 7)
HELD_OUT_CLASSES = (4, 6, 8, 9)
TRAIN_SET = f"{FIT_SET}:classes={format_classes(KNOWN_CLASSES)}"
ID_TEST = f"fashion_mnist:test:classes={format_classes(KNOWN_CLASSES)}"
OOD_TEST = {f"fashion_mnist:test:classes={label}": "near" for label in HELD_OUT_CLASSES}
FAR_TEST = {"demo:digits": "far", "demo:letters": "far", "demo:textures": "far"}
RUN_DIR = Path("checkpoints/heldout_classes")
BASELINES_DIR = Path("runs/heldout/baselines")
HELDOUT_LFDN = (256, 4)  # width x depth: about 2.4 MB per float16 checkpoint


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def chosen_settings(sweep_results: Path = Path("benchmarks/results/sweep.json")) -> dict:
    """The shipped model's validation-chosen settings (backbone, input size, epochs, t, steps, k of k-NN)."""
    results = json.loads(sweep_results.read_text())
    features, lfdn = results["features"]["chosen"], results["lfdn"]["chosen"]
    scoring = results.get("scoring", {})
    return {**features, "epochs": lfdn["epochs"], **scoring.get("chosen", {}), "knn_k": scoring.get("knn_k", 50)}


def known_class_features(backbone: str, input_size: int):
    """(features (N, D), stage sizes) of the fit-set images of the known classes: rows of the fit set's cached
    features, selected by label (the same images as TRAIN_SET, without a second extraction)."""
    from dlsr_core.cache import cached_features
    from dlsr_core.data import open_dataset

    fit = cached_features(FIT_SET, backbone, input_size=input_size)
    labels = np.asarray(open_dataset(FIT_SET).labels)[fit.indices.numpy()]
    keep = torch.as_tensor(np.isin(labels, KNOWN_CLASSES))
    return fit.features[keep], fit.stage_dims


def train_dlsr(settings: dict, run_dir: Path = RUN_DIR) -> Path:
    """The held-out-class LFDN (HELDOUT_LFDN) on the known classes, with the shipped model's training settings."""
    from benchmarks.sweep import TRAINING
    from dlsr_core.diffusion import LFDNConfig
    from dlsr_core.presets import ScoringOptions
    from dlsr_core.training import Provenance, TrainConfig, train

    features, stage_dims = known_class_features(settings["backbone"], settings["input_size"])
    width, depth = HELDOUT_LFDN
    log(f"training LFDN {width} x {depth} on {len(features)} known-class features for {settings['epochs']} epochs")
    train(
        features,
        run_dir,
        LFDNConfig(feature_dim=features.shape[1], width=width, depth=depth),
        TrainConfig(epochs=settings["epochs"], seed=0, checkpoint_every=settings["epochs"], **TRAINING),
        Provenance(settings["backbone"], "pretrained", settings["input_size"], tuple(stage_dims), TRAIN_SET),
        scoring=ScoringOptions(timestep=settings.get("timestep", 5)),
    )
    return run_dir


def train_baselines(settings: dict, out: Path = BASELINES_DIR) -> list[str]:
    """The feature autoencoder on the known classes' features, and the classifier CNN on their images where the
    baselines package provides a generic trainer; returns notes on what was trained and what was not."""
    from dlsr_core.baselines import feature_ae

    out.mkdir(parents=True, exist_ok=True)
    features, _ = known_class_features(settings["backbone"], settings["input_size"])
    model = feature_ae.train_feature_ae(features, feature_ae.AutoencoderConfig(feature_dim=features.shape[1]))
    model.save(out / "feature_ae.safetensors")
    notes = [f"feature AE trained on {len(features)} known-class features"]
    notes.append(train_classifier(out))
    notes.append(
        "pixel DDPM not retrained on the known classes: training it to its plateau takes hours of this CPU "
        "(the shipped one saw all 10 classes, held-out ones included, so it cannot stand in)"
    )
    return notes


def train_classifier(out: Path) -> str:
    """The classifier CNN of dlsr_core.baselines trained on the known classes (labels relabelled 0..5)."""
    from dlsr_core.baselines import classifier
    from dlsr_core.baselines.images import labelled_images
    from dlsr_core.validation import FIT_RULE, TRAIN_SET, fit_indices, training_set_record

    images, labels, classes, _ = labelled_images(TRAIN_SET, fit_indices(), keep_classes=KNOWN_CLASSES)
    record = training_set_record(TRAIN_SET, f"{FIT_RULE} and classes {format_classes(KNOWN_CLASSES)}", len(labels))
    model = classifier.train_classifier(images, labels, classes, record)
    model.save(out / "classifier.safetensors")
    return f"classifier CNN trained on {len(labels)} known-class images"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("train", "baselines"), required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = chosen_settings()
    if args.stage == "train":
        log(f"trained: {train_dlsr(settings)}")
    else:
        for note in train_baselines(settings):
            log(note)


if __name__ == "__main__":
    main()
