"""Native core vs pure twin on random input: same results, bytes and errors.

Each test drives rehydrate._core and rehydrate._pure with the same input and
compares what comes out: table contents (as raw key/value bytes, so NaN and
-0.0 compare exactly), log bytes, frame bytes, ScanResults, and exceptions
(class, reason and message).
"""

import math
import random
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import rehydrate._core as C
import rehydrate._pure as P
from rehydrate import _format as F
from rehydrate._core import codec as native_codec

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def core():
    """These tests name both cores themselves: run each once, not per core."""
    yield C


def outcome(fn, *args):
    """What a call did, in a form comparable across the twins."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - comparing every failure is the point
        return ("raised", type(e), getattr(e, "reason", None), str(e))


def same(fn_name, *args, module_args=None):
    got_c = outcome(getattr(C, fn_name), *args)
    got_p = outcome(getattr(P, fn_name), *args)
    assert got_c == got_p, (fn_name, args, got_c, got_p)
    return got_c


def items(table):
    return sorted(table._items_raw())


# ---------------------------------------------------------------- strategies

INT64 = st.integers(-(2**63), 2**63 - 1)
EDGE_INTS = st.sampled_from([0, 1, -1, 31, 32, -32, -33, 127, 128, 255, 256, -128, -129,
                             32767, 32768, -32768, -32769, 65535, 65536, 2**31 - 1, 2**31,
                             -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**63 - 1, -(2**63),
                             2**63, 2**64 - 1, 2**64, -(2**63) - 1])
KEYS = st.one_of(
    st.binary(max_size=16),
    st.text(max_size=8),
    INT64,
    st.sampled_from([b"", "", "\x00", "é€𝄞", 0, 2**63 - 1, -(2**63)]),
)
BAD_KEYS = st.one_of(
    st.sampled_from([True, False, None, 1.5, 2**63, -(2**63) - 1, bytearray(b"x"),
                     ("t",), "\ud800", b"x" * (F.MAX_KEY_BYTES), "y" * F.MAX_KEY_BYTES]),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), INT64, EDGE_INTS, st.floats(allow_nan=True),
    st.text(max_size=40), st.binary(max_size=300),
    st.sampled_from([31, 32, 255, 256, 65535, 65536]).map(lambda n: "x" * n),
    st.sampled_from([255, 256, 65535, 65536]).map(lambda n: b"y" * n),
    st.sampled_from(["\ud800", 2**64, -(2**63) - 1]),
)


def packed_or_junk(value):
    try:
        return P.pack_value(value)
    except Exception:  # noqa: BLE001 - unencodable: use a byte msgpack never writes
        return b"\xc1"

VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=4), INT64), inner, max_size=4),
                            st.tuples(inner, inner)),
    max_leaves=8,
)
DELTAS = st.one_of(st.integers(-5, 5), INT64, EDGE_INTS, st.floats(allow_nan=True),
                   st.sampled_from([True, "1", None, 2**63, 1.5]))
SMALL_KEYS = st.one_of(st.sampled_from(["a", "b", b"a", 1, "n", -5]), KEYS)

OPS = st.one_of(
    st.tuples(st.just("put"), SMALL_KEYS, VALUES),
    st.tuples(st.just("put_bad"), BAD_KEYS, VALUES),
    st.tuples(st.just("delete"), SMALL_KEYS),
    st.tuples(st.just("incr"), SMALL_KEYS, DELTAS),
    st.tuples(st.just("clear")),
    st.tuples(st.just("batch"), st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.sampled_from(["t", "u"]), SMALL_KEYS, VALUES),
            st.tuples(st.just("delete"), st.sampled_from(["t", "u"]), SMALL_KEYS),
            st.tuples(st.just("incr"), st.sampled_from(["t", "u"]), SMALL_KEYS, DELTAS),
            st.tuples(st.just("clear"), st.sampled_from(["t", "u"])),
            st.tuples(st.just("put"), st.sampled_from(["", 5]), SMALL_KEYS, VALUES),
        ), max_size=8)),
)


# ---------------------------------------------------------------- the writer

def run_ops(mod, ops):
    """Apply ops through LogBuffer/Staging; return everything observable."""
    tables = {"t": mod.KVTable(), "u": mod.KVTable()}
    tids = {"t": 1, "u": 2}
    lb = mod.LogBuffer(1)
    seen = []
    for op in ops:
        kind = op[0]
        t = tables["t"]
        if kind in ("put", "put_bad"):
            seen.append(outcome(lb.put, t, 1, op[1], op[2]))
        elif kind == "delete":
            seen.append(outcome(lb.delete, t, 1, op[1]))
        elif kind == "incr":
            seen.append(outcome(lb.incr, t, 1, op[1], op[2]))
        elif kind == "clear":
            seen.append(outcome(lb.clear, t, 1))
        else:
            staging = mod.Staging()
            for rec in op[1]:
                fn = getattr(staging, rec[0])
                seen.append(outcome(fn, *rec[1:]))
            seen.append((len(staging), staging.nbytes, list(staging.names)))
            names = staging.names
            seen.append(outcome(lb.commit, staging,
                                [tables[n] for n in names], [tids[n] for n in names]))
        seen.append((lb.next_lsn, lb.pending_records, lb.pending_bytes))
    first, count, records = lb.take()
    return {
        "seen": seen,
        "t": items(tables["t"]),
        "u": items(tables["u"]),
        "log": (first, count, records),
    }


@SETTINGS
@given(st.lists(OPS, max_size=25))
def test_writer_ops_give_same_tables_log_bytes_and_errors(ops):
    got_c = run_ops(C, ops)
    got_p = run_ops(P, ops)
    assert got_c["seen"] == got_p["seen"]
    assert got_c["t"] == got_p["t"]
    assert got_c["u"] == got_p["u"]
    assert got_c["log"] == got_p["log"]


def test_failing_incr_in_a_batch_leaves_nothing_applied():
    for mod in (C, P):
        t, u = mod.KVTable(), mod.KVTable()
        lb = mod.LogBuffer(10)
        lb.put(u, 2, "kept", True)
        lb.put(t, 1, "s", "text")
        lb.put(t, 1, "n", 1)
        s = mod.Staging()
        s.put("t", "a", 1)
        s.incr("t", "n", 5)
        s.delete("t", "n")
        s.put("t", "b", 2)
        s.clear("u")
        s.incr("t", "s", 1)  # fails: "s" holds a str
        before = lb.pending_bytes
        with pytest.raises(Exception) as ei:
            lb.commit(s, [t, u], [1, 2])
        assert ei.value.reason == "invalid_operation"
        assert t.to_dict() == {"s": "text", "n": 1}
        assert u.to_dict() == {"kept": True}
        assert lb.pending_bytes == before and lb.next_lsn == 13


@SETTINGS
@given(st.one_of(KEYS, BAD_KEYS))
def test_keys_encode_decode_the_same(key):
    kind, *rest = same("encode_key", key)
    if kind == "ok":
        assert C.decode_key(rest[0]) == key or (key != key)
        assert C.key_is_wellformed(rest[0])


@SETTINGS
@given(st.binary(max_size=20))
def test_decode_key_on_random_bytes(kb):
    same("decode_key", kb)
    same("key_is_wellformed", kb)


@SETTINGS
@given(VALUES)
def test_pack_value_is_byte_identical(value):
    kind, *rest = same("pack_value", value)
    if kind == "ok":
        a = outcome(C.unpack_value, rest[0])
        b = outcome(P.unpack_value, rest[0])
        assert repr(a) == repr(b)  # repr: NaN compares equal to itself this way


@SETTINGS
@given(st.one_of(st.binary(max_size=20),
                 st.builds(lambda v, cut: v[:cut], VALUES.map(packed_or_junk), st.integers(0, 40)),
                 st.builds(lambda v, extra: v + extra, SCALARS.map(packed_or_junk),
                           st.binary(max_size=3))))
def test_unpack_value_and_decode_number_on_random_bytes(raw):
    a = outcome(C.unpack_value, raw)
    b = outcome(P.unpack_value, raw)
    assert repr(a) == repr(b)
    assert repr(C.decode_number(raw)) == repr(P.decode_number(raw))


@SETTINGS
@given(st.one_of(st.none(), st.binary(max_size=10), SCALARS.map(packed_or_junk)), DELTAS)
def test_incr_value_and_check_delta_agree(old, delta):
    a = outcome(C.incr_value, old, delta)
    b = outcome(P.incr_value, old, delta)
    assert repr(a) == repr(b)
    same("check_delta", delta)


@SETTINGS
@given(st.one_of(st.integers(0, 2**70), EDGE_INTS, st.sampled_from([-1, "x", 1.0])))
def test_encode_varint_agrees(n):
    same("encode_varint", n)


@SETTINGS
@given(st.binary(max_size=12), st.integers(0, 14), st.integers(0, 14))
def test_decode_varint_on_random_bytes(buf, pos, end):
    same("decode_varint", buf, pos, end)


# ---------------------------------------------------------------- LZ4

@SETTINGS
@given(st.binary(max_size=64), st.integers(0, 200))
def test_lz4_decompress_on_random_bytes(src, raw_len):
    check_lz4(src, raw_len)


@SETTINGS
@given(st.binary(max_size=400), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                         max_size=3),
       st.integers(-3, 3), st.integers(-2, 2))
def test_lz4_decompress_on_mutated_valid_blocks(data, edits, cut, len_shift):
    data = data + data[: len(data) // 2] * 3  # compressible
    block = bytearray(C.lz4_compress(data))
    assert block == P.lz4_compress(data)
    for pos, byte in edits:
        if block:
            block[pos % len(block)] = byte
    if cut < 0:
        del block[cut:]
    check_lz4(bytes(block), max(0, len(data) + len_shift))


def check_lz4(src, raw_len):
    a = outcome(C.lz4_decompress, src, raw_len)
    b = outcome(P.lz4_decompress, src, raw_len)
    if a[0] == "ok" or b[0] == "ok":
        if a != b:
            # The one deliberate difference: liblz4 accepts a match offset of 0
            # (it repeats garbage), the native decoder refuses it.
            assert a[0] == "raised" and native_codec._lz4_status(src, raw_len) == -3, (src, raw_len)
    else:
        assert a[1] is b[1] is ValueError


# ---------------------------------------------------------------- frames

class Registry:
    def __init__(self, mod, kinds_ok=True):
        self.mod = mod
        self.by_name = {}
        self.calls = []

    def declare(self, tid, kind, name, schema=b"", version=1):
        self.calls.append((tid, kind, name, schema, version))
        if name == b"bad":
            from rehydrate.errors import ConfigError

            raise ConfigError(f"table {name!r} refused")
        return self.by_name.setdefault(name, self.mod.KVTable())


def make_log(ops, frame_every=7):
    """Frames (pure writer) for ops; returns the bytes and the frame offsets."""
    t = P.KVTable()
    lb = P.LogBuffer(1)
    out = []
    offsets = []
    pending = 0
    for op in ops:
        kind = op[0]
        try:
            if kind == "put":
                lb.put(t, 1, op[1], op[2])
            elif kind == "delete":
                lb.delete(t, 1, op[1])
            elif kind == "incr":
                lb.incr(t, 1, op[1], op[2])
            elif kind == "clear":
                lb.clear(t, 1)
        except Exception:  # noqa: BLE001 - refused ops write nothing
            continue
        pending += 1
        if pending >= frame_every:
            first, count, recs = lb.take()
            offsets.append(sum(map(len, out)))
            decls = [(1, 1, b"t")] if not out else []
            out.append(P.encode_frame(first, count, decls, recs))
            pending = 0
    first, count, recs = lb.take()
    if count:
        offsets.append(sum(map(len, out)))
        out.append(P.encode_frame(first, count, [(1, 1, b"t")] if not out else [], recs))
    return b"".join(out), offsets


def scan_both(buf, next_lsn=1, applied_lsn=0, apply=True, compare_detail=True):
    results = []
    for mod in (C, P):
        reg = Registry(mod)
        ctx = mod.SegmentContext(reg)
        res = outcome(mod.scan_frames, buf, 0, next_lsn, applied_lsn, ctx, apply)
        tables = {name: items(t) for name, t in reg.by_name.items()}
        results.append((res, tables, reg.calls, sorted(ctx.tables)))
    (rc, tc, cc, kc), (rp, tp, cp, kp) = results
    assert rc[0] == rp[0] == "ok", (rc, rp)
    dc, dp = rc[1].as_dict(), rp[1].as_dict()
    if not compare_detail or "LZ4" in dp["detail"]:
        dc.pop("detail")
        dp.pop("detail")
    assert dc == dp
    assert tc == tp
    assert cc == cp and kc == kp
    return rp[1]


LOG_OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), SMALL_KEYS, VALUES),
    st.tuples(st.just("delete"), SMALL_KEYS),
    st.tuples(st.just("incr"), SMALL_KEYS, st.one_of(st.integers(-3, 3), st.floats(-5, 5))),
    st.tuples(st.just("clear")),
), min_size=1, max_size=40)


@SETTINGS
@given(LOG_OPS, st.integers(1, 10), st.integers(0, 30))
def test_encode_frame_bytes_and_scan_results_agree(ops, every, applied):
    buf, _ = make_log(ops, every)
    assume(buf)
    # The native writer makes the same frames.
    lb_c, lb_p = C.LogBuffer(1), P.LogBuffer(1)
    tc, tp = C.KVTable(), P.KVTable()
    for op in ops:
        if op[0] == "put":
            a, b = outcome(lb_c.put, tc, 1, op[1], op[2]), outcome(lb_p.put, tp, 1, op[1], op[2])
            assert a == b
    fc = C.encode_frame(*lb_c.take()[:2], [(1, 1, b"t"), (2, 1, b"u")], lb_c.take()[2])
    assert fc == P.encode_frame(*lb_p.take()[:2], [(1, 1, b"t"), (2, 1, b"u")], lb_p.take()[2])
    res = scan_both(buf, 1, applied)
    assert res.status == F.SCAN_OK
    scan_both(buf, 1, applied, apply=False)


@SETTINGS
@given(LOG_OPS, st.integers(1, 10),
       st.lists(st.tuples(st.sampled_from(["flip", "truncate", "garbage", "zero", "insert"]),
                          st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3))
def test_scan_of_corrupted_frames_agrees(ops, every, edits):
    buf, _ = make_log(ops, every)
    assume(buf)
    b = bytearray(buf)
    for kind, pos, val in edits:
        if not b:
            break
        pos %= len(b)
        if kind == "flip":
            b[pos] ^= 1 << (val % 8)
        elif kind == "truncate":
            del b[pos:]
        elif kind == "garbage":
            b[pos:pos + 8] = random.Random(val).randbytes(8)
        elif kind == "zero":
            b[pos:pos + 32] = bytes(len(b[pos:pos + 32]))
        else:
            b[pos:pos] = bytes([val]) * (1 + val % 5)
    scan_both(bytes(b))


def _refreshed_crc(frame):
    """``frame`` (format 2) with its header's own checksum and then its
    frame checksum recomputed, so its other faults reach the checks after."""
    head = frame[8:32]
    body = head + struct.pack("<I", C.crc32c(head)) + frame[F.FRAME_HEADER_BYTES:]
    return frame[:4] + struct.pack("<I", C.crc32c(body)) + body


@SETTINGS
@given(LOG_OPS, st.integers(0, 10**6), st.integers(0, 255))
def test_payload_damage_behind_a_valid_crc_agrees(ops, pos, val):
    """Corrupt the payload and fix the checksum: the decoder itself must catch it."""
    t = P.KVTable()
    lb = P.LogBuffer(1)
    for op in ops:
        try:
            getattr(lb, op[0])(t, 1, *op[1:])
        except Exception:  # noqa: BLE001
            pass
    first, count, recs = lb.take()
    assume(count)
    raw = bytearray(C.encode_varint(1) + C.encode_varint(1) + b"\x01" + b"\x01t" + recs)
    raw[pos % len(raw)] = val
    header = struct.pack("<IIQIIIBBHI", F.FRAME_MAGIC, 0, first, count, len(raw), len(raw),
                         F.CODEC_NONE, 0, 0, 0)
    frame = _refreshed_crc(header + bytes(raw))
    scan_both(frame)
    same("decode_payload", bytes(raw), count, set())


def test_apply_error_lsn_gap_overlap_and_registry_refusal_agree():
    buf, offsets = make_log([("put", "s", "text"), ("put", "n", 1)] * 3, 2)
    scan_both(buf)
    scan_both(buf, next_lsn=2)   # overlap
    scan_both(buf[offsets[1]:], next_lsn=1)  # gap
    # incr on a str in the second frame: apply_error after one good frame.
    lb = P.LogBuffer(1)
    t = P.KVTable()
    lb.put(t, 1, "s", "x")
    f1 = P.encode_frame(*lb.take()[:2], [(1, 1, b"t")], b"") if False else None
    first, count, recs = lb.take()
    f1 = P.encode_frame(first, count, [(1, 1, b"t")], recs)
    rec = b"\x03\x01\x02\x02s\x01\x01"  # incr t "s" by 1
    f2 = P.encode_frame(2, 2, [], b"\x01\x01\x02\x02k\x01\x05" + rec)
    res = scan_both(f1 + f2)
    assert res.status == F.SCAN_APPLY_ERROR and res.frames == 1
    refused = P.encode_frame(1, 1, [(3, 1, b"bad")], b"\x04\x03\x00\x00")
    assert scan_both(refused).status == F.SCAN_BAD_PAYLOAD
    unknown_kind = P.encode_frame(1, 1, [(3, 9, b"x")], b"\x04\x03\x00\x00")
    assert scan_both(unknown_kind).status == F.SCAN_BAD_PAYLOAD


def test_cancel_and_progress_agree():
    buf, _ = make_log([("put", f"k{i}", i) for i in range(50)], 5)
    for mod in (C, P):
        seen = []
        ctx = mod.SegmentContext(Registry(mod))
        res = mod.scan_frames(buf, 0, 1, 0, ctx, progress=seen.append, progress_every=100)
        assert res.status == F.SCAN_OK and len(seen) >= 5
        cancel = bytearray(b"\x01")
        res = mod.scan_frames(buf, 0, 1, 0, mod.SegmentContext(Registry(mod)), cancel=cancel)
        assert (res.status, res.offset, res.frames) == (F.SCAN_CANCELLED, 0, 0)


@SETTINGS
@given(st.binary(max_size=60), st.integers(-1, 12), st.sets(st.integers(0, 5), max_size=3))
def test_decode_payload_on_random_bytes(payload, count, seg_tids):
    same("decode_payload", payload, count, seg_tids)


@SETTINGS
@given(st.binary(min_size=0, max_size=48), st.integers(0, 10), st.sampled_from([1, 2]))
def test_parse_frame_header_and_header_problem_agree(buf, offset, version):
    hc = C.parse_frame_header(buf, offset, version)
    hp = P.parse_frame_header(buf, offset, version)
    assert (hc is None) == (hp is None)
    if hp is not None:
        assert hc.as_dict() == hp.as_dict()
        assert C.header_problem(hc) == P.header_problem(hp)
        # The same bytes with the magic right and (format 2) the header's own
        # checksum right, so the field checks behind them are reached too.
        hb = F.frame_header_bytes(version)
        fixed = bytearray(buf[offset:offset + hb])
        fixed[:4] = struct.pack("<I", F.frame_magic(version))
        if version == 2:
            fixed[32:36] = struct.pack("<I", C.crc32c(bytes(fixed[8:32])))
        h2 = P.parse_frame_header(bytes(fixed), 0, version)
        assert h2.header_crc_ok
        assert C.header_problem(h2) == P.header_problem(h2)
        if version == 2:
            scan_both(bytes(fixed) + buf[offset + hb:])


def test_check_table_name_and_constants_agree():
    for name in ["t", "", "x" * 255, "x" * 256, 5, "é" * 128]:
        same("check_table_name", name)
    assert C.MAX_BATCH_RECORD_BYTES == P.MAX_BATCH_RECORD_BYTES
    assert math.isclose(C.crc32c(b"abc"), P.crc32c(b"abc"))


@SETTINGS
@given(st.lists(st.tuples(st.one_of(SMALL_KEYS, BAD_KEYS),
                          st.one_of(VALUES, st.just(object()), st.just({1j: 1}))),
                max_size=30))
def test_put_items_twins_agree_on_bytes_and_errors(pairs):
    """What a migration's result is built with: the same table, and the same
    error at the same pair, on both cores."""
    tables = []
    for core in (C, P):
        t = core.KVTable()
        t._put_raw(core.encode_key("kept"), core.pack_value("before"))
        got = outcome(t._put_items, iter(pairs))
        tables.append((got, items(t)))
    assert tables[0] == tables[1]
    if tables[0][0][0] == "ok":  # a pair at a time, as _put_raw would put it
        expect = P.KVTable()
        expect._put_raw(P.encode_key("kept"), P.pack_value("before"))
        for k, v in pairs:
            expect._put_raw(P.encode_key(k), P.pack_value(v))
        assert tables[0][1] == items(expect)


# Raw value bytes a table may hold: values as written, cut short, with bytes
# after them, containers glued to what follows, ext, non-str map keys and
# arrays as map keys (both decoded by unpack_value's slower steps).
RAW_VALUES = st.one_of(
    VALUES.map(packed_or_junk),
    st.builds(lambda v, cut: v[:cut] or b"\xc1", VALUES.map(packed_or_junk), st.integers(0, 40)),
    st.builds(lambda v, extra: v + extra, VALUES.map(packed_or_junk), st.binary(min_size=1, max_size=3)),
    st.sampled_from([b"\x92\x01", b"\x02\x03", b"\x81\x01\x02", b"\x81\x92\x01\x02\x03",
                     b"\xd4\x05\x01", b"\xd6\xff\x00\x00\x00\x01", b"\xc7\x01\x07\x00",
                     b"\x81\xa1a\xc1", b"\x91\xa2\xff\xfe", b"\xdc\x00\x01\x01",
                     b"\xde\x00\x01\xa1k\x90", b"\x91" * 1100 + b"\x01"]),
)


def _per_value(core, t):
    """to_dict as one decode per stored pair, in to_dict's order."""
    return {core.decode_key(k): core.unpack_value(v) for k, v in t._items_raw()}


