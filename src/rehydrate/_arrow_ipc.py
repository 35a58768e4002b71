"""A small, strict, zero-copy reader of the Arrow IPC *file* format (Feather v2).

Reads the snapshot table files rehydrate writes with pyarrow (``pa.ipc.new_file``
+ ``write_table``, no compression) without importing pyarrow, which would cost
about 0.1 s on the cold-start path. Stdlib only.

API::

    read_file(buf, path=None, *, check_offsets=True) -> ArrowFile
    ArrowFile.fields   list[tuple[str, str]]   (name, type), schema order
    ArrowFile.batches  list[Batch]
    ArrowFile.num_rows int                     sum over the batches
    Batch.num_rows     int
    Batch.columns      list[Column]            one per field, schema order
    Column.length, Column.null_count           int, int
    Column.validity    memoryview ("B", exactly ceil(length / 8) bytes) or None
    Column.offsets     memoryview ("i" / "q", exactly length + 1 values) or None
    Column.data        memoryview

``buf`` is any C-contiguous buffer (bytes, memoryview, mmap.mmap); the
returned views are slices of it, never copies (the one exception: a 0-row
column whose writer omitted its offsets buffer gets a fresh ``[0]``), so an
mmap cannot be closed while a result (or any view taken from it) is alive.

Types: ``binary``, ``utf8`` (UTF-8 is not validated), ``large_binary``,
``large_utf8`` (offsets plus the whole values buffer as ``data``, "B");
``int8`` .. ``int64``,
``uint8`` .. ``uint64``, ``float32``, ``float64`` (``data`` is exactly
``length`` values, cast to "b h i q B H I Q f d"); ``bool`` (``data`` is the
bit-packed values, ceil(length / 8) bytes, "B"). Null slots are whatever
bytes the writer left there; read ``validity`` (bit set = valid; bits past
``length`` are unspecified).

Checked, for every batch: 0 <= offsets[0] <= offsets[-1] <= len(data) and,
when ``check_offsets`` (the default), offsets never decrease, so
``data[offsets[i]:offsets[i + 1]]`` is always a real value. The monotonic scan
costs about 30 ns a row per column; a caller that validates while it walks
the offsets itself may pass ``check_offsets=False``. A validity bitmap's zero
bits must count exactly ``null_count``.

Everything in the bytes is untrusted: each offset, length, count and
flatbuffer reference is bounds-checked before use, and anything malformed or
unsupported raises ``CorruptionError(reason="bad_snapshot", path=path,
offset=...)``: compressed bodies, dictionary batches or dictionary-encoded
fields, nested and other types (the message names the type), big-endian
data, metadata versions other than V4/V5, blocks outside the file or
overlapping the footer, metadata or bodies that do not fit their block,
buffers outside the body, node or buffer counts that do not match the schema,
a column length other than the batch's, a leading schema message that
disagrees with the footer's. The error is raised without the parser's
traceback, so a handler may close an mmap it passed in.
"""

from __future__ import annotations

import operator
import struct
import sys

from .errors import CorruptionError

__all__ = ["read_file", "ArrowFile", "Batch", "Column"]

_U8, _U16, _I16 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<h")
_I32, _U32, _I64 = struct.Struct("<i"), struct.Struct("<I"), struct.Struct("<q")
_BLOCK = struct.Struct("<qi4xq")   # File.fbs Block: offset, metaDataLength, bodyLength
_PAIR = struct.Struct("<qq")       # FieldNode (length, null_count), Buffer (offset, length)
_MAGIC = b"ARROW1"
_VERSIONS = (3, 4)                 # MetadataVersion V4, V5
_MSG_SCHEMA, _MSG_DICTIONARY, _MSG_RECORD_BATCH = 1, 2, 3

# Schema.fbs ``union Type`` (1-based), for naming what is refused.
_TYPE_NAMES = (
    "NONE", "Null", "Int", "FloatingPoint", "Binary", "Utf8", "Bool", "Decimal",
    "Date", "Time", "Timestamp", "Interval", "List", "Struct", "Union",
    "FixedSizeBinary", "FixedSizeList", "Map", "Duration", "LargeBinary",
    "LargeUtf8", "LargeList", "RunEndEncoded", "BinaryView", "Utf8View",
    "ListView", "LargeListView")
_VARBIN = {4: ("binary", "i"), 5: ("utf8", "i"), 19: ("large_binary", "q"),
           20: ("large_utf8", "q")}
_VARBIN_TYPES = frozenset(name for name, _ in _VARBIN.values())
_INT_FMT = {8: "b", 16: "h", 32: "i", 64: "q"}
_FLOAT = {1: ("float32", "f"), 2: ("float64", "d")}
_ITEMSIZE = {"b": 1, "h": 2, "i": 4, "q": 8, "B": 1, "H": 2, "I": 4, "Q": 8, "f": 4, "d": 8}


