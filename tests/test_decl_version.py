"""A table's version in frame declarations (docs/FORMAT.md, "Table declarations").

Bit 0x80 of a declaration's kind byte says a ``version:varint`` (>= 2) ends
the declaration; without it the version is 1 and the bytes are those of a
declaration before versions existed. Both cores must write the same bytes,
pass the same version to ``registry.declare`` and refuse the same damage.
"""

import struct

import msgpack
import pytest

import rehydrate as rh
from hypothesis import given
from hypothesis import strategies as st

import rehydrate._core as C
import rehydrate._pure as P
from rehydrate import Store, _backend, verify
from rehydrate import _format as F
from rehydrate.dump import dump_records
from rehydrate.tables import TableRegistry

from helpers import corrupt as corrupt
from test_core_twins import SETTINGS, Registry, _refreshed_crc, same, scan_both

U32_MAX = 2**32 - 1
SCHEMA = msgpack.packb({"columns": [["a", "int64"]], "rows": 4})


@pytest.fixture(autouse=True)
def core():
    """These tests name both cores themselves: run each once, not per core."""
    yield C


def _put(tid, key, value):
    kb, vb = C.encode_key(key), C.pack_value(value)
    return (bytes((F.OP_PUT,)) + C.encode_varint(tid) + C.encode_varint(len(kb)) + kb
            + C.encode_varint(len(vb)) + vb)


def _scan(mod, buf):
    """(ScanResult dict, declare calls, table contents) of one core's scan."""
    reg = Registry(mod)
    res = mod.scan_frames(buf, 0, 1, 0, mod.SegmentContext(reg))
    tables = {name: sorted(t._items_raw()) for name, t in reg.by_name.items()}
    return res.as_dict(), reg.calls, tables


def _frame_of_payload(raw, count=1, first_lsn=1):
    """A frame around ``raw`` (uncompressed) with a valid checksum."""
    header = struct.pack("<IIQIIIBBHI", F.FRAME_MAGIC, 0, first_lsn, count, len(raw), len(raw),
                         F.CODEC_NONE, 0, 0, 0)
    return _refreshed_crc(header + raw)


# ------------------------------------------------------------- round trip

@pytest.mark.parametrize("version", [1, 2, 127, 128, 16384, U32_MAX])
@pytest.mark.parametrize("big", [False, True])
def test_versions_reach_the_registry_the_same_on_both_cores(version, big):
    decls = [(0, F.KIND_KV, b"kv", b"", version),
             (1, F.KIND_NUMERIC, b"num", SCHEMA, version),
             (2, F.KIND_DICT, b"d", b"", 2)]
    value = "x" * 2000 if big else "x"  # big: the payload is stored as LZ4
    recs = _put(0, "a", value) + _put(1, 3, {"a": 7}) + _put(2, "b", [1, 2])
    frame = C.encode_frame(1, 3, decls, recs)
    assert frame == P.encode_frame(1, 3, decls, recs)
    assert C.parse_frame_header(frame, 0).codec == (F.CODEC_LZ4 if big else F.CODEC_NONE)
    # A second frame declares one table again, at another version.
    second = C.encode_frame(4, 1, [(0, F.KIND_KV, b"kv", b"", 9)], _put(0, "c", 1))
    buf = frame + second
    native, pure = _scan(C, buf), _scan(P, buf)
    assert native == pure
    res, calls, tables = pure
    assert res["status"] == F.SCAN_OK and res["frames"] == 2 and res["applied"] == 4
    assert calls == [(0, F.KIND_KV, b"kv", b"", version),
                     (1, F.KIND_NUMERIC, b"num", SCHEMA, version),
                     (2, F.KIND_DICT, b"d", b"", 2),
                     (0, F.KIND_KV, b"kv", b"", 9)]
    assert len(tables[b"kv"]) == 2
    scan_both(buf)
    scan_both(buf, apply=False)


