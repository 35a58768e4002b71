"""Data out (docs/tables.md, "Data out"): ``to_arrow()`` on KV, dict and
numeric tables, the type mapping, ``from_arrow`` the way back, pandas and
polars through Arrow, a background open's views, and exports beside writers.

Every test runs on both cores (the autouse ``core`` fixture); the property
tests also build each table in both cores and require the same Arrow table.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import ConfigError, DictTable, NumericTable, StateType, Store, _backend
from rehydrate.export import ENCODING, MSGPACK, from_arrow

INT64_MIN, INT64_MAX, UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
NATIVE, PURE = _backend.load("native"), _backend.load("pure")


def tagged(x):
    """``x`` with every type spelled out, so equality is type fidelity:
    1 != 1.0 != True, NaN == NaN, -0.0 != 0.0, dict key order counts."""
    t = type(x)
    if t is float:
        return ("float", repr(x))
    if t in (list, tuple):
        return (t.__name__, tuple(map(tagged, x)))
    if t is dict:
        return ("dict", tuple((tagged(k), tagged(v)) for k, v in x.items()))
    return (t.__name__, x)


def same_arrow(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas (metadata too) and equal rows, NaN equal to NaN
    (``Table.equals`` says NaN differs from itself)."""
    return a.schema.equals(b.schema, check_metadata=True) and \
        tagged(a.to_pylist()) == tagged(b.to_pylist())


def same_items(a: dict, b: dict) -> bool:
    return sorted(map(repr, map(tagged, a.items()))) == sorted(map(repr, map(tagged, b.items())))


# -- tables built straight from the cores' classes -----------------------------

def kv_table(core, items):
    t = core.KVTable()
    t._put_items(items.items())
    return t


def dict_table(core, items):
    t = DictTable(core, "d")
    for k, v in items.items():
        t._put_raw(core.encode_key(k), core.pack_value(v))
    return t


MAKERS = {"kv": kv_table, "dict": dict_table}


def exports(table):
    """The table's export with no store (the GIL-held copy) and as a store
    hands it out (the checkpoint copy under a lock): they must agree."""
    bare = table.to_arrow()
    lock = threading.Lock()
    table._export_lock = lambda: lock
    try:
        locked = table.to_arrow()
    finally:
        table._export_lock = None
    assert same_arrow(locked, bare)
    assert not lock.locked()
    return bare


# -- what the mapping promises ------------------------------------------------

def expected_type(xs):
    """The Arrow type a column of ``xs`` must get, or None where the mapping
    lets Arrow's inference or msgpack decide (checked by the round trip)."""
    kinds = {type(x) for x in xs if x is not None}
    if not kinds:
        return pa.null()
    if len(kinds) > 1:
        return None
    (kind,) = kinds
    if kind is int:
        ints = [x for x in xs if x is not None]
        if INT64_MIN <= min(ints) and max(ints) <= INT64_MAX:
            return pa.int64()
        return pa.uint64() if min(ints) >= 0 else None
    return {float: pa.float64(), bool: pa.bool_(), str: pa.string(),
            bytes: pa.binary()}.get(kind)


def check_export(out: pa.Table, items: dict) -> None:
    assert out.column_names == ["key", "value"]
    assert out.num_rows == len(items)
    assert same_items(from_arrow(out), items)
    for name, xs in (("key", list(items)), ("value", list(items.values()))):
        field = out.schema.field(name)
        msgpack = (field.metadata or {}).get(ENCODING) == MSGPACK
        want = expected_type(xs)
        if want is not None:
            assert field.type == want and not msgpack, (name, field)
        elif msgpack:
            assert field.type == pa.binary()
        # else: Arrow's own type, kept only because it reads back exactly
        # (the round trip above).
    keys = out.column("key").to_pylist()
    assert keys == sorted(keys)  # rows sorted by key (msgpack keys: by their bytes)


