"""How much does the reconstruction noise move a layer profile, and how many draws make it stable?

    python -m benchmarks.profile_draws [--per-set 300] [--seeds 5] [--out benchmarks/results]

For pairs "image draws:reference draws" (default 1:1, 4:4, 16:16, 16:1, 32:1, 64:1) and several seeds, on the
shipped model and the demo sets: every image's layer profile (per stage, the percent of the 2,000 ID reference images
whose same stage is more ID-like; the image's stage values averaged over the first number of noise draws, the
reference's over the second) is computed once per seed. Per stage, it prints the spread of a stage's percentile
across seeds over the ID images (median and 90th percentile of max - min, in percentage points: OOD images mostly sit
at 100 whatever the noise), the share of (image, stage) pairs over all images whose colour (worse / normal / better
than the ID 5-95 % band) is not the same for every seed, and the cost of a profile: seconds per 10,000 images for the
image side and for the reference side (timings: compare within one run). Writes profile_draws.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dlsr_core import explorer
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.scoring import Detector

SCORES = ("mfsim", "mse")


def stage_percentiles(
    detector: Detector, reference: torch.Tensor, images: torch.Tensor, draws: tuple[int, int], seed: int
) -> tuple[dict[str, np.ndarray], float, float]:
    """{score: (M, S) percentiles of the images' stages among the reference's}, and seconds per 10k vectors spent
    on the image side and on the reference side."""
    names = explorer.stage_names(detector.backbone, tuple(detector.stage_dims))
    image_draws, reference_draws = draws
    started = time.perf_counter()
    id_arrays = explorer.score_matrix(detector, reference, 5, 1, seed=seed, with_lr=False, draws=reference_draws)
    middle = time.perf_counter()
    image_arrays = explorer.score_matrix(detector, images, 5, 1, seed=seed, with_lr=False, draws=image_draws)
    ended = time.perf_counter()
    percent = {}
    for score in SCORES:
        stages = explorer.stage_reference(explorer.stage_values(id_arrays, score), score, names)
        percent[score] = explorer.worse_than_percent(stages, explorer.stage_values(image_arrays, score))
    return percent, (ended - middle) * 10_000 / len(images), (middle - started) * 10_000 / len(reference)


def _status(percent: np.ndarray) -> np.ndarray:
    low, high = explorer.BAND_PERCENT
    return np.where(percent > high, 1, np.where(percent < low, -1, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument(
        "--pairs", nargs="+", default=["1:1", "4:4", "16:16", "16:1", "32:1", "64:1"], help="image:reference draws"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-set", type=int, default=300, help="images profiled per demo set")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    detector = Detector.load(args.checkpoint, device="cpu")
    experiment = explorer.loaded_experiment(args.checkpoint, detector).experiment
    sets = [experiment.id_set.spec, *experiment.groups]
    features = {spec: explorer.load_features(detector, spec).features for spec in sets}
    reference = features[experiment.id_set.spec]
    rows = {spec: explorer.subsample_rows(len(m), args.per_set) for spec, m in features.items()}
    images = torch.cat([m[torch.as_tensor(rows[spec])] for spec, m in features.items()])
    is_id = np.arange(len(images)) < len(rows[experiment.id_set.spec])
    names = explorer.stage_names(detector.backbone, tuple(detector.stage_dims))
    results: dict = {}
    lines = [
        f"{len(images)} images ({args.per_set} per demo set) profiled against {len(reference)} ID images, t = 5, "
        f"1 DDIM step, {args.seeds} seeds. Stage cells: median / 90th percentile over the {int(is_id.sum())} ID images "
        "of a stage's percentile range across seeds (points); colour changes: % of (image, stage) over all images "
        "whose colour changes with the seed; cost: s per 10k images, image side / reference side.",
        "",
        "| score | draws image:reference | " + " | ".join(f"stage {n.number}" for n in names) + " | colour changes % "
        "| s per 10k |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for pair in args.pairs:
        draws = tuple(int(part) for part in pair.split(":"))
        runs = [stage_percentiles(detector, reference, images, draws, seed) for seed in range(args.seeds)]
        image_cost = sum(run[1] for run in runs) / len(runs)
        reference_cost = sum(run[2] for run in runs) / len(runs)
        for score in SCORES:
            stacked = np.stack([run[0][score] for run in runs])  # (seeds, M, S)
            spread = (stacked.max(axis=0) - stacked.min(axis=0))[is_id]  # (M_id, S)
            statuses = _status(stacked)
            changed = float(100 * (statuses != statuses[0]).any(axis=0).mean())
            median, p90 = np.median(spread, axis=0), np.quantile(spread, 0.9, axis=0)
            results[f"{score}@{pair}"] = {
                "id_median_range_points": median.tolist(),
                "id_p90_range_points": p90.tolist(),
                "colour_changes_percent": changed,
                "image_seconds_per_10k": image_cost,
                "reference_seconds_per_10k": reference_cost,
            }
            cells = " | ".join(f"{m:.1f} / {p:.1f}" for m, p in zip(median, p90, strict=True))
            lines.append(f"| {score} | {pair} | {cells} | {changed:.1f} | {image_cost:.1f} / {reference_cost:.1f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_draws.md").write_text(table + "\n")
    machine = f"{platform.machine()}, 1 torch thread, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}"
    (out / "profile_draws.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
