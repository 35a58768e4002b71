"""Plain-Python twin of the native core ``rehydrate._core``.

Same names, same results, same bytes on disk; slower. Selected with
``REHYDRATE_NO_EXTENSIONS=1`` and used by the tests as the reference the
native core is compared against.
"""

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

IMPLEMENTATION = "pure"

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
