"""The detector `score` and `evaluate` run: the checkpoint with the chosen scoring options, its timestep checked."""

from __future__ import annotations

import argparse

from dlsr_core import options
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.cli.arguments import add_preset_option, add_scoring_preset_options
from dlsr_core.diffusion import OFFICIAL_MIN_TIMESTEP, ConfigError
from dlsr_core.presets import ScoringOptions, get_preset, with_overrides
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS


def load_detector(args):
    """The checkpoint's detector, scored with the chosen preset's scoring options (default: the checkpoint's own)
    and the explicit --sampler / --mfsim-stages / --timestep flags."""
    from dlsr_core.scoring import Detector

    detector = Detector.load(args.checkpoint)
    base: ScoringOptions = get_preset(args.preset).scoring if args.preset else detector.scoring
    scoring = with_overrides(base, sampler=args.sampler, mfsim_stages=args.mfsim_stages, timestep=args.timestep)
    return detector.with_scoring(scoring)


def check_timestep(detector) -> None:
    top, timestep = detector.info.config.num_timesteps, detector.scoring.timestep
    if timestep > top:
        raise ConfigError(f"--timestep must be in 1..{top} for this checkpoint (T = {top}), got {timestep}")
    if detector.scoring.sampler == "official" and timestep < OFFICIAL_MIN_TIMESTEP:
        # Below this the released sampler takes no network step: the "reconstruction" would be the noised input.
        raise ConfigError(
            f"--timestep must be at least {OFFICIAL_MIN_TIMESTEP} with --sampler official, got {timestep}; "
            "use --sampler ddim for smaller timesteps"
        )


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=str(DEFAULT_RUN_DIR),
        help="run directory (first/last.safetensors) or checkpoint file (default: shipped model)",
    )
    add_preset_option(
        parser,
        "here it sets the scoring options only (features are always made the way the checkpoint's were); default: "
        "the checkpoint's own",
    )
    add_scoring_preset_options(parser)
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