class Column:
    __slots__ = ("length", "null_count", "validity", "offsets", "data")

    def __init__(self, length, null_count, validity, offsets, data):
        self.length, self.null_count = length, null_count
        self.validity, self.offsets, self.data = validity, offsets, data

    def __repr__(self):
        return f"Column(length={self.length}, null_count={self.null_count})"


class Batch:
    __slots__ = ("num_rows", "columns")

    def __init__(self, num_rows, columns):
        self.num_rows, self.columns = num_rows, columns

    def __repr__(self):
        return f"Batch(num_rows={self.num_rows}, columns={len(self.columns)})"


class ArrowFile:
    __slots__ = ("fields", "batches")

    def __init__(self, fields, batches):
        self.fields, self.batches = fields, batches

    @property
    def num_rows(self):
        return sum(b.num_rows for b in self.batches)

    def __repr__(self):
        return f"ArrowFile(fields={self.fields!r}, batches={len(self.batches)})"


class _Bad(Exception):
    """Internal: (detail, offset); read_file turns it into a CorruptionError."""


class _Region:
    """One flatbuffer: the bytes [lo, hi) of the file, every read checked."""

    __slots__ = ("mv", "lo", "hi", "what", "budget")

    def __init__(self, mv, lo, hi, what):
        self.mv, self.lo, self.hi, self.what = mv, lo, hi, what
        self.budget = 16 + (hi - lo) // 4    # tables a well-formed buffer could hold

    def need(self, pos, size):
        if size < 0 or pos < self.lo or pos + size > self.hi:
            raise _Bad(f"{self.what}: reference to {size} bytes outside its "
                       f"{self.hi - self.lo}-byte flatbuffer", pos)

    def get(self, st, pos):
        self.need(pos, st.size)
        return st.unpack_from(self.mv, pos)[0]

    def deref(self, pos):                    # uoffset: forward, relative to pos
        return pos + self.get(_U32, pos)

    def root(self):
        return _Table(self, self.deref(self.lo))


class _Table:
    """A flatbuffer table: soffset to its vtable, fields found by slot."""

    __slots__ = ("r", "pos", "vt", "vtlen", "objlen")

    def __init__(self, r, pos):
        r.budget -= 1
        if r.budget < 0:
            raise _Bad(f"{r.what}: more tables than the flatbuffer can hold", pos)
        self.r, self.pos = r, pos
        self.vt = vt = pos - r.get(_I32, pos)
        self.vtlen, self.objlen = r.get(_U16, vt), r.get(_U16, vt + 2)
        if self.vtlen < 4 or self.vtlen % 2 or self.objlen < 4:
            raise _Bad(f"{r.what}: malformed vtable", vt)
        r.need(vt, self.vtlen)
        r.need(pos, self.objlen)

    def _slot(self, i, size):
        o = 4 + 2 * i
        if o + 2 > self.vtlen:
            return None
        off = self.r.get(_U16, self.vt + o)
        if off == 0:
            return None
        if off < 4 or off + size > self.objlen:
            raise _Bad(f"{self.r.what}: field {i} outside its table", self.pos)
        return self.pos + off

    def scalar(self, i, st, default=0):
        p = self._slot(i, st.size)
        return default if p is None else self.r.get(st, p)

    def table(self, i):
        p = self._slot(i, 4)
        return None if p is None else _Table(self.r, self.r.deref(p))

    def vector(self, i, elem_size):
        """(start, count) of a vector field, its bytes checked; (0, 0) if absent."""
        p = self._slot(i, 4)
        if p is None:
            return 0, 0
        v = self.r.deref(p)
        n = self.r.get(_U32, v)
        self.r.need(v + 4, n * elem_size)
        return v + 4, n

    def string(self, i):
        s, n = self.vector(i, 1)
        if s == 0:
            return ""
        self.r.need(s, n + 1)
        if self.r.mv[s + n] != 0:
            raise _Bad(f"{self.r.what}: string without its terminator", s)
        try:
            return str(self.r.mv[s:s + n], "utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{self.r.what}: string is not UTF-8", s) from None

    def tables(self, i):
        s, n = self.vector(i, 4)
        return [_Table(self.r, self.r.deref(s + 4 * k)) for k in range(n)]


