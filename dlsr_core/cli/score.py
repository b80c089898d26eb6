"""`score`: per-image scores of a dataset or image files as CSV, optionally with each image's layer profile."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys

import torch

from dlsr_core import options
from dlsr_core.cli.arguments import add_feature_options
from dlsr_core.cli.datasets import dataset_features, open_datasets
from dlsr_core.cli.sampling import add_sampling_options, check_timestep, load_detector
from dlsr_core.diffusion import ConfigError

# `--explain` without a value: the checkpoint experiment's ID evaluation set. A NUL cannot be typed in an argument, so
# no value given on a command line is ever taken for it (an empty one is refused by _explain_set).
EXPERIMENT_ID_SET = "\0experiment"


def _explain_set(text: str) -> str:
    if text != EXPERIMENT_ID_SET and not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty ID set name; give a dataset (e.g. --explain demo:fashion_mnist_test), or --explain alone for "
            "the ID evaluation set of the checkpoint's experiment"
        )
    return text


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `score` command and its options to the CLI's subcommands."""
    score = commands.add_parser("score", help="score a dataset or image files and write per-image scores as CSV")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", "-d", help="dataset spec")
    source.add_argument("--images", nargs="+", help="image files")
    score.add_argument("--output", "-o", type=options.output_file, default=None, help="CSV path (default: stdout)")
    score.add_argument(
        "--explain",
        nargs="?",
        const=EXPERIMENT_ID_SET,
        type=_explain_set,
        default=None,
        metavar="ID_SET",
        help="add each image's layer profile: pct_stageN = %% of ID reference images (ID_SET, at most 5,000 of them; "
        "default: the ID evaluation set of the checkpoint's experiment, its held-out ID images) whose stage N "
        "reconstructs better (ties half; the image's stages averaged over at least 32 noise draws, so the profile "
        "does not move with the noise), the verdict at their 95%%-TPR threshold and a sentence. Use held-out ID "
        "images, not the training set",
    )
    score.add_argument(
        "--explain-score", default="mfsim", choices=("mfsim", "mse", "lr"), help="score the profile follows"
    )
    add_sampling_options(score)
    add_feature_options(score, with_backbone=False)


def _image_files_features(args, detector) -> tuple[torch.Tensor, list[str]]:
    """Features (M, D) of the readable --images files, decoded one at a time (only small tensors are kept)."""
    from dlsr_core.backbones import create_feature_extractor
    from dlsr_core.data import ImageLoadError, load_image

    info = detector.info
    extractor = create_feature_extractor(
        info.backbone, weights=detector.backbone_weights(), options=detector.feature_options
    )
    tensors, names, skipped = [], [], []
    for path in args.images:
        try:
            tensors.append(extractor.preprocess([load_image(path)], info.input_size))
            names.append(path)
        except ImageLoadError as error:
            skipped.append((path, str(error).removeprefix(f"{path}: ")))
            print(f"skipped {path}: {skipped[-1][1]}", file=sys.stderr)
    if args.skipped_csv and skipped:
        from dlsr_core.atomic import atomic_write_bytes

        buffer = io.StringIO()
        csv.writer(buffer).writerows([("dataset", "item", "reason"), *(("--images", *row) for row in skipped)])
        atomic_write_bytes(args.skipped_csv, buffer.getvalue().encode())
    if not tensors:
        raise ConfigError("none of the given files could be read as an image")
    batch = 8
    rows = [extractor(torch.cat(tensors[i : i + batch])).cpu() for i in range(0, len(tensors), batch)]
    return torch.cat(rows), names


def run(args) -> None:
    """Run `score` with the parsed command line."""
    from dlsr_core.atomic import atomic_write_bytes
    from dlsr_core.data import item_name

    detector = load_detector(args)
    check_timestep(detector)
    info = detector.info
    options = detector.feature_options  # features are always made the way the checkpoint's training features were
    if args.explain == EXPERIMENT_ID_SET:
        from dlsr_core.cli.experiment import checkpoint_experiment

        experiment, where = checkpoint_experiment(args, detector)
        args.explain = experiment.id_set.spec
        if not args.quiet:
            print(
                f"layer profiles against {args.explain}, the ID evaluation set of the experiment {where}",
                file=sys.stderr,
            )
    open_datasets(args, [*([args.dataset] if args.dataset else []), *([args.explain] if args.explain else [])])
    if args.dataset:
        features = dataset_features(
            args, args.dataset, info.backbone, detector.backbone_weights(), info.input_size, options=options
        )
        names = [item_name(args.opened[args.dataset], int(i)) for i in features.indices]
        matrix = features.features
    else:
        matrix, names = _image_files_features(args, detector)
    result = detector.score_features(
        matrix, detector.scoring.timestep, args.steps or None, args.eta, args.seed, draws=args.draws
    )
    header, explained = _explain(args, detector, result, matrix) if args.explain else ([], [[] for _ in names])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    stages = [f"cos_stage{i + 1}" for i in range(result.stage_cos.shape[1])]
    writer.writerow(["item", "mse", "mfsim", "lr", *stages, *header])
    not_finite = 0
    for row, name in enumerate(names):
        values = [result.mse[row], result.mfsim[row], *([] if result.lr is None else [result.lr[row]])]
        not_finite += not all(math.isfinite(float(value)) for value in values)
        lr = "" if result.lr is None else f"{result.lr[row]:.6g}"
        cosines = (f"{value:.4f}" for value in result.stage_cos[row])
        writer.writerow([name, f"{result.mse[row]:.6g}", f"{result.mfsim[row]:.6g}", lr, *cosines, *explained[row]])
    if args.output:
        atomic_write_bytes(args.output, buffer.getvalue().encode())
    else:
        sys.stdout.write(buffer.getvalue())
    if not_finite:
        print(f"warning: {not_finite} row(s) have NaN/Inf scores (their features are not finite)", file=sys.stderr)


def _explain(args, detector, result, matrix: torch.Tensor) -> tuple[list[str], list[list[str]]]:
    """Layer-profile columns for `score --explain`: the ID reference set scored with the same settings, the images'
    profiles from explorer.profile_draws(--draws) noise draws, as in the app."""
    from dlsr_core import explorer

    info = detector.info
    reference = dataset_features(
        args,
        args.explain,
        info.backbone,
        detector.backbone_weights(),
        info.input_size,
        options=detector.feature_options,
    )
    rows = torch.as_tensor(explorer.subsample_rows(len(reference), explorer.REFERENCE_LIMIT))
    scored = detector.score_features(
        reference.features[rows], detector.scoring.timestep, args.steps or None, args.eta, args.seed, draws=args.draws
    )
    profiled = detector.score_features(
        matrix,
        detector.scoring.timestep,
        args.steps or None,
        args.eta,
        args.seed,
        with_lr=args.explain_score == "lr",
        draws=explorer.profile_draws(args.draws),
    )
    names = explorer.stage_names(info.backbone, tuple(detector.stage_dims))
    arrays = (explorer.score_arrays(scored), explorer.score_arrays(result))
    return explorer.explanation_columns(names, *arrays, args.explain_score, profiled=explorer.score_arrays(profiled))
