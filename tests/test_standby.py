"""Standbys and readers of a local primary, and the local handoff
(docs/replication.md).

A standby follows the directory its primary writes (``source=None``):
every test here checks what it holds against the primary's state or the
model, and every handoff and failover against the shared oracle
(rehydrate.testing.check_recovery): no acknowledged write lost, nothing
beyond what was written, never part of a batch.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import (
    CorruptionError, HandoffError, MovedError, ReadOnlyError, Store,
)
from rehydrate import manifest as _manifest
from rehydrate.testing import check_recovery

from helpers import crash_sequence
from helpers.model import Model, apply_to_store, canon_state, store_state
from helpers.standby_http import KINDS

HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
HANDOFF_WRITER = os.path.join(HELPERS, "handoff_writer.py")
CRASH_WRITER = os.path.join(HELPERS, "crash_writer.py")


def _contents(store, name):
    t = store.table(name)
    if name == "c":
        return dict(t.n)
    if name == "n":
        return [t[i] for i in range(16)]
    return {k: t[k] for k in t.keys()}


def test_a_standby_follows_every_table_kind_and_refuses_writes(store_dir):
    p = Store.open(store_dir, tables=KINDS, segment_bytes=4096)
    try:
        p.put("kv", "a", {"v": 1})
        p.put("d", "b", [1, 2])
        p.put("n", 7, {"x": 3, "y": 0.5})
        p.put("c", "k", 1)
        p.sync()
        s = Store.open_standby(store_dir, tables=KINDS)
        try:
            assert s.role == "standby" and s.lsn == p.lsn
            for i in range(300):  # several segments
                p.put("kv", f"k{i}", "v" * 40)
                p.put("d", "b", i)
                p.incr("n", 7, 1, column="x")
                p.put("c", "k", i)
            p.delete("kv", "a")
            last = p.sync()
            assert s.wait_for_lsn(last, timeout=30)
            for name in ("kv", "d", "n", "c"):
                assert _contents(s, name) == _contents(p, name), name
            for write in (lambda: s.put("kv", "x", 1), lambda: s.delete("kv", "k1"),
                          lambda: s.incr("n", 7), lambda: s.clear("kv"), s.sync,
                          s.checkpoint):
                with pytest.raises(ReadOnlyError):
                    write()
            with pytest.raises(ReadOnlyError):
                with s.batch() as b:
                    b.put("kv", "x", 1)
            assert "x" not in s.table("kv")
            lag = s.lag
            assert lag["records"] == 0 and lag["lsn"] == last and lag["state"] == "following"
            r = s.readiness()
            assert r["ready"] and r["role"] == "standby"
        finally:
            s.close()
    finally:
        p.close()


ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["a", "b"]), st.integers(0, 20),
                  st.integers(-2**63, 2**63 - 1)),
        st.tuples(st.just("delete"), st.sampled_from(["a", "b"]), st.integers(0, 20)),
        st.tuples(st.just("incr"), st.just("c"), st.integers(0, 5), st.integers(-5, 5)),
        st.tuples(st.just("clear"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("sync")), st.tuples(st.just("checkpoint"))),
    max_size=60)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_strategy)
def test_a_standby_holds_the_primarys_state_after_any_history(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("model") / "s")
    model = Model()
    with Store.open(path, segment_bytes=4096, keep_snapshots=1) as p:
        p.put("a", "seed", 0)
        model.apply(("put", "a", "seed", 0))
        p.sync()
        s = Store.open_standby(path)
        try:
            for op in ops:
                if op[0] == "sync":
                    assert s.wait_for_lsn(p.sync(), timeout=30)
                    assert canon_state(store_state(s)) == canon_state(model.state())
                elif op[0] == "checkpoint":
                    p.checkpoint()  # (the log is trimmed under the standby)
                else:
                    assert apply_to_store(p, op) == model.apply(op)
            assert s.wait_for_lsn(p.sync(), timeout=30)
            assert canon_state(store_state(s)) == canon_state(model.state())
            assert s.follow_error is None
        finally:
            s.close()


def test_a_reader_takes_no_lock_and_catches_up_on_refresh(store_dir):
    with Store.open(store_dir, segment_bytes=4096) as p:
        for i in range(50):
            p.put("t", i, i)
        p.sync()
        r = Store.open(store_dir, readonly=True)
        try:
            assert r.role == "reader" and r.lsn == 50
            for i in range(50, 400):
                p.put("t", i, i)
            p.sync()
            assert r.lsn == 50, "a reader holds its state until refresh()"
            assert r.refresh() == 400
            assert dict(r.table("t").items()) == dict(p.table("t").items())
            with pytest.raises(ReadOnlyError):
                r.put("t", 1, 2)
        finally:
            r.close()
    # A reader of a closed store, and the store opens for writing beside it.
    r = Store.open(store_dir, readonly=True)
    with Store.open(store_dir) as p:
        p.put("t", "more", 1)
        p.sync()
        assert r.refresh() == p.lsn
    r.close()


def test_a_damaged_frame_stops_the_follower_visibly(store_dir):
    with Store.open(store_dir, segment_bytes=1 << 20) as p:
        for i in range(20):
            p.put("t", i, "v" * 100)
        p.sync()
        r = Store.open(store_dir, readonly=True)
        seg = sorted(os.listdir(os.path.join(store_dir, "wal")))[-1]
        path = os.path.join(store_dir, "wal", seg)
        size = os.path.getsize(path)
        for i in range(20):
            p.put("t", f"x{i}", "w" * 100)
            p.sync()  # (frames, one by one)
        one_frame = os.path.getsize(path)
        p.put("t", "last", 1)
        p.sync()
        frame = open(path, "rb").read()[one_frame:]
    # Damage a frame in the middle of what the reader has not read.
    with open(path, "r+b") as f:
        f.seek(size + 60)
        b = f.read(1)
        f.seek(size + 60)
        f.write(bytes([b[0] ^ 0xFF]))
    try:
        with pytest.raises(CorruptionError) as e:
            r.refresh()
        assert e.value.path == path and e.value.offset is not None and e.value.lsn
        assert r.lsn == 20, "nothing past the damage is applied"
    finally:
        r.close()
    with open(path, "r+b") as f:  # (undo it: the standby starts from a sound log)
        f.seek(size + 60)
        f.write(b)
    s = Store.open_standby(store_dir)
    try:
        assert s.lsn == 41 and s.readiness()["ready"]
        # A damaged frame, then a whole one after it: damage, not a tail.
        bad = bytearray(frame)
        bad[50] ^= 0xFF
        with open(path, "ab") as f:
            f.write(bytes(bad) + frame)
        with pytest.raises(CorruptionError):
            s.wait_for_lsn(10**6, timeout=30)
        assert isinstance(s.follow_error, CorruptionError)
        assert s.lsn == 41
        ready = s.readiness()
        assert not ready["ready"] and "CorruptionError" in ready["error"]
        assert ready["lag"]["state"] == "failed"
        with pytest.raises(HandoffError) as h:
            s.promote()
        assert h.value.reason == "failed"
    finally:
        s.close()


def test_a_partial_frame_at_the_end_is_waited_for_not_applied(store_dir):
    with Store.open(store_dir) as p:
        p.put("t", 1, 1)
        p.sync()
    seg = sorted(os.listdir(os.path.join(store_dir, "wal")))[-1]
    path = os.path.join(store_dir, "wal", seg)
    whole = open(path, "rb").read()
    r = Store.open(store_dir, readonly=True)
    try:
        # The first half of a frame another writer is writing.
        frame = whole[32:]
        with open(path, "ab") as f:
            f.write(frame[: len(frame) // 2])
        assert r.refresh() == 1
        assert r.lag["bytes"] == len(frame) // 2
        with open(path, "ab") as f:
            f.write(frame[len(frame) // 2:])
        # The same frame again (LSN 1 twice) is an overlap: damage, not a repeat.
        with pytest.raises(CorruptionError):
            r.refresh()
    finally:
        r.close()


# ------------------------------------------------------------------ handoff
def test_promote_hands_the_writes_over_in_process(store_dir):
    p = Store.open(store_dir, sync="always")
    s = Store.open_standby(store_dir)
    acked: list[int] = []
    refused: list[BaseException] = []
    stop = threading.Event()

    batches: list[int] = []

    def writer():
        i = 0
        while not stop.is_set():
            try:
                if i % 5 == 4:  # a batch: all of it or none of it, on either side
                    with p.batch() as b:
                        for j in range(3):
                            b.put("b", f"{i}.{j}", i)
                    acked.append(b.lsn)
                    batches.append(i)
                else:
                    acked.append(p.put("t", i, i))
            except MovedError as e:
                refused.append(e)
                return
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert s.wait_for_lsn(50, timeout=30)
        result = s.promote(timeout_s=10, hold_s=5)
        t.join(timeout=30)
        assert refused, "the old primary refuses writes once it handed over"
        assert result["role"] == "primary" and s.role == "primary" and p.role == "moved"
        assert result["epoch"] == 2 == s.epoch and not result["failover"]
        assert s.lsn == max(acked), "the new primary holds every acknowledged write"
        assert all(s.table("t")[i] == i for i in range(len(acked)) if i % 5 != 4)
        assert batches and len(s.table("b")) == 3 * len(batches)
        assert all(s.table("b")[f"{i}.{j}"] == i for i in batches for j in range(3))
        lsn = s.put("t", "after", 1)
        assert lsn == max(acked) + 1
        with pytest.raises(MovedError):
            p.put("t", "x", 1)
        with pytest.raises(MovedError):
            p.sync()
    finally:
        stop.set()
        t.join()
        s.close()
        p.close()
    with Store.open(store_dir, recovery="strict") as again:
        assert again.epoch == 2 and again.table("t")["after"] == 1
        assert _manifest.read(store_dir)["handoff"]["final_lsn"] == max(acked)


def _start(script, path, seed, env, *extra):
    proc = subprocess.Popen([sys.executable, script, path, str(seed), "4096", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    first = proc.stdout.readline()
    assert first.startswith("ready "), (first, proc.stderr.read())
    return proc


def _judge(standby, seed, acked):
    sent = len(crash_sequence.ops_up_to(seed, acked)) + 2
    return check_recovery(lambda: standby,
                          list(itertools.islice(crash_sequence.ops(seed), sent)), acked)


def test_promote_takes_over_from_a_primary_in_another_process(store_dir, core_env):
    proc = _start(HANDOFF_WRITER, store_dir, 7, core_env)
    try:
        acked = 0
        for _ in range(40):
            acked = int(proc.stdout.readline())
        s = Store.open_standby(store_dir)
        result = s.promote(timeout_s=20, hold_s=10)
        out, err = proc.communicate(timeout=60)
        lines = out.split()
        assert proc.returncode == 0, err
        assert "moved" in lines, out
        acked = max([acked] + [int(x) for x in lines if x.isdigit()])
        assert result["epoch"] == 2 and not result["failover"]
        assert s.role == "primary"
        out = _judge(s, 7, acked)  # (closes the store)
        assert out["lsn"] >= acked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Store.open(store_dir, recovery="strict") as again:
        assert again.epoch == 2


def test_promote_after_the_primary_was_killed_loses_no_acknowledged_write(
        store_dir, core_env):
    proc = _start(CRASH_WRITER, store_dir, 11, core_env)
    s = None
    try:
        acked = 0
        for _ in range(30):
            acked = int(proc.stdout.readline())
        s = Store.open_standby(store_dir)
        for _ in range(30):
            acked = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout.read().split():
            acked = max(acked, int(line))
        proc.wait(timeout=60)
        result = s.promote(timeout_s=10, hold_s=5)
        assert result["failover"] and result["epoch"] == 2
        out = _judge(s, 11, acked)
        assert out["lsn"] >= acked
        s = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if s is not None:
            s.close()
    with Store.open(store_dir, recovery="strict") as again:
        assert again.epoch == 2


def test_a_promote_the_primary_does_not_answer_times_out_and_the_primary_goes_on(
        store_dir, core_env):
    proc = _start(HANDOFF_WRITER, store_dir, 3, core_env)
    try:
        for _ in range(5):
            int(proc.stdout.readline())
        s = Store.open_standby(store_dir)
        os.kill(proc.pid, signal.SIGSTOP)  # a primary that cannot answer
        try:
            with pytest.raises(HandoffError) as e:
                s.promote(timeout_s=0.3, hold_s=0.3)
            assert e.value.reason == "timeout"
            assert s.role == "standby"
            assert not os.path.exists(os.path.join(store_dir, "HANDOFF")), "withdrawn"
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        before = int(proc.stdout.readline())
        after = int(proc.stdout.readline())
        assert after > before, "the primary still writes"
        assert s.wait_for_lsn(after, timeout=30), "and the standby still follows"
        s.close()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert _manifest.epoch(_manifest.read(store_dir), store_dir) == 1


def test_a_fenced_primary_never_appends_again(store_dir):
    p = Store.open(store_dir, sync="always")
    try:
        p.put("t", 1, 1)
        # Another writer took the directory over (a shared volume where the
        # lock did not hold, a paused process): the MANIFEST's epoch moved on.
        man = _manifest.read(store_dir)
        man["epoch"] = 5
        _manifest.write(store_dir, man)
        seg = sorted(os.listdir(os.path.join(store_dir, "wal")))[-1]
        size = os.path.getsize(os.path.join(store_dir, "wal", seg))
        with pytest.raises(MovedError) as e:
            p.put("t", 2, 2)
        assert e.value.epoch == 5
        with pytest.raises(MovedError):
            p.put("t", 3, 3)
        assert os.path.getsize(os.path.join(store_dir, "wal", seg)) == size
        assert p.role == "moved"
    finally:
        p.close()
    with Store.open(store_dir) as again:
        assert again.lsn == 1 and again.epoch == 5


def test_two_standbys_promoting_at_once_give_one_primary(store_dir):
    p = Store.open(store_dir, sync="always")
    a = Store.open_standby(store_dir)
    b = Store.open_standby(store_dir)
    results: dict = {}

    def promote(name, s):
        try:
            results[name] = s.promote(timeout_s=5, hold_s=2)
        except HandoffError as e:
            results[name] = e

    try:
        p.put("t", 1, 1)
        threads = [threading.Thread(target=promote, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [n for n, r in results.items() if isinstance(r, dict)]
        assert len(won) == 1, results
        loser = a if won == ["b"] else b
        assert loser.role == "standby" and isinstance(results["ab".replace(won[0], "")],
                                                        HandoffError)
        winner = a if won == ["a"] else b
        assert winner.put("t", 2, 2) == 2
    finally:
        for s in (a, b, p):
            s.close()


def test_upcasters_apply_on_a_standby_as_records_arrive(store_dir):
    v2 = rh.Migrations()

    @v2.upcaster("prices", from_version=1)
    def cents(value):
        return {"cents": int(round(value * 100))}

    with Store.open(store_dir) as p:  # version 1 code: prices are floats
        p.put("prices", "a", 1.5)
        p.sync()
        s = Store.open_standby(store_dir, migrations=v2)
        try:
            assert s.table("prices")["a"] == {"cents": 150}
            lsn = p.put("prices", "b", 2.25)
            p.sync()
            assert s.wait_for_lsn(lsn, timeout=30)
            assert s.table("prices")["b"] == {"cents": 225}
        finally:
            s.close()


def test_standby_options_are_checked(store_dir):
    with Store.open(store_dir):
        pass
    for bad in (0, -1, "1", True, float("nan")):
        with pytest.raises(rh.ConfigError):
            Store.open_standby(store_dir, max_lag_s=bad)
    with pytest.raises(rh.NotAStoreError):
        Store.open_standby(store_dir + "-missing")
    s = Store.open_standby(store_dir)
    try:
        for bad in (0, -1, "2", None):
            with pytest.raises(rh.ConfigError):
                s.promote(timeout_s=bad)
        with pytest.raises(rh.ConfigError):
            s.wait_for_lsn(-1)
    finally:
        s.close()
    with Store.open(store_dir) as p:
        with pytest.raises(HandoffError):
            p.promote()
        with pytest.raises(rh.ConfigError):
            p.refresh()


def test_a_demoted_primary_stays_on_as_a_standby_of_the_new_one(store_dir):
    p = Store.open(store_dir, sync="always")
    s = Store.open_standby(store_dir)
    try:
        p.put("t", "before", 1)
        s.promote(timeout_s=10, hold_s=5, demote=True, address="http://new:1")
        # (The old primary turned standby before it let the LOCK go.)
        assert p.role == "standby"
        lsn = s.put("t", "after", 2)
        s.sync()
        assert p.wait_for_lsn(lsn, timeout=30)
        assert p.table("t")["after"] == 2 and p.table("t")["before"] == 1
        with pytest.raises(MovedError) as e:
            p.put("t", "x", 1)
        assert e.value.address == "http://new:1"
    finally:
        s.close()
        p.close()


def test_moved_error_names_the_new_primary(store_dir):
    p = Store.open(store_dir, sync="always")
    s = Store.open_standby(store_dir)
    try:
        p.put("t", 1, 1)
        s.promote(address="http://10.0.0.2:8080")
        with pytest.raises(MovedError) as e:
            p.put("t", 2, 2)
        assert e.value.address == "http://10.0.0.2:8080" and e.value.epoch == 2
    finally:
        s.close()
        p.close()


def test_a_standby_serves_readyz_and_lag_metrics_over_http(store_dir):
    import json
    import urllib.error
    import urllib.request

    with Store.open(store_dir) as p:
        lsn = p.put("t", 1, 1)
        p.sync()
        s = Store.open_standby(store_dir, max_lag_s=5)
        server = s.serve_http(0)
        try:
            assert s.wait_for_lsn(lsn, timeout=30)
            url = f"http://127.0.0.1:{server.port}"
            with urllib.request.urlopen(url + "/readyz", timeout=10) as r:
                body = json.loads(r.read())
            assert r.status == 200 and body["role"] == "standby" and body["lag"]["lsn"] == lsn
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                text = r.read().decode()
            assert 'rehydrate_role{role="standby"' in text and "rehydrate_epoch" in text
            assert "rehydrate_standby_lag_seconds" in text
            assert 'rehydrate_standby_state{state="following"' in text
            line = next(x for x in text.splitlines()
                        if x.startswith("rehydrate_last_lsn"))
            assert float(line.split()[-1]) == lsn
        finally:
            server.close()
            s.close()
        # A closed standby is not ready.
        assert not s.readiness()["ready"]


def test_a_directory_that_handed_its_writes_away_over_http_never_opens_as_a_primary(tmp_path):
    pdir, sdir = str(tmp_path / "p"), str(tmp_path / "s")
    p = Store.open(pdir, sync="always")
    server = p.serve_http(0, replication=True, token="tok")
    s = Store.open_standby(sdir, f"http://127.0.0.1:{server.port}", token="tok")
    try:
        lsn = p.put("t", 1, 1)
        assert s.wait_for_lsn(lsn, timeout=30)
        result = s.promote(address="http://new:9")
        assert result["epoch"] == 2 and s.role == "primary" and p.role == "moved"
        assert s.put("t", 2, 2) == lsn + 1
    finally:
        server.close()
        p.close()
        s.close()
    with pytest.raises(MovedError) as e:
        Store.open(pdir)
    assert e.value.address == "http://new:9" and e.value.epoch == 2
    with Store.open(pdir, readonly=True) as r:  # its state stays readable
        assert r.lsn == lsn and r.table("t")[1] == 1
    with Store.open(sdir, recovery="strict") as again:  # the new primary's
        assert again.epoch == 2 and again.table("t")[2] == 2


def test_a_request_whose_standby_is_gone_is_never_honoured(store_dir):
    import json
    import time

    p = Store.open(store_dir, sync="always", sync_interval_ms=5)
    try:
        p.put("t", 1, 1)
        request = "ab" * 8
        body = {"request": request, "store_id": p.store_id, "pid": 1, "hold_s": 1.0,
                "address": None}
        # As a standby writes it, but nobody holds the request's .live lock:
        # the standby died after asking.
        open(os.path.join(store_dir, f"HANDOFF.{request}.live"), "w").close()
        with open(os.path.join(store_dir, "HANDOFF"), "w") as f:
            f.write(json.dumps(body))
        deadline = time.monotonic() + 30
        while os.path.exists(os.path.join(store_dir, "HANDOFF")):  # (the flusher's tick)
            assert time.monotonic() < deadline, "the primary never looked at the request"
            threading.Event().wait(0.005)
        assert p.role == "primary" and p.put("t", 2, 2) == 2
        assert not os.path.exists(os.path.join(store_dir, f"HANDOFF.{request}.live"))
        # A request naming a file outside the directory is dropped the same way.
        body["request"] = "../../etc"
        with open(os.path.join(store_dir, "HANDOFF"), "w") as f:
            f.write(json.dumps(body))
        while os.path.exists(os.path.join(store_dir, "HANDOFF")):
            assert time.monotonic() < deadline, "the primary never looked at the request"
            threading.Event().wait(0.005)
        assert p.role == "primary" and p.put("t", 3, 3) == 3
    finally:
        p.close()
    assert _manifest.epoch(_manifest.read(store_dir), store_dir) == 1


def test_writes_to_a_standby_being_promoted_wait_for_it_and_go_in(store_dir):
    import time

    # The primary looks for a request once a second: the promote waits in
    # its request phase, with the HANDOFF file there, long enough to write.
    p = Store.open(store_dir, sync="always", sync_interval_ms=1000)
    s = Store.open_standby(store_dir)
    result: dict = {}

    def promote():
        result["r"] = s.promote(timeout_s=10, hold_s=5)

    t = threading.Thread(target=promote)
    try:
        p.put("t", 1, 1)
        with pytest.raises(ReadOnlyError):  # not promoting: refused at once
            s.put("t", "x", 1)
        t.start()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(store_dir, "HANDOFF")) and "r" not in result:
            assert time.monotonic() < deadline
            threading.Event().wait(0.001)
        lsn = s.put("t", "early", 1)  # waits out the takeover, then goes in
        t.join(30)
        assert result["r"]["role"] == "primary" and s.role == "primary"
        assert lsn == 2 and s.table("t")["early"] == 1
    finally:
        t.join(30)
        s.close()
        p.close()
