"""2-D embeddings: PCA is exact and reproducible; UMAP keeps separated clusters apart, also in the background."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dlsr_core.embedding import BackgroundProjector, EmbeddingError, cosine_distances, embed_2d, pca_2d, umap_2d

REPO = Path(__file__).resolve().parent.parent


def two_clusters(n: int = 40, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = np.zeros(d)
    centre[0] = 10.0
    return np.vstack([rng.normal(0, 1, (n, d)), rng.normal(0, 1, (n, d)) + centre]).astype(np.float32)


def test_pca_matches_the_top_principal_axis_and_is_reproducible():
    points = two_clusters()
    projected = pca_2d(points)
    assert projected.shape == (80, 2)
    # The clusters differ along axis 0, so the first component separates them.
    assert projected[:40, 0].max() < projected[40:, 0].min() or projected[:40, 0].min() > projected[40:, 0].max()
    np.testing.assert_array_equal(projected, pca_2d(points.copy()))
    centered = points - points.mean(axis=0)
    variance = np.var(projected[:, 0]) + np.var(projected[:, 1])
    top_two = np.sort(np.linalg.eigvalsh(np.cov(centered.T, bias=True)))[-2:].sum()
    assert variance == pytest.approx(top_two, rel=1e-3)


def test_bad_inputs_raise_named_errors():
    with pytest.raises(EmbeddingError, match="at least"):
        pca_2d(np.ones((1, 3)))
    with pytest.raises(EmbeddingError, match="NaN"):
        pca_2d(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(EmbeddingError, match="unknown"):
        embed_2d(np.ones((5, 3)), "tsne")


def test_umap_keeps_two_clusters_apart():
    points = two_clusters(n=30)
    mapped = umap_2d(points, n_neighbors=10, seed=0)
    assert mapped.shape == (60, 2) and np.isfinite(mapped).all()
    first, second = mapped[:30].mean(axis=0), mapped[30:].mean(axis=0)
    spread = max(mapped[:30].std(axis=0).max(), mapped[30:].std(axis=0).max())
    assert np.linalg.norm(first - second) > 2 * spread


def test_cosine_distances_match_a_direct_computation():
    points = two_clusters(n=5, d=4)
    points[0] = 0.0  # an all-zero row is at distance 1 from everything
    distances = cosine_distances(points)
    a, b = points[3], points[7]
    assert distances[3, 7] == pytest.approx(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-6)
    assert distances[0, 5] == pytest.approx(1.0) and np.all(np.diag(distances) == 0)
    np.testing.assert_allclose(distances, distances.T)


def test_background_projector_runs_once_per_key_and_reports_failures():
    calls = []

    class CountingExecutor(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            calls.append(fn.__name__)
            return super().submit(fn, *args, **kwargs)

    projector = BackgroundProjector(lambda: CountingExecutor(1))
    assert projector.get("a") is None
    points = two_clusters(n=20)
    projector.submit("a", points)
    projector.submit("a", points)  # already running or done: not queued again
    deadline = time.time() + 120
    while projector.get("a").status == "running" and time.time() < deadline:
        time.sleep(0.1)
    done = projector.get("a")
    assert done.status == "done" and done.coordinates.shape == (40, 2) and calls == ["umap_2d"]
    projector.submit("bad", np.ones((2, 3)))  # too few points for UMAP
    while projector.get("bad").status == "running":
        time.sleep(0.05)
    assert projector.get("bad").status == "failed" and "at least 4" in projector.get("bad").error
    projector.shutdown()


def test_background_worker_ends_when_its_app_is_killed():
    """A worker process left behind by a killed app would wait for tasks forever; it must notice and exit."""
    code = (
        "import time, numpy as np\n"
        "from dlsr_core import embedding\n"
        "projector = embedding.BackgroundProjector()\n"
        "projector.submit('x', np.random.default_rng(0).normal(size=(50, 8)).astype('float32'))\n"
        "print(*projector._executor._processes, flush=True)\n"
        "time.sleep(120)\n"
    )
    app = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    workers = [int(pid) for pid in app.stdout.readline().split()]
    assert workers, "the app did not start a worker"
    app.kill()
    app.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_the_worker_does_not_rerun_the_page_that_started_it(tmp_path, monkeypatch):
    """Streamlit runs a page as __main__; a spawned worker used to import (re-run) it, flooding the log with
    "missing ScriptRunContext" warnings."""
    import multiprocessing.spawn
    import types

    from dlsr_core import embedding

    marker = tmp_path / "page_ran"
    page = tmp_path / "page.py"
    page.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    # What a spawned child is told to import first: the page, unless it is hidden.
    assert multiprocessing.spawn.get_preparation_data("w")["init_main_from_path"] == str(page)
    with embedding.hidden_script_main():
        assert "init_main_from_path" not in multiprocessing.spawn.get_preparation_data("w")
    assert sys.modules["__main__"] is fake_main
    executor = embedding.worker_process_executor()
    try:
        with embedding.hidden_script_main():
            future = executor.submit(os.getpid)
        assert future.result(timeout=120) != os.getpid()
    finally:
        executor.shutdown()
    assert not marker.exists()
