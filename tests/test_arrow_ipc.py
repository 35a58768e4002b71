"""The pyarrow-free Arrow IPC file reader (``rehydrate._arrow_ipc``).

pyarrow writes the files and is the oracle; the reader must give the same
values, zero-copy, and turn every malformed input (truncation, flipped bytes,
random corruption, unsupported features) into a CorruptionError carrying the
path, never another exception.
"""

import math
import mmap
import random
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rehydrate._arrow_ipc import read_file
from rehydrate.errors import CorruptionError

pa = pytest.importorskip("pyarrow")

PATH = "state/snapshots/000042/table-7.arrow"
TYPES = {
    "binary": pa.binary(), "large_binary": pa.large_binary(), "utf8": pa.string(),
    "large_utf8": pa.large_string(), "bool": pa.bool_(), "float32": pa.float32(),
    "float64": pa.float64(),
    **{f"{s}int{w}": getattr(pa, f"{s}int{w}")() for s in ("", "u") for w in (8, 16, 32, 64)},
}


def write(table, max_chunksize=None, **options):
    sink = pa.BufferOutputStream()
    opts = pa.ipc.IpcWriteOptions(**options) if options else None
    with pa.ipc.new_file(sink, table.schema, options=opts) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return sink.getvalue().to_pybytes()


def norm(v):
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def values(col, typ):
    """A Column as a Python list, the way pyarrow's to_pylist shows it."""
    out = []
    for i in range(col.length):
        if col.validity is not None and not col.validity[i >> 3] >> (i & 7) & 1:
            out.append(None)
        elif col.offsets is not None:
            v = bytes(col.data[col.offsets[i]:col.offsets[i + 1]])
            out.append(v.decode() if typ.endswith("utf8") else v)
        elif typ == "bool":
            out.append(bool(col.data[i >> 3] >> (i & 7) & 1))
        else:
            out.append(norm(col.data[i]))
    return out


def check_same(buf, path=None):
    """read_file(buf) == what pyarrow reads from the same bytes; returns the result."""
    got = read_file(buf, path)
    want = pa.ipc.open_file(pa.py_buffer(bytes(buf)))
    assert [TYPES[t] for _, t in got.fields] == want.schema.types
    assert [n for n, _ in got.fields] == want.schema.names
    assert len(got.batches) == want.num_record_batches
    for k, batch in enumerate(got.batches):
        ref = want.get_batch(k)
        assert batch.num_rows == ref.num_rows
        assert len(batch.columns) == ref.num_columns
        for col, (_, typ), rcol in zip(batch.columns, got.fields, ref.columns):
            assert col.length == len(rcol) and col.null_count == rcol.null_count
            assert (col.validity is None) == (rcol.null_count == 0)
            assert values(col, typ) == [norm(v) for v in rcol.to_pylist()]
            if col.offsets is not None:
                assert len(col.offsets) == col.length + 1
                assert col.offsets.format == ("q" if typ.startswith("large") else "i")
    assert got.num_rows == sum(b.num_rows for b in got.batches)
    return got


def sample_table(n=7):
    rng = random.Random(n)
    return pa.table({
        "key": pa.array([b"k%03d" % i for i in range(n)], pa.binary()),
        "value": pa.array([None if i % 3 == 1 else bytes(rng.randrange(256) for _ in range(i))
                           for i in range(n)], pa.binary()),
        "big": pa.array([b"L" * i for i in range(n)], pa.large_binary()),
        "i64": pa.array([None if i == 2 else -(2 ** 62) + i for i in range(n)], pa.int64()),
        "f64": pa.array([i / 3 for i in range(n)], pa.float64()),
        "i32": pa.array([-i for i in range(n)], pa.int32()),
        "u64": pa.array([2 ** 64 - 1 - i for i in range(n)], pa.uint64()),
        "f32": pa.array([None if i == 4 else i * 0.5 for i in range(n)], pa.float32()),
    })


