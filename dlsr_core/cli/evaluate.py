"""`evaluate`: ID vs OOD sets, the paper-style AUROC/FPR95 table, JSON and CSV."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from dlsr_core import options
from dlsr_core.cli.arguments import add_feature_options
from dlsr_core.cli.datasets import dataset_features, open_datasets
from dlsr_core.cli.experiment import checkpoint_experiment
from dlsr_core.cli.sampling import add_sampling_options, check_timestep, load_detector
from dlsr_core.diffusion import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command and its options to the CLI's subcommands."""
    evaluate = commands.add_parser("evaluate", help="ID vs OOD sets: paper-style AUROC/FPR95 table, JSON and CSV")
    evaluate.add_argument(
        "--id", default=None, help="ID test set spec (default: the ID evaluation set of the checkpoint's experiment)"
    )
    evaluate.add_argument(
        "--ood",
        nargs="+",
        default=None,
        help="OOD set specs (default: the OOD sets of the checkpoint's experiment, those this machine can open)",
    )
    evaluate.add_argument(
        "--experiment",
        default=None,
        metavar="FILE",
        help="read the default sets from this experiment file instead of <checkpoint run>/experiment.json",
    )
    evaluate.add_argument(
        "--sets-root", default=None, metavar="DIR", help="where relative folder: paths of --experiment are read from"
    )
    evaluate.add_argument("--train", default=None, help="ID training set spec: adds k-NN and Mahalanobis baselines")
    evaluate.add_argument("--knn-k", type=options.knn_k, default=50, help="k of the k-NN baseline (<= training set)")
    evaluate.add_argument("--json", type=options.output_file, default=None, help="write the report as JSON here")
    evaluate.add_argument("--csv", type=options.output_file, default=None, help="write the rows as CSV here")
    add_sampling_options(evaluate)
    add_feature_options(evaluate, with_backbone=False)


def _evaluation_sets(args, detector) -> tuple[str, list[str]]:
    """(ID spec, OOD specs): the flags where given, the checkpoint's experiment for the rest. Experiment OOD sets
    this machine cannot open are skipped with a note (explicit --ood sets must all open)."""
    from dlsr_core.data import DatasetError, open_dataset, overlap_warning

    if args.id is not None and args.ood is not None:
        return args.id, list(args.ood)
    experiment, where = checkpoint_experiment(args, detector)
    if not args.quiet:
        print(f"experiment {where}", file=sys.stderr)
    id_spec = args.id if args.id is not None else experiment.id_set.spec
    if args.id is None and overlap_warning(experiment):
        print(f"warning: {overlap_warning(experiment)}", file=sys.stderr)
    if args.ood is not None:
        return id_spec, list(args.ood)
    ood = []
    for ood_set in experiment.ood_sets:
        try:
            open_dataset(ood_set.spec, data_root=args.data_root, download=args.download)
            ood.append(ood_set.spec)
        except (DatasetError, OSError) as error:
            print(f"note: OOD set {ood_set.name} ({ood_set.spec}) skipped: {error}", file=sys.stderr)
    if not ood:
        raise ConfigError(
            "no OOD set to evaluate: the experiment lists none that can be opened here; pass --ood SPEC ... or add "
            "OOD sets to the run's experiment (train --far-ood/--near-ood, or the app's Experiment / data page)"
        )
    return id_spec, ood


def run(args) -> None:
    """Run `evaluate` with the parsed command line."""
    from dlsr_core.atomic import atomic_write_bytes
    from dlsr_core.evaluation import EvaluationSettings, evaluate

    detector = load_detector(args)
    check_timestep(detector)
    info = detector.info
    weights = detector.backbone_weights()
    options = detector.feature_options
    args.id, args.ood = _evaluation_sets(args, detector)
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
