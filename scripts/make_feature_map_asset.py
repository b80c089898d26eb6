"""Fit and store the shipped model's default feature map (UMAP) in assets/feature_map_default.npz.

Usage (from the repository root)::

    python scripts/make_feature_map_asset.py [--run checkpoints/default]

The Feature-map page shows this projection at once on a first visit instead of fitting UMAP (seconds of numba
compilation on a small CPU). It is keyed by everything the positions depend on (the model's checksum, the demo
sets, points per set, t, DDIM steps and draws of the reconstructions); the page ignores it when any of them differ,
so re-run this after retraining the shipped model or changing those defaults. UMAP is seeded here (reproducible).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Running `python scripts/make_feature_map_asset.py` puts scripts/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlsr_core import embedding, explorer  # noqa: E402
from dlsr_core.explorer import maps  # noqa: E402
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(explorer.default_run_dir()), help="run directory (default: shipped)")
    parser.add_argument("--out", default=str(maps.SHIPPED_MAP))
    args = parser.parse_args()
    detector = Detector.load(args.run, device="cpu")
    specs = explorer.loaded_experiment(args.run, detector).experiment.specs  # the page maps the experiment's sets
    feature_sets = {spec: explorer.load_features(detector, spec) for spec in specs}
    points = explorer.map_points(
        detector,
        {k: v.features for k, v in feature_sets.items()},
        {k: v.indices.numpy() for k, v in feature_sets.items()},
        maps.DEFAULT_TIMESTEP,
        DEFAULT_STEPS,
        maps.DEFAULT_PER_SET,
        True,
        draws=DEFAULT_DRAWS,
    )
    setting = explorer.map_setting(
        explorer.model_id(detector),
        {spec: len(feature_sets[spec]) for spec in specs},
        maps.DEFAULT_PER_SET,
        True,
        maps.DEFAULT_TIMESTEP,
        DEFAULT_STEPS,
        DEFAULT_DRAWS,
    )
    started = time.perf_counter()
    coordinates = embedding.umap_2d(points.matrix, seed=0)
    explorer.save_projection(setting, coordinates, Path(args.out))
    print(
        f"UMAP of {len(coordinates)} points in {time.perf_counter() - started:.1f} s -> {args.out} "
        f"({Path(args.out).stat().st_size / 1000:.0f} kB) for {setting}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