def _field(t):
    """One Schema.fbs Field -> (name, type, fmt)."""
    name = t.string(0)
    tid = t.scalar(2, _U8)
    tname = _TYPE_NAMES[tid] if tid < len(_TYPE_NAMES) else f"type #{tid}"
    if t.table(4) is not None:
        raise _Bad(f"field {name!r}: dictionary-encoded {tname} is not supported", t.pos)
    if t.vector(5, 4)[1]:
        raise _Bad(f"field {name!r}: nested type {tname} (with children) is not supported",
                   t.pos)
    if tid in _VARBIN:
        return (name,) + _VARBIN[tid]
    if tid == 6:
        return name, "bool", "B"
    tt = t.table(3)
    if tt is not None and tid == 2:
        width, signed = tt.scalar(0, _I32), tt.scalar(1, _U8)
        if width in _INT_FMT:
            fmt = _INT_FMT[width]
            return (name, f"int{width}", fmt) if signed else (name, f"uint{width}", fmt.upper())
        tname = f"Int(bitWidth={width})"
    elif tt is not None and tid == 3:
        precision = tt.scalar(0, _I16)
        if precision in _FLOAT:
            return (name,) + _FLOAT[precision]
        tname = "float16" if precision == 0 else f"FloatingPoint(precision={precision})"
    raise _Bad(f"field {name!r}: type {tname} is not supported", t.pos)


def _schema(t):
    if t is None:
        raise _Bad("no schema", None)
    if t.scalar(0, _I16) != 0:
        raise _Bad("big-endian data is not supported", t.pos)
    return [_field(f) for f in t.tables(1)]


def _message(mv, pos, limit, what):
    """The encapsulated message at pos: (Message table, end of its metadata)."""
    if pos < 8 or pos + 8 > limit:
        raise _Bad(f"{what}: message prefix outside the file", pos)
    size, start = _I32.unpack_from(mv, pos)[0], pos + 4
    if size == -1:                           # 0xFFFFFFFF continuation marker
        size, start = _I32.unpack_from(mv, pos + 4)[0], pos + 8
    if size <= 0 or start + size > limit:
        raise _Bad(f"{what}: metadata length {size} does not fit", pos)
    msg = _Region(mv, start, start + size, what).root()
    version = msg.scalar(0, _I16)
    if version not in _VERSIONS:
        raise _Bad(f"{what}: metadata version {version} is not supported", pos)
    return msg, start + size


def _validity(mv, buf, length, null_count, pos):
    if buf is None:
        if null_count:
            raise _Bad(f"{null_count} nulls but no validity bitmap", pos)
        return None
    nbytes = (length + 7) // 8
    start, size = buf
    if size < nbytes:
        raise _Bad(f"validity bitmap of {size} bytes for {length} rows", pos)
    view = mv[start:start + nbytes]
    valid = (int.from_bytes(view, "little") & ((1 << length) - 1)).bit_count()
    if length - valid != null_count:
        raise _Bad(f"validity bitmap holds {length - valid} nulls, node says {null_count}",
                   pos)
    return view


def _batch(mv, msg, fields, body, body_len, check_offsets):
    pos = msg.pos
    if msg.scalar(1, _U8) != _MSG_RECORD_BATCH:
        kind = "dictionary batch" if msg.scalar(1, _U8) == _MSG_DICTIONARY else "message"
        raise _Bad(f"a {kind} where a record batch belongs", pos)
    if msg.scalar(3, _I64) != body_len:
        raise _Bad("message body length differs from its footer block", pos)
    rb = msg.table(2)
    if rb is None:
        raise _Bad("record batch message without its header", pos)
    num_rows = rb.scalar(0, _I64)
    comp = rb.table(3)
    if comp is not None:
        codec = {0: "LZ4_FRAME", 1: "ZSTD"}.get(comp.scalar(0, _U8), "unknown codec")
        raise _Bad(f"compressed record batch bodies ({codec}) are not supported", comp.pos)
    if rb.vector(4, 8)[1]:
        raise _Bad("variadic buffers are not supported", rb.pos)
    nodes_at, n_nodes = rb.vector(1, _PAIR.size)
    bufs_at, n_bufs = rb.vector(2, _PAIR.size)
    want = sum(3 if typ in _VARBIN_TYPES else 2 for _, typ, _ in fields)
    if num_rows < 0 or n_nodes != len(fields) or n_bufs != want:
        raise _Bad(f"record batch of {num_rows} rows, {n_nodes} nodes, {n_bufs} "
                   f"buffers for {len(fields)} fields needing {want}", rb.pos)
    bufs = []
    for k in range(n_bufs):
        off, size = _PAIR.unpack_from(mv, bufs_at + 16 * k)
        if off < 0 or size < 0 or off + size > body_len:
            raise _Bad(f"buffer {k} ({size} bytes at {off}) outside the "
                       f"{body_len}-byte body", bufs_at + 16 * k)
        bufs.append((body + off, size) if size else None)
    columns, b = [], 0
    for k, (name, typ, fmt) in enumerate(fields):
        length, nulls = _PAIR.unpack_from(mv, nodes_at + 16 * k)
        if length != num_rows or not 0 <= nulls <= length:
            raise _Bad(f"column {name!r}: {length} rows ({nulls} null) in a batch "
                       f"of {num_rows}", nodes_at + 16 * k)
        validity = _validity(mv, bufs[b], length, nulls, body)
        if typ in _VARBIN_TYPES:
            offsets, data = _varbin(mv, name, fmt, length, bufs[b + 1], bufs[b + 2],
                                    body, check_offsets)
            b += 3
        else:
            nbytes = (length + 7) // 8 if typ == "bool" else length * _ITEMSIZE[fmt]
            start, size = bufs[b + 1] or (body, 0)
            if size < nbytes:
                raise _Bad(f"column {name!r}: {size} data bytes for {length} {typ} rows",
                           body)
            data = mv[start:start + nbytes].cast(fmt)
            offsets = None
            b += 2
        columns.append(Column(length, nulls, validity, offsets, data))
    return Batch(num_rows, columns)


