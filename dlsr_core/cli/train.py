"""`train`: train an LFDN on the features of an ID dataset (continues a run with resume.pt; works under torchrun)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from dlsr_core import options
from dlsr_core.checkpoint import CheckpointError
from dlsr_core.cli.arguments import (
    add_feature_options,
    add_feature_preset_options,
    add_preset_option,
    add_scoring_preset_options,
    check_same_on_ranks,
    resolve_feature_options,
)
from dlsr_core.cli.datasets import dataset_features, open_datasets
from dlsr_core.cli.experiment import (
    add_experiment_options,
    build_experiment,
    report_experiment,
    wants_experiment,
    with_experiment,
    write_experiment,
)
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.presets import (
    DEFAULT_PRESET,
    ArchitectureOptions,
    FeatureOptions,
    ScoringOptions,
    TrainingOptions,
    get_preset,
    with_overrides,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `train` command and its options to the CLI's subcommands."""
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
    add_experiment_options(train)
    add_feature_options(train)
    add_preset_option(train, "default: paper")
    add_feature_preset_options(train)
    add_scoring_preset_options(train)


def _check_resume_early(args, plan: _Plan) -> bool:
    """Before extracting: refuse a bad resume.pt or settings the run cannot change, and say so when the run already
    has the epochs asked for (returns True then)."""
    from dlsr_core.checkpoint import LAST_NAME
    from dlsr_core.training import RESUME_NAME, check_fixed_settings, read_resume_state

    out = Path(args.out)
    if args.restart:
        return False
    if (out / RESUME_NAME).exists():
        saved = read_resume_state(out / RESUME_NAME)
        model_config = _model_config(args, plan.architecture, saved.model_config.feature_dim)
        model_fields = {key: value for key, value in asdict(model_config).items() if key != "feature_dim"}
        provenance = asdict(_provenance(args, plan, stage_dims=()))
        del provenance["stage_dims"]  # known once the features are extracted; train() checks it then
        check_fixed_settings(saved, model_fields, _train_config(args, plan.training), provenance)
        if saved.epoch >= plan.training.epochs:
            print(
                f"nothing to do: {out} has already trained {saved.epoch} epochs (asked for {plan.training.epochs}); "
                "pass a larger --epochs to continue it, or --restart to train a new model from scratch"
            )
            return True
    elif (out / LAST_NAME).exists():
        raise CheckpointError(
            f"{out} already holds a trained model but no {RESUME_NAME} to continue it; pass --restart to train a new "
            "model over it or choose another --out"
        )
    return False


@dataclass(frozen=True)
class _Plan:
    """The run's settings from the preset and the explicit flags."""

    preset: str
    feature_options: FeatureOptions
    architecture: ArchitectureOptions
    scoring: ScoringOptions
    training: TrainingOptions


def _plan(args) -> _Plan:
    preset = get_preset(args.preset or DEFAULT_PRESET)
    return _Plan(
        preset.name,
        resolve_feature_options(args),
        with_overrides(preset.architecture, input_activation=args.input_activation, time_mlp_width=args.time_mlp_width),
        with_overrides(preset.scoring, sampler=args.sampler, mfsim_stages=args.mfsim_stages),
        with_overrides(
            preset.training,
            epochs=args.epochs,
            batch_size=args.train_batch_size,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            ema_decay=args.ema_decay,
            amp=args.amp,
            drop_last=args.drop_last,
        ),
    )


def run(args) -> None:
    """Run `train` with the parsed command line: every torchrun rank must have been given the same one, and the
    run folder is locked against a second `train` (rank 0 holds the lock for all ranks)."""
    from dlsr_core.training import distributed_context, run_lock

    distributed_context()
    check_same_on_ranks(args)
    with run_lock(args.out):
        _run_locked(args)


