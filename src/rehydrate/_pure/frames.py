"""Records and frames: the writer's buffer and the replay scanner.

A *record* is one logical op with one LSN; a *frame* is the physical unit on
disk (header + checksummed payload of records) and the unit of atomicity.
Plain-Python reference for the native core's frame modules (logbuffer,
encoder, decoder, scanner; ``src/rehydrate/_core/frames.pyx`` gathers their
names): same names, same bytes, same ScanResult for the same input.
"""

from __future__ import annotations

from typing import Any, Optional

import struct

from .. import _format as F
from .._custom import apply_custom
from .._offsets import encode_offsets, split_offsets
from ..errors import BatchTooLargeError, InvalidOperationError, RehydrateError
from .codec import (
    check_delta,
    crc32c,
    decode_number,
    decode_varint,
    encode_key,
    encode_varint,
    key_is_wellformed,
    lz4_compress,
    lz4_decompress,
    pack_value,
)

FRAME_HEADER = struct.Struct("<IIQIIIBBH")  # the fields both formats share
assert FRAME_HEADER.size == F.FRAME_HEADER_BYTES_V1
_U32 = struct.Struct("<I")


def _header_bytes_of(version) -> int:
    if version == 1:
        return F.FRAME_HEADER_BYTES_V1
    if version == F.FORMAT_VERSION:
        return F.FRAME_HEADER_BYTES
    raise ValueError(f"no frame format {version!r}")

# A batch's records must fit one frame with room for every table declaration:
# 65536 of at most 266 bytes (id 3, kind 1, name 2 + 255, version 5) take
# under 17 MiB of the other half (a numeric table's schema comes on top).
MAX_BATCH_RECORD_BYTES = F.MAX_FRAME_PAYLOAD_BYTES // 2


def _record(op: int, tid: int, kb: bytes, vb: bytes) -> bytes:
    return b"".join(
        (bytes((op,)), encode_varint(tid), encode_varint(len(kb)), kb,
         encode_varint(len(vb)), vb)
    )


def check_table_name(name) -> bytes:
    """UTF-8 bytes of a valid table name (1..255 bytes of str); ConfigError else."""
    from ..errors import ConfigError

    if type(name) is not str:
        raise ConfigError(f"table names are str, not {type(name).__name__}")
    nb = name.encode("utf-8")
    if not 1 <= len(nb) <= F.MAX_TABLE_NAME_BYTES:
        raise ConfigError(f"table name must be 1..{F.MAX_TABLE_NAME_BYTES} bytes")
    return nb


