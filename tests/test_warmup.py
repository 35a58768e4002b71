"""Staged warmup (docs/warmup.md): phases, hooks, criteria, budgets, the
stall watchdog, listeners and the report; every test on both cores.

No test compares a wall-clock time with a bound or with another run: a
hook runs past a limit by waiting on the clock itself (``_run_past``),
and what is asserted is what happened (the hook was still stuck, the
replay had not finished) when the error came."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

import rehydrate as rh
from rehydrate import (
    ConfigError,
    CriteriaError,
    PhaseTimeout,
    StallError,
    Store,
    Warmup,
    WarmupError,
)


class Recorder:
    def __init__(self):
        self.events = []

    def on_phase_start(self, phase, info):
        self.events.append(("start", phase))

    def on_phase_end(self, phase, stats):
        self.events.append(("end", phase, stats["duration_s"]))

    def on_corruption(self, problem):
        self.events.append(("corruption", problem.kind))


def _run_past(seconds, progress=None):
    """Return once ``seconds`` have passed on the warmup's clock, ticking
    ``progress`` every 10 ms if given: a hook that outlasts a limit."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if progress is not None:
            progress()
        time.sleep(0.01)


def _filled(path, n=200):
    with Store.open(path) as s:
        for i in range(n):
            s.put("t", i, i)


def test_phases_run_in_order_and_are_reported(store_dir):
    _filled(store_dir)
    rec = Recorder()
    seen = []

    def populate(store, progress):
        seen.append(("populate", len(store.table("t"))))
        progress()

    def prime(store, progress):
        seen.append(("prime", store.table("t")[5]))

    with Store.open(store_dir, warmup=Warmup(populate=[populate], prime=[prime],
                                             listeners=[rec])) as s:
        report = s.warmup_report
    assert [p["name"] for p in report["phases"]] == list(rh.PHASES)
    assert [e[:2] for e in rec.events] == [(k, p) for p in rh.PHASES for k in ("start", "end")]
    assert seen == [("populate", 200), ("prime", 5)]
    replay = report["phases"][2]
    assert replay["records"] == 200 and replay["bytes"] > 0
    assert all(p["rss_bytes"] > 0 for p in report["phases"])
    # The listener was given each phase's own figures, those of the report.
    assert [e[2] for e in rec.events if e[0] == "end"] == \
        [p["duration_s"] for p in report["phases"]]
    assert report["total_s"] >= sum(p["duration_s"] for p in report["phases"])


def test_a_hook_that_stops_ticking_is_a_stall_with_its_stack(store_dir):
    release, returned = threading.Event(), threading.Event()

    def stuck_in_here(store, progress):
        progress()
        release.wait(60)  # (only a missed stall lets this run out: then the open succeeds)
        returned.set()

    with pytest.raises(StallError) as ei:
        Store.open(store_dir, warmup=Warmup(prime=[stuck_in_here], stall_s=0.3))
    # The watchdog gave up on the hook while it was stuck, not after it returned.
    assert not returned.is_set()
    release.set()
    e = ei.value
    assert e.phase == "prime" and e.reason == "stall" and isinstance(e, WarmupError)
    assert "stuck_in_here" in e.stack and "stuck_in_here" in str(e)
    with Store.open(store_dir) as s:  # the failed open released the directory
        assert s.lsn == 0


def test_a_hook_that_ticks_is_not_a_stall_but_a_budget_still_bounds_it(store_dir):
    finished = []

    def busy(store, progress):  # ticks for five stall windows
        _run_past(1.0, progress)
        finished.append(True)

    with Store.open(store_dir, warmup=Warmup(populate=[busy], stall_s=0.2)) as s:
        assert finished == [True] and s.warmup_report["phases"][4]["name"] == "populate"
    stop, ticks = threading.Event(), []

    def endless(store, progress):  # ticks until the test is over
        while not stop.is_set():
            progress()
            ticks.append(1)
            stop.wait(0.01)
        finished.append(True)

    try:
        with pytest.raises(PhaseTimeout) as ei:
            Store.open(store_dir, warmup=Warmup(populate=[endless], stall_s=0.2,
                                                budgets={"populate": 0.2}))
        # The budget ended a hook that was still ticking: no stall, and it had not returned.
        assert finished == [True] and ticks
    finally:
        stop.set()
    assert ei.value.phase == "populate" and "budget" in str(ei.value)


def test_policy_warn_logs_and_goes_on(store_dir, caplog):
    finished = []

    def slow(store, progress):
        _run_past(0.3)  # six budgets
        finished.append(True)

    with caplog.at_level(logging.WARNING, logger="rehydrate"):
        with Store.open(store_dir, warmup=Warmup(prime=[slow], budgets={"prime": 0.05},
                                                 policy={"prime": "warn"})) as s:
            # The hook ran to its end and the open went on to the last phase.
            assert finished == [True]
            assert [p["name"] for p in s.warmup_report["phases"]] == list(rh.PHASES)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("prime" in m and "budget" in m for m in warned), warned


