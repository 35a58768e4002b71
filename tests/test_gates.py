"""Feature gates (docs/warmup.md, "Feature gates"): every requirement kind
opening during a real background open, held at known points by Events the
test sets; a standby whose lag crosses its bound and comes back; callables
that raise; bad input; waits (threads and asyncio); readiness, /readyz and
/metrics over HTTP; the listeners' events in order. Every test on both
cores.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import ConfigError, Store, StoreClosedError, StoreFailedError, Warmup

from helpers.background import Hold, build_log
from helpers.replication import wait_until


def _build(path, n=200):
    build_log(path, n)


def b_in_d_not(r):
    return r["writes"] == "taken" and r["tables"].get("b") and not r["tables"].get("d")


class Blocked:
    """A populate hook that waits for ``go`` (and says it started)."""

    def __init__(self):
        self.started, self.go = threading.Event(), threading.Event()

    def __call__(self, store, progress):
        self.started.set()
        assert self.go.wait(60)


class Recorder:
    def __init__(self):
        self.events = []

    def on_phase_end(self, phase, stats):
        self.events.append(("end", phase))

    def on_gate_open(self, name):
        self.events.append(("open", name))

    def on_gate_close(self, name, why):
        self.events.append(("close", name, tuple(why)))


def _split_migrations():
    mig = rh.Migrations()

    @mig.migration("split", table="c", to_version=2)
    def split(t):
        for k in list(t):
            t[k] = {"v": t[k]}

    return mig


@pytest.fixture
def background(store_dir):
    """A background open of a built store, held in the replay (b in, d
    not), whose populate hook waits for ``populate.go``."""
    _build(store_dir)
    populate = Blocked()
    recorder = Recorder()
    holds = []
    opened = []

    def start(when=b_in_d_not, **kw):
        hold = Hold(when)
        holds.append(hold)
        s = hold.open(store_dir, warmup=Warmup(populate=[populate], listeners=[recorder]),
                      **kw)
        opened.append(s)
        hold.wait_held()
        return s, hold

    yield start, populate, recorder
    for hold in holds:
        hold.release()
    populate.go.set()
    for s in opened:
        s.close()


def test_every_requirement_kind_opens_as_the_background_open_gets_there(background):
    start, populate, _ = background
    s, hold = start()
    flag = []
    table_b = s.gate("b", requires=[rh.table_ready("b")])
    table_d = s.gate("d", requires=[rh.table_ready("d")])
    populated = s.gate("populated", requires=[rh.phase_done("populate")])
    lag = s.gate("lag", requires=[rh.lag_below(1.0)])
    check = s.gate("check", requires=[rh.table_ready("b"), lambda store: bool(flag)])
    # Held in the replay: b is in, d is not.
    assert table_b and lag
    assert not table_d and not populated and not check
    assert table_d.why() == ["table 'd' not ready"]
    assert populated.why() == ["phase 'populate' not done"]
    assert check.why() == ["<lambda>(store) returned False"]
    assert s.readiness()["gates"]["d"] == {"open": False, "unmet": ["table 'd' not ready"]}
    hold.release()
    # The populate hook runs: the replay is over.
    assert populate.started.wait(60)
    assert table_d, table_d.why()
    assert not populated and populated.why() == ["phase 'populate' not done"]
    assert not check
    flag.append(1)
    assert check.wait(30) is True and check.why() == []
    populate.go.set()
    assert populated.wait(30) is True
    assert s.wait_ready(30)
    assert all(g for g in (table_b, table_d, populated, lag, check))
    # A callable's gate closes again when it says so.
    flag.clear()
    assert check.why() == ["<lambda>(store) returned False"] and not check
    assert s.readiness()["gates"]["check"]["open"] is False
    assert s.readiness()["ready"] is True  # a closed gate leaves the store ready


def test_a_migration_gate_opens_once_the_migrate_phase_applied_it(background):
    start, populate, _ = background
    # (With a migration pending, writes and tables wait for the whole replay.)
    s, hold = start(lambda r: r["phase"] == "replay", migrations=_split_migrations())
    migrated = s.gate("migrated", requires=[rh.migration_at("split", 0.5)])
    whole = s.gate("whole", requires=[rh.migration_at("split", 1.0), rh.table_ready("c")])
    assert not migrated and not whole
    assert migrated.why() == ["migration 'split' not at 0.5 (not applied)"]
    hold.release()
    assert populate.started.wait(60)
    assert migrated and whole, (migrated.why(), whole.why())
    assert [e["id"] for e in s.ledger] == ["split"]
    populate.go.set()
    assert s.wait_ready(30)


def test_listeners_hear_each_gate_open_and_close_in_order(background):
    start, populate, recorder = background
    s, hold = start()
    flag = [True]
    s.gate("d", requires=[rh.table_ready("d")])
    s.gate("populated", requires=[rh.phase_done("populate"), lambda store: flag[0]])
    assert ("open", "d") not in recorder.events
    hold.release()
    populate.go.set()
    assert s.wait_ready(30)
    flag[0] = False
    s.readiness()  # (a re-evaluation: the callable says False now)
    flag[0] = True
    s.readiness()
    s.close()
    ev = recorder.events
    assert ev.index(("open", "d")) < ev.index(("end", "replay"))  # d came in mid-replay
    # A phase's gates open right after its end is told, before the next.
    assert ev.index(("end", "populate")) + 1 == ev.index(("open", "populated"))
    closes = [e for e in ev if e[0] in ("open", "close") and e[1] == "populated"]
    assert closes == [("open", "populated"),
                      ("close", "populated", ("<lambda>(store) returned False",)),
                      ("open", "populated"),
                      ("close", "populated", ("the store is closed",))]
    assert ev[-2:] == [("close", "d", ("the store is closed",)),
                       ("close", "populated", ("the store is closed",))]


def test_a_listener_with_only_gate_events_is_accepted(store_dir):
    class OnlyGates:
        def __init__(self):
            self.opened = []

        def on_gate_open(self, name):
            self.opened.append(name)

    listener = OnlyGates()
    with Store.open(store_dir, warmup=Warmup(listeners=[listener])) as s:
        s.put("t", 1, 1)
        g = s.gate("t", requires=[rh.table_ready("t")])
        assert g and listener.opened == ["t"]  # open when made: told at once


def test_gates_close_when_the_background_open_fails(store_dir):
    _build(store_dir, n=50)
    populate = Blocked()
    s = Store.open_background(store_dir, warmup=Warmup(
        populate=[populate], criteria={"populate": [lambda store: False]}, listeners=[]))
    try:
        assert populate.started.wait(60)
        g = s.gate("b", requires=[rh.table_ready("b")])
        assert g
        populate.go.set()
        with pytest.raises(rh.CriteriaError):
            s.wait_ready(30)
        assert not g and g.why()[0].startswith("the open failed: CriteriaError")
        with pytest.raises(StoreFailedError):
            g.wait(30)
        with pytest.raises(StoreFailedError):
            s.gate("again", requires=[rh.table_ready("b")])
    finally:
        populate.go.set()
        s.close()


def test_a_table_named_before_the_log_is_known_is_checked_once_it_is(store_dir, caplog):
    _build(store_dir, n=50)
    # point-in-time: the log's tables are known only after the replay.
    hold = Hold(lambda r: r["phase"] == "replay")
    s = hold.open(store_dir, recovery="point-in-time")
    try:
        hold.wait_held()
        assert s.readiness()["writes"] == "waiting"
        typo = s.gate("typo", requires=[rh.table_ready("dd")])
        d = s.gate("d", requires=[rh.table_ready("d")])
        assert not typo and not d
        assert typo.why() == ["table 'dd' not ready (the open does not know the log's "
                              "tables yet)"]
        with caplog.at_level(logging.ERROR, logger="rehydrate"):
            hold.release()
            assert s.wait_ready(30)
            assert d.wait(30) is True
            assert typo.why() == ["gate requirement on table 'dd': the store has no such table"]
            for _ in range(5):
                assert not typo
                s.readiness()
            with pytest.raises(ConfigError) as e:
                typo.wait(30)
            assert e.value.reason == "unknown_table"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "'typo' can never open" in errors[0].getMessage()
    finally:
        hold.release()
        s.close()


def test_a_raising_callable_keeps_its_gate_closed_and_is_reported_once(store_dir, caplog):
    calls, mode = [], ["raise"]

    def flaky(store):
        calls.append(1)
        if mode[0] == "raise":
            raise ValueError("no backend")
        return True

    with Store.open(store_dir) as s:
        with caplog.at_level(logging.ERROR, logger="rehydrate"):
            g = s.gate("flaky", requires=[flaky])
            for _ in range(20):
                assert not g
                assert g.why() == ["flaky(store) raised ValueError: no backend"]
                s.readiness()
            assert g.wait(0.1) is False
            reported = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(calls) > 20 and len(reported) == 1
            assert "flaky" in reported[0].getMessage() and reported[0].exc_info is not None
            mode[0] = "ok"
            assert g.wait(30) is True
            mode[0] = "raise"
            assert g.why() == ["flaky(store) raised ValueError: no backend"] and not g
        # Raising again after it stopped is a new report.
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2


def test_bad_gates_are_config_errors(store_dir):
    mig = _split_migrations()
    with Store.open(store_dir, migrations=mig) as s:
        s.put("c", 1, 1)
        with pytest.raises(ConfigError):
            rh.phase_done("warm")
        for bad in (0, 1.5, -1, True, "1"):
            with pytest.raises(ConfigError):
                rh.migration_at("split", bad)
        for bad in (0, -1, float("inf"), float("nan"), True, None):
            with pytest.raises(ConfigError):
                rh.lag_below(bad)
        for bad in ("", 3, None, "x" * 201):
            with pytest.raises(ConfigError):
                rh.table_ready(bad)
            with pytest.raises(ConfigError):
                s.gate(bad, requires=[rh.table_ready("c")])
        with pytest.raises(ConfigError) as e:
            s.gate("g", requires=[rh.table_ready("nope")])
        assert e.value.reason == "unknown_table"
        with pytest.raises(ConfigError) as e:
            s.gate("g", requires=[rh.migration_at("nope")])
        assert e.value.reason == "unknown_migration"
        for bad in ([], "c", [1], ["c"], None):
            with pytest.raises(ConfigError):
                s.gate("g", requires=bad)

        async def later(store):
            return True

        with pytest.raises(ConfigError, match="coroutine"):
            s.gate("g", requires=[later])
        # A registered migration exists (it ran in this open's migrate phase).
        assert s.gate("g", requires=[rh.migration_at("split"), rh.table_ready("c")])
        with pytest.raises(ConfigError, match="already"):
            s.gate("g", requires=[rh.table_ready("c")])
        assert list(s.readiness()["gates"]) == ["g"]
    with pytest.raises(StoreClosedError):
        s.gate("h", requires=[rh.table_ready("c")])
    # A migration in the ledger exists without its registration.
    with Store.open(store_dir) as again:
        assert again.gate("g", requires=[rh.migration_at("split", 1.0)])


def test_wait_times_out_then_opens_from_another_thread(store_dir):
    flag = threading.Event()
    with Store.open(store_dir) as s:
        g = s.gate("g", requires=[lambda store: flag.is_set()])
        assert g.wait(0) is False and g.wait(0.05) is False
        waiter_got = []
        waiter = threading.Thread(target=lambda: waiter_got.append(g.wait(60)))
        waiter.start()
        flag.set()
        waiter.join(60)
        assert waiter_got == [True] and g.wait(0) is True
    assert not g and g.wait(None) is False  # closed: nothing more to wait for


def test_wait_async_never_blocks_the_loop(background):
    start, populate, _ = background
    s, hold = start()
    d = s.gate("d", requires=[rh.table_ready("d")])
    flag = []
    polled = s.gate("polled", requires=[lambda store: bool(flag)])

    async def main():
        assert await d.wait_async(0.01) is False
        ticks = []

        async def release_from_the_loop():
            # Runs only if the loop is free while wait_async waits.
            ticks.append(1)
            await asyncio.get_running_loop().run_in_executor(None, hold.release)

        waiting = asyncio.ensure_future(d.wait_async(60))
        releaser = asyncio.ensure_future(release_from_the_loop())
        assert await waiting is True
        await releaser
        assert ticks == [1]
        assert await polled.wait_async(0.01) is False
        asyncio.get_running_loop().call_soon(flag.append, 1)
        assert await polled.wait_async(60) is True

    asyncio.run(main())
    populate.go.set()
    assert s.wait_ready(30)


def test_readiness_readyz_and_metrics_over_http(store_dir):
    flag = []
    with Store.open(store_dir) as s:
        s.put("t", 1, 1)
        s.gate("t", requires=[rh.table_ready("t")])
        s.gate("flag", requires=[lambda store: bool(flag)])
        server = s.serve_http()
        try:
            base = f"http://127.0.0.1:{server.port}"
            with urllib.request.urlopen(base + "/readyz", timeout=10) as r:
                body = json.loads(r.read())
            # A closed gate gates a feature, not the traffic: still 200.
            assert r.status == 200 and body["ready"] is True
            assert body["gates"] == {"t": {"open": True, "unmet": []},
                                     "flag": {"open": False,
                                              "unmet": ["<lambda>(store) returned False"]}}
            with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
                text = r.read().decode()
            at = s.path
            assert f'rehydrate_gate_open{{gate="t",store="{at}"}} 1.0' in text
            assert f'rehydrate_gate_open{{gate="flag",store="{at}"}} 0.0' in text
            flag.append(1)
            with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
                text = r.read().decode()
            assert f'rehydrate_gate_open{{gate="flag",store="{at}"}} 1.0' in text
        finally:
            server.close()


def _next_frame_bytes(store_dir, tmp_path):
    """The bytes of the frame a writer of ``store_dir`` would append next
    (put("t", 2, 2)), made in a copy of the directory."""
    copy = str(tmp_path / "copy")
    shutil.copytree(store_dir, copy)
    seg = sorted(os.listdir(os.path.join(store_dir, "wal")))[-1]
    before = os.path.getsize(os.path.join(store_dir, "wal", seg))
    with Store.open(copy) as c:
        c.put("t", 2, 2)
    with open(os.path.join(copy, "wal", seg), "rb") as f:
        whole = f.read()
    with open(os.path.join(store_dir, "wal", seg), "rb") as f:
        assert whole.startswith(f.read())
    return os.path.join(store_dir, "wal", seg), whole[before:]


def test_lag_below_closes_when_a_standby_falls_behind_and_opens_again(store_dir, tmp_path):
    with Store.open(store_dir) as p:
        p.put("t", 1, 1)
    path, frame = _next_frame_bytes(store_dir, tmp_path)
    s = Store.open_standby(store_dir)
    try:
        fresh = s.gate("fresh", requires=[rh.lag_below(0.3), rh.table_ready("t")])
        assert fresh and s.lag["seconds"] == 0.0
        # Half a frame at the log's end: the standby waits for the rest,
        # behind the primary, and its lag grows until the bound is crossed.
        with open(path, "ab") as f:
            f.write(frame[: len(frame) // 2])
        # (Nothing reads the gate here: the follower's own steps close it.)
        assert wait_until(lambda: not fresh)
        why = fresh.why()
        assert len(why) == 1 and why[0].startswith("lag below 0.3 s (it is ")
        assert s.lag["bytes"] == len(frame) // 2
        with open(path, "ab") as f:
            f.write(frame[len(frame) // 2:])
        assert fresh.wait(30) is True
        assert s.wait_for_lsn(2, 30) and s.table("t")[2] == 2
    finally:
        s.close()
    assert not fresh and fresh.why() == ["the store is closed"]


def test_a_lag_gate_holds_on_after_a_promote(store_dir):
    p = Store.open(store_dir)
    p.put("t", 1, 1)
    p.sync()
    s = Store.open_standby(store_dir)
    try:
        g = s.gate("fresh", requires=[rh.lag_below(5)])
        assert g
        s.promote()
        assert s.role == "primary" and g and g.why() == []
        assert p.role == "moved" and p.gate("x", requires=[rh.lag_below(5)]).why() == \
            ["lag below 5 s (the lag is unknown: not following)"]
    finally:
        s.close()
        p.close()


# -- a model: any sequence of changes and reads, against the gate's value ----

@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["set", "read"]), st.integers(0, 2),
                          st.booleans(), st.sampled_from(["why", "readiness", "wait"])),
                max_size=30))
def test_the_gate_follows_its_requirements_and_listeners_see_each_change(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("model") / "state")
    flags = [False, False, False]
    recorder = Recorder()
    with Store.open(path, warmup=Warmup(listeners=[recorder])) as s:
        s.put("t", 1, 1)
        g = s.gate("g", requires=[rh.table_ready("t")] +
                   [(lambda store, i=i: flags[i]) for i in range(3)])
        expected, seen = [], False  # the model: open iff every flag is set
        for op, i, value, how in ops:
            if op == "set":
                flags[i] = value
                continue
            if how == "why":
                g.why()
            elif how == "readiness":
                s.readiness()
            else:
                g.wait(0)
            now = all(flags)
            if now != seen:
                expected.append(("open", "g") if now else ("close", "g"))
                seen = now
            assert bool(g) is now
        gate_events = [e[:2] for e in recorder.events if e[0] in ("open", "close")]
        assert gate_events == expected
