"""Inputs of the feature map: subsampled features, their reconstructions and scores, and where projections are kept.

A 2-D projection depends only on the rows it is fitted to: the sampled features, plus their reconstructions when
those are shown (then on t, steps and draws too) — never on which score colours the points. `projection_key` names
exactly that, so a page re-fits only when positions can change. The shipped model's default map is stored in
assets/ (`SHIPPED_MAP`, written by scripts/make_feature_map_asset.py), so a first visit shows UMAP at once.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlsr_core.atomic import atomic_write_bytes
from dlsr_core.embedding import UMAP_EPOCHS
from dlsr_core.explorer.sets import subsample_rows
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

SHIPPED_MAP = Path(__file__).resolve().parents[2] / "assets" / "feature_map_default.npz"
PROJECTION_VERSION = f"umap-cosine-precomputed-n15-d0.1-e{UMAP_EPOCHS}-v1"
# The Feature-map page's first view, which SHIPPED_MAP holds for the shipped model: keep in step with the page.
DEFAULT_PER_SET = 200
DEFAULT_TIMESTEP = 5


@dataclass(frozen=True)
class MapPoints:
    """Rows to embed: original features and (optionally) their reconstructions, with labels for each row.

    matrix (P, D); sets, kinds ("original" | "reconstructed"), dataset indices are length P; scores maps each
    available score name to (P,) values (a reconstruction carries its original's score).
    """

    matrix: np.ndarray
    sets: list[str]
    kinds: list[str]
    indices: np.ndarray
    scores: dict[str, np.ndarray]

    def mask(self, set_name: str | None = None, kind: str | None = None) -> np.ndarray:
        """(P,) bool: the rows of `set_name` (any set when None) and `kind` (either kind when None)."""
        return np.array(
            [
                (set_name is None or s == set_name) and (kind is None or k == kind)
                for s, k in zip(self.sets, self.kinds, strict=True)
            ],
            dtype=bool,
        )


@dataclass(frozen=True)
class MapSetting:
    """Everything a map's point positions depend on (and nothing they do not, such as the score)."""

    model_id: str
    set_sizes: tuple[tuple[str, int], ...]  # (spec, rows available) per set, in plotting order
    per_set: int
    seed: int
    with_reconstructions: bool
    timestep: int | None  # None when reconstructions are not mapped: then t, steps and draws cannot matter
    steps: int | None
    draws: int | None
    projection: str = PROJECTION_VERSION


def map_setting(
    model_id: str,
    set_sizes: dict[str, int],
    per_set: int,
    with_reconstructions: bool,
    timestep: int,
    steps: int | None,
    draws: int,
    seed: int = 0,
) -> MapSetting:
    """The projection key of a map; t, steps and draws enter it only when reconstructions are mapped."""
    recon = (timestep, steps, draws) if with_reconstructions else (None, None, None)
    return MapSetting(model_id, tuple(set_sizes.items()), per_set, seed, with_reconstructions, *recon)


def map_points(
    detector: Detector,
    features: dict[str, Tensor],
    dataset_indices: dict[str, np.ndarray],
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    per_set: int = 200,
    with_reconstructions: bool = True,
    seed: int = 0,
    draws: int = DEFAULT_DRAWS,
) -> MapPoints:
    """Subsample each set to `per_set` rows, score them (every available score) and stack originals
    (+ reconstructions of the first noise draw) for a 2-D map."""
    blocks, sets, kinds, indices = [], [], [], []
    scores: dict[str, list[np.ndarray]] = {}
    for name, matrix in features.items():
        rows = subsample_rows(len(matrix), per_set, seed)
        chosen = matrix[torch.as_tensor(rows)]
        with torch.inference_mode():
            result = detector.score_features(chosen, timestep, steps, 1.0, seed, with_lr=True, draws=draws)
        values = {"mse": result.mse, "mfsim": result.mfsim, **({"lr": result.lr} if result.lr is not None else {})}
        parts = [("original", chosen)] + ([("reconstructed", result.reconstruction)] if with_reconstructions else [])
        for kind, block in parts:
            blocks.append(block.float().cpu().numpy())
            sets += [name] * len(rows)
            kinds += [kind] * len(rows)
            indices.append(np.asarray(dataset_indices[name])[rows])
            for score, value in values.items():
                scores.setdefault(score, []).append(value)
    return MapPoints(
        np.concatenate(blocks),
        sets,
        kinds,
        np.concatenate(indices),
        {name: np.concatenate(parts) for name, parts in scores.items()},
    )


def rank_percentiles(values: np.ndarray) -> np.ndarray:
    """Each value's rank among all of them as a percentile in [0, 100] (ties share their mean rank): (P,) -> (P,).

    Colouring by rank spreads the colours over every set; colouring by raw value lets one far-off set take the
    whole scale and paints everything else one colour.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size <= 1:
        return np.full(values.shape, 50.0)
    order = values.argsort(kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size, dtype=np.float64)
    # Average the ranks of tied values so equal scores get equal colours.
    unique, inverse = np.unique(values, return_inverse=True)
    if unique.size < values.size:
        ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
    return 100.0 * ranks / (values.size - 1)


def _setting_json(setting: MapSetting) -> str:
    return json.dumps(asdict(setting), sort_keys=True)


def load_shipped_projection(setting: MapSetting, path: Path = SHIPPED_MAP) -> np.ndarray | None:
    """The stored coordinates (P, 2) when `path` holds a projection for exactly `setting`, else None."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["setting"]) != _setting_json(setting):
                return None
            return np.asarray(stored["coordinates"], dtype=np.float32)
    except (OSError, KeyError, ValueError):
        return None


def save_projection(setting: MapSetting, coordinates: np.ndarray, path: Path = SHIPPED_MAP) -> None:
    """Store coordinates (P, 2) for `setting` atomically (float16 keeps the shipped file a few kB)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, setting=np.array(_setting_json(setting)), coordinates=np.asarray(coordinates, dtype=np.float16)
    )
    atomic_write_bytes(path, buffer.getvalue())


def share_among_id(coordinates: np.ndarray, sets: list[str], kinds: list[str], id_set: str) -> dict[str, float]:
    """Per OOD set, the fraction of its original points lying inside the area the ID points cover on the map
    (coordinates (P, 2)): its nearest ID point is no farther than 95 % of ID points' nearest ID neighbour."""
    originals = np.array([kind == "original" for kind in kinds])
    points = np.asarray(coordinates, dtype=np.float32)[originals]
    names = np.asarray(sets, dtype=object)[originals]
    is_id = names == id_set
    if is_id.sum() < 2:
        return {}
    id_points = points[is_id]
    distances = np.sqrt(((points[:, None, :] - id_points[None, :, :]) ** 2).sum(axis=-1))
    distances[np.flatnonzero(is_id), np.arange(len(id_points))] = np.inf  # an ID point is not its own neighbour
    nearest_id = distances.min(axis=1)
    reach = np.quantile(nearest_id[is_id], 0.95)
    inside = nearest_id <= reach
    return {str(name): float(inside[names == name].mean()) for name in dict.fromkeys(names) if name != id_set}
