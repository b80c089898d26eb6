"""Train the shipped baselines on the fit set of Fashion-MNIST train and write them to checkpoints/baselines (or --out).

    python -m dlsr_core.baselines.train --only pixel_ddpm --threads 1   # until its held-out loss stops falling, or
                                                                        # --pixel-max-minutes (330); resumable
    python -m dlsr_core.baselines.train --only feature_ae               # ~1 min (features are cached)
    python -m dlsr_core.baselines.train --only classifier --threads 1   # the CNN: ~25 min on a quiet CPU core
    python -m dlsr_core.baselines.train --pixel-recalibrate 50,100,150,200,250:0   # another reconstruction setting

Every model is fitted on the fit set (dlsr_core.validation: the 55,000 training images with index i % 12 != 11);
validation images (i % 12 == 11) normalise the pixel DDPM's scores, measure its held-out loss and the classifier's
validation accuracy. Needs the Debian package dataset-fashion-mnist. Each file records its training data, time and
settings in its metadata.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dlsr_core.baselines.store import BASELINE_KINDS, DEFAULT_BASELINES_DIR
from dlsr_core.validation import (
    FIT_RULE,
    TRAIN_SET,
    TRAIN_SIZE,
    VALIDATION_RULE,
    TrainingData,
    evenly_spaced,
    fit_indices,
    training_set_record,
    validation_indices,
)

KINDS = BASELINE_KINDS
PIXEL_HELD_OUT = 1000  # validation images for the pixel DDPM's score normalisation, and as many for its probe
DEFAULT_PIXEL_RUN = Path("runs") / "pixel_ddpm"


def machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def fashion_mnist_pixels(rows: np.ndarray) -> torch.Tensor:
    from dlsr_core.baselines.pixel_ddpm import images_to_pixels
    from dlsr_core.data import load_fashion_mnist

    images, _ = load_fashion_mnist("train")
    return images_to_pixels(list(images[rows]))


def pixel_validation_rows() -> tuple[np.ndarray, np.ndarray]:
    """(calibration rows, probe rows): two disjoint fixed sets of 1,000 validation images, every 5th one from
    position 0 normalises the scores, every 5th from position 1 measures the held-out loss."""
    validation = validation_indices(TRAIN_SIZE)
    return evenly_spaced(validation, PIXEL_HELD_OUT, 0), evenly_spaced(validation, PIXEL_HELD_OUT, 1)


def pixel_calibration_record() -> TrainingData:
    """The images the pixel DDPM's scores are normalised on (see `pixel_validation_rows`)."""
    return training_set_record(subset=f"{VALIDATION_RULE}, every 5th from position 0", count=PIXEL_HELD_OUT)


def train_pixel(out: Path, run_dir: Path, max_minutes: float | None, restart: bool) -> None:
    """Train (or continue) the pixel DDPM on the fit set of Fashion-MNIST train until its held-out loss stops
    falling; see pixel_training.train_pixel_baseline for what is written to `out`."""
    from dlsr_core.baselines import pixel_training

    calibration_rows, probe_rows = pixel_validation_rows()
    data = pixel_training.PixelData(
        train=fashion_mnist_pixels(fit_indices(TRAIN_SIZE)),
        probe=fashion_mnist_pixels(probe_rows),
        calibration=fashion_mnist_pixels(calibration_rows),
        training_set=training_set_record(count=TRAIN_SIZE - len(validation_indices(TRAIN_SIZE))),
        probe_set=training_set_record(subset=f"{VALIDATION_RULE}, every 5th from position 1", count=PIXEL_HELD_OUT),
        calibration_set=pixel_calibration_record(),
    )
    max_seconds = None if max_minutes is None else 60 * max_minutes
    model = pixel_training.train_pixel_baseline(
        data, out, run_dir, max_seconds=max_seconds, restart=restart, machine=machine()
    )
    print(f"saved {out / 'pixel_ddpm.safetensors'}: {model.info}")


def recalibrate_pixel(out: Path, setting_text: str) -> None:
    """Switch the saved pixel DDPM to another reconstruction setting ("LEVELS:STRIDE", e.g. "100,200,300:0"),
    re-measuring its per-level ID statistics on the calibration images it records; the UNet is unchanged."""
    from dlsr_core.baselines import pixel_ddpm

    levels, _, stride = setting_text.partition(":")
    setting = pixel_ddpm.ReconstructionSetting(tuple(int(v) for v in levels.split(",")), int(stride or 0))
    path = out / "pixel_ddpm.safetensors"
    model = pixel_ddpm.PixelDDPM.load(path)
    calibration_rows, _ = pixel_validation_rows()
    started = time.perf_counter()
    calibration = fashion_mnist_pixels(calibration_rows)
    model = model.with_setting(setting, calibration, model.info.train["seed"], pixel_calibration_record())
    model.info = replace(model.info, calibration_seconds=time.perf_counter() - started)
    model.save(path)
    print(f"saved {path} with {setting.label()}; ID 95% threshold {model.id_threshold95:.3f}")


