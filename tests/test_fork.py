"""A store used across ``os.fork()``: the child's copy is a read-only view of
the state as of the fork, every write-side call there raises
ForkedStoreError, and nothing the child does (calls, close, exit) changes a
byte of the parent's directory; the parent goes on unharmed.

Real forks of the test process (each child ends with ``os._exit``, as a
``multiprocessing`` worker does), a script for the interpreter's normal
exit (atexit, finalizers), pipes for every parent/child hand-off.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
import urllib.request

import pytest
from helpers import corrupt as C

import rehydrate as rh
from rehydrate import (
    DictTable,
    ForkedStoreError,
    LockedError,
    NumericTable,
    Store,
    StoreClosedError,
    verify,
)

FORK_EXIT = os.path.join(os.path.dirname(__file__), "helpers", "fork_exit.py")
FORK_GC = os.path.join(os.path.dirname(__file__), "helpers", "fork_gc.py")
SYNCS = ("always", "interval", "none")
# Long enough that the flusher never runs during a test: what a write left
# in the buffer stays there, for the child to (not) flush.
IDLE_INTERVAL_MS = 3_600_000
CHILD_ALARM_S = 60  # a child that hangs is killed, and the test fails


class Events(rh.StateType):
    def __init__(self):
        self.events = []

    def apply(self, op, key, value):
        self.events.append([op, key, value])

    def snapshot(self):
        return self.events

    @classmethod
    def restore(cls, data):
        out = cls()
        out.events = [list(e) for e in data]
        return out


def kinds():
    return {"d": DictTable, "n": NumericTable({"hits": "int64", "score": "float64"}, rows=8),
            "ev": Events}


def write_before(s):
    for i in range(20):
        s.put("kv", i, {"v": i})
    s.delete("kv", 3)
    s.incr("kv", "hits", 5)
    s.put("d", "a", [1, 2])
    s.put("n", 2, {"hits": 4, "score": 0.5})
    s.write("ev", "seen", "x", 1)
    with s.batch(offsets={"feed": 10}) as b:
        b.put("kv", "batched", True)
        b.delete("kv", 4)


def write_after(s):
    s.put("kv", 0, "changed")
    s.delete("kv", 1)
    s.incr("kv", "hits", 1)
    s.put("kv", "late", 1)
    s.clear("d")
    s.incr("n", 2, 3, column="hits")
    s.write("ev", "seen", "y", 2)
    with s.batch(offsets={"feed": 11}) as b:
        b.put("kv2", "new", 1)


def state(s) -> dict:
    out = {}
    for name in s.tables():
        t = s.table(name)
        if isinstance(t, NumericTable):
            out[name] = {c: t.column(c).tolist() for c in t.columns}
        elif isinstance(t, Events):
            out[name] = [list(e) for e in t.events]
        else:
            out[name] = dict(t.items())
    return out


class Child:
    """``body()`` run in a forked child once ``finish()`` says go; its
    result comes back pickled through a pipe. The child ends with
    ``os._exit`` whatever happens, so it never returns into pytest."""

    def __init__(self, body):
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                os.close(go_w)
                os.close(out_r)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(CHILD_ALARM_S)
                os.read(go_r, 1)
                data = pickle.dumps(body())
                view = memoryview(data)
                while view:
                    view = view[os.write(out_w, view):]
                status = 0
            except BaseException:  # noqa: BLE001 - shown in the test's output
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(go_r)
        os.close(out_w)
        self.pid, self._go, self._out = pid, go_w, out_r

    def finish(self):
        os.write(self._go, b"g")
        os.close(self._go)
        chunks = []
        while chunk := os.read(self._out, 1 << 16):
            chunks.append(chunk)
        os.close(self._out)
        _, status = os.waitpid(self.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, \
            f"the child failed (exit {os.waitstatus_to_exitcode(status)}; see its stderr)"
        return pickle.loads(b"".join(chunks))


def attempt(fn):
    """(None, result) or (the exception, None)."""
    try:
        return None, fn()
    except BaseException as e:  # noqa: BLE001 - returned to the parent
        return e, None


def assert_forked_error(err, store_dir, owner_pid, lsn):
    assert type(err) is ForkedStoreError, repr(err)
    assert isinstance(err, StoreClosedError) and isinstance(err, rh.RehydrateError)
    assert err.owner_pid == owner_pid and err.reason == "forked"
    assert err.path == store_dir and err.lsn == lsn
    assert f"process {owner_pid}" in str(err) and "fork" in str(err)


def reopened(store_dir):
    """The state of a strict open of ``store_dir``, its LSN, and verify's report."""
    with Store.open(store_dir, recovery="strict", tables=kinds()) as s:
        got = state(s), s.lsn, s.offsets
        assert s.recovery_report.problems == []
    report = verify(store_dir, recovery="strict")
    assert report.ok and report.problems == [], report.as_dict()
    return got


