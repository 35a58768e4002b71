# rehydrate._core: the native (Cython + C) core; its twin is rehydrate._pure.
#
# Layout: codec (CRC32C, LZ4 decode, keys, values, varints; C in
# crc32c_impl.c, lz4_decode.c, valcodec.h), kvtable (KVTable over kvcore.h's
# hash table + arena), and records and frames by role: logbuffer (Staging,
# LogBuffer: the writer's buffer), encoder (encode_frame), decoder
# (decode_payload over payload.h) and scanner (frame headers and
# scan_frames, the replay loop); frames gathers those four's names as the
# twin's rehydrate._pure.frames. A .pyx whose cdef functions or classes other
# modules cimport has its .pxd beside it (`from .codec cimport ...`);
# _frameutil.pxd holds the frame modules' shared inline helpers. includes/
# holds the C: each header (and crc32c_impl.c, lz4_decode.c) with the .pxd
# declaring it. Format constants: _format.pxd (cdef enum), mirrored from
# rehydrate/_format.py. Replay knows a NumericTable by its class's
# _rh_numeric_columns, not by importing rehydrate.numeric.
#
# The public names are exactly the twin's (rehydrate._pure.__all__).

from .codec import (
    check_delta,
    crc32c,
    crc32c_backend,
    decode_key,
    decode_number,
    decode_varint,
    encode_key,
    encode_varint,
    incr_value,
    key_is_wellformed,
    lz4_compress,
    lz4_decompress,
    pack_value,
    unpack_value,
)
from .frames import (
    MAX_BATCH_RECORD_BYTES,
    FrameHeader,
    LogBuffer,
    ScanResult,
    SegmentContext,
    Staging,
    check_table_name,
    decode_payload,
    encode_frame,
    header_problem,
    parse_frame_header,
    scan_frames,
)
from .kvtable import KVTable, image_digest_sum, pairs_digest_sum

IMPLEMENTATION = "native"

__all__ = [
    "IMPLEMENTATION",
    "MAX_BATCH_RECORD_BYTES",
    "FrameHeader",
    "KVTable",
    "LogBuffer",
    "ScanResult",
    "SegmentContext",
    "Staging",
    "check_delta",
    "check_table_name",
    "crc32c",
    "crc32c_backend",
    "decode_key",
    "decode_number",
    "decode_payload",
    "decode_varint",
    "encode_frame",
    "encode_key",
    "encode_varint",
    "header_problem",
    "image_digest_sum",
    "incr_value",
    "key_is_wellformed",
    "lz4_compress",
    "lz4_decompress",
    "pack_value",
    "pairs_digest_sum",
    "parse_frame_header",
    "scan_frames",
    "unpack_value",
]