@SETTINGS
@given(st.lists(RAW_VALUES, max_size=40))
def test_to_dict_decodes_as_unpack_value_does(raws):
    """to_dict decodes containers many at a time: every value, and the first
    error, must be what unpack_value gives on each stored value alone."""
    got = []
    for core in (C, P):
        t = core.KVTable()
        for i, raw in enumerate(raws):
            t._put_raw(core.encode_key(i), raw)
        a, b = outcome(t.to_dict), outcome(_per_value, core, t)
        assert repr(a) == repr(b)
        got.append(a if a[0] != "ok" else ("ok", sorted((k, repr(v)) for k, v in a[1].items())))
    if got[0][0] == "ok" or got[1][0] == "ok":  # else the first error depends on the order
        assert got[0] == got[1]


def test_to_dict_and_put_items_over_many_batches():
    """More values than one msgpack call takes, mixed with values that each
    batch's call refuses (an array as a map key, an unused byte): the same
    dict as one decode per value, and the same bytes as pack_value."""
    n = 20_000
    values = {}
    for i in range(n):
        values[i] = ({"name": f"user {i}", "n": i, "f": i / 7, "b": b"\x00" * (i % 5),
                      "l": [i, None, True]} if i % 3 else i * 7919 - 10**6)
    values["str"] = "text"
    values[10**12] = [[1, 2], {"x": {"y": []}}]
    for core in (C, P):
        t = core.KVTable()
        t._put_items(values.items())
        assert len(t) == len(values)
        assert dict(t._items_raw()) == {core.encode_key(k): core.pack_value(v)
                                        for k, v in values.items()}
        assert t.to_dict() == values
        t._put_raw(core.encode_key("tuple-key"), b"\x81\x92\x01\x02\xa1v")  # {(1, 2): "v"}
        t._put_raw(core.encode_key(-1), b"\x81\x01\x02")  # {1: 2}
        got = t.to_dict()
        assert got == {**values, "tuple-key": {(1, 2): "v"}, -1: {1: 2}}
        assert got == _per_value(core, t)
        t._put_raw(core.encode_key("bad"), b"\x81\xa1a\xc1")
        a, b = outcome(t.to_dict), outcome(_per_value, core, t)
        assert a[0] == "raised" and a == b


def test_put_items_errors_at_the_first_bad_pair_across_batches():
    """A bad value or key after a full batch: the pairs before it are in,
    none after it, on both cores; an iterator that raises likewise."""
    def pairs(bad_at, bad):
        for i in range(20_000):
            yield (bad if i == bad_at else (i, {"v": i}))

    def raising(at):
        for i in range(20_000):
            if i == at:
                raise KeyError("boom")
            yield i, [i]

    for core in (C, P):
        for bad_at, bad, err in [(9000, (9000, object()), "ValueEncodingError"),
                                 (8192, (8192, "\ud800"), "ValueEncodingError"),
                                 (12345, (1.5, {"v": 1}), "UnsupportedKeyError"),
                                 (3, (3, 2**64), "ValueEncodingError")]:
            t = core.KVTable()
            with pytest.raises(Exception) as e:
                t._put_items(pairs(bad_at, bad))
            assert type(e.value).__name__ == err
            assert len(t) == bad_at and core.encode_key(bad_at - 1) in dict(t._items_raw())
        t = core.KVTable()
        with pytest.raises(KeyError):
            t._put_items(raising(10_000))
        assert len(t) == 10_000