@pytest.mark.parametrize("version", [1, 2, U32_MAX])
def test_decode_payload_gives_five_tuples(version):
    recs = _put(0, "a", 1)
    for kind, schema in ((F.KIND_KV, b""), (F.KIND_NUMERIC, SCHEMA)):
        frame = C.encode_frame(1, 1, [(0, kind, b"t", schema, version)], recs)
        got = same("decode_payload", frame[F.FRAME_HEADER_BYTES:], 1, set())
        assert got == ("ok", ([(0, kind, b"t", schema, version)], [(F.OP_PUT, 0,
                                                                   C.encode_key("a"),
                                                                   C.pack_value(1))]))


def test_the_version_field_follows_the_name_and_the_schema():
    rec = bytes((F.OP_CLEAR, 0, 0, 0))
    for mod in (C, P):
        body = mod.encode_frame(1, 1, [(0, F.KIND_KV, b"t", b"", 2)], rec)[F.FRAME_HEADER_BYTES:]
        assert body == b"\x01" + b"\x00\x81\x01t\x02" + rec
        body = mod.encode_frame(1, 1, [(0, F.KIND_NUMERIC, b"t", SCHEMA, 300)],
                                rec)[F.FRAME_HEADER_BYTES:]
        assert body == (b"\x01" + b"\x00\x84\x01t" + C.encode_varint(len(SCHEMA)) + SCHEMA
                        + b"\xac\x02" + rec)
        body = mod.encode_frame(1, 1, [(0, F.KIND_KV, b"t", b"", U32_MAX)],
                                rec)[F.FRAME_HEADER_BYTES:]
        assert body == b"\x01" + b"\x00\x81\x01t\xff\xff\xff\xff\x0f" + rec


# ------------------------------------------------- version 1: no new bytes

def test_version_1_writes_todays_bytes():
    rec = bytes((F.OP_CLEAR, 0, 0, 0))
    for mod in (C, P):
        plain = mod.encode_frame(1, 1, [(0, F.KIND_KV, b"t")], rec)
        assert mod.encode_frame(1, 1, [(0, F.KIND_KV, b"t", b"")], rec) == plain
        assert mod.encode_frame(1, 1, [(0, F.KIND_KV, b"t", b"", 1)], rec) == plain
        assert len(plain) == F.FRAME_HEADER_BYTES + 5 + len(rec)
        assert plain[F.FRAME_HEADER_BYTES:] == b"\x01\x00\x01\x01t" + rec  # kind byte 1: no flag
        numeric = mod.encode_frame(1, 1, [(0, F.KIND_NUMERIC, b"t", SCHEMA)], rec)
        assert mod.encode_frame(1, 1, [(0, F.KIND_NUMERIC, b"t", SCHEMA, 1)], rec) == numeric
        assert numeric[F.FRAME_HEADER_BYTES:][2] == F.KIND_NUMERIC


def test_version_1_matches_the_worked_example_in_format_md():
    # The first frame of docs/FORMAT.md's worked example, byte for byte.
    expected = bytes.fromhex(
        "52484232 80a10475 0100000000000000 01000000 17000000 17000000 00 00 0000 addbeb3d"
        "01 00 01 05 7573657273 01 00 04 02616e6e 06 81a3616765 29")
    rec = _put(0, "ann", {"age": 41})
    for mod in (C, P):
        assert mod.encode_frame(1, 1, [(0, F.KIND_KV, b"users", b"", 1)], rec) == expected
        assert mod.encode_frame(1, 1, [(0, F.KIND_KV, b"users")], rec) == expected


def test_a_full_batch_leaves_room_for_every_declaration_with_a_version():
    longest = (C.encode_varint(F.MAX_TABLE_ID) + bytes((F.KIND_KV | F.DECL_VERSION_FLAG,))
               + C.encode_varint(F.MAX_TABLE_NAME_BYTES) + b"n" * F.MAX_TABLE_NAME_BYTES
               + C.encode_varint(U32_MAX))
    assert len(longest) == 266
    decls = C.encode_varint(F.MAX_TABLE_ID + 1) + longest * (F.MAX_TABLE_ID + 1)
    for mod in (C, P):
        assert mod.MAX_BATCH_RECORD_BYTES + len(decls) <= F.MAX_FRAME_PAYLOAD_BYTES