def _varbin(mv, name, fmt, length, obuf, dbuf, body, check_offsets):
    data = mv[dbuf[0]:dbuf[0] + dbuf[1]] if dbuf else mv[body:body]
    if obuf is None and length == 0:         # writers may omit a 0-row offsets buffer
        return memoryview(bytes(_ITEMSIZE[fmt])).cast(fmt), data
    width = _ITEMSIZE[fmt]
    start, size = obuf or (body, 0)
    if size < (length + 1) * width:
        raise _Bad(f"column {name!r}: {size} offset bytes for {length} rows", body)
    offsets = mv[start:start + (length + 1) * width].cast(fmt)
    first, last = offsets[0], offsets[length]
    if not 0 <= first <= last <= len(data):
        raise _Bad(f"column {name!r}: offsets {first}..{last} outside "
                   f"{len(data)} bytes of values", start)
    if check_offsets and length > 1 and not all(map(operator.le, offsets[:-1], offsets[1:])):
        raise _Bad(f"column {name!r}: offsets decrease", start)
    return offsets, data


def _parse(mv, check_offsets):
    n = len(mv)
    if n < 8 or mv[:8] != _MAGIC + b"\0\0":
        raise _Bad("not an Arrow IPC file (no leading ARROW1 magic)", 0)
    if n < 8 + 8 + 4 + 6 or mv[n - 6:] != _MAGIC:
        raise _Bad("no trailing ARROW1 magic (truncated file?)", n)
    footer_len = _I32.unpack_from(mv, n - 10)[0]
    footer_at = n - 10 - footer_len
    if footer_len <= 0 or footer_at < 16:
        raise _Bad(f"footer length {footer_len} does not fit the file", n - 10)
    footer = _Region(mv, footer_at, n - 10, "footer").root()
    if footer.scalar(0, _I16) not in _VERSIONS:
        raise _Bad(f"footer metadata version {footer.scalar(0, _I16)} not supported",
                   footer_at)
    fields = _schema(footer.table(1))
    if footer.vector(2, _BLOCK.size)[1]:
        raise _Bad("dictionary batches are not supported", footer_at)
    smsg, schema_end = _message(mv, 8, footer_at, "schema message")
    if smsg.scalar(1, _U8) != _MSG_SCHEMA or smsg.scalar(3, _I64) != 0:
        raise _Bad("the file does not start with a schema message", 8)
    if [f[:2] for f in _schema(smsg.table(2))] != [f[:2] for f in fields]:
        raise _Bad("schema message and footer schema differ", 8)
    blocks_at, n_blocks = footer.vector(3, _BLOCK.size)
    batches = []
    for k in range(n_blocks):
        off, meta_len, body_len = _BLOCK.unpack_from(mv, blocks_at + _BLOCK.size * k)
        if (off < schema_end or meta_len <= 0 or body_len < 0
                or off + meta_len + body_len > footer_at):
            raise _Bad(f"record batch block {k} ({meta_len} + {body_len} bytes at "
                       f"{off}) outside the data", blocks_at + _BLOCK.size * k)
        msg, _ = _message(mv, off, off + meta_len, f"record batch {k}")
        batches.append(_batch(mv, msg, fields, off + meta_len, body_len, check_offsets))
    return ArrowFile([f[:2] for f in fields], batches)


def read_file(buf, path=None, *, check_offsets=True) -> ArrowFile:
    """Parse an Arrow IPC file held in ``buf``; see the module docstring."""
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise TypeError("read_file needs a C-contiguous buffer")
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    try:
        if sys.byteorder != "little":
            raise _Bad("reading Arrow files needs a little-endian host", None)
        return _parse(mv, check_offsets)
    except _Bad as e:
        detail, offset = e.args
    mv.release()
    # Raised outside the handler, with no parser frames (and their views) behind it.
    raise CorruptionError(detail, path=path, offset=offset, reason="bad_snapshot")
