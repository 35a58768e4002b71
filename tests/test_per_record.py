"""Per-record migrations (docs/migrations.md, "Per-record migrations"): the
primitives of per_record.py (consistent view, batches, apply_fn, put_many)
on both cores and between the twins, and the offline run in the migrate
phase: ledger, digests, reopen, rollback, DELETE, failures that change
nothing, invariants, online migrations left pending."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import DELETE, MigrationError, Migrations, Store
from rehydrate import _format as F
from rehydrate import _core as native_core
from rehydrate import _pure as pure_core
from rehydrate.digest import format_digest
from rehydrate.per_record import apply_fn, consistent_view, put_many

KINDS = {"kv": None, "dict": {"users": rh.DictTable}}


def _listing(path):
    """Every file under ``path`` with its bytes (an open's bookkeeping aside)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            if f in ("LOCK", "HISTORY", "HINTS"):
                continue
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


def _v1(path, kind, n=60):
    """``users`` of ``kind``, half in a checkpoint and half only in the log."""
    with Store.open(path, tables=KINDS[kind]) as s:
        for i in range(n):
            s.put("users", i, {"name": f"user {i}", "age": 20 + i})
            if i == n // 2:
                s.checkpoint()
        s.put("users", "s", {"name": "str key", "age": 1})
        s.put("other", "k", "untouched")
        return format_digest(s.digest()), s.table("users").to_dict()


def _versions(path):
    from rehydrate import manifest

    return manifest.read(path).get("versions") or {}


def _migrate(fn, *, online=False, to_version=2, id="per-rec"):
    mig = Migrations()
    mig.migration(id, table="users", to_version=to_version, per_record=True,
                  online=online)(fn)
    return mig


def _older(k, v):
    return {**v, "age": v["age"] + 1}


# -- the offline run ----------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_per_record_migration_commits_like_any_other(store_dir, kind):
    before, users = _v1(store_dir, kind)
    with Store.open(store_dir, tables=KINDS[kind], migrations=_migrate(_older)) as s:
        (entry,) = s.ledger
        after = format_digest(s.digest())
        assert s.table("users").to_dict() == {k: _older(k, v) for k, v in users.items()}
        assert s.table("other")["k"] == "untouched"
        phase = next(p for p in s.warmup_report["phases"] if p["name"] == "migrate")
        assert phase["migrations"] == ["per-rec"]
    assert entry["id"] == "per-rec" and (entry["from_version"], entry["to_version"]) == (1, 2)
    assert entry["digest_before"] == before and entry["digest_after"] == after != before
    assert entry["lsn"] == entry["snapshot_before"] + 1
    assert _versions(store_dir).get("users") == 2
    with Store.open(store_dir, tables=KINDS[kind], migrations=_migrate(_older)) as s:
        assert len(s.ledger) == 1 and format_digest(s.digest()) == after  # not run again
        assert s.table("users")[3] == {"name": "user 3", "age": 24}
    plan = rh.rollback(store_dir)
    assert plan["done"] is True and plan["digest"] == before
    with Store.open(store_dir, tables=KINDS[kind]) as s:
        assert s.ledger == [] and s.table("users").to_dict() == users


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_delete_drops_records(store_dir, kind):
    _before, users = _v1(store_dir, kind)

    def odd_out(k, v):
        return DELETE if isinstance(k, int) and k % 2 else v

    with Store.open(store_dir, tables=KINDS[kind], migrations=_migrate(odd_out)) as s:
        want = {k: v for k, v in users.items() if not (isinstance(k, int) and k % 2)}
        assert s.table("users").to_dict() == want
        after = format_digest(s.digest())
    with Store.open(store_dir, tables=KINDS[kind]) as s:
        assert s.table("users").to_dict() == want and format_digest(s.digest()) == after
    assert repr(DELETE) == "rehydrate.DELETE" and rh.DELETE is DELETE


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("case", ["raises", "unencodable", "invariant_before",
                                  "invariant_after"])
def test_a_failing_per_record_migration_changes_nothing(store_dir, kind, case):
    before, users = _v1(store_dir, kind)
    listing = _listing(store_dir)
    mig = Migrations()

    @mig.invariant("users")
    def ages_below_1000(t):
        if case == "invariant_before":
            return False
        return all(v["age"] < 1000 for v in t.values())

    @mig.migration("bad", table="users", to_version=2, per_record=True)
    def bad(k, v):
        if k == 17 and case == "raises":
            raise ValueError("no good")
        if k == 17 and case == "unencodable":
            return {"age": object()}
        return {**v, "age": v["age"] + 1000} if case == "invariant_after" else v

    with pytest.raises(MigrationError) as e:
        Store.open(store_dir, tables=KINDS[kind], migrations=mig)
    err = e.value
    assert err.migration == "bad"
    if case in ("raises", "unencodable"):
        assert err.key == 17 and "17" in str(err)
        assert err.reason == ("record_raised" if case == "raises" else "record_unencodable")
        assert err.invariant is None
    else:
        assert err.invariant.endswith("ages_below_1000") and err.key is None
    assert _listing(store_dir) == listing  # the directory, byte for byte
    with Store.open(store_dir, tables=KINDS[kind]) as s:
        assert s.ledger == [] and format_digest(s.digest()) == before
        assert s.table("users").to_dict() == users


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_invariants_read_the_old_table_then_the_new_one(store_dir, kind):
    _before, users = _v1(store_dir, kind, n=10)
    mig = Migrations()
    seen = []

    @mig.invariant("users")
    def look(t):
        assert not isinstance(t, dict)  # a view, never a dict built for it
        seen.append(dict(t.items()))
        with pytest.raises(TypeError):
            t[0] = 1  # read only
        return True

    mig.migration("m", table="users", to_version=2, per_record=True)(_older)
    with Store.open(store_dir, tables=KINDS[kind], migrations=mig) as s:
        assert s.ledger[0]["invariants"][0].endswith("look")
    assert seen == [users, {k: _older(k, v) for k, v in users.items()}]


def test_a_missing_table_migrates_to_an_empty_one(store_dir):
    with Store.open(store_dir) as s:
        s.put("other", 1, 1)
    with Store.open(store_dir, migrations=_migrate(_older)) as s:
        assert s.ledger[0]["id"] == "per-rec" and len(s.table("users")) == 0


def test_online_migrations_stay_pending_across_opens(store_dir):
    before, users = _v1(store_dir, "kv")
    mig = _migrate(_older, online=True, id="online")
    later = Migrations()
    later.migrations = list(mig.migrations)
    # A later migration of the same table builds on the online one's version.
    later.migration("after", table="users", to_version=3, per_record=True)(_older)
    later.migration("elsewhere", table="other", to_version=2, per_record=True)(
        lambda k, v: v + "!")
    for _ in range(2):
        with Store.open(store_dir, migrations=later) as s:
            assert [e["id"] for e in s.ledger] == ["elsewhere"]
            assert s.table("users").to_dict() == users
            assert s.table("other")["k"] == "untouched!"
        assert "users" not in _versions(store_dir)


# -- the primitives --------------------------------------------------------------------
def _kv(core, items):
    t = core.KVTable()
    for k, v in items.items():
        t._put_raw(core.encode_key(k), core.pack_value(v))
    return t


def _run(core, items, fn, max_rows):
    """view -> batches -> apply_fn -> put_many into a new KVTable of ``core``."""
    t = _kv(core, items)
    view = consistent_view(t, F.KIND_KV, core)
    out = core.KVTable()
    seen, errors = [], []
    for keys, values in view.batches(max_rows):
        assert 1 <= len(keys) == len(values) <= max_rows
        seen.extend(keys)
        puts, _deletes, raised = apply_fn(fn, keys, values)
        errors.extend((k, type(e).__name__, str(e)) for k, e in raised)
        errors.extend((k, type(e).__name__, str(e))
                      for k, e in put_many(out, F.KIND_KV, core, puts))
    assert view.count == len(items) and sorted(map(repr, seen)) == sorted(map(repr, items))
    return out, sorted(errors, key=repr)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_view_is_the_table_when_taken(store_dir, kind, core):
    with Store.open(store_dir, tables=KINDS[kind]) as s:
        for i in range(100):
            s.put("users", i, {"n": i})
        view = consistent_view(s.table("users"), F.KIND_KV if kind == "kv" else F.KIND_DICT,
                               core)
        s.put("users", 0, {"n": "changed"})
        s.delete("users", 1)
        s.put("users", 1000, {"n": 1000})
        got = {}
        for keys, values in view.batches(7):
            got.update(zip(keys, values))
    assert view.count == 100 and got == {i: {"n": i} for i in range(100)}


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)
_keys = st.integers(-2**63, 2**63 - 1) | st.text(max_size=6) | st.binary(max_size=6)