class LogBuffer:
    """Records appended since the last frame was cut, with LSN assignment.

    Each write method validates, applies to the table, appends the record and
    returns its LSN; on any error nothing is applied or appended. The caller
    (the store) serializes calls.
    """

    def __init__(self, next_lsn: int) -> None:
        self.next_lsn = next_lsn
        self._first_lsn = next_lsn
        self._parts = bytearray()
        self._used: set = set()  # tables the pending records use

    @property
    def pending_records(self) -> int:
        return self.next_lsn - self._first_lsn

    @property
    def pending_bytes(self) -> int:
        return len(self._parts)

    def used_tids(self) -> list:
        """Sorted ids of the tables the pending records use."""
        return sorted(self._used)

    def _append(self, tid: int, rec: bytes) -> int:
        self._parts += rec
        self._used.add(tid)
        lsn = self.next_lsn
        self.next_lsn = lsn + 1
        return lsn

    # Each method builds the record first (every check that can raise), then
    # changes the table, then appends: an error leaves both untouched.
    def put(self, table, tid: int, key, value) -> int:
        kb = encode_key(key)
        vb = pack_value(value)
        if len(vb) > MAX_BATCH_RECORD_BYTES:
            raise BatchTooLargeError(f"value of {len(vb)} bytes exceeds one frame")
        rec = _record(F.OP_PUT, tid, kb, vb)
        table._put_raw(kb, vb)
        return self._append(tid, rec)

    def delete(self, table, tid: int, key) -> int:
        rec = _record(F.OP_DELETE, tid, encode_key(key), b"")
        table._delete_raw(encode_key(key))
        return self._append(tid, rec)

    def incr(self, table, tid: int, key, delta) -> int:
        kb = encode_key(key)
        check_delta(delta)
        rec = _record(F.OP_INCR, tid, kb, pack_value(delta))
        table._incr_raw(kb, delta)
        return self._append(tid, rec)

    def clear(self, table, tid: int) -> int:
        rec = _record(F.OP_CLEAR, tid, b"", b"")
        table._clear()
        return self._append(tid, rec)

    def custom(self, table, tid: int, key, op: str, value) -> int:
        """A custom table's own op (record op 6, value msgpack [op, value]);
        ``key`` may be None. The table applies it first: an error logs nothing."""
        kb = encode_key(key) if key is not None else b""
        vb = pack_value([op, value])
        rec = _record(F.OP_CUSTOM, tid, kb, vb)
        apply_custom(table, kb, vb)
        return self._append(tid, rec)

    def noop(self) -> int:
        """A record that changes nothing: the LSN of a batch that only
        carries source offsets. Uses no table, so declares none."""
        self._parts += _record(F.OP_NOOP, 0, b"", b"")
        lsn = self.next_lsn
        self.next_lsn = lsn + 1
        return lsn

    def commit(self, staging, tables, tids) -> int | None:
        """Apply and append a staged batch; all of it or, on error, none of it.

        ``tables[i]`` and ``tids[i]`` belong to ``staging.names[i]``. Returns
        the batch's last LSN, or None for an empty batch.
        """
        if not staging._ops:
            return None
        if staging.nbytes > MAX_BATCH_RECORD_BYTES:
            raise BatchTooLargeError(
                f"batch of {staging.nbytes} bytes exceeds {MAX_BATCH_RECORD_BYTES}"
            )
        tid_bytes = [encode_varint(tids[li]) for li in range(len(staging.names))]
        undo = []
        try:
            for op, li, kb, vb, arg in staging._ops:
                t = tables[li]
                if op == F.OP_CLEAR:
                    undo.append((t, None, t._items_raw()))
                    t._clear()
                    continue
                undo.append((t, kb, t._get_raw(kb)))
                if op == F.OP_PUT:
                    t._put_raw(kb, vb)
                elif op == F.OP_DELETE:
                    t._delete_raw(kb)
                else:
                    t._incr_raw(kb, arg)
        except BaseException:
            for t, kb, old in reversed(undo):
                if kb is None:
                    for k, v in old:
                        t._put_raw(k, v)
                elif old is None:
                    t._delete_raw(kb)
                else:
                    t._put_raw(kb, old)
            raise
        for op, li, kb, vb, _ in staging._ops:
            self._parts += b"".join((bytes((op,)), tid_bytes[li], encode_varint(len(kb)), kb,
                                     encode_varint(len(vb)), vb))
        self._used.update(tids[li] for li in range(len(staging.names)))
        self.next_lsn += len(staging._ops)
        return self.next_lsn - 1

    def take(self):
        """(first_lsn, count, records) of everything pending; then empty."""
        out = (self._first_lsn, self.next_lsn - self._first_lsn, bytes(self._parts))
        self._first_lsn = self.next_lsn
        self._parts = bytearray()
        self._used = set()
        return out


class Staging:
    """The records of one ``store.batch()``, encoded and checked as they come.

    Type errors (key, value, delta) raise at the call; whether an ``incr``
    applies is known only at commit, against the state plus the batch so far.
    """

    def __init__(self) -> None:
        self.names: list = []
        self._index: dict = {}
        self._ops: list = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._ops)

    def _li(self, table_name) -> int:
        li = self._index.get(table_name)
        if li is None:
            check_table_name(table_name)
            li = self._index[table_name] = len(self.names)
            self.names.append(table_name)
        return li

    def _add(self, op, table_name, kb, vb, arg=None) -> None:
        li = self._li(table_name)
        self._ops.append((op, li, kb, vb, arg))
        self.nbytes += len(kb) + len(vb) + 16

    def put(self, table_name, key, value) -> None:
        kb = encode_key(key)
        self._add(F.OP_PUT, table_name, kb, pack_value(value))

    def delete(self, table_name, key) -> None:
        self._add(F.OP_DELETE, table_name, encode_key(key), b"")

    def incr(self, table_name, key, delta=1) -> None:
        kb = encode_key(key)
        check_delta(delta)
        self._add(F.OP_INCR, table_name, kb, pack_value(delta), delta)

    def clear(self, table_name) -> None:
        self._add(F.OP_CLEAR, table_name, b"", b"")


