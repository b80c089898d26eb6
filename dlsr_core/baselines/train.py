"""Train the shipped baselines on Fashion-MNIST train and write them to checkpoints/baselines (or --out).

    python -m dlsr_core.baselines.train --only pixel_ddpm        # ~35 min on 2 CPU cores
    python -m dlsr_core.baselines.train --only feature_ae        # ~1 min (features are cached)
    python -m dlsr_core.baselines.train --only classifier        # ~1 min (pre-logit features are cached)
    python -m dlsr_core.baselines.train --pixel-recalibrate 50,100,150,200,250:0   # another reconstruction setting

Needs the Debian package dataset-fashion-mnist. Each file records its training time and settings in its metadata.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from dlsr_core.baselines.store import DEFAULT_BASELINES_DIR

TRAIN_SET = "fashion_mnist:train"
KINDS = ("pixel_ddpm", "feature_ae", "classifier")


def machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def train_pixel(out: Path, steps: int, batch_size: int, max_minutes: float | None) -> None:
    from dlsr_core.baselines import pixel_ddpm
    from dlsr_core.data import load_fashion_mnist

    images, _ = load_fashion_mnist("train")
    pixels = pixel_ddpm.images_to_pixels(list(images))
    config = pixel_ddpm.PixelTrainConfig(steps=steps, batch_size=batch_size)
    train_rows, validation_rows = pixel_ddpm.split_validation(len(pixels), config.validation_images, config.seed)
    started = time.perf_counter()

    def report(step: int, loss: float) -> None:
        if step % 50 == 0 or step == steps:
            elapsed = time.perf_counter() - started
            print(f"step {step}/{steps}  loss {loss:.4f}  {elapsed / 60:.1f} min", flush=True)

    model = pixel_ddpm.train_pixel_ddpm(
        pixels[torch.as_tensor(train_rows)],
        pixels[torch.as_tensor(validation_rows)],
        train_config=config,
        on_step=report,
        info={"dataset": TRAIN_SET, "machine": machine(), "max_minutes": max_minutes},
        max_seconds=None if max_minutes is None else 60 * max_minutes,
    )
    model.save(out / "pixel_ddpm.safetensors")
    print(f"saved {out / 'pixel_ddpm.safetensors'}: {model.info}")


def recalibrate_pixel(out: Path, setting_text: str) -> None:
    """Switch the saved pixel DDPM to another reconstruction setting ("LEVELS:STRIDE", e.g. "100,200,300:0"),
    re-measuring its per-level ID statistics on the held-out training images; the UNet is unchanged."""
    from dlsr_core.baselines import pixel_ddpm
    from dlsr_core.data import load_fashion_mnist

    levels, _, stride = setting_text.partition(":")
    setting = pixel_ddpm.ReconstructionSetting(tuple(int(v) for v in levels.split(",")), int(stride or 0))
    path = out / "pixel_ddpm.safetensors"
    model = pixel_ddpm.PixelDDPM.load(path)
    images, _ = load_fashion_mnist("train")
    train = model.info["train"]
    _, held_out = pixel_ddpm.split_validation(len(images), train["validation_images"], train["seed"])
    started = time.perf_counter()
    model = model.with_setting(setting, pixel_ddpm.images_to_pixels(list(images[held_out])), train["seed"])
    model.info["calibration_seconds"] = time.perf_counter() - started
    model.save(path)
    print(f"saved {path} with {setting.label()}; ID 95% threshold {model.id_threshold95:.3f}")


def _provenance() -> dict:
    """Backbone settings of the shipped DLSR model: the feature baselines use exactly its features."""
    from dlsr_core.checkpoint import DEFAULT_RUN_DIR
    from dlsr_core.scoring import Detector

    info = Detector.load(DEFAULT_RUN_DIR, device="cpu").info
    return {
        "backbone": info.backbone,
        "weights": info.weights,
        "input_size": info.input_size,
        "stage_dims": list(info.stage_dims),
        "dataset": TRAIN_SET,
    }


def train_autoencoder(out: Path) -> None:
    from dlsr_core.baselines import feature_ae
    from dlsr_core.cache import cached_features

    provenance = _provenance()
    features = cached_features(
        TRAIN_SET, provenance["backbone"], weights=provenance["weights"], input_size=provenance["input_size"]
    ).features
    config = feature_ae.AutoencoderConfig(feature_dim=features.shape[1])
    model = feature_ae.train_feature_ae(features, config, info={**provenance, "machine": machine()})
    model.save(out / "feature_ae.safetensors")
    print(f"saved {out / 'feature_ae.safetensors'}: {model.info}")


def train_classifier(out: Path) -> None:
    from dlsr_core.baselines import classifier
    from dlsr_core.baselines.prelogits import cached_prelogits
    from dlsr_core.data import FASHION_MNIST_CLASSES, load_fashion_mnist, open_dataset

    provenance = _provenance()
    common = dict(weights=provenance["weights"], input_size=provenance["input_size"])
    train = cached_prelogits(TRAIN_SET, provenance["backbone"], **common)
    _, all_labels = load_fashion_mnist("train")
    labels = torch.as_tensor(all_labels)[train.indices]
    head, record = classifier.train_linear_head(train.features, labels, len(FASHION_MNIST_CLASSES))
    test_set = "demo:fashion_mnist_test"
    test = cached_prelogits(test_set, provenance["backbone"], **common)
    test_labels = torch.as_tensor(open_dataset(test_set).labels)[test.indices]
    with torch.no_grad():
        record["test_accuracy"] = (head(test.features).argmax(dim=1) == test_labels).float().mean().item()
    record.update(provenance, features=train.backbone, classes=list(FASHION_MNIST_CLASSES), test_set=test_set)
    started = time.perf_counter()
    model = classifier.ClassifierBaselines.fit(head, train.features, labels, info={**record, "machine": machine()})
    model.info["fit_detectors_seconds"] = time.perf_counter() - started
    model.save(out / "classifier.safetensors")
    print(f"saved {out / 'classifier.safetensors'}: {model.info}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=KINDS, action="append", help="train only these (repeatable)")
    parser.add_argument("--out", default=str(DEFAULT_BASELINES_DIR))
    parser.add_argument("--pixel-steps", type=int, default=2500)
    parser.add_argument("--pixel-batch-size", type=int, default=64)
    parser.add_argument("--pixel-max-minutes", type=float, default=40.0, help="stop the pixel DDPM early after this")
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
            train_pixel(out, args.pixel_steps, args.pixel_batch_size, args.pixel_max_minutes)
        elif kind == "feature_ae":
            train_autoencoder(out)
        else:
            train_classifier(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
