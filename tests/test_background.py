"""Background open (docs/warmup.md, "Background open"): readiness while it
runs, writes taken during the replay and applied in LSN order, per-table
readiness, admission control, failures and crashes; every test on both cores.

The replay is held at a known point by its progress callback, which blocks
on an Event the test sets: no test waits on time to synchronize.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import BackpressureError, ConfigError, LockedError, Store, Warmup

from helpers.background import SEG, Hold, build_log


def _build(path, n=300):
    build_log(path, n)


def b_in_d_not(r):
    return r["writes"] == "taken" and r["tables"].get("b") and not r["tables"].get("d")


@pytest.fixture
def held(store_dir):
    _build(store_dir)
    hold = Hold(b_in_d_not)
    yield hold
    hold.release()
    if hold.store is not None:
        hold.store.close()


def test_writes_during_replay_are_logged_now_and_applied_in_lsn_order(store_dir, held):
    s = held.open(store_dir)
    held.wait_held()
    r = s.readiness()
    assert (r["ready"], r["phase"], r["writes"]) == (False, "replay", "taken")
    assert r["tables"] == {"c": True, "b": True, "d": False}
    assert 0.1 < r["progress"] < 0.9
    # A ready table takes writes at once; its reads are the table itself.
    s.put("b", 2, "direct")
    assert s.table("b")[2] == "direct" and s.table("b").ready
    # A table not ready: its writes are logged (an LSN each) and kept.
    lsn1 = s.put("d", 5, "pending")
    lsn2 = s.delete("d", 6)
    lsn3 = s.put("d", 5, "pending again")
    assert lsn1 < lsn2 < lsn3
    view = s.table("d")
    assert view.ready is False and view.wait_ready(0) is False
    assert s.readiness()["pending_records"] == 3
    held.release()
    assert s.wait_ready(30) is True
    d = s.table("d")
    assert d[5] == "pending again" and 6 not in d and d[7] == 7 and len(d) == 299
    assert view[5] == "pending again"  # a view taken early reads the table
    assert s.readiness()["pending_records"] == 0
    digest = s.digest()
    s.close()
    with Store.open(store_dir) as again:
        assert again.digest() == digest


def test_reads_of_a_table_not_ready_wait_for_it(store_dir, held):
    s = held.open(store_dir)
    held.wait_held()
    got = []
    reader = threading.Thread(target=lambda: got.append(s.table("d")[299]))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive() and got == []  # still waiting: d is not in
    held.release()
    reader.join(30)
    assert got == [299]


def test_backpressure_refuses_after_the_timeout_and_loses_nothing(store_dir, held):
    s = held.open(store_dir, max_pending_records=3, admission_timeout_s=0.1)
    held.wait_held()
    for i in range(3):
        s.put("d", 1000 + i, i)
    before = s.lsn
    with pytest.raises(BackpressureError, match="max_pending_records 3"):
        s.put("d", 2000, "refused")
    assert s.lsn == before  # nothing of it logged
    s.put("b", 3000, "ready tables are not limited")
    held.release()
    assert s.wait_ready(30)
    d = s.table("d")
    assert [d[1000 + i] for i in range(3)] == [0, 1, 2] and 2000 not in d
    s.close()
    with Store.open(store_dir) as again:
        d = again.table("d")
        assert [d[1000 + i] for i in range(3)] == [0, 1, 2] and 2000 not in d
        assert again.table("b")[3000] == "ready tables are not limited"


def test_a_writer_held_by_backpressure_gets_in_when_its_table_is_ready(store_dir, held):
    s = held.open(store_dir, max_pending_records=1, admission_timeout_s=60)
    held.wait_held()
    s.put("d", 1, "first")
    lsns = []
    writer = threading.Thread(target=lambda: lsns.append(s.put("d", 1, "second")))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive() and lsns == []
    held.release()
    writer.join(30)
    assert s.wait_ready(30) and s.table("d")[1] == "second"  # in LSN order


def test_bytes_limit_too(store_dir, held):
    s = held.open(store_dir, max_pending_bytes=100, admission_timeout_s=0)
    held.wait_held()
    s.put("d", 1, b"x" * 200)  # the limit is checked before a write: one gets in
    with pytest.raises(BackpressureError, match="max_pending_bytes 100"):
        s.put("d", 2, b"y")


def test_incr_waits_for_its_table_and_refuses_after_the_timeout(store_dir, held):
    s = held.open(store_dir, admission_timeout_s=0.05)
    held.wait_held()
    before = s.lsn
    with pytest.raises(BackpressureError, match="'d', whose state is not in"):
        s.incr("d", 10)
    assert s.lsn == before
    s.incr("b", 10, 5)  # b is ready: as on any open store
    assert s.table("b")[10] == 15
    held.release()
    assert s.wait_ready(30)
    assert s.incr("d", 10) and s.table("d")[10] == 11


def test_incr_waiting_writer_completes_once_ready(store_dir, held):
    s = held.open(store_dir, admission_timeout_s=60)
    held.wait_held()
    s.put("d", 10, 100)  # pending, so the incr must see it
    t = threading.Thread(target=s.incr, args=("d", 10, 1))
    t.start()
    t.join(0.2)
    assert t.is_alive()
    held.release()
    t.join(30)
    assert s.wait_ready(30) and s.table("d")[10] == 101


def test_batches_during_warmup_are_all_or_nothing(store_dir, held):
    s = held.open(store_dir, admission_timeout_s=0.05)
    held.wait_held()
    with s.batch() as b:
        b.put("b", 1, "B")
        b.put("d", 1, "D")
        b.delete("d", 2)
    assert s.table("b")[1] == "B"
    assert s.readiness()["pending_records"] == 2
    before = s.lsn
    with pytest.raises(BackpressureError):
        with s.batch() as b:
            b.put("d", 3, "never")
            b.incr("d", 4)  # needs d's state
    with pytest.raises(rh.InvalidOperationError):
        with s.batch() as b:
            b.put("d", 3, "never")
            b.put("b", 5, "text")
            b.incr("b", 5)  # not a number: the batch fails whole
    assert s.lsn == before and s.readiness()["pending_records"] == 2
    held.release()
    assert s.wait_ready(30)
    d = s.table("d")
    assert d[1] == "D" and 2 not in d and d[3] == 3 and s.table("b")[5] == 5


def test_offsets_wait_for_the_whole_replay(store_dir, held):
    s = held.open(store_dir, admission_timeout_s=0.05)
    held.wait_held()
    with pytest.raises(BackpressureError, match="source offsets"):
        s.consume("src", 1)
    with pytest.raises(BackpressureError, match="source offsets"):
        with s.batch(offsets={"src": 1}) as b:
            b.put("b", 1, 1)
    held.release()
    assert s.wait_ready(30)
    with s.consume("src", 1) as b:
        b.put("b", 1, "once")
    assert s.offsets == {"src": 1} and s.consume("src", 1) is None


def test_a_new_table_is_ready_at_once(store_dir, held):
    s = held.open(store_dir)
    held.wait_held()
    s.put("fresh", 1, "new")
    assert s.table("fresh")[1] == "new" and s.readiness()["tables"]["fresh"] is True
    held.release()
    assert s.wait_ready(30) and s.table("fresh")[1] == "new"


def test_numeric_puts_are_checked_before_they_are_logged(store_dir):
    tables = {"n": rh.NumericTable({"hits": "int64"}, rows=100)}
    with Store.open(store_dir, tables=tables, segment_bytes=SEG) as s:
        for i in range(400):
            s.put("n", i % 100, {"hits": i})
            if i % 20 == 19:
                s.sync()
    hold = Hold(lambda r: r["writes"] == "taken" and not r["tables"].get("n"))
    s = hold.open(store_dir, tables=tables)
    try:
        hold.wait_held()
        before = s.lsn
        with pytest.raises(rh.InvalidOperationError):
            s.put("n", 1, {"nope": 1})
        with pytest.raises(rh.InvalidOperationError):
            s.put("n", 100, {"hits": 1})  # past the rows
        assert s.lsn == before
        s.put("n", 7, {"hits": -7})
        hold.release()
        assert s.wait_ready(30)
        assert s.table("n").column("hits")[7] == -7
        assert s.table("n").column("hits")[8] == 308
    finally:
        hold.release()
        s.close()


def test_failed_background_open_keeps_the_writes_it_took(store_dir, held):
    def refuse(store):
        return False

    s = held.open(store_dir, warmup=Warmup(criteria={"replay": [refuse]}, listeners=[]))
    held.wait_held()
    s.put("d", 5, "taken")
    held.release()
    with pytest.raises(rh.CriteriaError, match="refuse"):
        s.wait_ready(30)
    assert s.readiness()["phase"] == "failed" and "CriteriaError" in s.readiness()["error"]
    with pytest.raises(rh.StoreFailedError, match="background open failed"):
        s.put("d", 6, "refused")
    with Store.open(store_dir) as again:  # the lock was let go
        assert again.table("d")[5] == "taken" and 6 in again.table("d")
        assert again.table("d")[6] == 6


def test_close_during_a_hook_stops_the_open_and_keeps_writes(store_dir):
    _build(store_dir, n=50)
    in_hook, never = threading.Event(), threading.Event()

    def stuck(store, progress):
        in_hook.set()
        never.wait()

    s = Store.open_background(store_dir, warmup=Warmup(prime=[stuck], listeners=[]))
    try:
        assert in_hook.wait(30)
        assert s.readiness()["phase"] == "prime"
        s.put("d", 1, "before close")
        s.close()
        assert s.readiness()["phase"] == "failed"
        with pytest.raises(rh.WarmupError, match="closing"):
            s.wait_ready(0)
    finally:
        never.set()
    with Store.open(store_dir) as again:
        assert again.table("d")[1] == "before close"


def test_readyz_is_503_until_ready_then_200(store_dir):
    _build(store_dir, n=50)
    in_hook, go = threading.Event(), threading.Event()

    def prime(store, progress):
        in_hook.set()
        go.wait()

    s = Store.open_background(store_dir, warmup=Warmup(prime=[prime], listeners=[]))
    server = s.serve_http()
    try:
        assert in_hook.wait(30)
        url = f"http://127.0.0.1:{server.port}/readyz"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 503
        body = json.loads(e.value.read())
        assert body["ready"] is False and body["phase"] == "prime"
        assert 0.9 <= body["progress"] < 1.0 and body["writes"] == "taken"
        with urllib.request.urlopen(url.replace("readyz", "metrics"), timeout=10) as r:
            text = r.read().decode()
        assert any(line.startswith("rehydrate_ready{") and line.endswith(" 0.0")
                   for line in text.splitlines())
        assert "rehydrate_intake_pending_records{" in text
        go.set()
        assert s.wait_ready(30)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["ready"] is True
    finally:
        go.set()
        server.close()
        s.close()


def test_point_in_time_takes_writes_only_after_the_replay(store_dir):
    _build(store_dir)
    hold = Hold(lambda r: r["phase"] == "replay")
    s = hold.open(store_dir, recovery="point-in-time", admission_timeout_s=0.05)
    try:
        hold.wait_held()
        r = s.readiness()
        assert r["writes"] == "waiting" and not any(r["tables"].values())
        with pytest.raises(BackpressureError, match="log's end"):
            s.put("d", 1, "x")
        assert isinstance(s.table("c"), rh.intake.TableView)
        hold.release()
        assert s.wait_ready(30)
        s.put("d", 1, "x")
        assert s.table("d")[1] == "x"
    finally:
        hold.release()
        s.close()


def test_errors_found_at_once_raise_at_once(store_dir):
    with pytest.raises(ConfigError):
        Store.open_background(store_dir, max_pending_records=0)
    with pytest.raises(ConfigError):
        Store.open_background(store_dir, admission_timeout_s=-1)
    with pytest.raises(ConfigError):
        Store.open_background(store_dir, sync="sometimes")
    with Store.open(store_dir):
        with pytest.raises(LockedError):
            Store.open_background(store_dir)


def test_unknown_tables_after_the_log_is_known(store_dir, held):
    s = held.open(store_dir)
    held.wait_held()
    with pytest.raises(KeyError):
        s.table("never-written")


_CHILD = r"""
import sys, threading
import rehydrate as rh
path = sys.argv[1]
forever = threading.Event()
started = threading.Event()
box = {}
def hold(done, total):
    started.wait()
    r = box["s"].readiness()
    if r["writes"] == "taken" and not r["tables"].get("d"):
        forever.wait()
