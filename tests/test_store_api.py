"""The Store API contract: LSNs, batches, durability per sync mode, tables,
closing, locking, refusing foreign directories and bad configuration,
concurrent writers, the live read-only table mapping, keys and values."""

from __future__ import annotations

import collections.abc
import json
import os
import subprocess
import sys
import threading

import pytest

import rehydrate
from rehydrate import (
    ConfigError,
    InvalidOperationError,
    LockedError,
    NotAStoreError,
    Store,
    StoreClosedError,
    UnsupportedKeyError,
    ValueEncodingError,
    _fileio,
)

from helpers.corrupt import all_frames, tree_hashes
from helpers.model import INT64_MAX, INT64_MIN, Model, canon, canon_state, store_state


def _reopen_state(path):
    with Store.open(path, recovery="strict") as s:
        return s.lsn, canon_state(store_state(s))


# ---------------------------------------------------------------- LSNs
def test_lsns_increase_by_one_per_record_across_ops_and_batches(store_dir):
    with Store.open(store_dir, sync="none") as s:
        assert s.lsn == 0
        got = [s.put("t", "a", 1), s.incr("t", "n", 2), s.delete("t", "a"), s.clear("u")]
        assert got == [1, 2, 3, 4]
        with s.batch() as b:
            b.put("t", "x", 1)
            b.put("t", "y", 2)
            b.incr("t", "n")
        assert b.lsn == 7 == s.lsn
        assert s.put("t", "z", 0) == 8
    with Store.open(store_dir) as s:
        assert s.lsn == 8
        assert s.put("t", "after", 1) == 9


def test_batch_lsn_is_its_last_record_and_none_when_empty(store_dir):
    with Store.open(store_dir, sync="none") as s:
        s.put("t", "k", 0)
        with s.batch() as empty:
            pass
        assert empty.lsn is None and s.lsn == 1
        with s.batch() as b:
            for i in range(5):
                b.put("t", i, i)
            assert b.lsn is None  # not committed yet
            assert s.lsn == 1 and 0 not in s.table("t")  # nothing applied before exit
        assert b.lsn == 6
        assert s.table("t").to_dict() == {"k": 0, 0: 0, 1: 1, 2: 2, 3: 3, 4: 4}


def test_a_batch_is_discarded_when_its_block_raises(store_dir):
    with Store.open(store_dir, sync="none") as s:
        s.put("t", "k", 0)
        with pytest.raises(KeyError):
            with s.batch() as b:
                b.put("t", "k", 1)
                b.put("new_table", "k", 1)
                raise KeyError("user error")
        assert b.lsn is None and s.lsn == 1
        assert s.tables() == ["t"] and s.table("t")["k"] == 0
    assert _reopen_state(store_dir) == (1, {"t": {canon("k"): canon(0)}})


def test_a_batch_whose_incr_fails_applies_nothing_and_logs_nothing(store_dir):
    with Store.open(store_dir, sync="always") as s:
        s.put("t", "text", "not a number")
        s.put("t", "keep", 1)
        with pytest.raises(InvalidOperationError):
            with s.batch() as b:
                b.put("t", "keep", 2)
                b.clear("t")
                b.put("t", "text", "still not a number")
                b.put("fresh", "x", 1)
                b.incr("t", "text", 1)
        assert b.lsn is None and s.lsn == 2
        assert s.tables() == ["t"]
        assert s.table("t").to_dict() == {"text": "not a number", "keep": 1}
        assert s.put("t", "next", 0) == 3
    lsn, state = _reopen_state(store_dir)
    assert lsn == 3 and list(state) == ["t"]


def test_a_batch_can_be_used_only_once(store_dir):
    with Store.open(store_dir) as s:
        b = s.batch()
        with b:
            b.put("t", 1, 1)
        with pytest.raises(StoreClosedError):
            with b:
                pass