def _fn_of(kind: int, salt: int):
    """A deterministic per-record function: one of a few shapes."""
    def fn(k, v):
        h = len(repr(k)) + salt
        if kind == 0:
            return [v, h]
        if kind == 1:
            return DELETE if h % 3 == 0 else {"v": v}
        if kind == 2:
            if h % 4 == 0:
                raise KeyError(f"refused {h}")
            return v
        return object() if h % 5 == 0 else (v, h)  # some results do not encode
    return fn


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.dictionaries(_keys, _values, max_size=40), kind=st.integers(0, 3),
       salt=st.integers(0, 12), max_rows=st.integers(1, 9))
def test_migrated_table_is_fn_of_each_record_and_the_twins_agree(items, kind, salt,
                                                                   max_rows):
    fn = _fn_of(kind, salt)
    want, want_errors = {}, set()
    for k, v in items.items():
        try:
            out = fn(k, v)
        except Exception:
            want_errors.add(repr(k))
            continue
        if out is DELETE:
            continue
        try:
            want[k] = pure_core.unpack_value(pure_core.pack_value(out))
        except Exception:
            want_errors.add(repr(k))
    results = {}
    for core in (native_core, pure_core):
        out, errors = _run(core, items, fn, max_rows)
        assert out.to_dict() == want
        assert {repr(k) for k, _, _ in errors} == want_errors
        results[core.IMPLEMENTATION] = (sorted(out._items_raw()), errors)
    assert results["native"] == results["pure"]  # same bytes, same errors


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(_keys | st.booleans() | st.floats(allow_nan=False),
                                _values | st.just(object) | st.just(2**70)), max_size=30))