INT64 = st.integers(INT64_MIN, INT64_MAX)
TEXT = st.text(max_size=6)
BINARY = st.binary(max_size=6)
KEY_KINDS = [INT64, TEXT, BINARY, st.one_of(INT64, TEXT, BINARY)]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(INT64_MIN, UINT64_MAX),
                    st.floats(), TEXT, BINARY)
NESTED = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(TEXT, st.integers(-3, 3)), inner,
                                            max_size=3)),
    max_leaves=6)
VALUE_KINDS = [
    INT64, st.one_of(st.none(), INT64), st.integers(0, UINT64_MAX), st.floats(),
    st.one_of(st.none(), st.floats()), st.booleans(), TEXT, BINARY, st.none(),
    st.one_of(INT64, st.floats()), st.one_of(INT64, TEXT),
    st.fixed_dictionaries({"n": INT64, "s": TEXT}),                 # records: a struct
    st.fixed_dictionaries({"n": INT64}, optional={"s": TEXT}),      # fields missing
    st.lists(INT64, max_size=3), NESTED,
]


@st.composite
def tables(draw):
    keys = draw(st.sampled_from(KEY_KINDS))
    values = draw(st.sampled_from(VALUE_KINDS))
    return draw(st.dictionaries(keys, values, max_size=12))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=tables(), kind=st.sampled_from(sorted(MAKERS)))
@example(items={}, kind="kv")
@example(items={1: {(1, 2): "tuple key"}, 2: {"a": [1.5, None]}}, kind="kv")
@example(items={"a": float("nan"), "b": -0.0, "c": None}, kind="dict")
@example(items={1: 2**64 - 1, 2: 0}, kind="kv")
@example(items={1: 2**64 - 1, 2: -1}, kind="kv")
@example(items={"x": {}, "y": {}}, kind="dict")
@example(items={"x": {"a": 1, "b": 2}, "y": {"b": 3, "a": 4}}, kind="kv")
@example(items={1: True, 2: 1}, kind="kv")
@example(items={1: [1, 2.5]}, kind="kv")
def test_to_arrow_round_trips_exactly_and_the_cores_agree(items, kind):
    make = MAKERS[kind]
    native, pure = exports(make(NATIVE, items)), exports(make(PURE, items))
    assert same_arrow(native, pure)
    check_export(native, make(NATIVE, items).to_dict())
    if kind == "kv":
        # A DictTable with the same content exports the same table.
        assert same_arrow(exports(dict_table(PURE, items)), native)


def test_empty_table_has_null_columns(core):
    for table in (kv_table(core, {}), dict_table(core, {})):
        out = table.to_arrow()
        assert out.num_rows == 0
        assert out.schema == pa.schema([("key", pa.null()), ("value", pa.null())])
        assert from_arrow(out) == {}


def test_the_documented_mapping(core):
    cases = {
        "int64": ({1: 5, 2: None}, pa.int64()),
        "uint64": ({1: 2**63, 2: 0}, pa.uint64()),
        "float64": ({1: 0.5, 2: float("nan")}, pa.float64()),
        "bool": ({1: True, 2: False}, pa.bool_()),
        "string": ({1: "a"}, pa.string()),
        "binary": ({1: b"a"}, pa.binary()),
        "null": ({1: None}, pa.null()),
        "struct": ({1: {"n": 1, "s": "a"}, 2: {"n": 2, "s": None}},
                   pa.struct([("n", pa.int64()), ("s", pa.string())])),
        "list": ({1: [1, 2], 2: []}, pa.list_(pa.int64())),
    }
    for name, (items, want) in cases.items():
        out = kv_table(core, items).to_arrow()
        assert out.schema.field("value").type == want, name
        assert out.schema.field("value").metadata is None, name
        assert out.schema.field("key").type == pa.int64()
        assert same_items(from_arrow(out), items), name
    # What Arrow cannot hold exactly is msgpack bytes, flagged, never a lossy type.
    for items in ({1: 1, 2: 1.5}, {1: 1, 2: "a"}, {1: {"a": 1}, 2: {"b": 2}},
                  {1: {"a": 1, "b": 2}, 2: {"b": 1, "a": 2}}, {1: {7: "int key"}},
                  {1: 2**64 - 1, 2: -1}):
        out = kv_table(core, items).to_arrow()
        field = out.schema.field("value")
        assert (field.type, field.metadata) == (pa.binary(), {ENCODING: MSGPACK}), items
        assert same_items(from_arrow(out), items)
    out = kv_table(core, {"a": 1, b"a": 2, 1: 3}).to_arrow()
    assert out.schema.field("key").metadata == {ENCODING: MSGPACK}
    assert same_items(from_arrow(out), {"a": 1, b"a": 2, 1: 3})