def train_autoencoder(out: Path) -> None:
    """Train the feature autoencoder on the fit-set rows of the shipped DLSR model's cached training features."""
    from dlsr_core.baselines import feature_ae
    from dlsr_core.cache import cached_features
    from dlsr_core.checkpoint import DEFAULT_RUN_DIR
    from dlsr_core.scoring import Detector

    detector = Detector.load(DEFAULT_RUN_DIR, device="cpu")
    info = detector.info
    cached = cached_features(
        TRAIN_SET, info.backbone, weights=info.weights, input_size=info.input_size, options=detector.feature_options
    )
    fit = torch.as_tensor(np.isin(cached.indices.numpy(), fit_indices(TRAIN_SIZE)))
    features = cached.features[fit]
    record = feature_ae.AutoencoderRecord(
        training_set=training_set_record(TRAIN_SET, FIT_RULE, len(features)),
        backbone=info.backbone,
        weights=info.weights,
        input_size=info.input_size,
        stage_dims=tuple(info.stage_dims),
        feature_options=detector.feature_options,
        machine=machine(),
    )
    config = feature_ae.AutoencoderConfig(feature_dim=features.shape[1])
    model = feature_ae.train_feature_ae(features, config, info=record)
    model.save(out / "feature_ae.safetensors")
    print(f"saved {out / 'feature_ae.safetensors'}: {model.info}")


def train_classifier(out: Path, dataset: str = TRAIN_SET, test_set: str | None = "fashion_mnist:test") -> None:
    """Train the CNN on the fit set of `dataset` (Fashion-MNIST train) with its labels, fit the detectors, measure
    validation accuracy (every epoch) and test accuracy (once, reported only), and save it to `out`."""
    from dlsr_core.baselines import classifier
    from dlsr_core.baselines.cnn import accuracy
    from dlsr_core.baselines.images import labelled_images

    images, labels, classes, shape = labelled_images(dataset, fit_indices(TRAIN_SIZE))
    valid_images, valid_labels, _, _ = labelled_images(dataset, validation_indices(TRAIN_SIZE), shape)
    validation_record = training_set_record(dataset, VALIDATION_RULE, len(valid_labels))
    print(f"training a {shape[0]}-channel {shape[1]}-px CNN on {len(labels)} images of {len(classes)} classes")

    def report(point: dict) -> None:
        print(
            f"epoch {point['epoch']}  loss {point['train_loss']:.4f}  validation accuracy "
            f"{point['validation_accuracy']:.4f}  {point['seconds'] / 60:.1f} min",
            flush=True,
        )

    model = classifier.train_classifier(
        images,
        labels,
        classes,
        training_set_record(dataset, FIT_RULE, len(labels)),
        validation=(valid_images, valid_labels, validation_record),
        on_epoch=report,
        machine=machine(),
    )
    if test_set is not None:
        test_images, test_labels, _, _ = labelled_images(test_set, None, shape)
        test_accuracy = accuracy(model.net, test_images, test_labels)
        model.info = replace(model.info, test_set=test_set, test_accuracy=test_accuracy)
    model.save(out / "classifier.safetensors")
    print(f"saved {out / 'classifier.safetensors'}: {model.info}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=KINDS, action="append", help="train only these (repeatable)")
    parser.add_argument("--out", default=str(DEFAULT_BASELINES_DIR))
    parser.add_argument(
        "--pixel-max-minutes", type=float, default=330.0, help="wall-clock budget of the pixel DDPM (all resumes)"
    )
    parser.add_argument("--pixel-run-dir", default=str(DEFAULT_PIXEL_RUN), help="where its resume state is kept")
    parser.add_argument("--restart", action="store_true", help="start the pixel DDPM over instead of resuming")
    parser.add_argument(
        "--pixel-recalibrate",
        metavar="LEVELS:STRIDE",
        help="instead of training, switch the saved pixel DDPM to this setting, e.g. 100,200,300,400,500:0",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy 2-core CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.pixel_recalibrate:
        recalibrate_pixel(out, args.pixel_recalibrate)
        return 0
    for kind in args.only or KINDS:
        if kind == "pixel_ddpm":
            train_pixel(out, Path(args.pixel_run_dir), args.pixel_max_minutes, args.restart)
        elif kind == "feature_ae":
            train_autoencoder(out)
        else:
            train_classifier(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