def test_put_many_errors_are_per_pair_and_identical_on_both_cores(pairs):
    results = {}
    for core in (native_core, pure_core):
        t = core.KVTable()
        errors = put_many(t, F.KIND_KV, core, list(pairs))
        results[core.IMPLEMENTATION] = (
            sorted(t._items_raw()), [(repr(k), type(e).__name__, str(e)) for k, e in errors])
    assert results["native"] == results["pure"]


@pytest.mark.parametrize("max_rows", [1, 2, 3, 4096, 1 << 40])
def test_batches_decode_every_entry_once_after_deletes(core, max_rows):
    t = core.KVTable()
    for i in range(50):
        t._put_raw(core.encode_key(i), core.pack_value({"i": i} if i % 2 else i))
    for i in range(0, 50, 3):
        t._delete_raw(core.encode_key(i))  # dead entries in the arena
    view = consistent_view(t, F.KIND_KV, core)
    got = {}
    for keys, values in view.batches(max_rows):
        for k, v in zip(keys, values):
            assert k not in got
            got[k] = v
    assert got == t.to_dict() and view.count == len(got)
    with pytest.raises(ValueError):
        next(view.batches(0))


# Raw stored values: packed ones, containers with bytes after them or cut
# short, maps msgpack's bulk call refuses (an array as a map key), junk.
_RAW = st.one_of(
    _values.map(pure_core.pack_value),
    st.builds(lambda v, extra: v + extra, _values.map(pure_core.pack_value),
              st.binary(min_size=1, max_size=2)),
    st.builds(lambda v, cut: v[:cut] or b"\xc1", _values.map(pure_core.pack_value),
              st.integers(0, 12)),
    st.sampled_from([b"\x81\x92\x01\x02\xa1v", b"\x81\x01\x02", b"\x92\x01", b"\xc1",
                     b"\x81\xa1a\xc1", b"\xd4\x05\x01"]),
)


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 - compared between the twins
        return "error", type(e).__name__


def _batched(copy, max_rows):
    got, cursor = [], 0
    while cursor >= 0:
        keys, values, cursor = copy._batch(cursor, max_rows)
        assert len(keys) == len(values) <= max_rows and (keys or cursor == -1)
        got.extend((repr(k), repr(v)) for k, v in zip(keys, values))
    return sorted(got)


@settings(max_examples=80, deadline=None)
@given(raws=st.lists(_RAW, max_size=30), max_rows=st.integers(1, 8))
def test_batch_decodes_as_unpack_value_does_on_both_cores(raws, max_rows):
    """A view's batches decode containers many at a time: every value, or an
    error, must be what unpack_value gives on each stored value alone."""
    outcomes = []
    for core in (native_core, pure_core):
        t = core.KVTable()
        for i, raw in enumerate(raws):
            t._put_raw(core.encode_key(i), raw)
        one_by_one = _outcome(lambda: sorted((repr(core.decode_key(k)),
                                              repr(core.unpack_value(v)))
                                             for k, v in t._items_raw()))
        got = _outcome(_batched, t._copy(), max_rows)
        assert got[0] == one_by_one[0] and (got[0] == "error" or got == one_by_one)
        outcomes.append(got)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("bad", ["key", "value", "none"])
def test_put_pairs_puts_all_or_nothing(core, bad):
    t = core.KVTable()
    t._put_raw(core.encode_key("kept"), core.pack_value(1))
    pairs = [(i, {"i": i}) for i in range(40)]
    if bad == "key":
        pairs[17] = (1.5, 1)
    elif bad == "value":
        pairs[17] = (17, {"x": object()})
    assert t._put_pairs(pairs) is (bad == "none")
    assert len(t) == (41 if bad == "none" else 1)
    if bad == "none":
        assert t.to_dict() == {"kept": 1, **dict(pairs)}


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(items=st.dictionaries(_keys, _values, max_size=30), fn_kind=st.integers(0, 1),
       salt=st.integers(0, 12), kind=st.sampled_from(sorted(KINDS)))
def test_an_offline_run_leaves_fn_of_each_record(core, items, fn_kind, salt, kind):
    """Through the store: the migrated table is {k: fn(k, v)} minus DELETEs,
    after the open and after a reopen."""
    import tempfile

    fn = _fn_of(fn_kind, salt)
    want = {}
    for k, v in items.items():
        out = fn(k, v)
        if out is not DELETE:
            want[k] = core.unpack_value(core.pack_value(out))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s")
        with Store.open(path, tables=KINDS[kind]) as s:
            for k, v in items.items():
                s.put("users", k, v)
        mig = Migrations()
        mig.migration("m", table="users", to_version=2, per_record=True)(fn)
        for _ in range(2):
            with Store.open(path, tables=KINDS[kind], migrations=mig) as s:
                assert s.table("users").to_dict() == want
                assert [e["id"] for e in s.ledger] == ["m"]
