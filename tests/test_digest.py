"""Content digests (docs/FORMAT.md, "Digest"): the native XXH64 against the
``xxhash`` package, table digests independent of history and of the core,
state digests, and ``rehydrate digest`` on a store directory."""

from __future__ import annotations

import importlib
import json
import os
import random
import struct
import subprocess
import sys

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rehydrate import Store, _backend
from rehydrate.digest import digest_dir, format_digest, state_digest, table_digest
from rehydrate.errors import CorruptionError, NotAStoreError, StorageIOError

from helpers import corrupt as C

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

EMPTY_TABLE = 0xAF09F71516247C32   # docs/FORMAT.md, "Digest"
EMPTY_STATE = 0xEF46DB3751D8E999
EXAMPLE_TABLE = 0x29F76CB75A55EA25  # the worked example's `users`
EXAMPLE_STATE = 0xEC78C23A050C3C60


def spec_table_digest(items) -> int:
    """The digest straight from the spec's words, as the oracle for both cores."""
    total = 0
    for kb, vb in items:
        total += xxhash.xxh64_intdigest(struct.pack("<I", len(kb)) + kb + vb)
    return xxhash.xxh64_intdigest(struct.pack("<QQ", total % (1 << 64), len(items)))


def build(core, items):
    t = core.KVTable()
    for kb, vb in items:
        t._put_raw(kb, vb)
    return t


def kvtable_module(core):
    return importlib.import_module(core.__name__ + ".kvtable")


# ------------------------------------------------------------------ XXH64

@pytest.fixture
def native_only(core):
    if core.IMPLEMENTATION != "native":
        pytest.skip("tests the native XXH64; the twin is the xxhash package itself")
    return kvtable_module(core)


def test_xxh64_equals_the_xxhash_package_for_every_length_up_to_300(native_only):
    rng = random.Random(64)
    for n in range(301):
        for seed in (0, 1, 2**64 - 1, rng.getrandbits(64)):
            data = rng.randbytes(n)
            assert native_only._xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed), (n, seed)


def test_xxh64_equals_the_xxhash_package_on_large_and_unaligned_input(native_only):
    rng = random.Random(65)
    big = rng.randbytes((4 << 20) + 77)
    for start in (0, 1, 3, 7):
        for n in (1 << 20, (1 << 20) + 31, len(big) - start):
            view = memoryview(big)[start:start + n]
            assert native_only._xxh64(view) == xxhash.xxh64_intdigest(bytes(view)), (start, n)


def test_xxh64_four_at_a_time_equals_one_at_a_time_for_mixed_lengths(native_only):
    rng = random.Random(66)
    lengths = list(range(301)) * 4
    rng.shuffle(lengths)
    groups = [lengths[i:i + 4] for i in range(0, len(lengths), 4)]
    groups += [[n] * 4 for n in (0, 31, 32, 33, 63, 64, 256)]  # same shape in every lane
    for group in groups:
        data = [rng.randbytes(n) for n in group]
        for seed in (0, rng.getrandbits(64)):
            want = tuple(xxhash.xxh64_intdigest(x, seed) for x in data)
            assert native_only._xxh64_x4(*data, seed) == want, group


@SETTINGS
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6),
       seed=st.integers(0, 2**64 - 1))
def test_xxh64_streaming_in_any_pieces_equals_one_shot(native_only, data, cuts, seed):
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    parts = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    want = xxhash.xxh64_intdigest(data, seed)
    assert native_only._xxh64_parts(parts, seed) == want
    assert native_only._xxh64(data, seed) == want


# ------------------------------------------------------------ table digest

KEYS = st.one_of(st.sampled_from(["a", "b", b"a", 1, -5, "", b""]), st.text(max_size=12),
                 st.binary(max_size=20), st.integers(-(2**63), 2**63 - 1))
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=40), st.binary(max_size=300),
    # Values past the inline hash buffer (256 bytes) and big enough that
    # overwrites move entries, fill free lists and trigger compaction.
    st.integers(200, 6000).map(lambda n: "x" * n),
    st.lists(st.integers(), max_size=5),
)
DELTAS = st.one_of(st.integers(-5, 5), st.floats(-10, 10, allow_nan=False))
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, VALUES),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("incr"), KEYS, DELTAS),
    st.tuples(st.just("clear")),
), max_size=80)


