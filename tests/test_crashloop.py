"""The crash-loop guard and safe mode (docs/warmup.md, "Crash-loop safe
mode"): failed opens recorded in HISTORY, the safe-mode open after
``max_failed_opens`` of them (degraded in readiness, the report, /readyz
over real HTTP, the metrics and the log), a full open clearing the count,
``clear_failures`` and ``rehydrate status`` (a real process), a damaged
or newer HISTORY, a SIGKILL while a failure is recorded; on both cores."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

import rehydrate as rh
from rehydrate import ConfigError, Migrations, MigrationError, Store, Warmup, WarmupError
from rehydrate.history import HISTORY_NAME
from rehydrate.testing import check_recovery

from helpers import http_probe

GUARD = "rehydrate.warmup"


def _fresh(source, name="load"):
    """A hook named ``name`` from ``source`` (each source its own code hash,
    the same qualified name: a hook whose code was changed)."""
    scope = {"rh": rh}
    exec(source, scope)
    return scope[name]


BROKEN = _fresh("def load(store, progress):\n    raise RuntimeError('index file missing')\n")
FIXED = _fresh("def load(store, progress):\n    store.put('index', 'built', True)\n")


def _ops(n, table="t", tag=0):
    return [("put", table, f"k{tag}-{i}", {"n": i, "tag": tag}) for i in range(n)]


def _write(path, ops, **kw):
    with Store.open(path, sync="always", **kw) as s:
        for op in ops:
            getattr(s, op[0])(*op[1:])
        return s.lsn


def _fail_opens(path, n, **kw):
    for _ in range(n):
        with pytest.raises(WarmupError):
            Store.open(path, **kw)


def _failures(path):
    with open(os.path.join(path, HISTORY_NAME)) as f:
        return json.load(f).get("failures", [])


def test_three_failed_opens_then_a_safe_mode_open_degraded_everywhere(store_dir, caplog):
    ops = _ops(40)
    acked = _write(store_dir, ops)
    w = Warmup(populate=[BROKEN])
    with caplog.at_level(logging.WARNING, logger=GUARD):
        _fail_opens(store_dir, 3, warmup=w)
    assert [f["name"] for f in _failures(store_dir)] == ["load"] * 3
    assert {f["reason"] for f in _failures(store_dir)} == {"hook_error"}
    assert "3 failed opens of it in a row" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=GUARD):
        s = Store.open(store_dir, warmup=w)
    try:
        assert s.degraded is True
        r = s.readiness()
        assert r["ready"] is True and r["degraded"] is True
        assert "load" in r["degraded_reason"] and "index file missing" in r["degraded_reason"]
        assert [x["name"] for x in r["skipped_steps"]] == ["load"]
        rep = s.warmup_report
        assert rep["degraded"] is True and rep["degraded_reason"] == r["degraded_reason"]
        assert rep["failed_opens"] == 3
        populate = next(p for p in rep["phases"] if p["name"] == "populate")
        assert populate["skipped"] == ["load"] and populate["attempts"] == 0
        assert any(rec.levelno == logging.WARNING and "safe mode (degraded)" in rec.getMessage()
                   for rec in caplog.records if rec.name == GUARD)
        with s.serve_http() as srv:
            code, body = http_probe.get(srv.port, "/readyz")
            assert code == 200 and json.loads(body)["degraded"] is True
            code, text = http_probe.get(srv.port, "/metrics")
            assert http_probe.metric(text, "rehydrate_degraded") == 1
            assert http_probe.metric(text, "rehydrate_failed_opens") == 3
        s.put("t", "during-safe-mode", 1)  # a safe-mode store takes writes
        ops.append(("put", "t", "during-safe-mode", 1))
        acked = s.lsn
    finally:
        s.close()
    # Safe mode lost no acknowledged write; the next open is safe mode again.
    check_recovery(lambda: Store.open(store_dir, warmup=w), ops, acked)
    assert len(_failures(store_dir)) == 3  # a safe-mode open is no full open


def test_a_fixed_hook_then_a_full_open_clears_the_count(store_dir):
    _write(store_dir, _ops(5))
    _fail_opens(store_dir, 3, warmup=Warmup(populate=[BROKEN]))
    with Store.open(store_dir, warmup=Warmup(populate=[BROKEN])) as s:
        assert s.degraded
    with Store.open(store_dir, warmup=Warmup(populate=[FIXED])) as s:  # new code: it runs
        assert not s.degraded and s.table("index")["built"] is True
        assert "degraded" not in s.readiness() and s.warmup_report["failed_opens"] == 0
        from prometheus_client import generate_latest
        text = generate_latest(s.metrics()).decode()
        assert http_probe.metric(text, "rehydrate_degraded") == 0
    assert _failures(store_dir) == []
    # The count starts again from nothing: two more failures are no safe mode.
    _fail_opens(store_dir, 2, warmup=Warmup(populate=[BROKEN]))
    _fail_opens(store_dir, 1, warmup=Warmup(populate=[BROKEN]))  # (the third)
    with Store.open(store_dir, warmup=Warmup(populate=[BROKEN])) as s:
        assert s.degraded


def test_readyz_is_503_in_safe_mode_when_asked(store_dir):
    w = Warmup(prime=[BROKEN])
    _fail_opens(store_dir, 2, warmup=w, max_failed_opens=2)
    with Store.open(store_dir, warmup=w, max_failed_opens=2, degraded_readyz=503) as s:
        assert s.degraded and s.readiness()["ready"] is True
        with s.serve_http() as srv:
            code, body = http_probe.get(srv.port, "/readyz")
        assert code == 503 and json.loads(body)["degraded_readyz"] == 503


def test_a_background_open_in_safe_mode(store_dir):
    _write(store_dir, _ops(3))
    w = Warmup(populate=[BROKEN])
    _fail_opens(store_dir, 3, warmup=w)
    s = Store.open_background(store_dir, warmup=w)
    try:
        assert s.wait_ready(timeout=60) is True
        assert s.degraded and s.readiness()["degraded"] is True
    finally:
        s.close()


def test_failures_of_another_step_count_apart(store_dir):
    other = _fresh("def other(store, progress):\n    raise RuntimeError('no')\n", "other")
    _fail_opens(store_dir, 2, warmup=Warmup(populate=[BROKEN]))
    _fail_opens(store_dir, 2, warmup=Warmup(prime=[other]))
    decision = rh.crashloop.decide(store_dir, 3)
    assert decision.failed_opens == 4 and not decision.safe_mode  # neither reached 3
    assert sorted(decision.counts.values()) == [2, 2]
    both = Warmup(populate=[BROKEN], prime=[other])
    _fail_opens(store_dir, 1, warmup=both)  # load's third
    _fail_opens(store_dir, 1, warmup=both)  # load left out; other's third
    with Store.open(store_dir, warmup=both) as s:
        assert [x["name"] for x in s.readiness()["skipped_steps"]] == ["load", "other"]


def test_max_failed_opens_zero_turns_the_guard_off(store_dir):
    w = Warmup(populate=[BROKEN])
    _fail_opens(store_dir, 5, warmup=w, max_failed_opens=0)
    assert not os.path.exists(os.path.join(store_dir, HISTORY_NAME)) or \
        _failures(store_dir) == []


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True], ids=repr)
def test_bad_max_failed_opens_and_degraded_readyz(store_dir, bad):
    with pytest.raises(ConfigError):
        Store.open(store_dir, max_failed_opens=bad)
    with pytest.raises(ConfigError):
        Store.open(store_dir, degraded_readyz=bad)


def test_a_stalled_or_slow_hook_counts_too(store_dir):
    import threading

    stop = threading.Event()

    def stuck(store, progress):
        stop.wait(30)

    try:
        _fail_opens(store_dir, 3, warmup=Warmup(prime=[stuck], stall_s=0.2))
        assert {f["reason"] for f in _failures(store_dir)} == {"stall"}
        with Store.open(store_dir, warmup=Warmup(prime=[stuck], stall_s=0.2)) as s:
            assert s.degraded
    finally:
        stop.set()


# ------------------------------------------------------------ migrations
def _migrations(body):
    mig = Migrations()
    fn = _fresh(f"def reshape(t):\n{body}\n", "reshape")
    mig.migration("add-flag", table="t", to_version=2)(fn)
    later = _fresh("def later(t):\n    for v in t.values():\n        v['later'] = 1\n", "later")
    mig.migration("later", table="t", to_version=3)(later)
    other = _fresh("def other(t):\n    t['marked'] = True\n", "other")
    mig.migration("other-table", table="u", to_version=2)(other)
    return mig


def test_a_failing_migration_is_left_pending_in_safe_mode(store_dir):
    ops = _ops(30) + [("put", "u", "x", 1)]
    acked = _write(store_dir, ops)
    broken = _migrations("    raise ValueError('bad data')")
    for _ in range(3):
        with pytest.raises(MigrationError):
            Store.open(store_dir, migrations=broken)
    assert {(f["kind"], f["name"]) for f in _failures(store_dir)} == {("migration", "add-flag")}
    with Store.open(store_dir, migrations=broken) as s:
        assert s.degraded
        assert {e["id"] for e in s.ledger} == {"other-table"}  # the other table's ran
        assert [x["name"] for x in s.readiness()["skipped_steps"]] == ["add-flag", "later"]
        assert s.table("t")["k0-0"] == {"n": 0, "tag": 0}  # as before: version 1
        migrate = next(p for p in s.warmup_report["phases"] if p["name"] == "migrate")
        assert migrate["skipped"] == ["add-flag", "later"]
    # Nothing acknowledged was lost (the migrated table "u" aside, the state
    # is the log's; "u" holds its migration's mark on top).
    ops.append(("put", "u", "marked", True))
    check_recovery(lambda: Store.open(store_dir), ops, acked + 1)
    fixed = _migrations("    for v in t.values():\n        v['flag'] = True")
    with Store.open(store_dir, migrations=fixed) as s:  # new code: runs, a full open
        assert not s.degraded
        assert s.table("t")["k0-0"] == {"n": 0, "tag": 0, "flag": True, "later": 1}
    assert _failures(store_dir) == []


# --------------------------------------------- clear_failures and the CLI
def _status(core_env, *args):
    return subprocess.run([sys.executable, "-m", "rehydrate.cli", "status", *args],
                          env=core_env, capture_output=True, text=True, timeout=120)


def test_clear_failures_and_rehydrate_status(store_dir, core_env):
    _write(store_dir, _ops(3))
    _fail_opens(store_dir, 3, warmup=Warmup(populate=[BROKEN]))
    r = _status(core_env, store_dir, "--json")
    assert r.returncode == 1, r.stderr  # the next open runs in safe mode
    guard = json.loads(r.stdout)["failures"]
    assert guard["safe_mode"] is True and guard["failed_opens"] == 3
    assert guard["skip"][0]["name"] == "load" and guard["counts"][0]["count"] == 3
    r = _status(core_env, store_dir, "--max-failed-opens", "4")
    assert r.returncode == 0 and "next open: full" in r.stdout
    r = _status(core_env, store_dir)
    assert r.returncode == 1 and "SAFE MODE" in r.stdout and "3x hook load" in r.stdout
    r = _status(core_env, store_dir, "--clear-failures", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["failures"]["cleared"] == 3
    assert rh.clear_failures(store_dir) == 0
    _fail_opens(store_dir, 1, warmup=Warmup(populate=[BROKEN]))  # it runs again


def test_clear_failures_returns_the_count(store_dir):
    _fail_opens(store_dir, 2, warmup=Warmup(populate=[BROKEN]))
    assert rh.clear_failures(store_dir) == 2
    assert rh.clear_failures(store_dir) == 0
    with pytest.raises(rh.NotAStoreError):
        rh.clear_failures(os.path.join(store_dir, "nope"))


def test_status_usage_errors_are_exit_2(tmp_path, core_env):
    r = _status(core_env, str(tmp_path / "absent"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = _status(core_env, "http://127.0.0.1:9", "--clear-failures")
    assert r.returncode == 2 and "--clear-failures" in r.stderr


# ------------------------------------------------ a damaged or newer HISTORY
def _failing_history(path):
    _write(path, _ops(3))
    _fail_opens(path, 3, warmup=Warmup(populate=[BROKEN]))
    with open(os.path.join(path, HISTORY_NAME), "rb") as f:
        return f.read()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "newer", "not_a_list"])
def test_a_damaged_or_newer_history_is_ignored_with_a_warning(store_dir, damage, caplog):
    good = _failing_history(store_dir)
    doc = json.loads(good)
    data = {"truncated": good[:len(good) // 2], "garbage": b"\x00\xffnot json at all",
            "newer": json.dumps(dict(doc, format=99)).encode(),
            "not_a_list": json.dumps(dict(doc, failures={"x": 1})).encode()}[damage]
    hpath = os.path.join(store_dir, HISTORY_NAME)
    with open(hpath, "wb") as f:
        f.write(data)
    with caplog.at_level(logging.WARNING, logger=GUARD):
        # The broken hook runs (no failure counted): the open fails as any
        # would, never because of HISTORY.
        _fail_opens(store_dir, 1, warmup=Warmup(populate=[BROKEN]))
        with Store.open(store_dir, warmup=Warmup(populate=[FIXED])) as s:
            assert not s.degraded
    assert "HISTORY ignored" in caplog.text
    if damage == "newer":
        with open(hpath, "rb") as f:
            assert f.read() == data  # a newer version's file is never overwritten
        assert "newer format" in caplog.text
    else:
        assert _failures(store_dir) == []  # the failure then the full open: clean again


def test_entries_that_do_not_read_are_not_counted(store_dir):
    _failing_history(store_dir)
    hpath = os.path.join(store_dir, HISTORY_NAME)
    with open(hpath) as f:
        doc = json.load(f)
    doc["failures"] = [{"kind": "hook", "name": 3}] * 5
    with open(hpath, "w") as f:
        json.dump(doc, f)
    _fail_opens(store_dir, 1, warmup=Warmup(populate=[BROKEN]))  # the hook ran
    assert len(_failures(store_dir)) == 1


# ----------------------------------- a crash while a failure is recorded
CRASH_AT_FAILURE = os.path.join(os.path.dirname(__file__), "helpers", "crash_at_failure.py")


def _run_failing(path, n, env):
    out = subprocess.run([sys.executable, CRASH_AT_FAILURE, path, str(n)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, -signal.SIGKILL), out.stderr
    return out


def test_a_crash_while_recording_a_failure_leaves_a_history_that_reads(tmp_path, core_env):
    probe = str(tmp_path / "probe")
    _write(probe, _ops(5))
    _run_failing(probe, 0, core_env)
    out = _run_failing(probe, 0, core_env)  # the second: HISTORY holds a failure already
    lines = out.stdout.split()
    hook_at, end = int(lines[1]), int(lines[3])
    assert end > hook_at
    kills = 0
    for n in range(hook_at + 1, end + 1):
        path = str(tmp_path / f"run{n}")
        acked = _write(path, _ops(5))
        _run_failing(path, 0, core_env)  # one failure recorded whole
        out = _run_failing(path, n, core_env)
        kills += out.returncode == -signal.SIGKILL
        # The record is the old one or the new one, never fatal; the open
        # goes on, and the state is whole.
        recorded = rh.crashloop.decide(path, 3, warn=False).failed_opens
        assert recorded in (1, 2), n
        check_recovery(lambda: Store.open(path, warmup=Warmup(populate=[FIXED])),
                       _ops(5) + [("put", "index", "built", True)], acked + 1)
        assert rh.crashloop.decide(path, 3, warn=False).failed_opens == 0
    assert kills > 0


class _Loader:
    def __call__(self, store, progress):
        raise RuntimeError("no")


def test_a_partial_or_a_callable_object_is_the_same_step_in_every_process(store_dir):
    import functools

    from rehydrate.crashloop import hook_step

    def load(store, progress, source):
        raise RuntimeError(source)

    a, b = functools.partial(load, source="a"), functools.partial(load, source="a")
    assert hook_step("populate", a) == hook_step("populate", b)
    assert hook_step("populate", a).name.endswith("load")
    assert hook_step("prime", _Loader()) == hook_step("prime", _Loader())
    assert hook_step("prime", _Loader()).name == "_Loader"
    _fail_opens(store_dir, 3, warmup=Warmup(prime=[_Loader()]))
    with Store.open(store_dir, warmup=Warmup(prime=[_Loader()])) as s:
        assert s.degraded
