"""k-NN and Mahalanobis scores of the demo sets, fitted once and stored, so a new app process does not refit them.

Fitted on the 60,000 Fashion-MNIST training features, scoring the 7,000 demo images took about 5 s of CPU (the k-NN
search is a 7,000 x 60,000 product) on every first visit of Score distributions. They depend only on the features:
not on t, DDIM steps or draws. So they are stored once per model and data, in the user's cache (beside the feature
cache) and, for the shipped model, in `assets/` (`SHIPPED_DISTANCE_SCORES`, written by
scripts/make_distance_scores_asset.py), and read back in milliseconds.

The key names everything the scores depend on: the model (its content id: backbone, weights, feature options), the
content identity of every set (demo sets hash their arrays; the training set its files), the feature extraction
version, k and the fitting rule. Anything else gets other scores: a different model or set never reuses them.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes
from dlsr_core.explorer.distributions import MethodScores, baseline_methods

SHIPPED_DISTANCE_SCORES = Path(__file__).resolve().parents[2] / "assets" / "distance_scores_default.npz"
DISTANCE_VERSION = "knn-mahalanobis-v1"  # bump when baseline_methods or the distance baselines change
KNN_K = 50


def distance_key(
    model_id: str, set_identities: Mapping[str, str], set_rows: Mapping[str, int], train_identity: str | None
) -> str:
    """The stored scores' key (a JSON string): model, every set's content identity and rows, the training set's
    identity (None: the scores were fitted on half of the ID set), the feature extraction version, k and the rule."""
    from dlsr_core.cache import PREPROCESSING_VERSION  # lazy: the cache module pulls in safetensors

    return json.dumps(
        {
            "model": model_id,
            "sets": dict(set_identities),
            "rows": {spec: int(rows) for spec, rows in set_rows.items()},
            "train": train_identity,
            "features": PREPROCESSING_VERSION,
            "k": KNN_K,
            "version": DISTANCE_VERSION,
        },
        sort_keys=True,
    )


def scores_key(model_id: str, features: Mapping[str, Tensor], train_identity: str | None) -> str:
    """distance_key for the sets `features` (spec -> (N, D)): their content identities and rows looked up here."""
    identities = {spec: dataset_identity(spec) or f"{spec}|unknown" for spec in features}
    return distance_key(model_id, identities, {spec: len(matrix) for spec, matrix in features.items()}, train_identity)


def user_store_path(key: str) -> Path:
    """Where the user's cache keeps the scores of `key` (beside the feature cache)."""
    from dlsr_core.cache import default_cache_dir

    return default_cache_dir() / "stored_scores" / f"distance-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def save_method_scores(path: Path, key: str, methods: list[MethodScores]) -> None:
    """Store methods' per-set scores under `key` at `path`, atomically."""
    arrays = {
        f"{method.name}/{spec}": np.asarray(values, dtype=np.float32)
        for method in methods
        for spec, values in method.scores.items()
    }
    meta = [
        {"name": m.name, "label": m.label, "family": m.family, "note": m.note, "sets": list(m.scores)} for m in methods
    ]
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), methods=np.array(json.dumps(meta)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_method_scores(path: Path, key: str) -> list[MethodScores] | None:
    """The methods stored at `path` when they were stored under exactly `key`; None otherwise (absent, damaged,
    another model or set)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            meta = json.loads(str(stored["methods"]))
            return [
                MethodScores(
                    entry["name"],
                    entry["label"],
                    entry["family"],
                    {spec: np.asarray(stored[f"{entry['name']}/{spec}"], dtype=np.float32) for spec in entry["sets"]},
                    entry["note"],
                )
                for entry in meta
            ]
    except (OSError, KeyError, ValueError, TypeError):
        return None


def dataset_identity(spec: str) -> str | None:
    """The content identity of dataset `spec` (what the feature cache keys it by), or None when it is not here.
    Fashion-MNIST's is read from its files' bytes without decoding its 60,000 images."""
    from dlsr_core.data import DatasetError, open_dataset
    from dlsr_core.data.fashion_mnist import fashion_mnist_identity

    name, _, split = spec.partition(":")
    if name == "fashion_mnist" and split in ("train", "test"):
        return fashion_mnist_identity(split)
    try:
        return open_dataset(spec).identity
    except (DatasetError, OSError, ValueError):
        return None


def _stored(key: str, shipped: Path) -> list[MethodScores] | None:
    for path in (user_store_path(key), shipped):
        found = load_method_scores(path, key)
        if found is not None:
            return found
    return None


def distance_scores(
    model_id: str,
    features: Mapping[str, Tensor],
    id_set: str,
    stage_dims: tuple[int, ...],
    training_set: str | None,
    train_features: Callable[[], Tensor | None],
    shipped: Path = SHIPPED_DISTANCE_SCORES,
    progress=None,
) -> tuple[list[MethodScores], bool]:
    """k-NN and Mahalanobis on every set of `features` (explorer.baseline_methods) and whether they were fitted on
    the model's `training_set`: read from the user's store or the shipped one when they hold this model and data,
    else fitted and stored in the user's cache. `train_features()` (the training set's features when ready, or None)
    is called only when nothing is stored; without them the baselines are fitted on half of the ID set (stored too)."""
    train_identity = dataset_identity(training_set) if training_set else None
    train = None
    if train_identity is not None:
        key = scores_key(model_id, features, train_identity)
        stored = _stored(key, shipped)
        if stored is not None:
            return stored, True
        train = train_features()
    if train is None:
        key = scores_key(model_id, features, None)
        stored = _stored(key, shipped)
        if stored is not None:
            return stored, False
    name = training_set or "the training set"
    methods = baseline_methods(id_set, dict(features), stage_dims, train, name, KNN_K, progress)
    try:
        save_method_scores(user_store_path(key), key, methods)
    except OSError:  # an unwritable cache costs only the next process's refit
        pass
    return methods, train is not None