def encode_frame(first_lsn: int, count: int, decls, records: bytes, offsets=None,
                 version: int = F.FORMAT_VERSION) -> bytes:
    """One frame: header + payload (offsets, decls, then records), LZ4 when it pays.

    ``decls`` is a sequence of (table_id, kind, name_bytes[, schema_bytes
    [, version]]) (the schema of a numeric table, ignored for other kinds; the
    table's version, 1 when absent, written only when >= 2); ``offsets`` a
    dict {source: int64} stored with the frame (FLAG_OFFSETS), or None.
    ``version``: the segment format the frame goes into (1 only to make
    format-1 test data; rehydrate writes format 2).
    """
    hb = _header_bytes_of(version)
    flags = F.FLAG_OFFSETS if offsets else 0
    parts = [encode_offsets(offsets)] if offsets else []
    parts.append(encode_varint(len(decls)))
    for decl in decls:
        tid, kind, name = decl[0], decl[1], decl[2]
        table_version = decl[4] if len(decl) > 4 else 1
        if not 0 <= kind <= F.DECL_KIND_MASK:
            raise ValueError(f"table kind must be 0..{F.DECL_KIND_MASK}")
        if type(table_version) is not int or not 1 <= table_version <= F.MAX_TABLE_VERSION:
            raise ValueError("table version must be an int in 1..4294967295")
        flag = F.DECL_VERSION_FLAG if table_version > 1 else 0
        parts += [encode_varint(tid), bytes((kind | flag,)), encode_varint(len(name)), name]
        if kind == F.KIND_NUMERIC:
            schema = decl[3] if len(decl) > 3 else b""
            parts += [encode_varint(len(schema)), schema]
        if flag:
            parts.append(encode_varint(table_version))
    parts.append(records)
    payload = b"".join(parts)
    raw_len = len(payload)
    if raw_len > F.MAX_FRAME_PAYLOAD_BYTES:
        raise BatchTooLargeError(f"frame payload of {raw_len} bytes exceeds the cap")
    codec = F.CODEC_NONE
    if raw_len >= F.COMPRESS_MIN_BYTES:
        packed = lz4_compress(payload)
        if len(packed) <= raw_len - raw_len // 8:
            payload, codec = packed, F.CODEC_LZ4
    tail = FRAME_HEADER.pack(0, 0, first_lsn, count, len(payload), raw_len, codec, flags, 0)[8:]
    if hb == F.FRAME_HEADER_BYTES:
        # The header's own check: a damaged length is caught before it is used.
        tail += _U32.pack(crc32c(tail))
    crc = crc32c(payload, crc32c(tail))
    return struct.pack("<II", F.frame_magic(version), crc) + tail + payload


class FrameHeader:
    __slots__ = ("magic", "crc", "first_lsn", "count", "stored_len", "raw_len",
                 "codec", "flags", "reserved", "header_crc", "version", "header_crc_ok")

    def __init__(self, fields) -> None:
        for name, v in zip(self.__slots__, fields):
            setattr(self, name, v)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def parse_frame_header(buf, offset: int, version: int = F.FORMAT_VERSION):
    """The FrameHeader at ``offset`` of a segment of format ``version`` (no
    checks but the header checksum's, recorded as ``header_crc_ok``), or None
    if fewer than a header's bytes remain."""
    hb = _header_bytes_of(version)
    if len(buf) - offset < hb:
        return None
    raw = bytes(buf[offset:offset + hb])
    fields = FRAME_HEADER.unpack_from(raw, 0)
    if hb == F.FRAME_HEADER_BYTES:
        header_crc = _U32.unpack_from(raw, 32)[0]
        ok = crc32c(raw[8:8 + F.FRAME_HEADER_CRC_SPAN]) == header_crc
    else:
        header_crc, ok = 0, True
    return FrameHeader(fields + (header_crc, version, ok))