def test_a_hook_that_raises_fails_the_open_naming_it(store_dir):
    def broken(store, progress):
        raise KeyError("missing")

    with pytest.raises(WarmupError) as ei:
        Store.open(store_dir, warmup=Warmup(populate=[broken]))
    assert ei.value.reason == "hook_error" and "broken" in str(ei.value)
    assert isinstance(ei.value.__cause__, KeyError)


@pytest.mark.parametrize("result", [False, None, 1, "yes", "raise"])
def test_a_criterion_that_does_not_return_true_fails_its_phase(store_dir, result):
    _filled(store_dir)

    def has_all_rows(store):
        if result == "raise":
            raise RuntimeError("no")
        return result

    with pytest.raises(CriteriaError) as ei:
        Store.open(store_dir, warmup=Warmup(criteria={"replay": [has_all_rows]}))
    assert ei.value.phase == "replay" and "has_all_rows" in str(ei.value)
    with Store.open(store_dir, warmup=Warmup(criteria={"replay": [lambda s: len(s.table("t"))
                                                                 == 200]})) as s:
        assert len(s.table("t")) == 200


def test_a_listener_that_raises_is_logged_and_never_breaks_the_warmup(store_dir, caplog):
    class Bad:
        def on_phase_end(self, phase, stats):
            raise RuntimeError("listener bug")

    rec = Recorder()
    with caplog.at_level(logging.ERROR, logger="rehydrate"):
        with Store.open(store_dir, warmup=Warmup(listeners=[Bad(), rec])) as s:
            assert s.warmup_report["phases"]
    assert len([e for e in rec.events if e[0] == "end"]) == len(rh.PHASES)
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_the_default_listener_logs_each_phase(store_dir, caplog):
    with caplog.at_level(logging.INFO, logger="rehydrate"):
        Store.open(store_dir).close()
    assert [r.getMessage().split(":")[0] for r in caplog.records
            if r.getMessage().startswith("warmup phase")] == [f"warmup phase {p}"
                                                              for p in rh.PHASES]


def _watchdog_running() -> bool:
    return any(t.name == "rehydrate-watchdog" for t in threading.enumerate())


def test_a_replay_over_budget_is_cancelled_promptly(store_dir):
    # 256 KiB segments: the replay reports progress after each (10 of them).
    with Store.open(store_dir, sync="none", segment_bytes=1 << 18) as s:
        for start in range(0, 400_000, 20_000):
            with s.batch() as b:
                for i in range(start, start + 20_000):
                    b.put("t", i, "x" * 20)
    seen = []

    def progress(done, total):
        # The first segment holds the replay until the watchdog has fired
        # (its thread ends when it sets the cancel flag), however fast the
        # machine: the budget is then surely spent with the replay unfinished.
        if not seen:
            deadline = time.monotonic() + 60
            while _watchdog_running() and time.monotonic() < deadline:
                time.sleep(0.005)
        seen.append((done, total))

    with pytest.raises(PhaseTimeout) as ei:
        Store.open(store_dir, warmup=Warmup(budgets={"replay": 0.05}), progress=progress)
    assert ei.value.phase == "replay"
    # Cancelled by the watchdog mid-replay ("past the budget"), not found
    # over budget once the replay was done ("took"): the log was never read
    # to its end, and at most one segment was read after the cancel (on a
    # loaded machine the watchdog may fire before the first segment ends).
    assert "past the budget" in str(ei.value), ei.value
    assert all(done < total for done, total in seen) and len(seen) <= 2, seen
    assert not _watchdog_running()
    with Store.open(store_dir) as s:  # nothing was changed
        assert len(s.table("t")) == 400_000


def test_corruption_reaches_listeners(store_dir):
    import os

    from helpers import corrupt as C

    _filled(store_dir, 50)
    C.as_crashed(store_dir)  # a torn tail is what a crash leaves
    seg = sorted(os.listdir(os.path.join(store_dir, "wal")))[-1]
    with open(os.path.join(store_dir, "wal", seg), "ab") as f:
        f.write(b"\x00" * 100)  # a torn tail
    rec = Recorder()
    Store.open(store_dir, warmup=Warmup(listeners=[rec])).close()
    assert ("corruption", "torn_tail") in rec.events


@pytest.mark.parametrize("kwargs", [
    {"budgets": {"replay": 0}}, {"budgets": {"replay": -1}}, {"budgets": {"nope": 1}},
    {"stall_s": 0}, {"stall_s": "1"}, {"populate": [1]}, {"prime": "fn"},
    {"criteria": {"replay": [None]}}, {"listeners": [object()]}, {"listeners": "x"},
    {"policy": {"replay": "ignore"}},
])
def test_bad_warmup_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Warmup(**kwargs)


def test_warmup_must_be_a_warmup(store_dir):
    with pytest.raises(ConfigError):
        Store.open(store_dir, warmup={"budgets": {}})


