"""NumericTable (kind 4): numeric columns indexed by row.

Every test runs against both cores (the autouse ``core`` fixture); the
model is a dict of numpy arrays that the same ops are applied to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import (
    ConfigError,
    CorruptionError,
    InvalidOperationError,
    NumericTable,
    Store,
)
from rehydrate.snapshot import SNAPSHOTS_DIR, snapshot_name

COLUMNS = {"hits": "int64", "score": "float64"}
ROWS = 64
INT64_MAX = (1 << 63) - 1


def tables(rows=ROWS, columns=None):
    return {"stats": NumericTable(columns or COLUMNS, rows=rows)}


def model_of(t: NumericTable) -> dict:
    return {name: np.array(t.column(name)) for name in t.columns}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_put_incr_delete_clear_and_reads(store_dir):
    with Store.open(store_dir, tables=tables()) as s:
        s.put("stats", 3, {"score": 0.5, "hits": 2})
        s.incr("stats", 3, 5, column="hits")
        s.incr("stats", 4, 1.25, column="score")
        s.incr("stats", 4, 2, column="score")  # an int delta on a float column
        t = s.table("stats")
        assert t[3] == {"hits": 7, "score": 0.5} and t[4] == {"hits": 0, "score": 3.25}
        assert len(t) == ROWS and t.rows == ROWS and t.columns == COLUMNS
        hits = t.column("hits")
        assert hits.dtype == np.int64 and hits[3] == 7 and not hits.flags.writeable
        with pytest.raises(ValueError):
            hits[0] = 1  # a read-only view
        s.delete("stats", 3)
        assert t[3] == {"hits": 0, "score": 0.0} and hits[3] == 0  # the view follows writes
        s.put("stats", 1, {"hits": 1})
        s.clear("stats")
        assert not t.column("hits").any() and not t.column("score").any()


@pytest.mark.parametrize("call, exc", [
    (lambda s: s.put("stats", ROWS, {"hits": 1}), InvalidOperationError),  # row past the end
    (lambda s: s.put("stats", -1, {"hits": 1}), InvalidOperationError),
    (lambda s: s.put("stats", "1", {"hits": 1}), InvalidOperationError),  # not an int row
    (lambda s: s.put("stats", 1, {"nope": 1}), InvalidOperationError),  # unknown column
    (lambda s: s.put("stats", 1, {"hits": 1.5}), InvalidOperationError),  # float into int64
    (lambda s: s.put("stats", 1, {"hits": True}), InvalidOperationError),
    (lambda s: s.put("stats", 1, {"hits": 1 << 63}), InvalidOperationError),
    (lambda s: s.put("stats", 1, {"score": "x"}), InvalidOperationError),
    (lambda s: s.put("stats", 1, {}), InvalidOperationError),
    (lambda s: s.put("stats", 1, 5), InvalidOperationError),
    (lambda s: s.incr("stats", 1, 1), InvalidOperationError),  # no column
    (lambda s: s.incr("stats", 1, 0.5, column="hits"), InvalidOperationError),
    (lambda s: s.incr("stats", 2, 1, column="hits"), InvalidOperationError),  # overflow
    (lambda s: s.incr("stats", 1, 1, column="nope"), InvalidOperationError),
    (lambda s: s.incr("kv", 1, 1, column="hits"), ConfigError),  # column= on a kv table
])
def test_bad_writes_are_refused_before_anything_is_logged(store_dir, call, exc):
    with Store.open(store_dir, tables=tables()) as s:
        s.put("kv", 1, 0)
        s.put("stats", 2, {"hits": INT64_MAX, "score": 1.0})
        lsn, before = s.lsn, model_of(s.table("stats"))
        with pytest.raises(exc):
            call(s)
        assert s.lsn == lsn and same(model_of(s.table("stats")), before)
    with Store.open(store_dir, tables=tables()) as s:
        assert s.lsn == lsn and same(model_of(s.table("stats")), before)


@pytest.mark.parametrize("bad", [
    NumericTable, {}, "int64", None,
])
def test_bad_declarations_are_config_errors(store_dir, bad):
    with pytest.raises(ConfigError):
        Store.open(store_dir, tables={"stats": bad if bad is NumericTable
                                      else NumericTable(bad, rows=3)})


@pytest.mark.parametrize("columns, rows", [
    ({"a": "int8"}, 3), ({"": "int64"}, 3), ({1: "int64"}, 3), ({"a": "int64"}, 0),
    ({"a": "int64"}, 1 << 31), ({"a": "int64"}, 2.0),
])
def test_bad_schemas_are_config_errors(columns, rows):
    with pytest.raises(ConfigError):
        NumericTable(columns, rows=rows)


def test_a_declaration_is_not_a_live_table():
    spec = NumericTable(COLUMNS, rows=4)
    with pytest.raises(ConfigError):
        spec.column("hits")
    assert spec.schema() == {"columns": [["hits", "int64"], ["score", "float64"]], "rows": 4}


def test_another_schema_at_open_is_refused_and_a_reader_needs_no_code(store_dir):
    with Store.open(store_dir, tables=tables()) as s:
        s.put("stats", 1, {"hits": 4})
    for other in (tables(rows=ROWS + 1), tables(columns={"hits": "float64", "score": "float64"}),
                  {"stats": rh.DictTable}, None):
        with pytest.raises(ConfigError) as e:
            Store.open(store_dir, tables=other)
        assert "stats" in str(e.value)
    # verify, dump and digest read it without the declaration.
    assert rh.verify(store_dir).last_lsn == 1
    from rehydrate.digest import digest_dir

    with Store.open(store_dir, tables=tables()) as s:
        assert digest_dir(store_dir)["digest"] == f"{s.digest():016x}"


def test_a_batch_is_all_or_nothing_on_a_numeric_table(store_dir):
    with Store.open(store_dir, tables=tables()) as s:
        s.put("stats", 1, {"hits": 1, "score": 1.0})
        with pytest.raises(InvalidOperationError):
            with s.batch() as b:
                b.put("stats", 1, {"hits": 5})
                b.delete("stats", 1)
                b.clear("stats")
                b.put("stats", 2, {"hits": 9})
                b.put("stats", ROWS, {"hits": 1})  # refused: the batch is undone
        assert s.table("stats")[1] == {"hits": 1, "score": 1.0} and s.table("stats")[2]["hits"] == 0
        with s.batch() as b:
            b.put("stats", 1, {"hits": 5})
            b.put("kv", "k", 1)
        lsn = s.lsn
    with Store.open(store_dir, tables=tables()) as s:
        assert s.lsn == lsn and s.table("stats")[1]["hits"] == 5 and s.table("kv")["k"] == 1


OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, ROWS - 1),
              st.dictionaries(st.sampled_from(["hits", "score"]),
                              st.integers(-1000, 1000), min_size=1)),
    st.tuples(st.just("incr"), st.integers(0, ROWS - 1), st.integers(-50, 50),
              st.sampled_from(["hits", "score"])),
    st.tuples(st.just("delete"), st.integers(0, ROWS - 1)),
    st.tuples(st.just("clear")),
    st.tuples(st.just("checkpoint")),
    st.tuples(st.just("reopen")),
), max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_replay_snapshots_and_reopen_equal_the_model(tmp_path_factory, ops):
    d = str(tmp_path_factory.mktemp("num"))
    model = {"hits": np.zeros(ROWS, np.int64), "score": np.zeros(ROWS, np.float64)}
    s = Store.open(d, tables=tables(), keep_snapshots=2)
    try:
        for op in ops:
            if op[0] == "put":
                s.put("stats", op[1], op[2])
                for c, v in op[2].items():
                    model[c][op[1]] = v
            elif op[0] == "incr":
                s.incr("stats", op[1], op[2], column=op[3])
                model[op[3]][op[1]] += op[2]
            elif op[0] == "delete":
                s.delete("stats", op[1])
                model["hits"][op[1]] = model["score"][op[1]] = 0
            elif op[0] == "clear":
                s.clear("stats")
                model["hits"][:] = model["score"][:] = 0
            elif op[0] == "checkpoint":
                s.checkpoint()
            else:
                digest = s.digest()
                s.close()
                s = Store.open(d, tables=tables(), keep_snapshots=2)
                assert s.digest() == digest
            if "stats" in s.tables():
                assert same(model_of(s.table("stats")), model)
    finally:
        s.close()


def test_a_snapshot_loads_as_a_private_mapping_and_writes_never_reach_the_file(store_dir):
    with Store.open(store_dir, tables=tables(rows=10_000)) as s:
        s.put("stats", 9_999, {"hits": 3})
        lsn = s.checkpoint()["lsn"]
    snap = os.path.join(store_dir, SNAPSHOTS_DIR, snapshot_name(lsn))
    before = open(os.path.join(snap, "0.arrow"), "rb").read()
    with Store.open(store_dir, tables=tables(rows=10_000)) as s:
        hits = s.table("stats").column("hits")
        assert s.recovery_report.applied == 0 and hits[9_999] == 3
        base = hits
        while getattr(base, "base", None) is not None and not isinstance(base.base, memoryview):
            base = base.base
        assert isinstance(base.base, memoryview)  # a view of the file's mapping: no copy
        s.incr("stats", 9_999, 1, column="hits")
        assert s.table("stats")[9_999]["hits"] == 4
    assert open(os.path.join(snap, "0.arrow"), "rb").read() == before
    with Store.open(store_dir, tables=tables(rows=10_000)) as s:
        assert s.table("stats")[9_999]["hits"] == 4


@pytest.mark.parametrize("damage", ["flip", "truncate", "schema"])
def test_a_damaged_numeric_snapshot_falls_back_losslessly(store_dir, damage):
    with Store.open(store_dir, tables=tables()) as s:
        for i in range(ROWS):
            s.put("stats", i, {"hits": i, "score": i / 2})
        s.checkpoint()
        s.incr("stats", 5, 100, column="hits")
        lsn = s.checkpoint()["lsn"]
        digest = s.digest()
    snap = os.path.join(store_dir, SNAPSHOTS_DIR, snapshot_name(lsn))
    path = os.path.join(snap, "0.arrow")
    data = bytearray(open(path, "rb").read())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        del data[-100:]
    if damage == "schema":  # META names another schema (its own checksum made right)
        import struct

        from rehydrate import snapshot as S

        meta = S.read_meta(snap)
        meta["tables"][0]["schema"]["rows"] = ROWS * 2
        payload = json.dumps(meta, sort_keys=True).encode()
        with open(os.path.join(snap, "META"), "wb") as f:
            f.write(struct.pack("<8sII", S.META_MAGIC, len(payload),
                                rh._backend.core().crc32c(payload)) + payload)
    else:
        with open(path, "wb") as f:
            f.write(data)
    if damage == "schema":
        # META's schema disagrees with tables=: a typed refusal, never a wrong state.
        for mode in ("strict", "tolerate-tail"):
            with pytest.raises(ConfigError):
                Store.open(store_dir, tables=tables(), recovery=mode)
        return
    with pytest.raises(CorruptionError):
        Store.open(store_dir, tables=tables(), recovery="strict")
    with Store.open(store_dir, tables=tables()) as s:
        assert s.digest() == digest
        assert [p.kind for p in s.recovery_report.problems] == ["bad_snapshot"]


def test_replay_of_numeric_ops_in_a_child_process_matches(store_dir, core_env):
    with Store.open(store_dir, tables=tables(rows=1000)) as s:
        for i in range(3000):
            s.incr("stats", i % 1000, 1, column="hits")
            if i % 7 == 0:
                s.put("stats", i % 1000, {"score": i * 0.25})
        digest = s.digest()
    code = ("import rehydrate as rh, sys; s = rh.Store.open(sys.argv[1], tables={'stats': "
            "rh.NumericTable({'hits': 'int64', 'score': 'float64'}, rows=1000)}); "
            "print(s.digest(), int(s.table('stats').column('hits').sum()))")
    out = subprocess.run([sys.executable, "-c", code, store_dir], env=core_env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == [str(digest), "3000"]


def _append_frame(store_dir, lsn, records):
    """Append one frame of hand-made numeric records (op, row key bytes,
    value bytes) after LSN ``lsn``: what no writer of ours produces. A
    writer that appends has removed the clean-close record first, so the
    directory is left as that writer's crash would leave it."""
    from helpers import corrupt as C
    from rehydrate import _backend
    from rehydrate import _format as F

    c = _backend.core()
    recs = b"".join(bytes((op,)) + c.encode_varint(0) + c.encode_varint(len(kb)) + kb
                    + c.encode_varint(len(vb)) + vb for op, kb, vb in records)
    schema = tables()["stats"]._schema_bytes()
    frame = c.encode_frame(lsn + 1, len(records), [(0, F.KIND_NUMERIC, b"stats", schema)], recs)
    C.as_crashed(store_dir)
    seg = sorted(os.listdir(os.path.join(store_dir, "wal")))[-1]
    with open(os.path.join(store_dir, "wal", seg), "ab") as f:
        f.write(frame)


