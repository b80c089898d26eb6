"""Paper-style benchmark of the shipped default model on the offline demo sets; prints and saves the table.

    python -m benchmarks.default_model --out benchmarks/results

ID: demo:fashion_mnist_test (Fashion-MNIST test images never seen in training). Far OOD: digits, letters, textures;
near OOD: inverted and rotated Fashion-MNIST. k-NN and Mahalanobis are fitted on the fit set of the training split
(Debian package dataset-fashion-mnist; pass --no-baselines without it). Images/s per score = backbone time
(measured here on demo images, cache or not) plus that score's time on cached features.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dlsr_core.backbones import create_feature_extractor
from dlsr_core.cache import cached_features
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.data import open_dataset
from dlsr_core.evaluation import EvaluationReport, EvaluationSettings, evaluate
from dlsr_core.metrics import FPR95_CONVENTION
from dlsr_core.scoring import DEFAULT_STEPS, Detector

ID_SET = "demo:fashion_mnist_test"
FAR_SETS = ["demo:digits", "demo:letters", "demo:textures"]
NEAR_SETS = ["demo:fashion_mnist_inverted", "demo:fashion_mnist_rotated"]
SCORE_LABELS = {"mse": "DLSR MSE", "lr": "DLSR LR", "mfsim": "DLSR MFsim", "knn": "k-NN", "mahalanobis": "Mahalanobis"}


def backbone_images_per_second(extractor, input_size: int, count: int = 512) -> float:
    """Backbone throughput on `count` demo images (preprocessing included), after one warm-up batch."""
    dataset = open_dataset(ID_SET)
    images = [dataset[i] for i in range(count)]
    batch = extractor.batch_size_for(input_size)
    extractor(extractor.preprocess(images[:batch], input_size))
    started = time.perf_counter()
    for start in range(0, count, batch):
        extractor(extractor.preprocess(images[start : start + batch], input_size))
    return count / (time.perf_counter() - started)


def chosen_knn_k(default: int = 50) -> int:
    """k of k-NN as chosen on validation data by benchmarks/sweep.py (its results file), else `default`."""
    results = Path("benchmarks/results/sweep.json")
    return json.loads(results.read_text()).get("scoring", {}).get("knn_k", default) if results.is_file() else default


def markdown_table(report: EvaluationReport) -> str:
    """Rows = OOD sets and group averages, columns = scores, cells = AUROC / FPR95 / AUPR-Out in percent."""
    names = report.score_names
    lines = ["| OOD set | " + " | ".join(SCORE_LABELS.get(n, n) for n in names) + " |", "|---|" + "---|" * len(names)]
    groups = [(s, [s]) for s in FAR_SETS + NEAR_SETS]
    groups += [("**average far**", FAR_SETS), ("**average near**", NEAR_SETS), ("**average all**", None)]
    for label, sets in groups:
        cells = []
        for name in names:
            m = report.average(name, sets)
            cells.append(f"{100 * m.auroc:.2f} / {100 * m.fpr95:.2f} / {100 * m.aupr_out:.2f}")
        lines.append(f"| {label.replace('demo:', '')} | " + " | ".join(cells) + " |")
    speeds = [f"{report.end_to_end_images_per_second(n):.0f}" for n in names]
    lines.append("| images/s (backbone + score) | " + " | ".join(speeds) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--timestep", "-t", type=int, default=None, help="default: the model's own scoring timestep")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps; 0 = one per timestep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn-k", type=int, default=chosen_knn_k(), help="default: the sweep's validation choice")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", default="benchmarks/results", help="folder for default_model.{json,csv,md}")
    args = parser.parse_args()
    detector = Detector.load(args.checkpoint, device="cpu")
    info = detector.info
    timestep = args.timestep or detector.scoring.timestep
    extractor = create_feature_extractor(info.backbone, weights=info.weights)

    def features(spec: str):
        return cached_features(
            spec, info.backbone, weights=info.weights, input_size=info.input_size, extractor=extractor
        ).features

    train = None if args.no_baselines else features("fashion_mnist:fit")  # the fit set: validation images stay out
    report = evaluate(
        detector,
        ID_SET,
        features(ID_SET),
        {s: features(s) for s in FAR_SETS + NEAR_SETS},
        EvaluationSettings(timestep=timestep, steps=args.steps or None, seed=args.seed, knn_k=args.knn_k),
        train_features=train,
        backbone_images_per_second=backbone_images_per_second(extractor, info.input_size),
    )
    table = markdown_table(report)
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    header = (
        f"Model: {args.checkpoint} ({info.backbone} @ {info.input_size}px, LFDN {info.config.width}x"
        f"{info.config.depth}, epoch {info.epoch}); t={timestep}, {args.steps or timestep} DDIM step(s), "
        f"k-NN k={args.knn_k}; "
        f"cells: AUROC / FPR95 / AUPR-Out (%); machine: {machine}"
    )
    print(header)
    print(table)
    print(FPR95_CONVENTION)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = report.to_dict()
    summary["groups"] = {
        "far": {n: report.average(n, FAR_SETS).__dict__ for n in report.score_names},
        "near": {n: report.average(n, NEAR_SETS).__dict__ for n in report.score_names},
    }
    summary["end_to_end_images_per_second"] = {n: report.end_to_end_images_per_second(n) for n in report.score_names}
    summary["machine"] = machine
    (out / "default_model.json").write_text(json.dumps(summary, indent=2))
    (out / "default_model.csv").write_text(report.to_csv())
    (out / "default_model.md").write_text(header + "\n\n" + table + "\n\n" + FPR95_CONVENTION + "\n")


if __name__ == "__main__":
    main()
