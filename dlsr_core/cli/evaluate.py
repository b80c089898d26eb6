"""`evaluate`: ID vs OOD sets, the paper-style AUROC/FPR95 table, JSON and CSV."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from dlsr_core import options
from dlsr_core.cli.arguments import add_feature_options
from dlsr_core.cli.datasets import dataset_features, open_datasets
from dlsr_core.cli.sampling import add_sampling_options, check_timestep, load_detector
from dlsr_core.diffusion import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command and its options to the CLI's subcommands."""
    evaluate = commands.add_parser("evaluate", help="ID vs OOD sets: paper-style AUROC/FPR95 table, JSON and CSV")
    evaluate.add_argument("--id", required=True, help="ID test set spec, e.g. demo:fashion_mnist_test")
    evaluate.add_argument("--ood", nargs="+", required=True, help="OOD set specs")
    evaluate.add_argument("--train", default=None, help="ID training set spec: adds k-NN and Mahalanobis baselines")
    evaluate.add_argument("--knn-k", type=options.knn_k, default=50, help="k of the k-NN baseline (<= training set)")
    evaluate.add_argument("--json", type=options.output_file, default=None, help="write the report as JSON here")
    evaluate.add_argument("--csv", type=options.output_file, default=None, help="write the rows as CSV here")
    add_sampling_options(evaluate)
    add_feature_options(evaluate, with_backbone=False)


def run(args) -> None:
    """Run `evaluate` with the parsed command line."""
    from dlsr_core.atomic import atomic_write_bytes
    from dlsr_core.evaluation import EvaluationSettings, evaluate

    detector = load_detector(args)
    check_timestep(detector)
    info = detector.info
    weights = detector.backbone_weights()
    options = detector.feature_options
    open_datasets(args, [args.id, *args.ood, *([args.train] if args.train else [])])
    if args.train and args.knn_k > len(args.opened[args.train]):
        raise ConfigError(f"--knn-k {args.knn_k} is larger than {args.train} ({len(args.opened[args.train])} images)")

    def features_of(spec: str):
        return dataset_features(args, spec, info.backbone, weights, info.input_size, options=options)

    id_set = features_of(args.id)
    ood_sets = {spec: features_of(spec) for spec in args.ood}
    train_set = features_of(args.train) if args.train else None
    if train_set is not None and args.knn_k > len(train_set):
        raise ConfigError(f"--knn-k {args.knn_k} is larger than the {len(train_set)} readable images of {args.train}")
    timed = [s for s in [id_set, *ood_sets.values()] if s.seconds > 0]
    backbone_speed = sum(len(s) for s in timed) / sum(s.seconds for s in timed) if timed else None
    settings = EvaluationSettings(
        timestep=detector.scoring.timestep,
        steps=args.steps or None,
        eta=args.eta,
        seed=args.seed,
        knn_k=args.knn_k,
        draws=args.draws,
    )
    report = evaluate(
        detector,
        args.id,
        id_set.features,
        {k: v.features for k, v in ood_sets.items()},
        settings,
        train_features=train_set.features if train_set is not None else None,
        backbone_images_per_second=backbone_speed,
    )
    from dlsr_core.presets import describe_preset

    scoring = describe_preset(detector.preset, detector.scoring)
    print(f"checkpoint preset {detector.preset}; scoring: {scoring}, {asdict(detector.scoring)}")
    print(report.to_table())
    if backbone_speed is None:
        print("(all features came from the cache: backbone speed not measured; run `extract` on a fresh cache)")
    if args.json:
        extra = {"checkpoint": str(args.checkpoint), "preset": detector.preset, "scoring": asdict(detector.scoring)}
        document = json.dumps({**report.to_dict(), **extra}, indent=2)
        atomic_write_bytes(args.json, document.encode())
    if args.csv:
        atomic_write_bytes(args.csv, report.to_csv().encode())