# ------------------------------------------------------------------ reads
@pytest.mark.parametrize("sync", SYNCS)
def test_the_child_reads_the_state_as_of_the_fork(store_dir, sync):
    with Store.open(store_dir, sync=sync, sync_interval_ms=IDLE_INTERVAL_MS,
                    tables=kinds()) as s:
        write_before(s)
        at_fork = state(s)
        lsn, offsets, names = s.lsn, s.offsets, s.tables()
        child = Child(lambda: {"state": state(s), "lsn": s.lsn,
                               "offsets": s.offsets, "tables": s.tables(),
                               "forked": s.forked, "closed": s.closed,
                               "ready": s.readiness()["ready"]})
        write_after(s)  # before the child reads: it must not see these
        assert state(s) != at_fork and s.lsn > lsn
        got = child.finish()
        assert not s.forked
    assert got["state"] == at_fork
    assert got["lsn"] == lsn
    assert got["offsets"] == offsets == {"feed": 10} and got["tables"] == names
    assert got["forked"] is True and got["closed"] is False and got["ready"] is True


# ----------------------------------------------------------------- writes
def _put_batch(s):
    with s.batch() as b:
        b.put("kv", 0, "x")


def _offsets_batch(s):
    with s.batch(offsets={"feed": 99}) as b:
        b.put("kv", 0, "x")


def _consume(s):
    b = s.consume("feed", 99)
    with b:
        b.put("kv", 0, "x")


WRITE_SIDE = {
    "put": lambda s: s.put("kv", 0, "x"),  # a table written before: put's fast path
    "put_new_table": lambda s: s.put("fresh", 0, "x"),
    "delete": lambda s: s.delete("kv", 0),
    "incr": lambda s: s.incr("kv", "hits", 1),
    "incr_column": lambda s: s.incr("n", 2, 1, column="hits"),
    "clear": lambda s: s.clear("kv"),
    "custom_op": lambda s: s.write("ev", "seen", "z", 3),
    "batch": _put_batch,
    "batch_with_offsets": _offsets_batch,
    "consume": _consume,
    "sync": lambda s: s.sync(),
    "checkpoint": lambda s: s.checkpoint(),
}


@pytest.mark.parametrize("op", sorted(WRITE_SIDE))
def test_every_write_side_call_in_the_child_raises_forked_store_error(store_dir, op):
    with Store.open(store_dir, sync="always", tables=kinds()) as s:
        write_before(s)
        at_fork, lsn = state(s), s.lsn
        before = C.tree_hashes(store_dir)

        def body():
            err, _ = attempt(lambda: WRITE_SIDE[op](s))
            again, _ = attempt(lambda: WRITE_SIDE[op](s))  # refused every time
            return err, again, state(s), s.lsn, os.getpid()
        err, again, child_state, child_lsn, child_pid = Child(body).finish()
        assert C.tree_hashes(store_dir) == before  # (sync="always": a write would be in the log)
        assert s.lsn == lsn
    assert child_pid != os.getpid()
    assert_forked_error(err, store_dir, os.getpid(), lsn)
    assert f"process {child_pid}" in str(err)
    assert type(again) is ForkedStoreError
    assert child_state == at_fork and child_lsn == lsn  # nothing applied, nothing taken
    assert reopened(store_dir)[:2] == (at_fork, lsn)