def run_ops(core, ops):
    """The ops through the writer (LogBuffer), as Store applies them."""
    t = core.KVTable()
    lb = core.LogBuffer(1)
    for op in ops:
        try:
            getattr(lb, op[0])(t, 1, *op[1:])
        except Exception:  # noqa: BLE001 - e.g. incr of a str: refused, table unchanged
            pass
    return t


@SETTINGS
@given(ops=OPS, order_seed=st.integers(0, 2**32))
def test_digest_depends_on_content_not_history_or_core(core, ops, order_seed):
    t = run_ops(core, ops)
    items = t._items_raw()
    assert len(items) == len(t)
    d = t._digest()
    assert d == table_digest(t) == spec_table_digest(items)
    shuffled = list(items)
    random.Random(order_seed).shuffle(shuffled)
    assert build(core, shuffled)._digest() == d
    with _backend.use("native") as native:
        n = build(native, shuffled)
    with _backend.use("pure") as pure:
        p = build(pure, items)
    assert n._digest() == p._digest() == d
    assert 0 <= d < 1 << 64


def test_digest_is_unchanged_by_churn_free_lists_compaction_and_growth(core):
    rng = random.Random(7)
    t = core.KVTable()
    model = {}
    compactions, last_arena = 0, 0
    for i in range(30000):
        k = core.encode_key(rng.randrange(4000))
        r = rng.random()
        if r < 0.6:
            # Small entries recycle through the free lists; big ones (past
            # the free-list classes) pile up as garbage until a compaction.
            n = rng.choice([rng.randrange(0, 300), rng.randrange(500, 3000)])
            v = core.pack_value("v" * n)
            t._put_raw(k, v)
            model[k] = v
        elif r < 0.9:
            t._delete_raw(k)
            model.pop(k, None)
        else:
            # Counters in their own key space, so incr never meets a str.
            n = core.encode_key(f"n{rng.randrange(50)}")
            model[n] = bytes(t._incr_raw(n, rng.choice([1, 1000, 2**40, 0.5])))
        if core.IMPLEMENTATION == "native":
            arena = t._stats()["arena_len"]
            compactions += arena < last_arena
            last_arena = arena
        if i % 3000 == 2999:
            assert t._digest() == spec_table_digest(list(model.items())), i
    assert dict(t._items_raw()) == model
    if core.IMPLEMENTATION == "native":
        # Pair assertion: the walk was tested over dead entries and after
        # compactions, or this test proves less than its name says.
        assert compactions > 0 and t._stats()["garbage"] > 0
    # Grow to many times the size, then delete back down (slot array resizes,
    # compaction): the digest is the content's only.
    before = t._digest()
    extra = [core.encode_key(f"grow{i}") for i in range(20000)]
    for k in extra:
        t._put_raw(k, core.pack_value(k))
    assert t._digest() != before
    for k in extra:
        t._delete_raw(k)
    assert t._digest() == before


def test_changing_any_one_byte_of_a_value_or_key_changes_the_digest(core):
    rng = random.Random(3)
    items = [(core.encode_key(f"k{i}"), core.pack_value(rng.randbytes(rng.randrange(1, 400))))
             for i in range(12)]
    base = build(core, items)._digest()
    for idx, (kb, vb) in enumerate(items):
        for pos in range(len(vb)):
            changed = bytearray(vb)
            changed[pos] ^= 1 << rng.randrange(8)
            t = build(core, items)
            t._put_raw(kb, bytes(changed))
            assert t._digest() != base, (idx, pos)
        renamed = bytearray(kb)
        renamed[-1] ^= 0x40
        t = build(core, items)
        t._delete_raw(kb)
        t._put_raw(bytes(renamed), vb)
        assert t._digest() != base, idx


def test_the_key_value_boundary_is_part_of_the_digest(core):
    a = build(core, [(b"\x01ab", b"c")])
    b = build(core, [(b"\x01a", b"bc")])
    assert a._digest() != b._digest()


