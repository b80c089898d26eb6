"""Feature extraction of whole sets off the page's thread, one set at a time, with progress.

A new set (added on the Experiment / data page, or named by a run's experiment) may take minutes to go through the
backbone: 10,000 images at 224 px is a few minutes on a laptop CPU. Run inside a page script, that would freeze the
page and be lost when the user clicks anything (Streamlit stops the script). Here the work runs on one background
thread (the pattern the feature map uses for UMAP, in a thread rather than a process because the backbone's weights
and the feature cache are already in this process); pages ask for the status, show progress and poll. Results are
written to the on-disk feature cache by the work itself, so a finished set is extracted once, ever.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Literal

from dlsr_core.features import FeatureSet

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class JobStatus:
    """Where a set's extraction is: queued, running (done of total images), done, or failed (with the reason)."""

    state: Literal["queued", "running", "done", "failed"]
    done: int = 0
    total: int = 0
    error: str = ""
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


class _Job:
    def __init__(self) -> None:
        self.future: Future | None = None
        self.done = 0
        self.total = 0
        self.started: float | None = None
        self.submitted = time.monotonic()


class FeatureJobs:
    """Background extractions keyed by the caller (backbone, weights, size, options, spec); one runs at a time.

    `submit` never blocks; `status` says how far a key is; `result` hands over a finished FeatureSet (or raises the
    job's error). Finished jobs are kept until taken with `forget` (at most `keep` of them).
    """

    def __init__(self, keep: int = 64) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlsr-extract")
        self._jobs: OrderedDict[Hashable, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def submit(self, key: Hashable, work: Callable[[ProgressCallback], FeatureSet]) -> None:
        """Queue `work(progress)` under `key` unless that key is queued, running or finished."""
        with self._lock:
            if key in self._jobs:
                return
            job = _Job()
            self._jobs[key] = job

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        def run() -> FeatureSet:
            job.started = time.monotonic()
            return work(progress)

        job.future = self._executor.submit(run)
        with self._lock:
            while len(self._jobs) > self._keep:
                oldest = next(iter(self._jobs))
                if not self._jobs[oldest].future or not self._jobs[oldest].future.done():
                    break
                self._jobs.pop(oldest)

    def status(self, key: Hashable) -> JobStatus | None:
        """The job's state, or None when `key` was never submitted (or was forgotten)."""
        with self._lock:
            job = self._jobs.get(key)
        if job is None or job.future is None:
            return None
        elapsed = time.monotonic() - (job.started or job.submitted)
        if not job.future.done():
            state = "running" if job.started is not None else "queued"
            return JobStatus(state, job.done, job.total, seconds=elapsed)
        error = job.future.exception()
        if error is not None:
            return JobStatus("failed", job.done, job.total, f"{type(error).__name__}: {error}", elapsed)
        return JobStatus("done", job.total, job.total, seconds=elapsed)

    def result(self, key: Hashable) -> FeatureSet:
        """The finished job's features; raises its error, or KeyError when there is no such job."""
        with self._lock:
            job = self._jobs[key]
        return job.future.result(timeout=0)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def wait(self, key: Hashable, timeout: float | None = None) -> JobStatus | None:
        """Block until the job under `key` has finished (tests and scripts; pages poll `status` instead)."""
        with self._lock:
            job = self._jobs.get(key)
        if job is not None and job.future is not None:
            try:
                job.future.exception(timeout=timeout)
            except FutureTimeoutError:
                pass
        return self.status(key)