def header_problem(h) -> str | None:
    """Why a header is impossible (its fields alone), or None."""
    if h.magic != F.frame_magic(h.version):
        return "bad magic"
    if not h.header_crc_ok:
        return "frame header checksum mismatch"
    if h.codec not in (F.CODEC_NONE, F.CODEC_LZ4) or h.flags & ~F.KNOWN_FLAGS or h.reserved != 0:
        return f"unknown codec {h.codec} or flags {h.flags:#x}/{h.reserved:#x}"
    if h.raw_len > F.MAX_FRAME_PAYLOAD_BYTES or h.stored_len > F.MAX_FRAME_PAYLOAD_BYTES:
        return f"payload length {max(h.raw_len, h.stored_len)} exceeds the cap"
    if h.codec == F.CODEC_NONE and h.stored_len != h.raw_len:
        return "stored and raw lengths differ without a codec"
    if h.count < 1 or h.count > h.raw_len // F.MIN_RECORD_BYTES:
        return f"record count {h.count} impossible for {h.raw_len} payload bytes"
    if h.first_lsn < 1 or h.first_lsn + h.count > (1 << 63):
        return f"first LSN {h.first_lsn} out of range"
    return None


def decode_payload(payload, count: int, seg_tids):
    """(decls, records) of a raw payload, or raise ValueError naming the fault.

    ``seg_tids`` is the set of table ids already declared in this segment;
    a record may use those or any id this payload declares. decls are
    (tid, kind, name_bytes, schema_bytes, version); records are
    (op, tid, key_bytes, value_bytes).
    """
    end = len(payload)
    n, i = decode_varint(payload, 0, end)
    if n < 0 or n > F.MAX_TABLE_ID + 1:
        raise ValueError("bad declaration count")
    decls = []
    known = set(seg_tids)
    for _ in range(n):
        tid, i = decode_varint(payload, i, end)
        if tid < 0 or tid > F.MAX_TABLE_ID or i >= end:
            raise ValueError("bad table declaration")
        kind = payload[i] & F.DECL_KIND_MASK
        versioned = payload[i] & F.DECL_VERSION_FLAG
        i += 1
        nlen, i = decode_varint(payload, i, end)
        if nlen < 1 or nlen > F.MAX_TABLE_NAME_BYTES or i + nlen > end:
            raise ValueError("bad table name length")
        name = bytes(payload[i:i + nlen])
        i += nlen
        schema = b""
        if kind == F.KIND_NUMERIC:  # then its schema (msgpack; the registry checks it)
            slen, i = decode_varint(payload, i, end)
            if slen < 1 or slen > F.MAX_SCHEMA_BYTES or i + slen > end:
                raise ValueError("bad table declaration")
            schema = bytes(payload[i:i + slen])
            i += slen
        version = 1
        if versioned:  # then the table's version, >= 2
            version, i = decode_varint(payload, i, end)
            if version < 2:
                raise ValueError("bad table declaration")
        decls.append((tid, kind, name, schema, version))
        known.add(tid)
    records: list[Any] = []
    while i < end:
        if len(records) == count:
            raise ValueError("payload holds more records than its header counts")
        op = payload[i]
        i += 1
        tid, i = decode_varint(payload, i, end)
        # A no-op names no table (its id is 0 whether or not 0 is declared).
        if tid < 0 or (tid not in known and op != F.OP_NOOP):
            raise ValueError(f"record uses undeclared table id {tid}")
        klen, i = decode_varint(payload, i, end)
        if klen < 0 or klen > F.MAX_KEY_BYTES or i + klen > end:
            raise ValueError("bad key length")
        kb = bytes(payload[i:i + klen])
        i += klen
        vlen, i = decode_varint(payload, i, end)
        if vlen < 0 or i + vlen > end:
            raise ValueError("bad value length")
        vb = bytes(payload[i:i + vlen])
        i += vlen
        if op == F.OP_CLEAR:
            ok = klen == 0 and vlen == 0
        elif op == F.OP_PUT:
            ok = key_is_wellformed(kb) and vlen >= 1
        elif op == F.OP_DELETE:
            ok = key_is_wellformed(kb) and vlen == 0
        elif op == F.OP_INCR:
            ok = key_is_wellformed(kb) and decode_number(vb) is not None
        elif op == F.OP_NOOP:
            ok = tid == 0 and klen == 0 and vlen == 0
        elif op == F.OP_CUSTOM:
            ok = (klen == 0 or key_is_wellformed(kb)) and vlen >= 1
        else:
            raise ValueError(f"unknown op {op}")
        if not ok:
            raise ValueError(f"malformed record for op {op}")
        records.append((op, tid, kb, vb))
    if len(records) != count:
        raise ValueError(f"payload holds {len(records)} records, header says {count}")
    return decls, records