def test_empty_table_digest_is_the_documented_constant(core):
    t = core.KVTable()
    assert t._digest() == EMPTY_TABLE
    k = core.encode_key("x")
    t._put_raw(k, core.pack_value(1))
    assert t._digest() != EMPTY_TABLE
    t._delete_raw(k)
    assert t._digest() == EMPTY_TABLE
    t._put_raw(k, core.pack_value(1))
    t._clear()
    assert t._digest() == EMPTY_TABLE
    assert format_digest(EMPTY_TABLE) == "af09f71516247c32"


def test_worked_example_values(core):
    users = build(core, [(core.encode_key("ann"), core.pack_value({"age": 41})),
                         (core.encode_key(7), core.pack_value(2))])
    assert users._digest() == EXAMPLE_TABLE
    assert state_digest({"users": users}) == EXAMPLE_STATE


# ------------------------------------------------------------ state digest

def test_state_digest_is_independent_of_table_order(core):
    rng = random.Random(11)
    tables = {}
    for name in ["users", "orders", "ümlaut", "", "a", "b" * 40]:
        tables[name] = build(core, [(core.encode_key(rng.randrange(100)),
                                     core.pack_value(rng.random())) for _ in range(20)])
    names = list(tables)
    d = state_digest(tables)
    for _ in range(5):
        rng.shuffle(names)
        assert state_digest({n: tables[n] for n in names}) == d


def test_state_digest_counts_names_and_empty_tables(core):
    t = build(core, [(core.encode_key(1), core.pack_value(1))])
    assert state_digest({}) == EMPTY_STATE
    assert state_digest({"a": t}) != state_digest({"b": t})
    assert state_digest({"a": t, "e": core.KVTable()}) != state_digest({"a": t})
    # The length prefix keeps names apart from the digest bytes after them.
    assert state_digest({"ab": core.KVTable()}) != state_digest({"a": core.KVTable()})


def test_format_digest_is_16_lowercase_hex_digits():
    assert format_digest(0) == "0" * 16
    assert format_digest(0xABC) == "0000000000000abc"
    assert format_digest(2**64 - 1) == "f" * 16
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            format_digest(bad)


# ------------------------------------------------------------- directories