# ----------------------------------------------------------- durability
def test_sync_always_fsyncs_each_write_before_it_returns(store_dir, monkeypatch):
    events = []
    real_write, real_fsync = _fileio.write_all, _fileio.fsync
    monkeypatch.setattr(_fileio, "write_all",
                        lambda fd, data: (events.append("write"), real_write(fd, data))[1])
    monkeypatch.setattr(_fileio, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    with Store.open(store_dir, sync="always") as s:
        for i in range(1, 6):
            events.clear()
            assert s.put("t", i, i) == i
            assert events and events[-1] == "fsync" and "write" in events
            assert s.durable_lsn == s.lsn == i
        assert s.sync() == s.lsn == 5


def test_sync_none_makes_writes_durable_only_on_sync_and_close(store_dir, monkeypatch):
    fsyncs = []
    real_fsync = _fileio.fsync
    monkeypatch.setattr(_fileio, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    s = Store.open(store_dir, sync="none")
    fsyncs.clear()
    for i in range(10):
        s.put("t", i, i)
    assert s.durable_lsn == 0 and s.lsn == 10
    assert s.sync() == 10 == s.durable_lsn
    assert fsyncs, "sync() must fsync"
    s.put("t", "more", 1)
    assert s.durable_lsn == 10
    s.close()
    assert s.durable_lsn == 11
    assert _reopen_state(store_dir)[0] == 11


def test_sync_interval_sync_returns_the_lsn_and_close_is_durable(store_dir):
    s = Store.open(store_dir, sync="interval", sync_interval_ms=10_000)
    for i in range(5):
        s.put("t", i, i)
    assert s.durable_lsn <= s.lsn == 5
    assert s.sync() == 5 == s.durable_lsn
    s.put("t", 5, 5)
    s.close()
    assert s.durable_lsn == 6
    assert _reopen_state(store_dir)[0] == 6


def test_a_reopened_store_is_durable_up_to_its_lsn(store_dir):
    with Store.open(store_dir, sync="none") as s:
        for i in range(3):
            s.put("t", i, i)
    with Store.open(store_dir, sync="none") as s:
        assert s.durable_lsn == s.lsn == 3


# ---------------------------------------------------------------- tables
@pytest.mark.parametrize("first_write", [
    lambda s: s.put("t", "k", 1),
    lambda s: s.delete("t", "k"),
    lambda s: s.incr("t", "k"),
    lambda s: s.clear("t"),
], ids=["put", "delete", "incr", "clear"])
def test_a_table_springs_into_being_at_its_first_write(store_dir, first_write):
    with Store.open(store_dir) as s:
        with pytest.raises(KeyError):
            s.table("t")
        assert s.tables() == []
        first_write(s)
        assert s.tables() == ["t"]
        assert isinstance(s.table("t"), collections.abc.Mapping)
    with Store.open(store_dir) as s:
        assert s.tables() == ["t"]


@pytest.mark.parametrize("failing_first_write, error", [
    (lambda s: s.put("t", True, 1), UnsupportedKeyError),
    (lambda s: s.put("t", "k", object()), ValueEncodingError),
    (lambda s: s.incr("t", "k", True), InvalidOperationError),
    (lambda s: s.incr("t", "k", "1"), InvalidOperationError),
    (lambda s: s.delete("t", 1.5), UnsupportedKeyError),
], ids=["bad-key", "bad-value", "bool-delta", "str-delta", "float-key"])
def test_a_failed_first_write_does_not_create_a_table(store_dir, failing_first_write, error):
    with Store.open(store_dir, sync="always") as s:
        s.put("other", 1, 1)
        with pytest.raises(error):
            failing_first_write(s)
        assert s.tables() == ["other"] and s.lsn == 1
        with pytest.raises(KeyError):
            s.table("t")
        # The next table created still gets a working id and name.
        s.put("later", 1, 2)
        assert s.tables() == ["other", "later"]
    with Store.open(store_dir, recovery="strict") as s:
        assert s.tables() == ["other", "later"]
        assert s.table("later")[1] == 2


@pytest.mark.parametrize("name", ["", "x" * 256, b"t", 7, None])
def test_a_bad_table_name_is_a_config_error_before_anything_is_written(store_dir, name):
    with Store.open(store_dir) as s:
        with pytest.raises(ConfigError):
            s.put(name, "k", 1)
        assert s.lsn == 0 and s.tables() == []
    assert _reopen_state(store_dir) == (0, {})


def test_table_names_keep_creation_order(store_dir):
    names = ["zeta", "alpha", "ümlaut", "m"]
    with Store.open(store_dir) as s:
        for n in names:
            s.incr(n, 0)
        assert s.tables() == names
    with Store.open(store_dir) as s:
        assert s.tables() == names


# --------------------------------------------------------------- closing
def test_writes_after_close_raise_store_closed(store_dir):
    s = Store.open(store_dir)
    s.put("t", 1, 1)
    s.close()
    s.close()  # closing twice is fine
    assert s.closed
    for call in (lambda: s.put("t", 1, 2), lambda: s.delete("t", 1), lambda: s.incr("t", 2),
                 lambda: s.clear("t"), s.sync):
        with pytest.raises(StoreClosedError):
            call()
    with pytest.raises(StoreClosedError):
        with s.batch() as b:
            b.put("t", 3, 3)
    assert _reopen_state(store_dir) == (1, {"t": {canon(1): canon(1)}})


def test_the_context_manager_closes_the_store(store_dir):
    with Store.open(store_dir) as s:
        s.put("t", 1, 1)
    assert s.closed
    with pytest.raises(StoreClosedError):
        s.put("t", 2, 2)


# --------------------------------------------------------------- locking
def test_a_second_open_in_the_same_process_is_locked_and_names_the_pid(store_dir):
    with Store.open(store_dir) as s:
        s.put("t", 1, 1)
        with pytest.raises(LockedError) as ei:
            Store.open(store_dir)
        assert ei.value.holder_pid == os.getpid()
        assert str(os.getpid()) in str(ei.value)
        s.put("t", 2, 2)  # the holder is unaffected
    with Store.open(store_dir) as s:  # released on close
        assert s.lsn == 2


_CHILD_OPEN = """
import json, sys
from rehydrate import Store, LockedError
try:
    s = Store.open(sys.argv[1])
except LockedError as e:
    print(json.dumps({"locked": True, "holder_pid": e.holder_pid, "message": str(e)}))
else:
    print(json.dumps({"locked": False, "lsn": s.lsn}))
    s.close()
"""

_CHILD_HOLD = """
import sys
from rehydrate import Store
s = Store.open(sys.argv[1])
s.put("t", "child", 1)
print("ready", flush=True)
sys.stdin.read()
s.close()
"""


def test_an_open_from_another_process_is_locked_and_names_the_holder(store_dir, core_env):
    with Store.open(store_dir):
        out = subprocess.run([sys.executable, "-c", _CHILD_OPEN, store_dir], env=core_env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["locked"] and info["holder_pid"] == os.getpid()
        assert str(os.getpid()) in info["message"]
    out = subprocess.run([sys.executable, "-c", _CHILD_OPEN, store_dir], env=core_env,
                         capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == {"locked": False, "lsn": 0}


def test_a_store_held_by_another_process_is_locked_here(store_dir, core_env):
    child = subprocess.Popen([sys.executable, "-c", _CHILD_HOLD, store_dir], env=core_env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(LockedError) as ei:
            Store.open(store_dir)
        assert ei.value.holder_pid == child.pid
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    with Store.open(store_dir) as s:
        assert s.table("t")["child"] == 1


# ------------------------------------------------- directories and config
def test_a_non_empty_foreign_directory_is_not_a_store_and_is_left_alone(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    before = tree_hashes(d)
    with pytest.raises(NotAStoreError):
        Store.open(d)
    with pytest.raises(NotAStoreError):
        Store.open(d, create=False)
    assert tree_hashes(d) == before and sorted(os.listdir(d)) == ["notes.txt"]


def test_create_false_on_a_missing_directory_is_not_a_store(tmp_path):
    d = tmp_path / "missing"
    with pytest.raises(NotAStoreError):
        Store.open(d, create=False)
    assert not d.exists()


def test_create_false_on_an_empty_directory_is_not_a_store(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(NotAStoreError):
        Store.open(d, create=False)
    assert os.listdir(d) == []


def test_a_path_that_is_a_file_is_not_a_store(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(NotAStoreError):
        Store.open(f)
    assert f.read_bytes() == b"x"


def test_an_empty_directory_becomes_a_store(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with Store.open(d) as s:
        s.put("t", 1, 1)
    with Store.open(d, create=False) as s:
        assert s.lsn == 1


@pytest.mark.parametrize("kwargs", [
    {"sync": "sometimes"}, {"sync": None}, {"recovery": "lenient"}, {"recovery": None},
    {"segment_bytes": 100}, {"segment_bytes": 4095}, {"segment_bytes": "65536"},
    {"segment_bytes": 65536.0}, {"sync_interval_ms": 0}, {"sync_interval_ms": -5},
    {"sync_interval_ms": "50"},
], ids=repr)
def test_bad_configuration_is_a_config_error_raised_before_anything_is_created(tmp_path, kwargs):
    d = tmp_path / "state"
    with pytest.raises(ConfigError):
        Store.open(d, **kwargs)
    assert not d.exists()
    # ... and on an existing store, nothing is touched either.
    with Store.open(d) as s:
        s.put("t", 1, 1)
    before = tree_hashes(d)
    with pytest.raises(ConfigError):
        Store.open(d, **kwargs)
    assert tree_hashes(d) == before


def test_every_documented_mode_is_accepted(tmp_path):
    assert set(rehydrate.SYNC_MODES) == {"always", "interval", "none"}
    assert set(rehydrate.RECOVERY_MODES) == {"strict", "tolerate-tail", "point-in-time",
                                             "skip-corrupted"}
    for i, sync in enumerate(rehydrate.SYNC_MODES):
        for j, recovery in enumerate(rehydrate.RECOVERY_MODES):
            with Store.open(tmp_path / f"s{i}{j}", sync=sync, recovery=recovery) as s:
                assert s.put("t", 1, 1) == 1


# --------------------------------------------------------- concurrency
def test_concurrent_writers_with_sync_always_are_all_recovered(store_dir):
    threads_n, per_thread = 4, 60
    acked = {}
    errors = []
    with Store.open(store_dir, sync="always") as s:
        def writer(t):
            try:
                for i in range(per_thread):
                    lsn = s.put("t", f"{t}:{i}", [t, i])
                    # Acknowledged means durable, for every thread.
                    assert s.durable_lsn >= lsn
                    acked[(t, i)] = lsn
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        assert sorted(acked.values()) == list(range(1, threads_n * per_thread + 1))
    with Store.open(store_dir, recovery="strict") as s:
        assert s.lsn == threads_n * per_thread
        assert s.table("t").to_dict() == {f"{t}:{i}": [t, i] for (t, i) in acked}


def test_writers_waiting_on_an_fsync_share_the_next_one(store_dir, monkeypatch):
    # Group commit, made deterministic: the first writer's fsync blocks until
    # every other writer has appended its record; then one more fsync must
    # cover all of them.
    waiting = 4
    s = Store.open(store_dir, sync="always")
    release = threading.Event()
    in_fsync = threading.Event()
    calls = []
    real_fsync = _fileio.fsync

    def gated_fsync(fd):
        calls.append(fd)
        if len(calls) == 1:
            in_fsync.set()
            assert release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(_fileio, "fsync", gated_fsync)
    results = []
    first = threading.Thread(target=lambda: results.append(s.put("t", "first", 0)))
    first.start()
    assert in_fsync.wait(30)
    others = [threading.Thread(target=lambda i=i: results.append(s.put("t", i, i)))
              for i in range(waiting)]
    for th in others:
        th.start()
    # Condition wait (not a timed sleep): every writer has its LSN in memory.
    for _ in range(30_000):
        if s.lsn == waiting + 1:
            break
        release.wait(0.001)
    assert s.lsn == waiting + 1
    release.set()
    for th in [first, *others]:
        th.join(30)
    assert sorted(results) == list(range(1, waiting + 2))
    assert len(calls) == 2, f"{len(calls)} fsyncs for {waiting + 1} writes"
    assert s.durable_lsn == waiting + 1
    s.close()


# ------------------------------------------------------ the table mapping
def test_the_table_is_a_live_read_only_mapping(store_dir):
    with Store.open(store_dir, sync="none") as s:
        s.put("t", "a", {"x": 1})
        s.put("t", b"b", [1, 2])
        s.put("t", 3, None)
        t = s.table("t")
        assert isinstance(t, collections.abc.Mapping)
        assert len(t) == 3
        assert t["a"] == {"x": 1} and t[b"b"] == [1, 2] and t[3] is None
        assert t.get("a") == {"x": 1} and t.get("missing") is None
        assert t.get("missing", "dflt") == "dflt" and t.get(3, "dflt") is None
        with pytest.raises(KeyError):
            t["missing"]
        assert "a" in t and 3 in t and "missing" not in t
        assert sorted(map(repr, t)) == sorted(map(repr, ["a", b"b", 3]))
        assert set(map(repr, t.keys())) == set(map(repr, ["a", b"b", 3]))
        assert sorted(map(repr, t.values())) == sorted(map(repr, [{"x": 1}, [1, 2], None]))
        assert {repr(kv) for kv in t.items()} == {repr(("a", {"x": 1})), repr((b"b", [1, 2])),
                                                  repr((3, None))}
        d = t.to_dict()
        assert d == {"a": {"x": 1}, b"b": [1, 2], 3: None}
        d["a"] = "changed"  # a copy: the table is not affected
        assert t["a"] == {"x": 1}
        assert t.memory_bytes > 0
        # live: later writes show up in the same object
        s.put("t", "late", 1)
        s.delete("t", "a")
        assert len(t) == 3 and t["late"] == 1 and "a" not in t
        assert not hasattr(t, "__setitem__") and not hasattr(t, "__delitem__")
        s.clear("t")
        assert len(t) == 0 and list(t) == [] and t.to_dict() == {}


def test_reading_a_value_twice_gives_independent_objects(store_dir):
    with Store.open(store_dir) as s:
        s.put("t", "k", {"list": [1]})
        v = s.table("t")["k"]
        v["list"].append(2)
        assert s.table("t")["k"] == {"list": [1]}


@pytest.mark.parametrize("view", ["iter", "keys", "values", "items"])
@pytest.mark.parametrize("mutation", [
    lambda s: s.put("t", "new key", 1),
    lambda s: s.put("t", 0, "overwritten"),
    lambda s: s.delete("t", 5),
    lambda s: s.incr("t", 3),
    lambda s: s.clear("t"),
], ids=["insert", "overwrite", "delete", "incr", "clear"])
def test_mutating_a_table_while_iterating_it_raises_runtime_error(store_dir, view, mutation):
    with Store.open(store_dir, sync="none") as s:
        for i in range(10):
            s.put("t", i, i)
        t = s.table("t")
        it = iter(t if view == "iter" else getattr(t, view)())
        next(it)
        mutation(s)
        with pytest.raises(RuntimeError):
            list(it)


@pytest.mark.parametrize("view", ["iter", "keys", "values", "items"])
def test_writing_another_table_while_iterating_is_fine(store_dir, view):
    with Store.open(store_dir, sync="none") as s:
        for i in range(10):
            s.put("t", i, i)
        t = s.table("t")
        it = iter(t if view == "iter" else getattr(t, view)())
        next(it)
        s.put("other", 0, 0)
        assert len(list(it)) == 9


# ----------------------------------------------------------- keys, values
def test_str_bytes_and_int_keys_are_distinct(store_dir):
    keys = ["a", b"a", 1, "1", b"\x01", 0, "", b"", INT64_MIN, INT64_MAX, -1]
    with Store.open(store_dir, sync="none") as s:
        for i, k in enumerate(keys):
            s.put("t", k, i)
        t = s.table("t")
        assert len(t) == len(keys)
        for i, k in enumerate(keys):
            assert t[k] == i
        assert True not in t and False not in t  # 1 and 0 are there; bools are not keys
        got = {canon(k): v for k, v in t.items()}
    with Store.open(store_dir, recovery="strict") as s:
        assert {canon(k): v for k, v in s.table("t").items()} == got
        assert got == {canon(k): i for i, k in enumerate(keys)}


@pytest.mark.parametrize("key", [True, False, 1.0, None, 1 << 63, INT64_MIN - 1, ("a",),
                                 bytearray(b"a"), ["a"]], ids=repr)
def test_unsupported_keys_are_refused_before_anything_is_written(store_dir, key):
    with Store.open(store_dir, sync="always") as s:
        s.put("t", "k", 0)
        for call in (lambda: s.put("t", key, 1), lambda: s.delete("t", key),
                     lambda: s.incr("t", key, 1)):
            with pytest.raises(UnsupportedKeyError):
                call()
        with pytest.raises(UnsupportedKeyError):
            with s.batch() as b:
                b.put("t", key, 1)
        assert s.lsn == 1
    assert _reopen_state(store_dir)[0] == 1


# Ids by hand: an object()'s repr holds its address, different in every
# process, and pytest -n refuses a collection that differs between workers.
@pytest.mark.parametrize("value", [object(), {1, 2}, 1 << 64, INT64_MIN - 1, 1j,
                                   [1, object()], {"k": {1}}],
                         ids=["object", "set", "2**64", "int64-min-minus-1", "complex",
                              "list-with-object", "dict-with-set"])
def test_an_unencodable_value_raises_before_anything_is_written(store_dir, value):
    with Store.open(store_dir, sync="always") as s:
        with pytest.raises(ValueEncodingError):
            s.put("t", "k", value)
        with pytest.raises(ValueEncodingError):
            with s.batch() as b:
                b.put("t", "ok", 1)
                b.put("t", "k", value)
        assert s.lsn == 0 and s.tables() == []
    with Store.open(store_dir, recovery="strict") as s:
        assert s.lsn == 0 and s.tables() == []
    assert all_frames(store_dir) == []


@pytest.mark.parametrize("value, expected", [
    ((1, 2, (3,)), [1, 2, [3]]),
    ({"a": (1,)}, {"a": [1]}),
    (b"\x00bytes", b"\x00bytes"),
    ("text", "text"),
    (1.5, 1.5),
    (True, True),
    (None, None),
    ((1 << 64) - 1, (1 << 64) - 1),
    ({1: "int key", "s": b"b"}, {1: "int key", "s": b"b"}),
], ids=repr)
def test_values_read_back_as_msgpack_decodes_them(store_dir, value, expected):
    with Store.open(store_dir) as s:
        s.put("t", "k", value)
        assert canon(s.table("t")["k"]) == canon(expected)
    with Store.open(store_dir) as s:
        assert canon(s.table("t")["k"]) == canon(expected)


def test_a_value_with_tuple_map_keys_is_refused_or_reads_back(store_dir):
    # msgpack encodes {(1, 2): "v"}; what it cannot do is decode an array as
    # a map key. A value the store accepts must read back (or the put must
    # raise ValueEncodingError before anything is written).
    with Store.open(store_dir) as s:
        try:
            s.put("t", "k", {(1, 2): "v"})
        except ValueEncodingError:
            assert s.lsn == 0
            return
        assert s.table("t").to_dict()["k"] in ({(1, 2): "v"}, {"[1, 2]": "v"})


def test_a_value_larger_than_a_frame_is_refused_before_anything_is_written(store_dir):
    from rehydrate import BatchTooLargeError, _backend

    too_big = b"x" * (_backend.core().MAX_BATCH_RECORD_BYTES + 1)
    with Store.open(store_dir, sync="always") as s:
        with pytest.raises(BatchTooLargeError):
            s.put("t", "k", too_big)
        assert s.lsn == 0 and s.tables() == []
        s.put("t", "small", 1)
    assert _reopen_state(store_dir)[0] == 1


# ------------------------------------------------------------------ incr
def test_incr_semantics_follow_the_model(store_dir):
    m = Model()
    ops = [("incr", "n", "absent", 5), ("incr", "n", "absent", -7), ("incr", "n", "f", 0.5),
           ("incr", "n", "f", 2), ("incr", "n", "i", 2), ("incr", "n", "i", 1.25),
           ("put", "n", "big", INT64_MAX - 1), ("incr", "n", "big", 1),
           ("put", "n", "neg", INT64_MIN + 1), ("incr", "n", "neg", -1), ("incr", "n", "d")]
    with Store.open(store_dir, sync="none") as s:
        for op in ops:
            assert getattr(s, op[0])(*op[1:]) == m.apply(op)
        assert canon_state(store_state(s)) == canon_state(m.tables)
        assert type(s.table("n")["i"]) is float and type(s.table("n")["absent"]) is int
    assert _reopen_state(store_dir) == (m.lsn, canon_state(m.tables))


@pytest.mark.parametrize("setup, delta", [
    (("put", "n", "k", "text"), 1),
    (("put", "n", "k", True), 1),
    (("put", "n", "k", None), 1),
    (("put", "n", "k", [1]), 1),
    (("put", "n", "k", 1 << 63), 1),
    (("put", "n", "k", INT64_MAX), 1),
    (("put", "n", "k", INT64_MIN), -1),
    (("put", "n", "k", 1), True),
    (("put", "n", "k", 1), 1 << 63),
    (("put", "n", "k", 1), "2"),
    (("put", "n", "k", 1), None),
], ids=repr)
def test_an_incr_that_cannot_apply_raises_before_anything_is_written(store_dir, setup, delta):
    with Store.open(store_dir, sync="always") as s:
        s.put(*setup[1:])
        before = canon_state(store_state(s))
        with pytest.raises(InvalidOperationError):
            s.incr("n", "k", delta)
        assert s.lsn == 1 and canon_state(store_state(s)) == before
    assert _reopen_state(store_dir) == (1, before)


# --------------------------------------------------------------- reports
def test_a_clean_store_reopens_with_an_ok_report_and_no_problems(store_dir):
    with Store.open(store_dir, sync="always", segment_bytes=4096) as s:
        for i in range(200):
            s.put("t", i, "v" * 30)
    with Store.open(store_dir, recovery="strict") as s:
        r = s.recovery_report
        assert r.ok and r.problems == []
        assert r.records == 200 and r.last_lsn == 200
        d = r.as_dict()
        assert d["ok"] is True and d["problems"] == [] and d["last_lsn"] == 200
        json.dumps(d)


def test_progress_is_reported_during_replay_up_to_the_total(store_dir):
    with Store.open(store_dir, sync="always", segment_bytes=4096) as s:
        for i in range(300):
            s.put("t", i, "v" * 30)
    seen = []
    with Store.open(store_dir, progress=lambda done, total: seen.append((done, total))):
        pass
    total = sum(os.path.getsize(os.path.join(store_dir, "wal", n))
                for n in os.listdir(os.path.join(store_dir, "wal")))
    assert seen and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert all(0 <= d <= t == total for d, t in seen)