class ScanResult:
    """Where and why a scan stopped. ``offset`` is the start of the frame at
    fault (or the end of the buffer when ``status`` is SCAN_OK); ``frame_end``
    is that frame's claimed end (-1 when its header was not read)."""

    __slots__ = ("status", "offset", "next_lsn", "frames", "records",
                 "applied", "frame_end", "detail")

    def __init__(self, status, offset, next_lsn, frames, records, applied,
                 frame_end, detail) -> None:
        self.status = status
        self.offset = offset
        self.next_lsn = next_lsn
        self.frames = frames
        self.records = records
        self.applied = applied
        self.frame_end = frame_end
        self.detail = detail

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ScanResult({self.as_dict()!r})"


class SegmentContext:
    """Per-segment table declarations seen so far, bound to a registry.

    ``registry.declare(tid, kind, name_bytes, schema, version)`` returns the
    table to apply to (or None when not applying) and raises RehydrateError on
    a conflict.
    """

    def __init__(self, registry, offsets=None) -> None:
        self.registry = registry
        self.tables: dict = {}
        # Source offsets of the frames scanned, merged (shared across segments).
        self.offsets: dict = {} if offsets is None else offsets

    def adopt(self, tid: int, table) -> None:
        """Treat ``tid`` as declared in this segment (salvage after a lost frame
        whose declarations are known from earlier segments)."""
        if tid not in self.tables:
            self.tables[tid] = table


def _apply_one(op, t, kb, vb) -> None:
    if op == F.OP_PUT:
        t._put_raw(kb, vb)
    elif op == F.OP_DELETE:
        t._delete_raw(kb)
    elif op == F.OP_INCR:
        t._incr_raw(kb, decode_number(vb))
    elif op == F.OP_CLEAR:
        t._clear()
    elif op == F.OP_CUSTOM:
        apply_custom(t, kb, vb)


def _apply(records, tables, applied_lsn, first_lsn, on_error=None) -> int:
    """Apply a frame's records past ``applied_lsn``; the number applied.

    InvalidOperationError from a record stops the frame, unless ``on_error``
    (skip-corrupted) is given: it is called with (LSN, table id, the raw
    records left out, the error) and the rest of the frame is applied. A
    custom table with its own apply_many gets each run of its records in one
    call, and a failed call leaves out the whole run.
    """
    applied = 0
    lsn = first_lsn
    i, n = 0, len(records)
    while i < n:
        op, tid, kb, vb = records[i]
        if lsn <= applied_lsn or op == F.OP_NOOP:
            applied += lsn > applied_lsn
            i, lsn = i + 1, lsn + 1
            continue
        t = tables[tid]
        j = i + 1
        try:
            if getattr(t, "_rh_many", False):
                # A custom table with its own apply_many: the run of its records.
                while j < n and records[j][0] != F.OP_NOOP and records[j][1] == tid:
                    j += 1
                t._rh_apply_raw_many([(o, k or None, v) for o, _, k, v in records[i:j]])
            else:
                _apply_one(op, t, kb, vb)
            applied += j - i
        except InvalidOperationError as e:
            if on_error is None:
                raise
            on_error(lsn, tid, [(o, k, v) for o, _, k, v in records[i:j]], e)
        lsn += j - i
        i = j
    return applied