def run(args, env):
    return subprocess.run([sys.executable, "-m", "rehydrate", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def write_store(path, sync="none", ops=600):
    """A store with several tables, deletes, clears and an emptied table; with
    sync="always" each write is its own frame (damage then hits one frame)."""
    rng = random.Random(5)
    with Store.open(path, sync=sync, segment_bytes=4096) as s:
        for i in range(ops):
            r = rng.random()
            t = rng.choice(["users", "orders", "ümlaut"])
            if r < 0.6:
                s.put(t, rng.randrange(80), {"i": i, "s": "x" * rng.randrange(50)})
            elif r < 0.8:
                s.delete(t, rng.randrange(80))
            elif r < 0.97:
                s.incr("counts", rng.choice(["a", b"a", 1]), rng.choice([1, 2.5]))
            else:
                s.clear("orders")
        s.put("emptied", "k", 1)
        s.delete("emptied", "k")
        return format_digest(state_digest({n: s.table(n) for n in s.tables()}))


def test_cli_digest_equals_digest_dir_and_the_open_stores_tables(store_dir, core_env):
    live = write_store(store_dir)
    out = run(["digest", store_dir], core_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == live + "\n"
    info = digest_dir(store_dir)
    assert info["digest"] == live and info["ok"] and info["problems"] == []
    with Store.open(store_dir) as s:
        assert s.lsn == info["last_lsn"]
        tables = {n: s.table(n) for n in s.tables()}
        assert format_digest(state_digest(tables)) == live
        assert info["tables"] == {n: format_digest(table_digest(t)) for n, t in tables.items()}
    assert format_digest(EMPTY_TABLE) == info["tables"]["emptied"]
    js = run(["digest", store_dir, "--json"], core_env)
    assert js.returncode == 0, js.stderr
    d = json.loads(js.stdout)
    assert d == {"digest": live, "tables": info["tables"], "unavailable": {},
                 "last_lsn": info["last_lsn"], "ok": True}


def test_cli_digest_of_the_worked_example_directory(store_dir, core_env):
    with Store.open(store_dir, sync="always") as s:
        s.put("users", "ann", {"age": 41})
        s.incr("users", 7, 2)
    out = run(["digest", store_dir], core_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == format_digest(EXAMPLE_STATE)


def test_digest_dir_changes_nothing_on_disk(store_dir):
    write_store(store_dir, sync="always", ops=80)
    C.truncate(C.segment_paths(store_dir)[-1], os.path.getsize(C.segment_paths(store_dir)[-1]) - 5)
    # Behind a recorded clean close the cut is damage: refused, and the
    # record is left where it is.
    before = C.tree_hashes(store_dir)
    with pytest.raises(CorruptionError):
        digest_dir(store_dir)
    assert C.tree_hashes(store_dir) == before
    # As a crash leaves it, the cut is a torn tail.
    C.as_crashed(store_dir)
    before = C.tree_hashes(store_dir)
    info = digest_dir(store_dir)
    assert info["problems"] and info["problems"][0]["kind"] == "torn_tail" and info["ok"]
    assert C.tree_hashes(store_dir) == before
    # ... and the digest is the state an open (which cuts the tail) gets.
    with Store.open(store_dir) as s:
        assert format_digest(state_digest({n: s.table(n) for n in s.tables()})) == info["digest"]


def test_cli_digest_of_a_damaged_log_exits_1(store_dir, core_env):
    write_store(store_dir, sync="always", ops=80)
    assert len(C.segment_paths(store_dir)) > 1
    seg = C.segment_paths(store_dir)[0]
    C.flip_bit(seg, C.frames_of(seg)[1].offset + 40, 1)
    out = run(["digest", store_dir], core_env)
    assert out.returncode == 1 and out.stdout == "", (out.stdout, out.stderr)
    with pytest.raises(CorruptionError):
        digest_dir(store_dir)
    # A mode that goes past the damage still prints the digest of what it
    # would load, and says (exit 1, stderr) that something was skipped.
    skip = run(["digest", store_dir, "--recovery", "skip-corrupted"], core_env)
    assert skip.returncode == 1, skip.stderr
    assert skip.stdout.strip() == digest_dir(store_dir, recovery="skip-corrupted")["digest"]
    assert "bad_crc" in skip.stderr


def test_cli_digest_of_a_missing_directory_exits_2(tmp_path, core_env):
    out = run(["digest", str(tmp_path / "nope")], core_env)
    assert out.returncode == 2 and out.stdout == ""
    assert "nope" in out.stderr
    with pytest.raises(NotAStoreError):
        digest_dir(tmp_path / "nope")
    bad_mode = run(["digest", str(tmp_path), "--recovery", "yolo"], core_env)
    assert bad_mode.returncode == 2


def test_os_errors_in_digest_dir_are_typed(store_dir, monkeypatch):
    import errno

    from rehydrate import _fileio

    write_store(store_dir)

    def eio(p):
        raise OSError(errno.EIO, "Input/output error", p)

    monkeypatch.setattr(_fileio, "read_file", eio)
    with pytest.raises(StorageIOError) as ei:
        digest_dir(store_dir)
    assert ei.value.errno == errno.EIO


def test_store_digest_matches_the_cli_and_survives_reopen(tmp_path, core_env):
    import subprocess
    import sys

    from rehydrate import Store
    from rehydrate.digest import format_digest

    path = str(tmp_path / "s")
    with Store.open(path) as s:
        for i in range(200):
            s.put("a", i, [i, "x"])
            s.incr("b", i % 7, 1.5)
        s.delete("a", 3)
        live = s.digest()
    with Store.open(path) as s:
        assert s.digest() == live
        s.put("a", 3, "back")
        assert s.digest() != live
        changed = s.digest()
    out = subprocess.run([sys.executable, "-m", "rehydrate", "digest", path], env=core_env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == format_digest(changed)
