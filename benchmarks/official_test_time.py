"""The official preset's test-time items, measured on a trained model: fp16 autocast and LR's separate noise.

    python -m benchmarks.official_test_time --out benchmarks/results/official_test_time.md

Scores the test table (ID demo:fashion_mnist_test, five demo OOD sets) with the model's own sampler and timestep,
switching one test-time option at a time (dlsr_core.presets.TestTimeOptions): fp16 autocast of the LFDN (on CPU this
emulates the rounding of the released scripts' GPU autocast) and separate noise draws for LR's two checkpoints. For
each it reports the AUROC change per score and how far the scores themselves move. Seeds 0-4 show the LR noise's
effect across draws: with separate noise, LR's spread across seeds grows, its AUROC barely moves.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.protocol import TEST_ID, TEST_OOD
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.metrics import ood_metrics
from dlsr_core.presets import TestTimeOptions
from dlsr_core.scoring import Detector

SCORES = ("mse", "mfsim", "lr")
SEEDS = (0, 1, 2, 3, 4)


def aurocs(detector: Detector, features: dict[str, torch.Tensor], seed: int = 0) -> tuple[dict, dict]:
    """({score: mean AUROC over the OOD sets}, {score: scores of every set concatenated}) for one noise seed."""
    results = {name: detector.score_features(f, seed=seed) for name, f in features.items()}
    means, raw = {}, {}
    for score in SCORES:
        means[score] = float(
            np.mean([ood_metrics(results[TEST_ID].get(score), results[s].get(score)).auroc for s in TEST_OOD])
        )
        raw[score] = np.concatenate([results[name].get(score) for name in features])
    return means, raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--out", default="benchmarks/results/official_test_time.md")
    args = parser.parse_args(argv)
    from dlsr_core.comparison import load_inputs

    started = time.perf_counter()
    base = Detector.load(args.checkpoint, device="cpu")
    inputs = load_inputs(base, [TEST_ID, *TEST_OOD], pixels=False)
    features = {name: s.features for name, s in inputs.items()}
    variants = {
        "as trained (paper: no autocast, shared LR noise)": TestTimeOptions(),
        "fp16 autocast": TestTimeOptions(autocast=True),
        "separate LR noise": TestTimeOptions(lr_noise="separate"),
    }
    lines = [
        f"# Test-time items of the official preset, on `{os.path.relpath(args.checkpoint)}` ({base.backbone} @ "
        f"{base.input_size} px, "
        f"sampler {base.scoring.sampler}, t = {base.scoring.timestep})",
        "",
        "| variant | MSE | MFsim | LR | largest relative score change |",
        "|---|---|---|---|---|",
    ]
    reference, reference_raw = aurocs(base.with_scoring(base.scoring, TestTimeOptions()), features)
    for label, options in variants.items():
        means, raw = aurocs(base.with_scoring(base.scoring, options), features)
        change = max(
            float(np.max(np.abs(raw[s] - reference_raw[s])) / (np.std(reference_raw[s]) + 1e-12)) for s in SCORES
        )
        cells = [f"{100 * means[s]:.2f} ({100 * (means[s] - reference[s]):+.2f})" for s in SCORES]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {change:.3f} std |")
    spreads = {}
    for label, noise in (("shared", "shared"), ("separate", "separate")):
        detector = base.with_scoring(base.scoring, TestTimeOptions(lr_noise=noise))
        values = [aurocs(detector, features, seed)[0]["lr"] for seed in SEEDS]
        spreads[label] = (100 * np.mean(values), 100 * np.std(values, ddof=1))
    lines += [
        "",
        "Cells: mean AUROC (%) over the five test OOD sets (change against the first row). Last column: the largest "
        "change of any image's score, in standard deviations of that score over all images.",
        "",
        f"LR over noise seeds {SEEDS[0]}-{SEEDS[-1]}: shared noise {spreads['shared'][0]:.2f} ± "
        f"{spreads['shared'][1]:.2f}, separate noise {spreads['separate'][0]:.2f} ± {spreads['separate'][1]:.2f} "
        f"(mean ± std of the mean AUROC). Run time {time.perf_counter() - started:.0f} s, one process, CPU.",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown)


if __name__ == "__main__":
    main()