def test_a_grandchild_reads_and_is_refused_in_the_name_of_the_first_owner(store_dir):
    with Store.open(store_dir, sync="always") as s:
        s.put("kv", 1, 1)
        digest = s.digest()

        def body():
            inner = Child(lambda: (attempt(lambda: s.put("kv", 2, 2))[0], s.table("kv")[1],
                                   s.digest()))
            return inner.finish() + (s.digest(),)
        err, value, grandchild_digest, child_digest = Child(body).finish()
        s.put("kv", 2, 2)
        assert s.digest() != digest
    assert_forked_error(err, store_dir, os.getpid(), 1)
    assert value == 1 and grandchild_digest == child_digest == digest


# --------------------------------------------------------- close and exit
@pytest.mark.parametrize("how", ["os_exit", "close", "close_twice", "with_exit"])
@pytest.mark.parametrize("sync", SYNCS)
def test_the_child_closing_or_exiting_touches_nothing_of_the_parent(store_dir, sync, how):
    with Store.open(store_dir, sync=sync, sync_interval_ms=IDLE_INTERVAL_MS,
                    tables=kinds()) as s:
        write_before(s)
        lsn = s.lsn
        if sync != "always":
            assert s.durable_lsn < lsn  # records wait in the buffer at the fork
        before = C.tree_hashes(store_dir)

        def body():
            if how in ("close", "close_twice"):
                s.close()
            if how == "close_twice":
                s.close()
            if how == "with_exit":
                s.__exit__(None, None, None)
            err, _ = attempt(lambda: s.put("kv", 0, "x"))
            return s.closed, err
        closed, err = Child(body).finish()
        # Byte for byte: no flush of the buffered records, no HINTS, the
        # LOCK neither truncated nor unlocked.
        assert C.tree_hashes(store_dir) == before
        assert closed is (how != "os_exit") and not s.closed
        assert isinstance(err, ForkedStoreError)
        write_after(s)
        want = state(s), s.lsn, s.offsets
    assert reopened(store_dir) == want


