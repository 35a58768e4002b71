"""The background flusher: ``interval`` writes and fsyncs on its own,
``none`` writes without fsync. Synchronized on the flusher's own calls
(an Event set after each flush), never on sleeps."""

import os
import threading

import pytest

from rehydrate import Store, _fileio
from rehydrate.journal import Journal


@pytest.fixture
def flushes(monkeypatch):
    """An Event set after every completed flush of any store."""
    done = threading.Event()
    orig = Journal.flush_locked

    def spy(self, fsync):
        orig(self, fsync)
        done.set()

    monkeypatch.setattr(Journal, "flush_locked", spy)
    return done


def _wait_until(event, predicate, rounds=50):
    for _ in range(rounds):
        if predicate():
            return True
        event.wait(timeout=1)
        event.clear()
    return predicate()


def test_interval_mode_makes_writes_durable_without_sync(store_dir, flushes, monkeypatch):
    fsyncs = []
    real = _fileio.fsync
    monkeypatch.setattr(_fileio, "fsync", lambda fd: (fsyncs.append(fd), real(fd)))
    s = Store.open(store_dir, sync="interval", sync_interval_ms=5)
    try:
        before = len(fsyncs)
        lsn = s.put("t", 1, "x")
        assert s.durable_lsn < lsn or len(fsyncs) > before
        assert _wait_until(flushes, lambda: s.durable_lsn >= lsn)
        assert len(fsyncs) > before  # it got there by an fsync, not by a close
    finally:
        s.close()


def test_none_mode_writes_in_the_background_but_never_claims_durability(
        store_dir, flushes, monkeypatch):
    fsyncs = []
    real = _fileio.fsync
    s = Store.open(store_dir, sync="none", sync_interval_ms=5)
    monkeypatch.setattr(_fileio, "fsync", lambda fd: (fsyncs.append(fd), real(fd)))
    try:
        seg = os.path.join(store_dir, "wal", sorted(os.listdir(os.path.join(store_dir, "wal")))[-1])
        size = os.path.getsize(seg)
        lsn = s.put("t", 1, "x" * 100)
        assert _wait_until(flushes, lambda: os.path.getsize(seg) > size)
        assert s.durable_lsn < lsn and fsyncs == []
        assert s.sync() == lsn and s.durable_lsn == lsn and fsyncs
    finally:
        s.close()


@pytest.mark.parametrize("sync", ["interval", "none"])
def test_a_store_left_open_at_exit_is_closed_and_durable(store_dir, core_env, sync):
    import subprocess
    import sys

    code = (
        "import rehydrate as rh\n"
        f"s = rh.Store.open({store_dir!r}, sync={sync!r}, sync_interval_ms=60000)\n"
        "for i in range(1000):\n"
        "    s.put('t', i, i)\n"
        "print(s.lsn, s.durable_lsn)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True,
                         text=True, check=True)
    lsn, durable = map(int, out.stdout.split())
    assert lsn == 1000 and durable < lsn  # nothing was synced before exit
    with Store.open(store_dir) as s:
        assert s.lsn == 1000 and len(s.table("t")) == 1000
