"""Hook retries with backoff and full jitter (docs/warmup.md, "Retries"),
and the archive's requests retrying a RetryableError; on both cores.

The waits are real (an Event waited on with a timeout, in warmup.py); the
tests make them short or zero through ``retry_random`` and assert what
happened (tries counted, the draws' bounds), never how long it took."""

from __future__ import annotations

import logging
import re

import pytest

import rehydrate as rh
from rehydrate import ConfigError, PhaseTimeout, RetryableError, Store, Warmup, WarmupError
from rehydrate import backoff


class Flaky:
    """A hook that raises ``error`` on its first ``failures`` calls."""

    def __init__(self, failures, error=None):
        self.failures, self.calls = failures, 0
        self.error = error or RetryableError("the cache server is not up yet")

    def __call__(self, store, progress):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        store.put("derived", "built", self.calls)


def _phase(report, name):
    return next(p for p in report["phases"] if p["name"] == name)


def _metric(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and want in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the metrics")


def test_a_retryable_hook_is_tried_again_and_the_attempts_are_counted(store_dir):
    from prometheus_client import generate_latest

    populate, prime = Flaky(2), Flaky(0)
    w = Warmup(populate=[populate], prime=[prime], retry_base_s=0.001,
               retry_random=lambda: 0.0)
    with Store.open(store_dir, warmup=w) as s:
        assert populate.calls == 3 and prime.calls == 1
        assert s.table("derived")["built"] == 1  # the prime hook's put, last
        pop, pri = _phase(s.warmup_report, "populate"), _phase(s.warmup_report, "prime")
        assert (pop["hooks"], pop["attempts"], pop["retries"]) == (1, 3, 2)
        assert (pri["hooks"], pri["attempts"], pri["retries"]) == (1, 1, 0)
        text = generate_latest(s.metrics()).decode()
        assert _metric(text, "rehydrate_hook_retries_total", phase="populate") == 2
        assert _metric(text, "rehydrate_hook_retries_total", phase="prime") == 0
        assert s.degraded is False and s.warmup_report["degraded"] is False


def test_retry_on_adds_exception_types(store_dir):
    hook = Flaky(1, ConnectionResetError("reset by peer"))
    w = Warmup(populate=[hook], retry_on=(ConnectionError,), retry_random=lambda: 0.0)
    with Store.open(store_dir, warmup=w) as s:
        assert hook.calls == 2 and _phase(s.warmup_report, "populate")["retries"] == 1


def test_a_non_retryable_error_fails_the_phase_at_once(store_dir):
    hook = Flaky(5, ConnectionResetError("reset by peer"))  # not in retry_on
    with pytest.raises(WarmupError) as ei:
        Store.open(store_dir, warmup=Warmup(populate=[hook], retry_random=lambda: 0.0))
    assert ei.value.reason == "hook_error" and ei.value.phase == "populate"
    assert isinstance(ei.value.__cause__, ConnectionResetError)
    assert hook.calls == 1
    Store.open(store_dir).close()  # the directory was released


def test_an_always_retryable_hook_stops_after_retry_attempts(store_dir):
    hook = Flaky(10**9)
    w = Warmup(prime=[hook], retry_attempts=4, retry_random=lambda: 0.0)
    with pytest.raises(WarmupError) as ei:
        Store.open(store_dir, warmup=w)
    assert type(ei.value) is WarmupError and ei.value.reason == "hook_error"
    assert isinstance(ei.value.__cause__, RetryableError)
    assert "4 attempts" in str(ei.value) and hook.calls == 4


def test_an_always_retryable_hook_is_bounded_by_the_budget(store_dir):
    hook = Flaky(10**9)
    # Each wait is the whole bound (20 ms): the budget ends the retries long
    # before the attempts would.
    w = Warmup(populate=[hook], budgets={"populate": 0.3}, retry_attempts=10**6,
               retry_base_s=0.02, retry_max_s=0.02, retry_random=lambda: 0.999999)
    with pytest.raises(PhaseTimeout) as ei:
        Store.open(store_dir, warmup=w)
    assert ei.value.phase == "populate" and ei.value.reason == "phase_timeout"
    assert "retrying" in str(ei.value)
    assert isinstance(ei.value.__cause__, RetryableError)
    assert 1 <= hook.calls < 10**6
    Store.open(store_dir).close()


def test_the_waits_are_the_drawn_fraction_of_an_exponential_capped_bound(store_dir, caplog):
    draws = iter([0.5, 0.25, 0.999, 0.0, 0.5])
    hook = Flaky(5)
    w = Warmup(populate=[hook], retry_attempts=6, retry_base_s=0.004, retry_max_s=0.01,
               retry_random=lambda: next(draws))
    with caplog.at_level(logging.INFO, logger="rehydrate"):
        with Store.open(store_dir, warmup=w) as s:
            assert _phase(s.warmup_report, "populate")["attempts"] == 6
    waits = [float(m.group(1)) for r in caplog.records
             if (m := re.search(r"; try \d+ in ([\d.]+) s", r.getMessage()))]
    # Bounds 0.004, 0.008, then capped at 0.01: each wait a draw below its bound.
    assert waits == pytest.approx([0.002, 0.002, 0.00999, 0.0, 0.005], abs=5e-4)


def test_full_jitter_stays_below_the_capped_bound():
    for attempt in range(1, 200):
        bound = backoff.bound(0.1, 5.0, attempt)
        assert bound == min(5.0, 0.1 * 2.0 ** min(attempt - 1, 64))
        assert backoff.delay(0.1, 5.0, attempt, lambda: 0.0) == 0.0
        assert backoff.delay(0.1, 5.0, attempt, lambda: 0.999999) <= bound
        assert backoff.delay(0.1, 5.0, attempt, lambda: 7.0) == bound  # clamped


def test_closing_a_background_open_ends_a_backoff(store_dir):
    from helpers.replication import wait_until

    hook = Flaky(10**9)
    w = Warmup(populate=[hook], retry_attempts=10**6, retry_base_s=60, retry_max_s=60,
               retry_random=lambda: 0.999999)
    s = Store.open_background(store_dir, warmup=w)
    assert wait_until(lambda: hook.calls >= 1)
    s.close()  # the 60 s wait is given up on
    with pytest.raises(WarmupError) as ei:
        s.wait_ready(timeout=30)
    assert ei.value.reason == "cancelled" and hook.calls == 1


@pytest.mark.parametrize("bad", [{"retry_on": (ValueError, 3)}, {"retry_on": "x"},
                                 {"retry_attempts": 0}, {"retry_attempts": 1.5},
                                 {"retry_base_s": 0}, {"retry_max_s": -1},
                                 {"retry_random": 0.5}],
                         ids=lambda d: next(iter(d)) + "-" + repr(next(iter(d.values()))))
def test_bad_retry_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        Warmup(**bad)


def test_the_archives_requests_retry_a_retryable_error(tmp_path):
    from pyarrow.fs import LocalFileSystem

    from rehydrate.objstore import ObjectStore

    calls = []

    def get():
        calls.append(1)
        if len(calls) < 3:
            raise RetryableError("a flaky custom filesystem")
        return b"ok"

    objs = ObjectStore(LocalFileSystem(), str(tmp_path), "file://x", attempts=4,
                       base_s=0.001, cap_s=0.001)
    assert objs._retry("GET", "obj", get) == b"ok" and len(calls) == 3
    calls.clear()
    objs = ObjectStore(LocalFileSystem(), str(tmp_path), "file://x", attempts=2,
                       base_s=0.001, cap_s=0.001)
    with pytest.raises(rh.ArchiveError) as ei:
        objs._retry("GET", "obj", get)
    assert ei.value.reason == "unreachable" and len(calls) == 2