# -- round trips ------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 3, 100])
def test_round_trip_every_core_type_and_chunking(chunk):
    buf = write(sample_table(), max_chunksize=chunk)
    got = check_same(buf)
    assert got.fields == [("key", "binary"), ("value", "binary"), ("big", "large_binary"),
                          ("i64", "int64"), ("f64", "float64"), ("i32", "int32"),
                          ("u64", "uint64"), ("f32", "float32")]
    assert len(got.batches) == (1 if chunk in (None, 100) else -(-7 // chunk))
    assert got.num_rows == 7


def test_round_trip_the_other_types_and_nulls():
    n = 11
    cols = {}
    for name, typ in TYPES.items():
        if name.endswith("binary"):
            vals = [None if i % 4 == 0 else b"\x00b" * i for i in range(n)]
        elif name.endswith("utf8"):
            vals = [None if i % 5 == 0 else "é" * i for i in range(n)]
        elif name == "bool":
            vals = [None if i % 3 == 0 else i % 2 == 0 for i in range(n)]
        elif name.startswith("float"):
            vals = [None if i == 3 else (float("nan") if i == 5 else -i * 1.25) for i in range(n)]
        else:
            lo = 0 if name.startswith("u") else -(2 ** (int(name.split("int")[1]) - 1))
            vals = [None if i == 7 else lo + i for i in range(n)]
        cols[name] = pa.array(vals, typ)
    for chunk in (None, 4):
        got = check_same(write(pa.table(cols), max_chunksize=chunk))
        assert [t for _, t in got.fields] == list(TYPES)
        assert all(c.null_count > 0 for b in got.batches for c in b.columns if b.num_rows > 4)


def test_validity_and_null_count_are_returned():
    t = pa.table({"v": pa.array([b"a", None, b"c", None, None], pa.binary())})
    col = read_file(write(t)).batches[0].columns[0]
    assert col.null_count == 3 and len(col.validity) == 1
    assert col.validity[0] & 0b11111 == 0b00101
    assert values(col, "binary") == [b"a", None, b"c", None, None]
    none = read_file(write(pa.table({"v": pa.array([b"a"])}))).batches[0].columns[0]
    assert none.null_count == 0 and none.validity is None


def test_empty_table_zero_row_batch_and_no_batches():
    schema = pa.schema([("k", pa.binary()), ("n", pa.int64()), ("b", pa.large_binary())])
    got = check_same(write(schema.empty_table()))
    assert got.fields == [("k", "binary"), ("n", "int64"), ("b", "large_binary")]
    assert got.num_rows == 0
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch([pa.array([], t) for t in schema.types], schema=schema))
    got = check_same(sink.getvalue().to_pybytes())
    assert len(got.batches) == 1 and got.batches[0].num_rows == 0
    for col in got.batches[0].columns:
        assert col.length == 0 and (col.offsets is None or list(col.offsets) == [0])
    empty = check_same(write(pa.table({})))
    assert empty.fields == [] and empty.num_rows == 0


def test_buffer_output_stream_bytes_is_zero_copy():
    raw = write(sample_table(), max_chunksize=3)
    pybuf = pa.py_buffer(raw)
    for buf in (raw, bytearray(raw), memoryview(raw), pybuf):
        got = read_file(buf)
        for batch in got.batches:
            for col in batch.columns:
                assert col.data.obj is (buf.obj if isinstance(buf, memoryview) else buf)
                assert col.data.readonly == memoryview(buf).readonly


def test_file_on_disk_through_mmap(tmp_path):
    path = tmp_path / "t.arrow"
    path.write_bytes(write(sample_table(50), max_chunksize=16))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    got = check_same(mm, str(path))
    assert got.batches[0].columns[0].data.obj is mm
    assert got.num_rows == 50 and len(got.batches) == 4
    del got
    mm.close()


def test_an_error_leaves_no_view_so_the_mmap_closes(tmp_path):
    path = tmp_path / "t.arrow"
    raw = bytearray(write(sample_table(20)))
    raw[-20] ^= 0xFF                                    # in the footer
    path.write_bytes(bytes(raw[:-1]))                   # and truncated
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with pytest.raises(CorruptionError) as info:
        read_file(mm, path)
    assert info.value.path == str(path) and info.value.reason == "bad_snapshot"
    mm.close()                                          # no BufferError: no export left


def test_metadata_v4_and_legacy_prefix_are_read():
    t = sample_table()
    check_same(write(t, metadata_version=pa.ipc.MetadataVersion.V4))
    check_same(write(t, use_legacy_format=True, metadata_version=pa.ipc.MetadataVersion.V4))


def test_snapshot_writer_output_is_read():
    """The shape rehydrate's own snapshot writer produces: key/value binary."""
    pairs = [(b"k%d" % i, b"v" * (i % 50)) for i in range(3000)]
    t = pa.table({"key": pa.array([k for k, _ in pairs], pa.binary()),
                  "value": pa.array([v for _, v in pairs], pa.binary())})
    got = check_same(write(t, max_chunksize=1000))
    assert [(len(b.columns), b.num_rows) for b in got.batches] == [(2, 1000)] * 3


def test_module_does_not_import_pyarrow():
    code = ("import sys, rehydrate._arrow_ipc; "
            "sys.exit('pyarrow' in sys.modules or 'numpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- property test ----------------------------------------------------------


@st.composite
def tables(draw):
    n = draw(st.integers(0, 40))

    def col(elements):
        return draw(st.lists(elements, min_size=n, max_size=n))

    opt = st.none() | st.binary(max_size=12)
    return pa.table({
        "bin": pa.array(col(opt), pa.binary()),
        "lbin": pa.array(col(opt), pa.large_binary()),
        "i64": pa.array(col(st.none() | st.integers(-(2 ** 63), 2 ** 63 - 1)), pa.int64()),
        "u64": pa.array(col(st.integers(0, 2 ** 64 - 1)), pa.uint64()),
        "i32": pa.array(col(st.integers(-(2 ** 31), 2 ** 31 - 1)), pa.int32()),
        "f64": pa.array(col(st.none() | st.floats()), pa.float64()),
        "f32": pa.array(col(st.floats(width=32)), pa.float32()),
    }), draw(st.none() | st.integers(1, n + 1))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables())
def test_property_same_values_as_pyarrow(case):
    table, chunk = case
    got = check_same(write(table, max_chunksize=chunk), PATH)
    assert got.num_rows == table.num_rows


# -- corruption -------------------------------------------------------------


def small_file():
    t = pa.table({"k": pa.array([b"aa", None, b"c"], pa.binary()),
                  "n": pa.array([1, None, 3], pa.int64()),
                  "L": pa.array([b"x", b"yy", b""], pa.large_binary())})
    return write(t, max_chunksize=2)


def expect_corrupt(buf, match=None, path=PATH, **kw):
    with pytest.raises(CorruptionError, match=match) as info:
        read_file(buf, path, **kw)
    assert info.value.path == path and info.value.reason == "bad_snapshot"
    return info.value


def try_read(buf):
    """CorruptionError (with the path) or a result whose columns all decode."""
    try:
        got = read_file(buf, PATH)
    except CorruptionError as e:
        assert e.path == PATH and e.reason == "bad_snapshot"
        return None
    for batch in got.batches:
        assert len(batch.columns) == len(got.fields)
        for col, (_, typ) in zip(batch.columns, got.fields):
            assert col.length == batch.num_rows
            values(col, typ)
    return got


def layout(buf):
    """(schema message start/end, footer start/end) of a pyarrow-written file."""
    n = len(buf)
    footer_len = struct.unpack_from("<i", buf, n - 10)[0]
    return 8, 16 + struct.unpack_from("<i", buf, 12)[0], n - 10 - footer_len, n - 10


def test_every_strict_prefix_is_refused():
    buf = small_file()
    for n in range(len(buf)):
        expect_corrupt(buf[:n])
    check_same(buf)


def test_refusal_without_a_path_has_none():
    assert expect_corrupt(b"", path=None).path is None


@pytest.mark.parametrize("junk", [b"", b"ARROW1", b"ARROW1\0\0ARROW1", b"PAR1" * 40,
                                  b"\0" * 64, b"ARROW1\0\0" + b"\xff" * 40 + b"ARROW1"])
def test_non_arrow_bytes_are_refused(junk):
    expect_corrupt(junk)


def test_flipping_each_footer_and_schema_byte():
    buf = small_file()
    want = values_of(read_file(buf))
    s0, s1, f0, f1 = layout(buf)
    survived = 0
    for pos in [*range(s0, s1), *range(f0, f1 + 4)]:
        for mask in (0xFF, 0x01):
            bad = bytearray(buf)
            bad[pos] ^= mask
            got = try_read(bytes(bad))
            if got is not None:
                survived += 1
                assert values_of(got) == want, (pos, mask)
    assert survived < (s1 - s0 + f1 - f0) // 2       # most flips are caught


def values_of(got):
    return got.fields, [[values(c, t) for c, (_, t) in zip(b.columns, got.fields)]
                        for b in got.batches]


def test_random_corruptions_only_raise_corruption_error():
    buf = small_file()
    rng = random.Random(20240611)
    for _ in range(2500):
        bad = bytearray(buf)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(bad))
            bad[pos] = rng.choice((bad[pos] ^ (1 << rng.randrange(8)), rng.randrange(256)))
        try_read(bytes(bad))