@pytest.mark.parametrize("how", ["sys_exit", "with_block", "uncaught"])
@pytest.mark.parametrize("sync", SYNCS)
def test_a_child_leaving_through_the_interpreters_exit_touches_nothing(store_dir, sync, how,
                                                                       core_env):
    # The script's child exits as a program does (atexit handlers, the
    # store's own among them, and finalizers); its parent writes on after.
    out = subprocess.run([sys.executable, FORK_EXIT, store_dir, sync, how], env=core_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["child_exit"] == (1 if how == "uncaught" else 0)
    assert got["child_write"] == "ForkedStoreError"
    assert got["tree_unchanged"] is True
    with Store.open(store_dir, recovery="strict") as s:
        assert dict(s.table("t").items()) == {i: i for i in range(got["written"])}
        assert s.lsn == got["written"] == got["parent_lsn"]
    assert verify(store_dir, recovery="strict").ok


def test_a_collection_inside_the_fork_hooks_does_not_deadlock_the_fork(tmp_path, core_env):
    # Dropped stores finalized by a garbage collection that starts inside
    # the at-fork hooks untrack themselves there, on the forking thread.
    out = subprocess.run([sys.executable, FORK_GC, str(tmp_path)], env=core_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"  # the child read the parent's state
    with Store.open(str(tmp_path / "live"), recovery="strict") as s:
        assert dict(s.table("t").items()) == {1: 1, 2: 2}


@pytest.mark.parametrize("how", ["os_exit", "close"])
def test_the_lock_stays_with_the_parent_after_the_child_exits(store_dir, how):
    with Store.open(store_dir, sync="always") as s:
        s.put("kv", 1, 1)
        Child(lambda: s.close() if how == "close" else None).finish()
        with open(os.path.join(store_dir, "LOCK")) as f:
            assert f.read() == f"{os.getpid()}\n"
        with pytest.raises(LockedError) as ei:
            Store.open(store_dir)
        assert ei.value.holder_pid == os.getpid()
        s.put("kv", 2, 2)  # the parent goes on
    with Store.open(store_dir, recovery="strict") as s:  # and its close let go
        assert dict(s.table("kv").items()) == {1: 1, 2: 2}


# ------------------------------------------------------ background, HTTP
@pytest.mark.parametrize("sync", SYNCS)
def test_a_ready_background_open_forks_like_any_other(store_dir, sync):
    with Store.open(store_dir, sync="always", tables=kinds()) as s:
        write_before(s)
    with Store.open_background(store_dir, sync=sync, sync_interval_ms=IDLE_INTERVAL_MS,
                               tables=kinds()) as s:
        assert s.wait_ready(60)
        s.put("kv", "while_open", 1)
        at_fork, lsn = state(s), s.lsn
        before = C.tree_hashes(store_dir)

        def body():
            put, _ = attempt(lambda: s.put("kv", 0, "x"))
            synced, _ = attempt(s.sync)
            ready = s.wait_ready(1)
            got = state(s)
            s.close()
            return put, synced, ready, got, s.readiness()["tables"]
        put, synced, ready, got, tables = Child(body).finish()
        assert C.tree_hashes(store_dir) == before
        write_after(s)
        want = state(s), s.lsn, s.offsets
    assert_forked_error(put, store_dir, os.getpid(), lsn)
    assert_forked_error(synced, store_dir, os.getpid(), lsn)
    assert ready is True and got == at_fork and all(tables.values())
    assert reopened(store_dir) == want


def test_a_child_forked_while_a_background_open_runs_raises_instead_of_waiting(store_dir):
    with Store.open(store_dir, sync="always") as s:
        s.put("kv", 1, 1)
    entered, release = threading.Event(), threading.Event()

    def hook(store, progress):
        entered.set()
        release.wait(120)

    s = Store.open_background(store_dir, sync="always",
                              warmup=rh.Warmup(populate=[hook]))
    try:
        assert entered.wait(60)  # the open is in its populate phase, on its threads

        def body():
            waited, _ = attempt(lambda: s.wait_ready())
            read, _ = attempt(lambda: s.table("kv")[1])
            wrote, _ = attempt(lambda: s.put("kv", 2, 2))
            s.close()
            return waited, read, wrote, s.readiness()["phase"]
        waited, read, wrote, phase = Child(body).finish()
        release.set()
        assert s.wait_ready(60)
        s.put("kv", 2, 2)
    finally:
        release.set()
        s.close()
    for err in (waited, read, wrote):
        assert type(err) is ForkedStoreError and err.owner_pid == os.getpid(), repr(err)
    assert phase == "failed"
    with Store.open(store_dir, recovery="strict") as s:
        assert dict(s.table("kv").items()) == {1: 1, 2: 2}


def test_the_http_server_stays_the_parents(store_dir):
    with Store.open(store_dir, sync="always") as s:
        s.put("kv", 1, 1)
        server = s.serve_http()
        try:
            def body():
                server.close()  # (would wait forever for the parent's thread)
                s.close()
                return True
            assert Child(body).finish() is True
            url = f"http://127.0.0.1:{server.port}/readyz"
            with urllib.request.urlopen(url, timeout=30) as r:
                assert r.status == 200 and json.loads(r.read())["ready"] is True
        finally:
            server.close()


# --------------------------------------------------------- multiprocessing
def _worker(store, conn):
    err, _ = attempt(lambda: store.put("kv", "w", 1))
    conn.send((store.table("kv")[1], store.lsn, type(err).__name__, err.owner_pid))
    conn.close()


def test_a_multiprocessing_fork_worker_reads_and_is_refused_writes(store_dir):
    ctx = multiprocessing.get_context("fork")
    with Store.open(store_dir, sync="interval", sync_interval_ms=IDLE_INTERVAL_MS) as s:
        s.put("kv", 1, "one")
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(s, send))
        p.start()
        send.close()
        got = recv.recv()
        p.join(60)
        assert p.exitcode == 0
        s.put("kv", 2, "two")
    assert got == ("one", 1, "ForkedStoreError", os.getpid())
    with Store.open(store_dir, recovery="strict") as s:
        assert dict(s.table("kv").items()) == {1: "one", 2: "two"}