# ------------------------------------------------------ the writer refuses

@pytest.mark.parametrize("bad", [0, -1, U32_MAX + 1, 2**64, "2", 2.0, True, None])
def test_encode_frame_refuses_a_bad_version(bad):
    got = same("encode_frame", 1, 1, [(0, F.KIND_KV, b"t", b"", bad)], bytes((4, 0, 0, 0)))
    assert got[:2] == ("raised", ValueError) and "version" in got[3]


@pytest.mark.parametrize("kind", [128, 0x81, 255])
def test_encode_frame_refuses_a_kind_with_the_version_bit(kind):
    got = same("encode_frame", 1, 1, [(0, kind, b"t")], bytes((4, 0, 0, 0)))
    assert got[:2] == ("raised", ValueError) and "kind" in got[3]


# ---------------------------------------------------- damage is bad_payload

CLEAR = bytes((F.OP_CLEAR, 0, 0, 0))
NUMERIC_HEAD = b"\x00\x84\x01t" + C.encode_varint(len(SCHEMA)) + SCHEMA

BAD_DECLS = {
    "version 0": b"\x00\x81\x01t\x00" + CLEAR,
    "version 1": b"\x00\x81\x01t\x01" + CLEAR,
    "numeric, version 1": NUMERIC_HEAD + b"\x01" + CLEAR,
    "non-minimal 2": b"\x00\x81\x01t\x82\x00" + CLEAR,
    "non-minimal 0": b"\x00\x81\x01t\x80\x00" + CLEAR,
    "6 bytes": b"\x00\x81\x01t\xff\xff\xff\xff\x8f\x00" + CLEAR,
    "2^32": b"\x00\x81\x01t\x80\x80\x80\x80\x10" + CLEAR,
    "2^35": b"\x00\x81\x01t\x80\x80\x80\x80\x80\x01" + CLEAR,
    "missing": b"\x00\x81\x01t",
    "truncated": b"\x00\x81\x01t\x80",
    "truncated, 4 bytes": b"\x00\x81\x01t\xff\xff\xff\xff",
    "numeric, missing": NUMERIC_HEAD,
    "numeric, truncated": NUMERIC_HEAD + b"\x82",
}


@pytest.mark.parametrize("case", sorted(BAD_DECLS))
def test_a_bad_version_is_bad_payload_on_both_cores(case):
    raw = b"\x01" + BAD_DECLS[case]
    frame = _frame_of_payload(raw)
    native, pure = _scan(C, frame), _scan(P, frame)
    assert native == pure
    res, calls, _ = pure
    assert res["status"] == F.SCAN_BAD_PAYLOAD, case
    assert res["detail"] == "bad table declaration", case
    assert res["frames"] == 0 and calls == []
    scan_both(frame)
    got = same("decode_payload", raw, 1, set())
    assert got == ("raised", ValueError, None, "bad table declaration")
    # The same damage behind a good frame stops the scan there.
    good = C.encode_frame(1, 1, [(0, F.KIND_KV, b"t")], CLEAR)
    res = scan_both(good + _frame_of_payload(raw, first_lsn=2))
    assert (res.status, res.frames, res.offset) == (F.SCAN_BAD_PAYLOAD, 1, len(good))