def test_random_word_overwrites_in_metadata():
    """Overwrite 4/8-byte words of metadata with extreme values (offsets, counts)."""
    buf = small_file()
    rng = random.Random(7)
    extremes = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF0, 2 ** 63 - 1, 2 ** 63,
                2 ** 64 - 1, len(buf), len(buf) - 8]
    for _ in range(800):
        bad = bytearray(buf)
        width = rng.choice((2, 4, 8))
        pos = rng.randrange(len(bad) - width)
        bad[pos:pos + width] = (rng.choice(extremes) % 2 ** (8 * width)).to_bytes(width, "little")
        try_read(bytes(bad))


def test_compressed_bodies_are_refused():
    for codec in ("lz4", "zstd"):
        if not pa.Codec.is_available(codec):
            continue
        buf = write(sample_table(), compression=codec)
        pa.ipc.open_file(pa.py_buffer(buf)).read_all()
        expect_corrupt(buf, match="compressed.*not supported")


@pytest.mark.parametrize("array, name", [
    (pa.array(["a", "b", "a"]).dictionary_encode(), "dictionary-encoded Utf8"),
    (pa.array([[1], [2, 3], []]), "List"),
    (pa.array([{"x": 1}, {"x": 2}, None]), "Struct"),
    (pa.array([1, 2, 3], pa.timestamp("ms")), "Timestamp"),
    (pa.array([1, 2, 3], pa.date32()), "Date"),
    (pa.array([1.0, 2.5, 3.0], pa.float16()), "float16"),
    (pa.array([b"a", b"b", b"c"], pa.binary(1)), "FixedSizeBinary"),
    (pa.array([b"a", b"bb", b"c"], pa.binary_view()), "BinaryView"),
    (pa.array([None, None, None]), "Null"),
])
def test_unsupported_types_are_refused_by_name(array, name):
    buf = write(pa.table({"k": pa.array([b"1", b"2", b"3"]), "col": array}))
    e = expect_corrupt(buf, match=name)
    assert "'col'" in e.detail


