"""2-D maps of feature vectors: PCA (instant, deterministic) and UMAP (slower, shows neighbourhoods).

`import umap` compiles numba code (~20 s the first time on a small CPU), so it is imported only when asked for.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

METHODS = ("pca", "umap")


class EmbeddingError(ValueError):
    """The inputs cannot be embedded (too few points, wrong shape, non-finite values)."""


def _as_matrix(features: ArrayLike, minimum: int) -> np.ndarray:
    matrix = np.asarray(features, dtype=np.float32)
    if matrix.ndim != 2:
        raise EmbeddingError(f"need an (N, D) matrix, got shape {matrix.shape}")
    if matrix.shape[0] < minimum:
        raise EmbeddingError(f"need at least {minimum} points to embed, got {matrix.shape[0]}")
    if not np.isfinite(matrix).all():
        raise EmbeddingError("features contain NaN/Inf")
    return matrix


def pca_2d(features: ArrayLike) -> np.ndarray:
    """First two principal components: (N, D) -> (N, 2), signs fixed so the output is reproducible."""
    matrix = _as_matrix(features, 2).astype(np.float64)
    centered = matrix - matrix.mean(axis=0)
    # SVD of the centred data: the right singular vectors are the principal axes.
    _, _, axes = np.linalg.svd(centered, full_matrices=False)
    axes = axes[:2]
    # An eigenvector's sign is arbitrary; make each axis's largest loading positive.
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    projected = centered @ (axes * signs[:, None]).T
    if projected.shape[1] < 2:  # D == 1
        projected = np.hstack([projected, np.zeros((len(projected), 1))])
    return projected.astype(np.float32)


def umap_2d(features: ArrayLike, n_neighbors: int = 15, min_dist: float = 0.1, seed: int | None = None) -> np.ndarray:
    """UMAP (cosine metric) of (N, D) features -> (N, 2).

    `seed` makes the result reproducible but forces UMAP onto one thread (about 10x slower); None is fast.
    """
    matrix = _as_matrix(features, 4)
    import umap  # slow first import (numba), see module docstring

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, matrix.shape[0] - 1)),
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
        # Spectral initialisation needs a connected neighbour graph, which tiny inputs do not give.
        init="spectral" if matrix.shape[0] > n_neighbors + 2 else "random",
    )
    return np.asarray(reducer.fit_transform(matrix), dtype=np.float32)


def embed_2d(features: ArrayLike, method: str = "pca", seed: int | None = None) -> np.ndarray:
    """Dispatch to pca_2d or umap_2d by name."""
    if method == "pca":
        return pca_2d(features)
    if method == "umap":
        return umap_2d(features, seed=seed)
    raise EmbeddingError(f"unknown embedding method {method!r}; choose one of {', '.join(METHODS)}")
