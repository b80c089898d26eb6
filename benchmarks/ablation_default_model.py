"""Ablation behind the shipped default model: input size x LFDN size vs AUROC and time (prints a table, writes JSON).

Uses a class-balanced subset of the Fashion-MNIST training split (Debian package) to keep the run short, and the
demo sets in assets/demo as ID test / OOD sets. Example:
    python -m benchmarks.ablation_default_model --sizes 64 96 128 --train-count 6000 --epochs 15 --out ablation.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dlsr_core.backbones import create_feature_extractor
from dlsr_core.cache import cached_features
from dlsr_core.data import open_dataset
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.evaluation import EvaluationSettings, evaluate
from dlsr_core.features import extract_features
from dlsr_core.scoring import Detector
from dlsr_core.training import Provenance, TrainConfig, train

OOD_SETS = ["demo:digits", "demo:letters", "demo:textures", "demo:fashion_mnist_inverted", "demo:fashion_mnist_rotated"]


class Subset:
    """The first `count // 10` images of each class, in dataset order."""

    def __init__(self, dataset, count: int) -> None:
        labels = np.asarray(dataset.labels)
        self.positions = np.concatenate([np.flatnonzero(labels == c)[: count // 10] for c in range(10)])
        self.dataset = dataset
        self.name = f"{dataset.name}[balanced {len(self.positions)}]"

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        return self.dataset[int(self.positions[index])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--models", nargs="+", default=["256x4", "512x6"], help="WIDTHxDEPTH")
    parser.add_argument("--train-count", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--timestep", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    extractor = create_feature_extractor("efficientnet_lite0")
    train_images = Subset(open_dataset("fashion_mnist:train"), args.train_count)
    results = []
    for size in args.sizes:
        started = time.perf_counter()
        train_set = extract_features(extractor, train_images, size)
        train_seconds = time.perf_counter() - started
        id_set = cached_features("demo:fashion_mnist_test", "efficientnet_lite0", input_size=size, extractor=extractor)
        oods = {
            s: cached_features(s, "efficientnet_lite0", input_size=size, extractor=extractor).features for s in OOD_SETS
        }
        for model in args.models:
            width, depth = (int(v) for v in model.split("x"))
            run_dir = f"/tmp/dlsr-ablation/{size}px-{model}"
            started = time.perf_counter()
            train(
                train_set.features,
                run_dir,
                LFDNConfig(train_set.features.shape[1], width, depth),
                TrainConfig(epochs=args.epochs, batch_size=128, learning_rate=3e-4, ema_decay=0.995),
                Provenance("efficientnet_lite0", "pretrained", size, train_set.stage_dims, train_images.name),
                resume=False,
            )
            fit_seconds = time.perf_counter() - started
            report = evaluate(
                Detector.load(run_dir),
                "demo:fashion_mnist_test",
                id_set.features,
                oods,
                EvaluationSettings(timestep=args.timestep),
                train_features=train_set.features,
            )
            row = {
                "input_size": size,
                "model": model,
                "extract_img_s": len(train_set) / train_seconds,
                "train_seconds": fit_seconds,
                **{f"{score}_auroc_far": report.average(score, OOD_SETS[:3]).auroc for score in report.score_names},
                **{f"{score}_auroc_near": report.average(score, OOD_SETS[3:]).auroc for score in report.score_names},
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as stream:
            json.dump(results, stream, indent=2)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