# -- through a store ----------------------------------------------------------

class TopK(StateType):
    def __init__(self):
        self.top = {}

    def apply(self, op, key, value):
        if op == "put":
            self.top[key] = value


NUMERIC = NumericTable({"hits": "int64", "score": "float64"}, rows=1000)


def test_store_tables_export_and_pandas_polars_read_them(store_dir):
    import pandas as pd
    import polars as pl

    with Store.open(store_dir, tables={"d": DictTable, "n": NUMERIC, "top": TopK}) as s:
        s.put("kv", "b", {"n": 2, "tags": ["x"]})
        s.put("kv", "a", {"n": 1, "tags": []})
        s.put("d", 2, 2.5)
        s.put("d", 1, None)
        s.put("n", 3, {"hits": 7, "score": 0.25})
        s.put("top", "k", 1)
        kv = s.table("kv").to_arrow()
        assert kv.to_pylist() == [{"key": "a", "value": {"n": 1, "tags": []}},
                                  {"key": "b", "value": {"n": 2, "tags": ["x"]}}]
        frame = kv.to_pandas()
        assert list(frame["key"]) == ["a", "b"] and frame["value"][1] == {"n": 2, "tags": ["x"]}
        assert pl.from_arrow(kv).to_dicts() == kv.to_pylist()
        d = s.table("d").to_arrow()
        assert d.schema.field("value").type == pa.float64()
        assert pl.from_arrow(d)["value"].to_list() == [None, 2.5]
        assert pd.isna(d.to_pandas()["value"][0])
        n = s.table("n").to_arrow()
        assert n.schema == pa.schema([("hits", pa.int64()), ("score", pa.float64())])
        assert n.num_rows == 1000 and n.slice(3, 1).to_pylist() == [{"hits": 7, "score": 0.25}]
        assert pl.from_arrow(n)["hits"].sum() == 7
        assert n.to_pandas()["score"].sum() == 0.25
        with pytest.raises(ConfigError) as e:
            s.table("top").to_arrow()
        assert e.value.reason == "no_export"


def test_numeric_export_is_a_copy(store_dir):
    with Store.open(store_dir, tables={"n": NUMERIC}) as s:
        s.put("n", 1, {"hits": 1, "score": 1.0})
        table = s.table("n")
        out = table.to_arrow()
        s.put("n", 1, {"hits": 2, "score": 2.0})
        s.clear("n")
        assert out.slice(1, 1).to_pylist() == [{"hits": 1, "score": 1.0}]
        live = table.column("hits")
        assert not np.shares_memory(out.column("hits").to_numpy(), live)
        assert table.to_arrow().column("hits").to_pylist() == [0] * 1000


def test_numeric_export_after_reopen_from_a_snapshot(store_dir):
    with Store.open(store_dir, tables={"n": NUMERIC}) as s:
        s.put("n", 999, {"hits": -5, "score": math.pi})
        s.checkpoint()
    with Store.open(store_dir, tables={"n": NUMERIC}) as s:
        out = s.table("n").to_arrow()
        assert out.slice(999, 1).to_pylist() == [{"hits": -5, "score": math.pi}]


