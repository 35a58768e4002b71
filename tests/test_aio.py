"""rehydrate.aio (docs/asyncio.md): async open, writes that wait for
admission and durability off the event loop, batches, iteration, and
cancellation: a write cancelled while it waits for admission is never
applied; one already handed to the log is durable before the caller sees
CancelledError. Driven with asyncio.run inside plain tests, on both cores."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import rehydrate as rh
import rehydrate.aio as rha
from rehydrate.dump import dump_records
from rehydrate.testing import Model, check_recovery

HELPERS = Path(__file__).resolve().parent / "helpers"


class Gate:
    """A warmup listener that holds a background open at the start of its
    replay until ``release()``: writes sent meanwhile wait for admission."""

    def __init__(self):
        self.reached = threading.Event()
        self.opened = threading.Event()

    def on_phase_start(self, phase, info):
        if phase == "replay":
            self.reached.set()
            assert self.opened.wait(60)

    def release(self):
        self.opened.set()


async def until(predicate, timeout=30.0):
    """Poll ``predicate`` on the loop (yielding to it) until true or timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def fill(path, n=2000):
    with rh.Store.open(path) as s:
        with s.batch() as b:
            for i in range(n):
                b.put("base", i, i)
        return s.lsn


def test_import_rehydrate_loads_neither_aio_nor_asyncio(core_env):
    code = ("import sys, rehydrate\n"
            "print(sorted(m for m in ('asyncio', 'rehydrate.aio') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_writes_batches_reads_and_iteration(store_dir):
    async def main():
        async with await rha.open(store_dir, sync="always") as s:
            assert await s.put("t", "a", {"x": 1}) == 1
            assert await s.incr("t", "n", 2) == 2
            assert await s.delete("t", "a") == 3
            assert s.durable_lsn == 3  # sync="always": durable when awaited
            async with s.batch() as b:
                b.put("t", "x", [1, 2])
                b.incr("t", "n", 3)
                b.put("u", 7, "seven")
            assert b.lsn == 6 and s.durable_lsn == 6
            with pytest.raises(ValueError):
                async with s.batch() as b2:
                    b2.put("t", "gone", 1)
                    raise ValueError("discarded")
            assert s.get("t", "gone") is None and s.lsn == 6
            assert await s.clear("u") == 7
            c = await s.consume("src", 5)
            async with c:
                c.put("t", "o", 5)
            assert await s.consume("src", 5) is None
            assert s.offsets == {"src": 5}
            assert await s.sync() == 8
            assert s.get("t", "n") == 5 and s.get("nope", "k", "dflt") == "dflt"
            assert await s.digest() == s.store.digest()
            assert sorted(await s.table_keys("t")) == ["n", "o", "x"]
            got = [kv async for kv in s.items("t", chunk_keys=2)]
            assert sorted(got) == [("n", 5), ("o", 5), ("x", [1, 2])]
            assert (await s.checkpoint())["lsn"] == 8
            assert s.readiness()["ready"] is True and s.tables() == ["t", "u"]
        assert s.closed
        with pytest.raises(rh.StoreClosedError):
            await s.put("t", "late", 1)
        with pytest.raises(rh.StoreClosedError):
            await s.sync()
        await s.close()  # twice is fine

        plain = rh.Store.open(store_dir, recovery="strict")
        wrapped = rha.AsyncStore(plain)
        assert wrapped.store is plain and wrapped.lsn == 8
        assert wrapped.table("t").to_dict() == {"n": 5, "x": [1, 2], "o": 5}
        assert await wrapped.put("t", "z", 0) == 9
        await wrapped.close()
        assert plain.closed

    asyncio.run(main())


def test_items_skips_keys_deleted_after_the_listing(store_dir):
    async def main():
        async with await rha.open(store_dir) as s:
            for i in range(10):
                await s.put("t", i, i)
            seen = []
            async for key, value in s.items("t", chunk_keys=3):
                seen.append((key, value))
                if key == 0:
                    await s.delete("t", 9)  # after the listing: skipped
                    await s.put("t", 99, 99)  # after the listing: not listed
            assert sorted(seen) == [(i, i) for i in range(9)]
            with pytest.raises(KeyError):
                async for _ in s.items("absent"):
                    pass

    asyncio.run(main())


def test_a_held_write_waits_off_the_loop_and_lands_after_the_replay(store_dir):
    base = fill(store_dir)

    async def main():
        gate = Gate()
        s = await rha.open_background(store_dir, warmup=rh.Warmup(listeners=[gate]))
        try:
            await until(gate.reached.is_set)
            write = asyncio.create_task(s.incr("base", 0, 10))  # needs base's state
            ticks = 0
            while ticks < 50:  # the loop runs on while the write waits
                await asyncio.sleep(0)
                ticks += 1
            assert not write.done() and s.readiness()["ready"] is False
            gate.release()
            assert await write == base + 1
            assert await s.wait_ready(30)
            assert s.get("base", 0) == 10
        finally:
            gate.release()
            await s.close()

    asyncio.run(main())


def test_writes_cancelled_while_held_are_never_applied(store_dir):
    base = fill(store_dir)

    async def main():
        gate = Gate()
        s = await rha.open_background(store_dir, warmup=rh.Warmup(listeners=[gate]))
        try:
            await until(gate.reached.is_set)

            async def batch(i):
                async with s.batch() as b:
                    b.put("w", f"b{i}", i)

            tasks = [asyncio.create_task(c) for i in range(20)
                     for c in (s.put("w", f"p{i}", i), s.incr("base", 1, 1), batch(i))]
            # Every write has left the loop for its writer thread.
            await until(lambda: sum(t.name.startswith("rehydrate-aio-write")
                                    for t in threading.enumerate()) >= 16)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with pytest.raises(asyncio.CancelledError):
                    await t
            gate.release()
            assert await s.wait_ready(30)
            assert s.lsn == base  # none applied, no LSN taken
            assert "w" not in s.tables() and s.get("base", 1) == 1
            assert await s.put("w", "after", 1) == base + 1  # no gap
        finally:
            gate.release()
            await s.close()

    asyncio.run(main())
    with rh.Store.open(store_dir, recovery="strict") as s:
        assert s.lsn == base + 1 and s.table("w").to_dict() == {"after": 1}


def test_a_write_cancelled_after_it_was_logged_is_durable_first(store_dir):
    async def main():
        async with await rha.open(store_dir, sync="always") as s:
            for i in range(20):
                task = asyncio.create_task(s.put("t", i, i))
                await asyncio.sleep(0)  # the write applies, then waits for its fsync
                assert s.lsn == i + 1 and not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # Told only once the write it handed to the log is durable.
                assert s.durable_lsn == i + 1 and s.get("t", i) == i

    asyncio.run(main())
    with rh.Store.open(store_dir, recovery="strict") as s:
        assert s.table("t").to_dict() == {i: i for i in range(20)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_cancellations_and_a_kill_keep_every_write_whole_or_absent(
        tmp_path, core_env, seed):
    """Writes cancelled at random points (held, or already logged), then a
    SIGKILL with writes in flight: every acknowledged write is there with
    the LSN it got, every cancelled one is there or absent as the writer saw
    it once the cancellation returned, nothing else is there, and the state
    is the model's replay of the log (the shared oracle)."""
    state, out = tmp_path / "state", tmp_path / "outcomes.jsonl"
    fill_n = 3000
    base_model = Model()
    with rh.Store.open(state) as s:
        with s.batch() as b:
            for i in range(fill_n):
                b.put("base", f"f{i}", i)
                base_model.apply(("put", "base", f"f{i}", i))
    run = subprocess.run([sys.executable, str(HELPERS / "aio_cancel_writer.py"), str(state),
                          str(out), str(seed)], env=core_env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == -9, run.stderr
    outcomes = [json.loads(line) for line in out.read_text().splitlines()]
    assert outcomes[-1] == {"killed": True}
    settled = {o["i"]: o for o in outcomes[:-1]}

    logged = {}  # (table, key) -> (lsn, op, value)
    for r in dump_records(str(state), from_lsn=fill_n + 1):
        logged[(r["table"], r["key"])] = (r["lsn"], r["op"], r["value"])
    lsns = sorted(lsn for lsn, _, _ in logged.values())
    assert lsns == list(range(fill_n + 1, fill_n + 1 + len(lsns)))  # no gap, none twice

    acked = cancelled_absent = cancelled_present = 0
    attempted = set()
    for i, o in settled.items():
        keys = [tuple(k) for k in o["keys"]]
        attempted.update(keys)
        if "lsn" in o:
            acked += 1
            assert all(k in logged for k in keys), o
            assert max(logged[k][0] for k in keys) == o["lsn"], o
        elif o["present"]:
            cancelled_present += 1
            assert all(k in logged for k in keys), o
        else:
            cancelled_absent += 1
            assert not any(k in logged for k in keys), o
    # Writes in flight at the kill are attempted too; nothing else is logged.
    for i in range(240):
        if i not in settled:
            kind = ("put", "incr", "batch")[i % 3]
            attempted.update({"put": [("w", f"k{i}")], "incr": [("base", f"n{i}")],
                              "batch": [("w", f"b{i}a"), ("w", f"b{i}b")]}[kind])
    assert set(logged) <= attempted
    assert acked and cancelled_absent  # both branches seen (held writes are cancelled)

    # The oracle: the recovered state is the model's replay of the log, and
    # every acknowledged LSN is in.
    ops = [(op, table, key, value) for (table, key), (lsn, op, value)
           in sorted(logged.items(), key=lambda kv: kv[1][0])]
    acked_lsn = max([o["lsn"] for o in settled.values() if "lsn" in o], default=0)
    result = check_recovery(lambda: rh.Store.open(state), ops, acked_lsn,
                            base=base_model)
    assert result["outcome"] == "recovered"


def test_the_async_surface_is_annotated():
    from test_public_types import _missing, _public_callables

    names = [n for n in rha.__all__ if callable(getattr(rha, n))]
    assert {"open", "open_background", "AsyncStore", "AsyncBatch"} <= set(names)
    checked = [c for n in names for c in _public_callables(getattr(rha, n))]
    assert len(checked) > 30
    assert {qual: _missing(fn) for qual, fn in checked if _missing(fn)} == {}


def test_a_write_cancelled_during_a_handoffs_hold_is_never_applied(store_dir):
    """A handoff's hold (roles.py) is a wait for admission too: a write
    cancelled in it is aborted; once the handoff gives up, writes go on."""
    async def main():
        async with await rha.open(store_dir, sync="always") as s:
            assert await s.put("t", 0, 0) == 1
            source = s.store.replication_source()
            request = "ab" * 8
            source.handoff({"phase": "prepare", "request": request, "hold_s": 60})
            held = asyncio.create_task(s.put("t", 1, 1))
            kept = asyncio.create_task(s.put("t", 2, 2))
            await until(lambda: sum(t.name.startswith("rehydrate-aio-write")
                                    for t in threading.enumerate()) >= 2)
            held.cancel()
            with pytest.raises(asyncio.CancelledError):
                await held
            assert not kept.done() and s.lsn == 1
            assert source.handoff({"phase": "abort", "request": request}) == {"aborted": True}
            assert await kept == 2
            assert s.get("t", 1) is None and s.lsn == 2

    asyncio.run(main())
    with rh.Store.open(store_dir, recovery="strict") as s:
        assert s.table("t").to_dict() == {0: 0, 2: 2}


@pytest.mark.parametrize("mode", ["none", "interval"])
def test_full_buffers_are_written_by_the_durability_thread(store_dir, mode):
    """Past 256 KiB buffered, a write hands the buffer's write to the
    durability thread (not the loop); every write is there after a kill
    that keeps what reached the OS (abandon: nothing more written)."""
    value = b"x" * 4096

    async def main():
        s = await rha.open(store_dir, sync=mode, sync_interval_ms=60_000)
        for i in range(200):  # ~800 KiB: three full buffers
            assert await s.put("t", i, value) == i + 1
        # (Each write awaited the buffer write it handed over, if any.)
        rh.store.abandon(s.store)
        return s

    asyncio.run(main())
    with rh.Store.open(store_dir) as s:
        # Whole frames of 256 KiB reached the log; the tail still buffered
        # at the "kill" is lost, as with the sync API.
        assert 150 <= s.lsn < 200
        assert s.table("t").to_dict() == {i: value for i in range(s.lsn)}


# ------------------------------------------------------- online migrations
def _online_migrations(invariant=None):
    mig = rh.Migrations()

    @mig.migration("reshape", table="base", to_version=2, per_record=True, online=True)
    def reshape(key, value):
        return {"v": value}

    if invariant is not None:
        mig.invariant("base")(invariant)
    return mig


class StateEvents:
    """An ``on_migration_state`` listener the loop can await: each state
    the run enters sets its event (set from the run's threads)."""

    def __init__(self):
        self.seen = {}
        self._lock = threading.Lock()

    def _event(self, state):
        with self._lock:
            return self.seen.setdefault(state, threading.Event())

    def on_migration_state(self, store, status):
        self._event(status["state"]).set()

    async def wait(self, state, timeout=30.0):
        event = self._event(state)
        assert await asyncio.to_thread(event.wait, timeout), f"no {state!r} state"


def test_an_online_migration_driven_from_asyncio_while_writes_go_on(store_dir):
    fill(store_dir, 2000)
    events = StateEvents()

    async def main():
        astore = await rha.open(store_dir, migrations=_online_migrations(),
                                warmup=rh.Warmup(listeners=[events]))
        async with astore:
            stop = asyncio.Event()
            written = {}

            async def writer():
                i = 0
                while not stop.is_set():
                    key = 5000 + i % 300
                    await astore.put("base", key, i)
                    written[key] = i
                    i += 1
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # (others get the loop)
                return i

            task = asyncio.create_task(writer())
            status = await astore.start_migration("reshape", slice_ms=2, max_duty=0.9)
            assert status["state"] in ("building", "caught_up") and status["run"] == 1
            await events.wait("caught_up")
            assert astore.migration_status("reshape")["state"] == "caught_up"
            assert (await astore.route("reshape", 0.5))["fraction"] == 0.5
            assert (await astore.route("reshape", 1.0))["fraction"] == 1.0
            entry = await astore.complete_migration("reshape")
            stop.set()
            n = await task
            assert n > 0
            assert entry["id"] == "reshape" and entry["to_version"] == 2
            assert astore.migration_status("reshape")["state"] == "completed"
            assert [s["state"] for s in astore.migrations_status()] == ["completed"]
            # Every write, before, during and after the run, is in the new shape
            # (or, landed after the cutover, as written).
            table = astore.table("base")
            for i in range(2000):
                assert table[i] == {"v": i}
            for key, value in written.items():
                assert table[key] in ({"v": value}, value)
            return await astore.digest()

    digest = asyncio.run(main())
    with rh.Store.open(store_dir, migrations=_online_migrations()) as s:
        assert s.digest() == digest and s.ledger[0]["id"] == "reshape"


@pytest.mark.parametrize("commits", [True, False], ids=["commits", "refused"])
def test_a_cancelled_complete_migration_ends_whole_before_cancelled_error(store_dir, commits):
    """The cutover is held inside an invariant (its check of the new state)
    while the awaiting task is cancelled: CancelledError comes only once
    the cutover ended, committed (the invariant passes) or not (it fails),
    and the table is then wholly at the new version or wholly at the old."""
    fill(store_dir, 500)
    inside, release = threading.Event(), threading.Event()
    calls = []

    def invariant(state):
        calls.append(len(calls))
        if len(calls) == 2:  # the new state's check: the cutover is under way
            inside.set()
            assert release.wait(30)
            return commits
        return True

    events = StateEvents()

    async def main():
        astore = await rha.open(store_dir, migrations=_online_migrations(invariant),
                                warmup=rh.Warmup(listeners=[events]))
        async with astore:
            await astore.start_migration("reshape", slice_ms=5, max_duty=0.9)
            await events.wait("caught_up")
            await astore.route("reshape", 1.0)
            task = asyncio.create_task(astore.complete_migration("reshape"))
            assert await asyncio.to_thread(inside.wait, 30)
            task.cancel()
            # The task stays awaiting the cutover, which holds on.
            await asyncio.sleep(0)
            assert not task.done()
            # A write sent meanwhile waits for the cutover off the loop.
            write = asyncio.create_task(astore.put("base", "late", 1))
            await asyncio.sleep(0)
            assert not write.done()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            await write
            status = astore.migration_status("reshape")
            table = astore.table("base")
            if commits:
                assert status["state"] == "completed"
                assert [e["id"] for e in astore.ledger] == ["reshape"]
                assert all(table[i] == {"v": i} for i in range(500))
            else:
                assert status["state"] == "caught_up" and astore.ledger == []
                # The run goes on: the routed view serves the shadow's values.
                assert all(astore.store.table("base")[i] == {"v": i} for i in range(500))
                aborted = await astore.abort_migration("reshape")
                assert aborted["state"] == "reverted"
                table = astore.table("base")
                assert all(table[i] == i for i in range(500))
            assert table["late"] in (1, {"v": 1})
            return [e["id"] for e in astore.ledger]

    ledger = asyncio.run(main())
    with rh.Store.open(store_dir) as s:
        assert [e["id"] for e in s.ledger] == ledger
        assert s.table("base")[3] == ({"v": 3} if commits else 3)
