"""Paper-style benchmark of a model on its experiment's sets (default: the shipped model); prints and saves the table.

    python -m benchmarks.default_model --out benchmarks/results

The sets are the checkpoint's experiment (`<run>/experiment.json`). For the shipped model: ID demo:fashion_mnist_test
(Fashion-MNIST test images never seen in training); far OOD digits, letters, textures; near OOD inverted and rotated
Fashion-MNIST. k-NN and Mahalanobis are fitted on the experiment's training set (for the shipped model the
Fashion-MNIST training split, Debian package dataset-fashion-mnist; pass --no-baselines without it). Images/s per
score = backbone time (measured here on ID images, cache or not) plus that score's time on cached features.
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
from dlsr_core.data import Experiment, open_dataset, run_experiment
from dlsr_core.evaluation import EvaluationReport, EvaluationSettings, evaluate
from dlsr_core.scoring import DEFAULT_STEPS, Detector

SCORE_LABELS = {"mse": "DLSR MSE", "lr": "DLSR LR", "mfsim": "DLSR MFsim", "knn": "k-NN", "mahalanobis": "Mahalanobis"}


def backbone_images_per_second(extractor, input_size: int, spec: str, count: int = 512) -> float:
    """Backbone throughput on `count` images of `spec` (preprocessing included), after one warm-up batch."""
    dataset = open_dataset(spec)
    images = [dataset[i] for i in range(min(count, len(dataset)))]
    count = len(images)
    batch = extractor.batch_size_for(input_size)
    extractor(extractor.preprocess(images[:batch], input_size))
    started = time.perf_counter()
    for start in range(0, count, batch):
        extractor(extractor.preprocess(images[start : start + batch], input_size))
    return count / (time.perf_counter() - started)


def _group(experiment: Experiment, group: str) -> list[str]:
    return [s.spec for s in experiment.ood_sets if s.group == group]


def markdown_table(report: EvaluationReport, experiment: Experiment) -> str:
    """Rows = OOD sets and group averages, columns = scores, cells = AUROC / FPR95 / AUPR-Out in percent."""
    names = report.score_names
    lines = ["| OOD set | " + " | ".join(SCORE_LABELS.get(n, n) for n in names) + " |", "|---|" + "---|" * len(names)]
    groups = [(experiment.name_of(s), [s]) for s in experiment.groups]
    groups += [(f"**average {g}**", _group(experiment, g)) for g in ("far", "near") if _group(experiment, g)]
    groups.append(("**average all**", None))
    for label, sets in groups:
        cells = []
        for name in names:
            m = report.average(name, sets)
            cells.append(f"{100 * m.auroc:.2f} / {100 * m.fpr95:.2f} / {100 * m.aupr_out:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    speeds = [f"{report.end_to_end_images_per_second(n):.0f}" for n in names]
    lines.append("| images/s (backbone + score) | " + " | ".join(speeds) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--timestep", "-t", type=int, default=5)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps; 0 = one per timestep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", default="benchmarks/results", help="folder for default_model.{json,csv,md}")
    args = parser.parse_args()
    detector = Detector.load(args.checkpoint, device="cpu")
    info = detector.info
    experiment = run_experiment(args.checkpoint, info.dataset, shipped_run=DEFAULT_RUN_DIR).experiment
    id_set = experiment.id_set.spec
    extractor = create_feature_extractor(info.backbone, weights=info.weights)

    def features(spec: str):
        return cached_features(
            spec, info.backbone, weights=info.weights, input_size=info.input_size, extractor=extractor
        ).features

    train = None if args.no_baselines else features(experiment.training_set)
    report = evaluate(
        detector,
        id_set,
        features(id_set),
        {s: features(s) for s in experiment.groups},
        EvaluationSettings(timestep=args.timestep, steps=args.steps or None, seed=args.seed),
        train_features=train,
        backbone_images_per_second=backbone_images_per_second(extractor, info.input_size, id_set),
    )
    table = markdown_table(report, experiment)
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    header = (
        f"Model: {args.checkpoint} ({info.backbone} @ {info.input_size}px, LFDN {info.config.width}x"
        f"{info.config.depth}, epoch {info.epoch}); t={args.timestep}, {args.steps or args.timestep} DDIM step(s); "
        f"cells: AUROC / FPR95 / AUPR-Out (%); machine: {machine}"
    )
    print(header)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = report.to_dict()
    summary["groups"] = {
        group: {n: report.average(n, _group(experiment, group)).__dict__ for n in report.score_names}
        for group in ("far", "near")
        if _group(experiment, group)
    }
    summary["end_to_end_images_per_second"] = {n: report.end_to_end_images_per_second(n) for n in report.score_names}
    summary["machine"] = machine
    (out / "default_model.json").write_text(json.dumps(summary, indent=2))
    (out / "default_model.csv").write_text(report.to_csv())
    (out / "default_model.md").write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
