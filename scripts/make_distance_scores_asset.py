"""Fit k-NN and Mahalanobis for the shipped model and store their demo-set scores in assets/distance_scores_default.npz.

Usage (from the repository root)::

    python scripts/make_distance_scores_asset.py [--run checkpoints/default]

The Score-distributions page reads these scores instead of fitting the baselines on the 60,000 Fashion-MNIST
training features (about 5 s of CPU) in every new process. They are keyed by the model's checksum, the content of
every set of its experiment (ID and OOD) and of its training set, the feature extraction version and k
(explorer.stored_scores); the page ignores them when any of these differ, so re-run this after retraining the shipped
model or changing its experiment's sets. Needs the training set installed (its features are extracted once when not
cached).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Running `python scripts/make_distance_scores_asset.py` puts scripts/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlsr_core import explorer  # noqa: E402
from dlsr_core.explorer import stored_scores  # noqa: E402
from dlsr_core.scoring import Detector  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(explorer.default_run_dir()), help="run directory (default: shipped)")
    parser.add_argument("--out", default=str(stored_scores.SHIPPED_DISTANCE_SCORES))
    args = parser.parse_args()
    detector = Detector.load(args.run, device="cpu")
    experiment = explorer.loaded_experiment(args.run, detector).experiment
    specs = [experiment.id_set.spec, *experiment.groups]
    features = {spec: explorer.load_features(detector, spec).features for spec in specs}
    train = explorer.load_features(detector, experiment.training_set).features
    started = time.perf_counter()
    methods = explorer.baseline_methods(
        experiment.id_set.spec, features, tuple(detector.stage_dims), train, knn_k=stored_scores.KNN_K
    )
    train_identity = stored_scores.dataset_identity(experiment.training_set)
    key = stored_scores.scores_key(explorer.model_id(detector), features, train_identity)
    stored_scores.save_method_scores(Path(args.out), key, methods)
    print(
        f"k-NN and Mahalanobis on {sum(len(f) for f in features.values()):,} demo images, fitted on {len(train):,} "
        f"training features in {time.perf_counter() - started:.1f} s -> {args.out} "
        f"({Path(args.out).stat().st_size / 1000:.0f} kB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