s = rh.Store.open_background(path, progress=hold, sync="always", segment_bytes=4096)
box["s"] = s
started.set()
for i in range(10**6):
    lsn = s.put("d", 10_000 + i, i)
    print(i, lsn, flush=True)
"""


def test_kill9_during_background_open_keeps_every_acknowledged_write(store_dir, core_env):
    _build(store_dir)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, store_dir], env=core_env,
                             stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in child.stdout:
            acked.append(int(line.split()[0]))
            if len(acked) == 40:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert len(acked) == 40
    with Store.open(store_dir) as s:
        d = s.table("d")
        for i in acked:
            assert d[10_000 + i] == i
        assert d[299] == 299 and s.table("c")[1] == "snap"


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "delete", "clear"]),
                              st.sampled_from(["b", "d", "new"]),
                              st.integers(0, 30), st.integers(-5, 5)), max_size=40))
def test_state_after_a_background_open_is_the_model(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("bg") / "s")
    _build(path, n=60)
    model = {"c": {1: "snap"}, "b": {i: i for i in range(60)}, "d": {i: i for i in range(60)}}
    hold = Hold(lambda r: r["writes"] == "taken")
    s = hold.open(path)
    try:
        hold.wait_held()
        for op, table, key, value in ops:
            if op == "put":
                s.put(table, key, value)
                model.setdefault(table, {})[key] = value
            elif op == "delete":
                s.delete(table, key)
                model.get(table, {}).pop(key, None)
            else:
                s.clear(table)
                model[table] = {}
        hold.release()
        assert s.wait_ready(30)
        live = {n: s.table(n).to_dict() for n in s.tables()}
        assert {n: t for n, t in live.items() if t} == {n: t for n, t in model.items() if t}
        digest = s.digest()
    finally:
        hold.release()
        s.close()
    with Store.open(path) as again:
        assert again.digest() == digest


@pytest.mark.parametrize("sync", ["always", "interval", "none"])
def test_a_cleanly_closed_empty_store_opens_in_the_background(store_dir, sync):
    # The log is one header-only segment and the clean end names it: the
    # replay after the checking pass reads up to LSN 0 and must not take the
    # missing segment for a log cut short.
    Store.open(store_dir, sync=sync).close()
    s = Store.open_background(store_dir, sync=sync)
    try:
        assert s.wait_ready(timeout=60)
        assert s.recovery_report.ok and s.lsn == 0
        assert s.put("t", 1, "x") == 1
    finally:
        s.close()
    with Store.open(store_dir, recovery="strict") as s:
        assert s.lsn == 1 and dict(s.table("t").items()) == {1: "x"}