def scan_frames(buf, offset, next_lsn, applied_lsn, ctx, apply=True,
                cancel=None, progress=None, progress_every=4 << 20,
                version=F.FORMAT_VERSION):
    """Check, decode and (if ``apply``) replay frames from ``offset`` to the end.

    Records with LSN <= ``applied_lsn`` are checked but not applied, so a
    replay over state that already has them changes nothing. Stops at the
    first frame that fails a check, leaving the state as of the frame before.
    ``cancel``: a writable buffer; a non-zero first byte stops the scan.
    ``progress(offset)`` is called about every ``progress_every`` bytes.
    ``version``: the format of the segment the frames are in.
    """
    hb = _header_bytes_of(version)
    magic = F.frame_magic(version)
    end = len(buf)
    frames = records = applied = 0
    next_progress = offset + progress_every

    def stop(status, at, frame_end=-1, detail=""):
        return ScanResult(status, at, next_lsn, frames, records, applied, frame_end, detail)

    while offset < end:
        if cancel is not None and cancel[0]:
            return stop(F.SCAN_CANCELLED, offset, detail="cancelled")
        h = parse_frame_header(buf, offset, version)
        if h is None:
            return stop(F.SCAN_TRUNCATED, offset, detail="partial frame header")
        why = header_problem(h)
        if why is not None:
            status = F.SCAN_BAD_MAGIC if h.magic != magic else F.SCAN_BAD_HEADER
            return stop(status, offset, detail=why)
        body = offset + hb
        frame_end = body + h.stored_len
        if frame_end > end:
            return stop(F.SCAN_TRUNCATED, offset, frame_end, "frame runs past the end")
        payload = buf[body:frame_end]
        if crc32c(payload, crc32c(buf[offset + 8:body])) != h.crc:
            return stop(F.SCAN_BAD_CRC, offset, frame_end, "checksum mismatch")
        if h.first_lsn > next_lsn:
            return stop(F.SCAN_LSN_GAP, offset, frame_end,
                        f"frame starts at LSN {h.first_lsn}, expected {next_lsn}")
        if h.first_lsn < next_lsn:
            return stop(F.SCAN_LSN_OVERLAP, offset, frame_end,
                        f"frame starts at LSN {h.first_lsn}, expected {next_lsn}")
        offsets = None
        try:
            if h.codec == F.CODEC_LZ4:
                payload = lz4_decompress(payload, h.raw_len)
            if h.flags & F.FLAG_OFFSETS:
                offsets, used = split_offsets(payload)
                payload = payload[used:]
            decls, recs = decode_payload(payload, h.count, ctx.tables.keys())
        except ValueError as e:
            return stop(F.SCAN_BAD_PAYLOAD, offset, frame_end, str(e))
        try:
            for tid, kind, name, schema, table_version in decls:
                # Every kind decodes the same records; what a kind means
                # is the registry's business (rehydrate/tables.py).
                if not F.KIND_KV <= kind <= F.KIND_NUMERIC:
                    raise ValueError(f"unknown table kind {kind}")
                ctx.tables[tid] = ctx.registry.declare(tid, kind, name, schema, table_version)
        except (ValueError, RehydrateError) as e:
            return stop(F.SCAN_BAD_PAYLOAD, offset, frame_end, str(e))
        if apply:
            try:
                applied += _apply(recs, ctx.tables, applied_lsn, h.first_lsn,
                                  getattr(ctx, "on_apply_error", None))
            except InvalidOperationError as e:
                return stop(F.SCAN_APPLY_ERROR, offset, frame_end, str(e))
        if offsets is not None and h.first_lsn + h.count - 1 > applied_lsn:
            ctx.offsets.update(offsets)
        frames += 1
        records += h.count
        next_lsn = h.first_lsn + h.count
        offset = frame_end
        if progress is not None and offset >= next_progress:
            progress(offset)
            next_progress = offset + progress_every
    return stop(F.SCAN_OK, offset)