@pytest.mark.parametrize("value, row", [
    ({"hits": 1.5}, 1),  # a float for an int64 column
    ({"nope": 1}, 1),  # no such column
    ({"hits": 1}, ROWS),  # a row past the end
    ({"hits": 1}, -1),
    ({"hits": "x"}, 1),
    ([1, 2], 1),  # not a map
])
def test_a_numeric_record_no_writer_makes_fails_replay_typed(store_dir, core, value, row):
    with Store.open(store_dir, tables=tables(), sync="always") as s:
        s.put("stats", 1, {"hits": 7})
        lsn = s.lsn
    good = (1, core.encode_key(2), core.pack_value({"hits": 3, "score": 0.5}))
    _append_frame(store_dir, lsn, [good, (1, core.encode_key(row), core.pack_value(value))])
    assert rh.verify(store_dir).ok  # structure and checksums are fine
    assert [p.kind for p in rh.verify(store_dir, deep=True).problems] == ["apply_error"]
    with pytest.raises(CorruptionError) as ei:
        Store.open(store_dir, tables=tables())
    assert ei.value.reason == "apply_error"


def test_hand_made_records_in_every_msgpack_number_form_replay_like_the_writer(store_dir, core):
    import msgpack
    import struct

    with Store.open(store_dir, tables=tables(), sync="always") as s:
        s.put("stats", 0, {"hits": 1})
        lsn = s.lsn
    forms = [  # (packed value for hits, expected)
        (b"\x05", 5), (b"\xe0", -32), (b"\xcc\xff", 255), (b"\xcd\x01\x00", 256),
        (b"\xce\x00\x01\x00\x00", 65536), (b"\xcf" + (1 << 40).to_bytes(8, "big"), 1 << 40),
        (b"\xd0\x80", -128), (b"\xd1\x80\x00", -32768), (b"\xd2\x80\x00\x00\x00", -(1 << 31)),
        (b"\xd3" + (-(1 << 62)).to_bytes(8, "big", signed=True), -(1 << 62)),
    ]
    records, want = [], {}
    for row, (packed, expect) in enumerate(forms, start=1):
        records.append((1, core.encode_key(row), b"\x81\xa4hits" + packed))
        want[row] = expect
    # float64 and float32 for the float column, a map16 header, a str8 key
    records.append((1, core.encode_key(20), b"\x81\xa5score\xcb" + struct.pack(">d", 2.5)))
    records.append((1, core.encode_key(21), b"\x81\xa5score\xca" + struct.pack(">f", 0.25)))
    records.append((1, core.encode_key(22), b"\xde\x00\x01\xd9\x04hits\x07"))
    records.append((2, core.encode_key(0), b""))  # delete row 0
    _append_frame(store_dir, lsn, records)
    with Store.open(store_dir, tables=tables()) as s:
        t = s.table("stats")
        assert {r: t[r]["hits"] for r in want} == want
        assert t[20]["score"] == 2.5 and t[21]["score"] == 0.25 and t[22]["hits"] == 7
        assert t[0] == {"hits": 0, "score": 0.0}
        assert msgpack.unpackb(t._get_raw(core.encode_key(22))) == {"hits": 7, "score": 0.0}
