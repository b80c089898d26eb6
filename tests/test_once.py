"""ComputedOnce: a value is computed once per process by whoever asks first; the others wait for that result."""

import threading
import time

import pytest

from dlsr_core.explorer import ComputedOnce


def test_concurrent_callers_share_one_computation():
    once, calls, started = ComputedOnce(), [], threading.Event()

    def slow():
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(once.get("k", slow))) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait(5)
    assert not once.ready("k")
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1 and len(results) == 4 and all(r is results[0] for r in results)
    assert once.ready("k") and once.get("k", lambda: pytest.fail("recomputed")) is results[0]


def test_a_failure_reaches_every_waiter_and_is_retried():
    once = ComputedOnce()
    with pytest.raises(ValueError, match="broken"):
        once.get("k", lambda: (_ for _ in ()).throw(ValueError("broken")))
    assert not once.ready("k")
    assert once.get("k", lambda: 42) == 42


def test_old_finished_entries_are_forgotten():
    once = ComputedOnce(max_entries=3)
    for key in range(5):
        once.get(key, lambda key=key: key)
    assert [once.ready(key) for key in range(5)] == [False, False, True, True, True]
