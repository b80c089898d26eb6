"""What one widget change on the Score page costs: re-scoring all 2,000 demo ID reference images (the layer-profile
reference) and a dozen uploads, per DDIM steps and noise draws, with one torch thread (the app's setting on 2 cores).

    python -m benchmarks.score_page --out benchmarks/results

The app caches each setting, so this is the cost of the first visit to a (t, steps, draws, score) combination.
Prints a Markdown table and writes score_page.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dlsr_core import explorer
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.scoring import Detector

SETTINGS = [(steps, draws) for steps in (1, 5, 10) for draws in (1, 4)]


def best_of(repeats: int, run) -> float:
    """The fastest of `repeats` timings of run() in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--timestep", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    detector = Detector.load(args.checkpoint, device="cpu")
    experiment = explorer.loaded_experiment(args.checkpoint, detector).experiment
    id_features = explorer.load_features(detector, experiment.id_set.spec).features
    uploads = explorer.load_features(detector, "demo:letters").features[:12]
    names = [f"upload{i}" for i in range(len(uploads))]
    rows = []
    for steps, draws in SETTINGS:
        for score in ("mfsim", "lr"):
            with_lr = score == "lr"

            def reference(steps=steps, draws=draws, with_lr=with_lr):
                return explorer.score_matrix(detector, id_features, args.timestep, steps, with_lr=with_lr, draws=draws)

            seconds = best_of(args.repeats, reference)
            ref = reference()
            upload_seconds = best_of(
                args.repeats,
                lambda ref=ref, steps=steps, draws=draws, score=score: explorer.score_uploads(
                    detector, uploads, names, ref, score, args.timestep, steps, draws=draws
                ),
            )
            rows.append(
                {
                    "score": score,
                    "steps": steps,
                    "draws": draws,
                    "reference_images": len(id_features),
                    "reference_seconds": round(seconds, 3),
                    "uploads_seconds": round(upload_seconds, 3),
                }
            )
            print(rows[-1], flush=True)
    lines = [
        f"t = {args.timestep}, one torch thread, {len(id_features)} ID reference images + {len(uploads)} uploads with "
        f"their layer profiles; best of {args.repeats}; {platform.machine()}, torch {torch.__version__}",
        "",
        "| score | DDIM steps | draws | reference s | uploads + profiles s | total s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        total = row["reference_seconds"] + row["uploads_seconds"]
        lines.append(
            f"| {row['score']} | {row['steps']} | {row['draws']} | {row['reference_seconds']:.2f} | "
            f"{row['uploads_seconds']:.2f} | {total:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score_page.md").write_text(table + "\n")
    (out / "score_page.json").write_text(json.dumps({"timestep": args.timestep, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
