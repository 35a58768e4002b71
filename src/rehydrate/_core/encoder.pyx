# cython: language_level=3
"""Frames out (native): encode_frame, a header and its checksummed payload.

Twin of ``encode_frame`` in ``rehydrate._pure.frames``: the same bytes for
the same arguments, or the same error.
"""

import struct

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from ._format cimport (
    CODEC_LZ4, CODEC_NONE, DECL_KIND_MASK, DECL_VERSION_FLAG, FLAG_OFFSETS, FORMAT_VERSION,
    FRAME_HEADER_BYTES, FRAME_HEADER_CRC_SPAN, FRAME_MAGIC, FRAME_MAGIC_V1, KIND_NUMERIC,
    MAX_FRAME_PAYLOAD_BYTES, MAX_TABLE_VERSION,
)
from ._frameutil cimport header_bytes_of, put_le32
from .codec cimport crc32c_raw

from rehydrate import _format as F
from rehydrate._offsets import encode_offsets
from rehydrate.errors import BatchTooLargeError

from .codec import encode_varint, lz4_compress

_FRAME_HEADER = struct.Struct("<IIQIIIBBH")  # the fields both formats share


def encode_frame(first_lsn, count, decls, records, offsets=None, version=FORMAT_VERSION):
    """One frame: header + payload (offsets, decls, then records), LZ4 when it pays.

    ``decls`` is a sequence of (table_id, kind, name_bytes[, schema_bytes
    [, version]]) (the schema of a numeric table, ignored for other kinds; the
    table's version, 1 when absent, written only when >= 2); ``offsets`` a
    dict {source: int64} stored with the frame (FLAG_OFFSETS), or None.
    ``version``: the segment format the frame goes into (1 only to make
    format-1 test data; rehydrate writes format 2).
    """
    cdef bytes payload, out
    cdef Py_ssize_t hb = header_bytes_of(version)
    cdef Py_ssize_t raw_len, stored_len
    cdef unsigned codec = CODEC_NONE
    cdef unsigned flags = FLAG_OFFSETS if offsets else 0
    cdef unsigned char *p
    cdef uint32_t crc
    pieces = [encode_offsets(offsets)] if offsets else []
    pieces.append(encode_varint(len(decls)))
    for decl in decls:
        tid, kind, name = decl[0], decl[1], decl[2]
        table_version = decl[4] if len(decl) > 4 else 1
        if not 0 <= kind <= DECL_KIND_MASK:
            raise ValueError(f"table kind must be 0..{DECL_KIND_MASK}")
        if type(table_version) is not int or not 1 <= table_version <= MAX_TABLE_VERSION:
            raise ValueError("table version must be an int in 1..4294967295")
        flag = DECL_VERSION_FLAG if table_version > 1 else 0
        pieces.append(encode_varint(tid))
        pieces.append(bytes((kind | flag,)))
        pieces.append(encode_varint(len(name)))
        pieces.append(name)
        if kind == KIND_NUMERIC:
            schema = decl[3] if len(decl) > 3 else b""
            pieces.append(encode_varint(len(schema)))
            pieces.append(schema)
        if flag:
            pieces.append(encode_varint(table_version))
    pieces.append(records)
    payload = b"".join(pieces)
    raw_len = PyBytes_GET_SIZE(payload)
    if raw_len > MAX_FRAME_PAYLOAD_BYTES:
        raise BatchTooLargeError(f"frame payload of {raw_len} bytes exceeds the cap")
    if raw_len >= F.COMPRESS_MIN_BYTES:
        packed = lz4_compress(payload)
        if len(packed) <= raw_len - raw_len // 8:
            payload = packed
            codec = CODEC_LZ4
    stored_len = PyBytes_GET_SIZE(payload)
    if not (type(first_lsn) is int and type(count) is int
            and 0 <= first_lsn <= 0xFFFFFFFFFFFFFFFF and 0 <= count <= 0xFFFFFFFF):
        # Let struct raise exactly what the twin's header packing raises.
        _FRAME_HEADER.pack(0, 0, first_lsn, count, stored_len, raw_len, codec, flags, 0)
    out = PyBytes_FromStringAndSize(NULL, hb + stored_len)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    put_le32(p, FRAME_MAGIC if hb == FRAME_HEADER_BYTES else FRAME_MAGIC_V1)
    put_le32(p + 8, <uint32_t>(<uint64_t>first_lsn))
    put_le32(p + 12, <uint32_t>((<uint64_t>first_lsn) >> 32))
    put_le32(p + 16, <uint32_t>count)
    put_le32(p + 20, <uint32_t>stored_len)
    put_le32(p + 24, <uint32_t>raw_len)
    p[28] = <unsigned char>codec
    p[29] = <unsigned char>flags
    p[30] = 0
    p[31] = 0
    if hb == FRAME_HEADER_BYTES:
        # The header's own check, over every field after the frame CRC: a
        # damaged length is caught before it decides where the next frame is.
        put_le32(p + 32, crc32c_raw(0, p + 8, FRAME_HEADER_CRC_SPAN))
    memcpy(p + hb, PyBytes_AS_STRING(payload), <size_t>stored_len)
    # The CRC covers header bytes [8, hb) and the payload: one contiguous run.
    crc = crc32c_raw(0, p + 8, <size_t>(hb - 8 + stored_len))
    put_le32(p + 4, crc)
    return out