def patch(buf, old, new, start=0):
    at = buf.index(old, start)
    assert buf.find(old, at + 1) == -1, "pattern must be unique"
    return buf[:at] + new + buf[at + len(old):]


def test_decreasing_offsets_and_values_out_of_range():
    t = pa.table({"v": pa.array([b"aa", b"bbbb", b"c"], pa.binary())})
    buf = write(t)
    good = struct.pack("<4i", 0, 2, 6, 7)
    swapped = patch(buf, good, struct.pack("<4i", 0, 6, 2, 7))
    expect_corrupt(swapped, match="offsets decrease")
    got = read_file(swapped, check_offsets=False)       # caller checks while walking
    assert list(got.batches[0].columns[0].offsets) == [0, 6, 2, 7]
    expect_corrupt(patch(buf, good, struct.pack("<4i", 0, 2, 6, 9)), match="outside")
    expect_corrupt(patch(buf, good, struct.pack("<4i", -1, 2, 6, 7)), match="outside")


def test_node_counts_that_disagree_with_the_batch_or_bitmap():
    t = pa.table({"v": pa.array([b"a", None, b"c"], pa.binary())})
    buf = write(t)
    node = struct.pack("<qq", 3, 1)
    check_same(buf)
    expect_corrupt(patch(buf, node, struct.pack("<qq", 3, 2)), match="nulls")
    expect_corrupt(patch(buf, node, struct.pack("<qq", 3, 4)), match="rows")
    expect_corrupt(patch(buf, node, struct.pack("<qq", 4, 1)), match="rows")
    expect_corrupt(patch(buf, node, struct.pack("<qq", 3, -1)), match="rows")


def test_blocks_outside_the_file_or_over_the_footer():
    buf = small_file()
    _, s1, f0, _ = layout(buf)
    meta_len = 8 + struct.unpack_from("<i", buf, s1 + 4)[0]
    block = struct.pack("<qi", s1, meta_len)
    for off in (len(buf) + 8, f0 - meta_len + 8, f0, 2 ** 62, -8, 0, 4):
        expect_corrupt(patch(buf, block, struct.pack("<qi", off, meta_len), f0),
                       match="outside|fit|magic")
    for mlen in (0, -1, 4, 2 ** 31 - 1):
        expect_corrupt(patch(buf, block, struct.pack("<qi", s1, mlen), f0))
    at = buf.index(block, f0)
    for body_len in (-1, 2 ** 40, struct.unpack_from("<q", buf, at + 16)[0] + 8):
        bad = bytearray(buf)
        struct.pack_into("<q", bad, at + 16, body_len)
        expect_corrupt(bytes(bad))


def test_footer_length_that_does_not_fit():
    buf = small_file()
    for footer_len in (0, -1, len(buf) - 10, len(buf), 2 ** 31 - 1, -(2 ** 31)):
        bad = bytearray(buf)
        struct.pack_into("<i", bad, len(bad) - 10, footer_len)
        expect_corrupt(bytes(bad))


def test_appended_garbage_is_refused():
    buf = small_file()
    expect_corrupt(buf + b"\0" * 8)
