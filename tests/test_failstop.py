"""Fail-stop: after a failed write or fsync the store refuses every write,
never reports anything after the failure as durable, closes quietly, and a
reopen gives an exact prefix holding every acknowledged write."""

from __future__ import annotations

import errno
import threading

import pytest

from rehydrate import Store, StorageIOError, StoreClosedError, StoreFailedError, _fileio

from helpers.model import Model, apply_to_store, canon_state, store_state, record_count


def _ops(n=200):
    out = []
    for i in range(n):
        if i % 7 == 3:
            out.append(("batch", [("put", "t", f"b{i}", i), ("incr", "n", i % 4, 1),
                                  ("delete", "t", f"k{i - 1}")]))
        elif i % 3 == 0:
            out.append(("incr", "n", i % 4, i))
        else:
            # about 700 bytes a frame: 4 KiB segments roll every few writes
            out.append(("put", "t", f"k{i}", {"i": i, "pad": "q" * 650}))
    return out


def _prefix_states(ops):
    """{lsn: canon state} at every op boundary of ``ops``."""
    m = Model()
    states = {0: canon_state(m.tables)}
    for op in ops:
        m.apply(op)
        states[m.lsn] = canon_state(m.tables)
    return states


class Flaky:
    """Calls through to ``real`` until call number ``fail_at``, which raises
    EIO (``partial``: after writing half of the data, like a short write)."""

    def __init__(self, real, fail_at, partial=False):
        self.real, self.fail_at, self.partial = real, fail_at, partial
        self.calls = 0

    def __call__(self, fd, *args):
        self.calls += 1
        if self.calls >= self.fail_at:
            if self.partial and self.calls == self.fail_at and args:
                data = bytes(args[0])
                self.real(fd, data[: len(data) // 2])
            raise OSError(errno.EIO, "simulated I/O error")
        return self.real(fd, *args)


def _all_writes_refused(s):
    for call in (lambda: s.put("t", "x", 1), lambda: s.delete("t", "x"),
                 lambda: s.incr("n", 0), lambda: s.clear("t"), s.sync):
        with pytest.raises(StoreFailedError):
            call()
    with pytest.raises(StoreFailedError):
        with s.batch() as b:
            b.put("t", "x", 1)


def _run_until_failure(s, ops):
    """Apply ops until one raises StoreFailedError; (acked LSN, error, failed op index)."""
    acked = 0
    for i, op in enumerate(ops):
        try:
            lsn = apply_to_store(s, op)
        except StoreFailedError as e:
            return acked, e, i
        assert lsn == acked + record_count(op)
        acked = lsn
        if s.sync_mode == "always":
            assert s.durable_lsn == lsn
    raise AssertionError("the injected failure never happened")


@pytest.mark.parametrize("target, fail_at, partial", [
    ("fsync", 1, False), ("fsync", 2, False), ("fsync", 5, False), ("fsync", 9, False),
    ("fsync", 16, False), ("fsync", 23, False),
    ("write_all", 1, False), ("write_all", 4, False), ("write_all", 11, False),
    ("write_all", 4, True), ("write_all", 17, True),
])
def test_an_io_error_makes_the_store_fail_stop(store_dir, monkeypatch, target, fail_at, partial):
    ops = _ops()
    states = _prefix_states(ops)
    s = Store.open(store_dir, sync="always", segment_bytes=4096)
    flaky = Flaky(getattr(_fileio, target), fail_at, partial)
    monkeypatch.setattr(_fileio, target, flaky)
    acked, err, failed_op = _run_until_failure(s, ops)
    assert isinstance(err, StoreClosedError) and err.path
    assert err.lsn == s.durable_lsn == acked, "nothing after the failure is durable"
    assert s.failed
    calls = flaky.calls
    _all_writes_refused(s)
    assert flaky.calls == calls, "a failed store must not retry I/O"
    assert s.durable_lsn == acked
    s.close()  # a failed store closes without raising again
    s.close()
    assert s.durable_lsn == acked
    assert flaky.calls == calls
    monkeypatch.undo()
    with Store.open(store_dir) as again:
        got = again.lsn
        assert got >= acked, "an acknowledged write was lost"
        upper = acked + record_count(ops[failed_op])
        assert got in (acked, upper), f"recovered LSN {got} is not a prefix ending in an op"
        assert canon_state(store_state(again)) == states[got]
        # and it is writable again, continuing the sequence
        assert again.put("t", "resumed", 1) == got + 1


def test_a_failed_sync_in_buffered_mode_fails_stop(store_dir, monkeypatch):
    ops = _ops(30)
    states = _prefix_states(ops)
    s = Store.open(store_dir, sync="none", segment_bytes=4096)
    m_lsn = 0
    for op in ops[:10]:
        m_lsn = apply_to_store(s, op)
    assert s.sync() == m_lsn == s.durable_lsn
    for op in ops[10:20]:
        last = apply_to_store(s, op)
    flaky = Flaky(_fileio.fsync, 1)
    monkeypatch.setattr(_fileio, "fsync", flaky)
    with pytest.raises(StoreFailedError):
        s.sync()
    assert s.durable_lsn == m_lsn
    _all_writes_refused(s)
    s.close()
    assert s.durable_lsn == m_lsn
    monkeypatch.undo()
    with Store.open(store_dir) as again:
        assert m_lsn <= again.lsn <= last
        assert again.lsn in states
        assert canon_state(store_state(again)) == states[again.lsn]


def test_a_failed_fsync_on_close_raises_once_and_leaves_a_prefix(store_dir, monkeypatch):
    ops = _ops(20)
    states = _prefix_states(ops)
    s = Store.open(store_dir, sync="none")
    for op in ops:
        last = apply_to_store(s, op)
    monkeypatch.setattr(_fileio, "fsync", Flaky(_fileio.fsync, 1))
    with pytest.raises(StoreFailedError):
        s.close()
    assert s.closed and s.durable_lsn == 0
    s.close()  # the second close does not raise
    with pytest.raises(StoreClosedError):
        s.put("t", 1, 1)
    monkeypatch.undo()
    with Store.open(store_dir) as again:  # the lock was released
        assert 0 <= again.lsn <= last and again.lsn in states
        assert canon_state(store_state(again)) == states[again.lsn]


def test_an_io_error_closing_the_log_file_still_releases_the_lock(store_dir, monkeypatch):
    # Found by tests/test_recovery_faults.py: the EIO left as a bare OSError,
    # and the store's lock stayed held, refusing every later open here.
    from rehydrate import StorageIOError

    s = Store.open(store_dir, sync="always")
    lsn = s.put("t", 1, 1)
    real = _fileio.close

    def failing(fd):
        real(fd)
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(_fileio, "close", failing)
    with pytest.raises(StorageIOError):
        s.close()
    monkeypatch.undo()
    with Store.open(store_dir) as again:
        assert again.lsn == lsn and again.table("t")[1] == 1


def test_concurrent_writers_see_the_failure_and_acks_stay_durable(store_dir, monkeypatch):
    s = Store.open(store_dir, sync="always")
    flaky = Flaky(_fileio.fsync, 40)
    monkeypatch.setattr(_fileio, "fsync", flaky)
    acked, failures = [], []
    lock = threading.Lock()

    def writer(t):
        for i in range(100):
            try:
                lsn = s.put("t", f"{t}:{i}", i)
            except StoreFailedError:
                with lock:
                    failures.append(t)
                return
            with lock:
                acked.append((lsn, f"{t}:{i}", i))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(failures) == [0, 1, 2, 3], "every writer must see the failure"
    durable = s.durable_lsn
    assert all(lsn <= durable for lsn, _, _ in acked), "an ack beyond durable_lsn"
    s.close()
    monkeypatch.undo()
    with Store.open(store_dir) as again:
        t = again.table("t")
        for _lsn, key, value in acked:
            assert t[key] == value
        assert again.lsn >= durable


def test_a_background_fsync_failure_fails_the_next_write(store_dir, monkeypatch):
    s = Store.open(store_dir, sync="interval", sync_interval_ms=5)
    s.put("t", 0, 0)
    assert s.sync() == 1
    flaky = Flaky(_fileio.fsync, 1)
    monkeypatch.setattr(_fileio, "fsync", flaky)
    s.put("t", 1, 1)
    done = threading.Event()
    for _ in range(20_000):  # wait on the condition, not on time
        if s.failed:
            break
        done.wait(0.001)
    assert s.failed, "the background flush never ran"
    assert s.durable_lsn == 1
    _all_writes_refused(s)
    s.close()
    monkeypatch.undo()
    with Store.open(store_dir) as again:
        assert again.lsn in (1, 2)
        assert again.table("t")[0] == 0


def test_a_failed_checkpoint_raises_a_typed_error_and_the_store_goes_on(store_dir, monkeypatch):
    # The snapshot is published only once its files are durable, and the log
    # has everything: a checkpoint's I/O error fails the checkpoint alone.
    s = Store.open(store_dir, sync="always")
    s.put("t", 1, 1)
    monkeypatch.setattr(_fileio, "fsync", Flaky(_fileio.fsync, 1))
    with pytest.raises(StorageIOError) as caught:
        s.checkpoint()
    assert caught.value.errno == errno.EIO
    monkeypatch.undo()
    assert not s.failed and s.put("t", 2, 2) == 2
    assert s.checkpoint()["lsn"] == 2
    s.close()
    with Store.open(store_dir) as again:
        assert again.table("t").to_dict() == {1: 1, 2: 2}