def test_big_table(store_dir):
    n = 200_000
    with Store.open(store_dir) as s:
        with s.batch() as b:
            for i in range(n):
                b.put("big", i, f"v{i}")
        out = s.table("big").to_arrow()
        assert out.schema == pa.schema([("key", pa.int64()), ("value", pa.string())])
        assert out.column("key").to_pylist() == list(range(n))
        assert out.column("value")[n - 1].as_py() == f"v{n - 1}"
        assert from_arrow(out) == s.table("big").to_dict()


# -- a background open: the view waits for its table --------------------------

def test_view_of_a_table_not_ready_waits_then_exports(store_dir):
    with Store.open(store_dir, segment_bytes=4096) as s:
        for i in range(300):
            s.put("t", i, i)
            if i % 20 == 19:
                s.sync()  # many frames, several segments: the replay has steps
    gate, held = threading.Event(), threading.Event()

    def progress(done, total):
        if not held.is_set():
            held.set()
            gate.wait()

    s = Store.open_background(store_dir, progress=progress, segment_bytes=4096)
    try:
        assert held.wait(60)
        view = s.table("t")
        assert not view.ready
        result, errors = [], []

        def export():
            try:
                result.append(view.to_arrow())
            except BaseException as e:  # noqa: BLE001 - handed to the test
                errors.append(e)

        reader = threading.Thread(target=export)
        reader.start()
        assert not view.ready and not result  # still held: the export waits
        # A write taken during the replay is in the export too.
        s.put("t", 1000, 1000)
        gate.set()
        reader.join(60)
        assert not reader.is_alive() and not errors
        assert from_arrow(result[0]) == {**{i: i for i in range(300)}, 1000: 1000}
    finally:
        gate.set()
        s.close()


# -- exports beside writers ----------------------------------------------------

GROUPS, GROUP_KEYS = 20, 5


def test_exports_beside_writers_see_whole_batches(store_dir):
    """A writer commits batches that set every key of a group (and every
    numeric row of it) to one version; each export must show each group at
    one version: no half batch, no torn row, no error."""
    tables = {"d": DictTable, "n": NumericTable({"v": "int64", "neg": "int64"}, rows=GROUPS)}
    with Store.open(store_dir, tables=tables) as s:
        def commit(g, version):
            with s.batch() as b:
                for j in range(GROUP_KEYS):
                    b.put("kv", f"{g}/{j}", version)
                    b.put("d", f"{g}/{j}", [version, str(version)])
                b.put("n", g, {"v": version, "neg": -version})

        for g in range(GROUPS):
            commit(g, 0)
        stop, committed, failures = threading.Event(), threading.Event(), []

        def writer():
            version = 0
            try:
                while not stop.is_set():
                    version += 1
                    commit(version % GROUPS, version)
                    committed.set()
            except BaseException as e:  # noqa: BLE001 - handed to the test
                failures.append(e)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert committed.wait(60)
            seen = set()
            for _ in range(30):
                kv = from_arrow(s.table("kv").to_arrow())
                d = from_arrow(s.table("d").to_arrow())
                n = s.table("n").to_arrow().to_pydict()
                assert len(kv) == len(d) == GROUPS * GROUP_KEYS
                for g in range(GROUPS):
                    versions = {kv[f"{g}/{j}"] for j in range(GROUP_KEYS)}
                    assert len(versions) == 1, (g, versions)
                    rows = {tuple(d[f"{g}/{j}"]) for j in range(GROUP_KEYS)}
                    assert len(rows) == 1 and all(r == (v, str(v)) for r in rows
                                                  for v in [r[0]]), (g, rows)
                    assert n["v"][g] == -n["neg"][g]
                    seen |= versions
        finally:
            stop.set()
            thread.join(60)
        assert not failures
        assert len(seen) > 1  # exports saw the writer's batches