def _run_locked(args) -> None:
    from dlsr_core.ranks import check_same, one_line, raise_together
    from dlsr_core.training import distributed_context, train

    rank, world_size, _ = distributed_context()
    plan = _plan(args)
    error, nothing_to_do = None, False
    try:
        nothing_to_do = _check_resume_early(args, plan)
    except CheckpointError as caught:
        error = caught
    raise_together(error, one_line(error))
    check_same({"nothing to do": str(nothing_to_do)}, f"{args.out} (--out must be one folder that every rank reads)")
    record = rank == 0 and wants_experiment(args)  # named sets are recorded even when no epoch is left to train
    if nothing_to_do and not record:
        return
    open_datasets(args, [args.dataset])
    experiment = build_experiment(args, args.opened[args.dataset].name) if record else None
    if nothing_to_do:
        if experiment is not None:
            write_experiment(args, experiment)
            report_experiment(args, experiment)
        return
    # Memory-mapped: the training set need not fit in RAM, and torchrun ranks share one copy in the page cache.
    features = dataset_features(
        args, args.dataset, args.backbone, args.weights, args.input_size, options=plan.feature_options, memory_map=True
    )
    model_config = _model_config(args, plan.architecture, features.features.shape[1])
    train_config = _train_config(args, plan.training)
    on_step, on_epoch, close_progress = _progress(args, rank, world_size, train_config, len(features))
    if experiment is not None:  # written with the first saved checkpoint: a run that fails before has no new file
        on_epoch = with_experiment(args, experiment, on_epoch)
    try:
        result = train(
            features.features,
            args.out,
            model_config,
            train_config,
            _provenance(args, plan, features.stage_dims),
            resume=not args.restart,
            on_step=on_step,
            on_epoch=on_epoch,
            scoring=plan.scoring,
        )
    finally:
        close_progress()
    if rank == 0:
        _report(args, plan, result, train_config, len(features), experiment)


def _report(args, plan: _Plan, result, train_config, rows: int, experiment) -> None:
    if result.nothing_to_do:
        print(
            f"nothing to do: {result.run_dir} has already trained {result.epochs_done} epochs (asked for "
            f"{train_config.epochs}); pass a larger --epochs to continue it, or --restart to train from scratch"
        )
        return
    print(
        f"trained {result.epochs_done}/{train_config.epochs} epochs on {rows} vectors "
        f"(preset {plan.preset}), final loss {result.last_loss:.5f}; checkpoints in {result.run_dir}"
    )
    if experiment is not None:
        report_experiment(args, experiment)


def _model_config(args, architecture: ArchitectureOptions, feature_dim: int) -> LFDNConfig:
    from dlsr_core.presets import time_embed_width

    return LFDNConfig(
        feature_dim=feature_dim,
        width=args.width,
        depth=args.depth,
        input_activation=architecture.input_activation,
        time_embed_width=time_embed_width(architecture.time_mlp_width, args.width, feature_dim),
    )


def _train_config(args, training: TrainingOptions):
    from dlsr_core.training import TrainConfig

    return TrainConfig(
        **asdict(training), checkpoint_every=args.checkpoint_every, seed=args.seed, half_precision_checkpoints=args.half
    )


def _provenance(args, plan: _Plan, stage_dims: tuple[int, ...]):
    from dlsr_core.cache import weights_identity
    from dlsr_core.training import Provenance

    weights = (
        args.weights if args.weights in ("pretrained", "random") else weights_identity(args.backbone, args.weights)
    )
    return Provenance(
        args.backbone,
        weights,
        args.input_size,
        stage_dims,
        args.dataset,
        preset=plan.preset,
        **asdict(plan.feature_options),
    )


def _progress(args, rank: int, world_size: int, train_config, rows: int):
    """(on_step, on_epoch, close): a step bar on a terminal and one line per epoch, on rank 0 unless --quiet."""
    from dlsr_core.training import steps_per_rank_epoch

    steps_per_epoch = steps_per_rank_epoch(rows, world_size, train_config)
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

    def close() -> None:
        if bar is not None:
            bar.close()

    return on_step, on_epoch, close
