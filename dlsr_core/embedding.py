"""2-D maps of feature vectors: PCA (instant, deterministic) and UMAP (slower, shows neighbourhoods).

UMAP runs on a precomputed cosine-distance matrix: for fewer than 4,096 points umap-learn otherwise fills the
distance matrix by calling a numba metric once per pair from Python (14 s of 17 for 2,400 points here); NumPy does
it in milliseconds. `import umap` and its first fit still compile numba code (~12 s on a small CPU), so an app runs
UMAP in a `BackgroundProjector`: a separate, low-priority worker process that stays warm, while the page shows PCA.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

METHODS = ("pca", "umap")
# Layout epochs: umap-learn's default for small inputs is 500; 200 gave the same picture at 40 % of the time.
UMAP_EPOCHS = 200


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


def cosine_distances(features: ArrayLike) -> np.ndarray:
    """Pairwise cosine distances 1 - cos(a, b): (N, D) -> (N, N) float32, zero diagonal, never negative.

    An all-zero row has distance 1 to everything else.
    """
    matrix = _as_matrix(features, 1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms > 0, norms, 1.0)
    distances = np.clip(1.0 - unit @ unit.T, 0.0, 2.0).astype(np.float32)
    np.fill_diagonal(distances, 0.0)
    return distances


def umap_2d(
    features: ArrayLike,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int | None = None,
    n_epochs: int = UMAP_EPOCHS,
) -> np.ndarray:
    """UMAP (cosine distance) of (N, D) features -> (N, 2).

    `seed` makes the result reproducible but forces UMAP onto one thread (several times slower); None is fast.
    """
    matrix = _as_matrix(features, 4)
    import umap  # slow first import (numba), see module docstring

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, matrix.shape[0] - 1)),
        min_dist=min_dist,
        metric="precomputed",
        n_epochs=n_epochs,
        random_state=seed,
        # Spectral initialisation needs a connected neighbour graph, which tiny inputs do not give.
        init="spectral" if matrix.shape[0] > n_neighbors + 2 else "random",
    )
    import warnings

    with warnings.catch_warnings():  # "precomputed metric: inverse_transform unavailable" — not used here
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(reducer.fit_transform(cosine_distances(matrix)), dtype=np.float32)


def embed_2d(features: ArrayLike, method: str = "pca", seed: int | None = None) -> np.ndarray:
    """Dispatch to pca_2d or umap_2d by name."""
    if method == "pca":
        return pca_2d(features)
    if method == "umap":
        return umap_2d(features, seed=seed)
    raise EmbeddingError(f"unknown embedding method {method!r}; choose one of {', '.join(METHODS)}")


def _warm_up() -> bool:
    """Compile umap's numba code on a tiny random input (runs inside the worker)."""
    umap_2d(np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32), n_neighbors=5, n_epochs=10)
    return True


def _worker_setup(parent: int) -> None:
    """Runs first in the worker: lower its priority, and end it when its parent (the app) is gone.

    A killed app leaves its worker behind otherwise: the worker holds its own end of the task queue, so it never
    sees the queue close and would wait for tasks forever.
    """
    try:
        os.nice(10)  # the worker must never slow down the page that is waiting for it
    except OSError:
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="dlsr-parent-watch", daemon=True).start()


@contextmanager
def hidden_script_main() -> Iterator[None]:
    """Start worker processes inside this block: they will not re-run the caller's __main__.

    Streamlit runs each page as the `__main__` module; a spawned worker imports its parent's `__main__` from its
    file first, so the UMAP worker re-ran the page (in bare mode, flooding the server log with "missing
    ScriptRunContext" warnings, and loading the model for nothing). A ProcessPoolExecutor starts its worker inside
    `submit`, so the page's module is swapped for an empty one just for that call.
    """
    shown = sys.modules.get("__main__")
    placeholder = types.ModuleType("__main__")
    sys.modules["__main__"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("__main__") is placeholder and shown is not None:  # unless a page run replaced it since
            sys.modules["__main__"] = shown


def worker_process_executor() -> Executor:
    """One spawned worker process at lower priority (spawn: no forked torch/Streamlit state, no GIL shared)."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_setup,
        initargs=(os.getpid(),),
    )


@dataclass(frozen=True)
class Projection:
    """Where a background projection stands: coordinates (N, 2) when done, the error text when it failed."""

    status: str  # "running" | "done" | "failed"
    coordinates: np.ndarray | None = None
    error: str = ""
    seconds: float = 0.0  # since it was submitted


class BackgroundProjector:
    """UMAP jobs keyed by the caller, computed one at a time off the calling thread; results are kept (LRU).

    `submit` never blocks (beyond handing the matrix over); `get` says whether a key is running, done or failed.
    The executor is created on first use by `executor_factory` (default: a low-priority worker process).
    """

    def __init__(self, executor_factory: Callable[[], Executor] | None = None, keep: int = 32) -> None:
        self._factory = executor_factory
        self._executor: Executor | None = None
        self._jobs: OrderedDict[Hashable, tuple[Future, float]] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self._warm: Future | None = None

    def _pool(self) -> Executor:
        if self._executor is None:
            # Looked up at call time, so tests can replace the module's factory with an in-process one.
            self._executor = (self._factory or worker_process_executor)()
        return self._executor

    def warm(self) -> None:
        """Start compiling UMAP in the worker now, so that a later fit answers in about a second."""
        with self._lock:
            if self._warm is None:
                with hidden_script_main():
                    self._warm = self._pool().submit(_warm_up)

    def submit(self, key: Hashable, features: ArrayLike) -> None:
        """Queue a UMAP of features (N, D) under `key` unless it is already running or done."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not (job[0].done() and job[0].exception() is not None):
                self._jobs.move_to_end(key)
                return
            try:
                with hidden_script_main():
                    future = self._pool().submit(umap_2d, np.asarray(features, dtype=np.float32))
            except Exception as error:  # a broken worker pool: start a fresh one next time
                self._executor = None
                future = Future()
                future.set_exception(error)
            self._jobs[key] = (future, time.monotonic())
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)

    def get(self, key: Hashable) -> Projection | None:
        """The projection under `key`, or None when it was never submitted (or has been dropped)."""
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            return None
        future, submitted = job
        seconds = time.monotonic() - submitted
        if not future.done():
            return Projection("running", seconds=seconds)
        error = future.exception()
        if error is not None:
            return Projection("failed", error=f"{type(error).__name__}: {error}", seconds=seconds)
        return Projection("done", coordinates=future.result(), seconds=seconds)

    def shutdown(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._jobs.clear()
            self._warm = None