@SETTINGS
@given(st.lists(st.integers(1, U32_MAX), min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3))
def test_damage_to_versioned_declarations_behind_a_valid_crc_agrees(versions, edits):
    decls = [(tid, F.KIND_NUMERIC if tid == 1 else F.KIND_KV, b"t%d" % tid,
              SCHEMA if tid == 1 else b"", v) for tid, v in enumerate(versions)]
    recs = b"".join(_put(tid, "k", tid) for tid in range(len(versions)))
    raw = bytearray(C.encode_frame(1, len(versions), decls, recs)[F.FRAME_HEADER_BYTES:])
    for pos, val in edits:
        raw[pos % len(raw)] = val
    frame = _frame_of_payload(bytes(raw), count=len(versions))
    scan_both(frame)
    same("decode_payload", bytes(raw), len(versions), set())


def test_the_kind_under_the_version_bit_must_still_be_known():
    for kind in (0, 5, 0x7F):
        frame = _frame_of_payload(b"\x01" + bytes((0, 0x80 | kind, 1)) + b"t\x02" + CLEAR)
        native, pure = _scan(C, frame), _scan(P, frame)
        assert native == pure
        assert pure[0]["status"] == F.SCAN_BAD_PAYLOAD
        assert pure[0]["detail"] == f"unknown table kind {kind}"


def test_the_table_registry_takes_a_version():
    for mod in (C, P):
        frame = mod.encode_frame(1, 1, [(0, F.KIND_KV, b"t", b"", 5)], _put(0, "a", 1))
        ctx = mod.SegmentContext(TableRegistry(mod, materialize=False))
        assert mod.scan_frames(frame, 0, 1, 0, ctx, False).status == F.SCAN_OK


# ------------------------------------------------------------ in a store

@pytest.mark.parametrize("name", ["native", "pure"])
def test_a_store_reads_a_log_with_versioned_declarations(tmp_path, name):
    path = str(tmp_path / "s")
    with _backend.use(name) as mod:
        with Store.open(path, sync="always") as s:
            s.put("t", "a", 1)
            lsn = s.lsn
        frame = mod.encode_frame(lsn + 1, 1, [(0, F.KIND_KV, b"t", b"", 3)], _put(0, "b", 2))
        # As a writer that knew version 3 leaves the log: it removed the
        # clean-close record before it appended.
        corrupt.as_crashed(path)
        corrupt.append(corrupt.segment_paths(path)[-1], frame)
        # Version 3 data: code must know version 3 (here: upcasters 1 -> 2 -> 3,
        # which also read the version 1 put); code that does not is refused.
        with pytest.raises(rh.ConfigError, match="version 3 data, newer than this code"):
            Store.open(path)
        mig = rh.Migrations()
        mig.upcaster("t", from_version=1)(lambda v: v * 10)
        mig.upcaster("t", from_version=2)(lambda v: v + 1)
        with Store.open(path, migrations=mig) as s:
            assert s.table("t").to_dict() == {"a": 11, "b": 2}
        s = Store.open_background(path, migrations=mig)
        try:
            assert s.wait_ready(60)
            assert s.table("t").to_dict() == {"a": 11, "b": 2}
        finally:
            s.close()
        assert verify(path).ok
        assert [(r["lsn"], r["table"], r["key"]) for r in dump_records(path)][-1] == \
            (lsn + 1, "t", "b")


@pytest.mark.parametrize("name", ["native", "pure"])
def test_a_store_finds_a_version_of_0_as_damage(tmp_path, name):
    path = str(tmp_path / "s")
    with _backend.use(name):
        with Store.open(path, sync="always") as s:
            s.put("t", "a", 1)
            lsn = s.lsn
        frame = _frame_of_payload(b"\x01" + b"\x00\x81\x01t\x00" + _put(0, "b", 2),
                                  first_lsn=lsn + 1)
        seg = corrupt.segment_paths(path)[-1]
        corrupt.append(seg, frame)
        # Behind the recorded clean close the frame is also more log than
        # that close left; without the record it is the one problem.
        report = verify(path)
        assert not report.ok
        assert [p.kind for p in report.problems] == ["bad_payload", "clean_end_mismatch"]
        corrupt.as_crashed(path)
        report = verify(path)
        assert not report.ok
        assert [p.kind for p in report.problems] == ["bad_payload"]
