"""How much does the reconstruction noise move a score, and how many draws per image are worth their cost?

    python -m benchmarks.noise_draws --out benchmarks/results

For K = 1, 4, 16 noise draws averaged per image and several seeds, on the shipped model and the demo sets:
- the score's spread across seeds per image (median std), relative to the spread of ID scores (std of ID scores),
- AUROC per OOD set (mean and range over seeds),
- verdict flips: the share of images whose ID/OOD verdict at the 95%-TPR threshold is not the same for every seed,
  overall and among the images within one ID-score std of the threshold,
- the cost: seconds to score 10,000 cached vectors.
Prints a Markdown table and writes noise_draws.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dlsr_core.cache import cached_features
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.metrics import ood_metrics
from dlsr_core.scoring import SCORE_NAMES, Detector

ID_SET = "demo:fashion_mnist_test"
OOD_SETS = [
    "demo:digits",
    "demo:letters",
    "demo:textures",
    "demo:fashion_mnist_inverted",
    "demo:fashion_mnist_rotated",
]


def scores_per_seed(
    detector: Detector, features: dict[str, torch.Tensor], timestep: int, draws: int, seeds: list[int]
) -> tuple[dict[str, np.ndarray], float]:
    """{score name: (seeds, N_all) array over all sets stacked in `features` order}, and seconds per 10k vectors."""
    stacked = torch.cat(list(features.values()))
    per_seed: dict[str, list[np.ndarray]] = {name: [] for name in SCORE_NAMES}
    started = time.perf_counter()
    for seed in seeds:
        result = detector.score_features(stacked, timestep, seed=seed, draws=draws)
        for name in SCORE_NAMES:
            per_seed[name].append(result.get(name))
    seconds_per_10k = (time.perf_counter() - started) / len(seeds) * 10_000 / len(stacked)
    return {name: np.stack(values) for name, values in per_seed.items()}, seconds_per_10k


def summarize(values: np.ndarray, set_slices: dict[str, slice]) -> dict:
    """Spread, AUROC and verdict flips for one score: values (seeds, N_all)."""
    id_values = values[:, set_slices[ID_SET]]
    id_spread = float(id_values.std(axis=1).mean())
    thresholds = np.quantile(id_values, 0.95, axis=1, method="inverted_cdf")  # (seeds,)
    verdicts = values > thresholds[:, None]
    unanimous = verdicts.all(axis=0) | (~verdicts).all(axis=0)
    near = np.abs(values.mean(axis=0) - thresholds.mean()) < id_spread
    aurocs = {
        name: [100 * ood_metrics(id_row, row[part]).auroc for id_row, row in zip(id_values, values, strict=True)]
        for name, part in set_slices.items()
        if name != ID_SET
    }
    per_image_std = values.std(axis=0)
    return {
        "median_std_across_seeds": float(np.median(per_image_std)),
        "relative_std": float(np.median(per_image_std) / id_spread),
        "verdict_flip_percent": float(100 * (~unanimous).mean()),
        "near_threshold_images": int(near.sum()),
        "verdict_flip_percent_near_threshold": float(100 * (~unanimous[near]).mean()) if near.any() else 0.0,
        "auroc_mean": {name: float(np.mean(v)) for name, v in aurocs.items()},
        "auroc_range": {name: float(np.ptp(v)) for name, v in aurocs.items()},
        "auroc_average_mean": float(np.mean([np.mean(v) for v in aurocs.values()])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--timestep", "-t", type=int, default=5)
    parser.add_argument("--draws", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    detector = Detector.load(args.checkpoint, device="cpu")
    info = detector.info
    features = {
        spec: cached_features(spec, info.backbone, weights=info.weights, input_size=info.input_size).features
        for spec in [ID_SET, *OOD_SETS]
    }
    set_slices, start = {}, 0
    for spec, matrix in features.items():
        set_slices[spec] = slice(start, start + len(matrix))
        start += len(matrix)
    seeds = list(range(args.seeds))
    results = {}
    for draws in args.draws:
        values, seconds = scores_per_seed(detector, features, args.timestep, draws, seeds)
        results[draws] = {
            "seconds_per_10k_vectors_all_scores": seconds,
            **{name: summarize(values[name], set_slices) for name in SCORE_NAMES},
        }
        print(f"K={draws}: {seconds:.2f} s per 10k vectors (MSE, MFsim and LR together)", flush=True)

    lines = [
        f"t = {args.timestep}, 1 DDIM step, {len(seeds)} seeds, {start} demo images; spread = median over images of "
        "the std across seeds, relative to the std of ID scores; flips = images whose verdict differs between seeds",
        "",
        "| score | K draws | relative spread | flips, all images % | flips near threshold % | mean AUROC % "
        "(range over seeds) | s per 10k vectors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SCORE_NAMES:
        for draws, row in results.items():
            summary = row[name]
            spread = max(summary["auroc_range"].values())
            lines.append(
                f"| {name} | {draws} | {summary['relative_std']:.3f} | {summary['verdict_flip_percent']:.2f} | "
                f"{summary['verdict_flip_percent_near_threshold']:.1f} (of {summary['near_threshold_images']}) | "
                f"{summary['auroc_average_mean']:.2f} (±{spread / 2:.2f}) | "
                f"{row['seconds_per_10k_vectors_all_scores']:.2f} |"
            )
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_draws.md").write_text(table + "\n")
    payload = {
        "checkpoint": args.checkpoint,
        "timestep": args.timestep,
        "seeds": seeds,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "results": {str(k): v for k, v in results.items()},
    }
    (out / "noise_draws.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
