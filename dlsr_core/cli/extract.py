"""`extract`: extract and cache backbone features of datasets (defaults from the --checkpoint model)."""

from __future__ import annotations

import argparse

from dlsr_core.checkpoint import DEFAULT_RUN_DIR, CheckpointError
from dlsr_core.cli.arguments import (
    DEFAULT_BACKBONE,
    DEFAULT_INPUT_SIZE,
    add_feature_options,
    add_feature_preset_options,
    add_preset_option,
    check_same_on_ranks,
    resolve_feature_options,
)
from dlsr_core.cli.datasets import dataset_features, open_datasets


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `extract` command and its options to the CLI's subcommands."""
    extract = commands.add_parser("extract", help="extract and cache backbone features of datasets")
    extract.add_argument("--dataset", "-d", action="append", required=True, help="dataset spec (repeatable)")
    extract.add_argument(
        "--checkpoint",
        default=None,
        help="model whose backbone, weights, input size and feature options are the defaults (default: the shipped "
        "model)",
    )
    add_feature_options(extract, model_defaults=True)
    add_preset_option(extract, "default: the --checkpoint model's feature options")
    add_feature_preset_options(extract)


def _model_defaults(args):
    """Fill extract's unset --backbone/--weights/--input-size from the --checkpoint model (or the shipped one);
    returns that model's CheckpointInfo, or None when the shipped model cannot be read."""
    from dlsr_core.checkpoint import read_checkpoint_info, resolve_run

    info = None
    try:
        info = read_checkpoint_info(resolve_run(args.checkpoint or DEFAULT_RUN_DIR)[0])
    except CheckpointError:
        if args.checkpoint is not None:
            raise
    args.backbone = args.backbone or (info.backbone if info else DEFAULT_BACKBONE)
    if args.weights is None:
        args.weights = info.weights if info and info.weights in ("pretrained", "random") else "pretrained"
    args.input_size = args.input_size or (info.input_size if info else DEFAULT_INPUT_SIZE)
    return info


def run(args) -> None:
    """Run `extract` with the parsed command line."""
    from dlsr_core.training import distributed_context

    rank, world_size, _ = distributed_context()  # under torchrun, every rank extracts its share of each set
    check_same_on_ranks(args)
    info = _model_defaults(args)
    open_datasets(args, args.dataset)
    options = resolve_feature_options(args, info)
    for dataset in args.dataset:
        features = dataset_features(args, dataset, args.backbone, args.weights, args.input_size, options=options)
        speed = f"{len(features) / features.seconds:.1f} img/s" if features.seconds else "from cache"
        if rank == 0:
            processes = f" with {world_size} processes" if world_size > 1 else ""
            print(
                f"{dataset}: {len(features)} vectors of {features.features.shape[1]} dims "
                f"({args.backbone} @ {args.input_size} px), {features.skipped} unreadable skipped, {speed}{processes}"
            )