# ------------------------------------------------------ plan and preflight
def test_the_plan_names_what_an_open_reads_and_history_refines_it(store_dir):
    from rehydrate.plan import HISTORY_NAME, make_plan

    _filled(store_dir, 300)
    with Store.open(store_dir) as s:
        s.checkpoint()
        for i in range(50):
            s.put("t", f"after{i}", i)
    os.unlink(os.path.join(store_dir, HISTORY_NAME))  # as if never opened before
    plan = make_plan(store_dir)
    assert plan["snapshot"]["lsn"] == 300 and plan["snapshot"]["keys"] == 300
    assert plan["wal_bytes"] > 0 and plan["segments"]
    assert plan["predicted_from"] == {"snapshot": "calibrated", "replay": "calibrated"}
    assert plan["predicted_peak_bytes"] > 0 and plan["history_opens"] == 0
    with Store.open(store_dir) as s:
        report = s.warmup_report
        assert report["predicted_s"] == plan["predicted_s"]
    assert os.path.exists(os.path.join(store_dir, HISTORY_NAME))
    again = make_plan(store_dir)
    assert again["history_opens"] == 1 and again["predicted_from"]["snapshot"] == "history"


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"format": 1, "opens": [{"x": 1}]}',
                                     b'{"format": 1, "opens": [{"snapshot_bytes": -1}]}'])
def test_a_bad_history_file_is_ignored(store_dir, garbage):
    from rehydrate.plan import HISTORY_NAME, make_plan

    _filled(store_dir, 10)
    with open(os.path.join(store_dir, HISTORY_NAME), "wb") as f:
        f.write(garbage)
    assert make_plan(store_dir)["history_opens"] == 0
    Store.open(store_dir).close()  # and the open rewrites it
    assert make_plan(store_dir)["history_opens"] == 1


def test_memory_preflight_refuses_before_loading_anything(store_dir):
    from helpers import corrupt as C

    _filled(store_dir, 100)
    before = C.tree_hashes(store_dir)
    with pytest.raises(rh.MemoryBudgetError) as ei:
        Store.open(store_dir, max_memory_bytes=1024)
    assert ei.value.reason == "memory_budget" and "max_memory_bytes" in str(ei.value)
    assert C.tree_hashes(store_dir) == before
    with Store.open(store_dir, max_memory_bytes=1 << 40) as s:  # and the lock is free
        assert len(s.table("t")) == 100
    with pytest.raises(ConfigError):
        Store.open(store_dir, max_memory_bytes=0)


def test_memory_preflight_refuses_more_than_the_memory_available(store_dir, monkeypatch):
    import importlib

    from helpers import corrupt as C

    plan_module = importlib.import_module("rehydrate.plan")
    _filled(store_dir, 100)
    need = plan_module.make_plan(store_dir)["predicted_peak_bytes"]
    assert need > 0
    before = C.tree_hashes(store_dir)
    asked = []

    def available(bytes_):
        def fake():
            asked.append(bytes_)
            return bytes_
        return fake

    # What the kernel says is available now (MemAvailable), one byte short:
    # refused before anything is read, the directory untouched and unlocked.
    monkeypatch.setattr(plan_module, "available_memory_bytes", available(need - 1))
    with pytest.raises(rh.MemoryBudgetError) as ei:
        Store.open(store_dir)
    assert ei.value.reason == "memory_budget" and ei.value.phase == "plan"
    assert "available memory" in str(ei.value) and asked == [need - 1]
    assert C.tree_hashes(store_dir) == before
    # Exactly enough, or a kernel that does not say: the open goes on.
    for avail in (need, None):
        monkeypatch.setattr(plan_module, "available_memory_bytes", available(avail))
        with Store.open(store_dir) as s:
            assert len(s.table("t")) == 100
        assert asked[-1] == avail
    # max_memory_bytes is checked on its own, with plenty available.
    monkeypatch.setattr(plan_module, "available_memory_bytes", available(1 << 50))
    with pytest.raises(rh.MemoryBudgetError, match="max_memory_bytes"):
        Store.open(store_dir, max_memory_bytes=1024)


def test_cli_plan_and_replay(store_dir, core_env):
    import json
    import subprocess
    import sys

    _filled(store_dir, 100)
    run = lambda *a: subprocess.run([sys.executable, "-m", "rehydrate", *a], env=core_env,
                                    capture_output=True, text=True)
    out = run("plan", store_dir, "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["wal_bytes"] > 0 and plan["snapshot"]["lsn"] == 0
    out = run("replay", store_dir, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [p["name"] for p in report["phases"]] == list(rh.PHASES)
    assert report["phases"][2]["records"] == 100 and report["problems"] == []
    human = run("replay", store_dir)
    assert human.returncode == 0 and "replay" in human.stdout and "total" in human.stdout
    assert run("plan", os.path.join(store_dir, "nope")).returncode == 2


def test_readiness_after_close_keeps_the_finished_warmup(store_dir):
    _filled(store_dir, 50)
    s = rh.Store.open(store_dir)
    before = s.readiness()
    assert before["ready"] is True and before["progress"] == 1.0
    s.close()
    r = s.readiness()
    assert (r["phase"], r["ready"], r["progress"], r["eta_s"]) == ("closed", False, 1.0, 0.0)
