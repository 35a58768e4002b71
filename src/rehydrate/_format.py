"""On-disk format constants (mirror of ``src/rehydrate/_core/_format.pxd``).

docs/FORMAT.md is the spec; this module and the ``.pxd`` are its only two
spellings in code, and ``tests/test_format_constants.py`` checks they agree.
"""

# 2: frame headers carry their own checksum (docs/FORMAT.md, "Frames");
# a clean close records where the log ends (MANIFEST clean_end). Format 1
# logs and stores are still read; only format 2 is written.
FORMAT_VERSION = 2
MIN_FORMAT_VERSION = 1

# Segment header: magic[8] version:u16 flags:u16 header_bytes:u32
#                 first_lsn:u64 reserved:u32 crc32c:u32   (32 bytes)
SEGMENT_MAGIC = b"RHWALSEG"
SEGMENT_HEADER_BYTES = 32
SEGMENT_SUFFIX = ".wal"
SEGMENT_NAME_DIGITS = 20

# Frame (physical batch) header, format 2: magic:u32 crc32c:u32 first_lsn:u64
#   count:u32 stored_len:u32 raw_len:u32 codec:u8 flags:u8 reserved:u16
#   header_crc32c:u32 (36 bytes). header_crc32c covers header bytes [8, 32),
#   so a damaged length is caught before it is used; crc32c covers header
#   bytes [8, 36) and the stored payload.
# Format 1 (read only): the same without header_crc32c (32 bytes), magic
#   "RHB1", crc32c over header bytes [8, 32) and the payload.
FRAME_MAGIC = 0x32424852  # b"RHB2" little-endian
FRAME_HEADER_BYTES = 36
FRAME_MAGIC_V1 = 0x31424852  # b"RHB1" little-endian
FRAME_HEADER_BYTES_V1 = 32
FRAME_HEADER_CRC_SPAN = 24  # header bytes [8, 32): every field after the frame CRC
CODEC_NONE = 0
CODEC_LZ4 = 1
# Frame flags: bit 0, the payload starts with a source offsets section.
FLAG_OFFSETS = 0x01
KNOWN_FLAGS = FLAG_OFFSETS
MAX_SOURCES = 65536  # offsets per frame
MAX_SOURCE_BYTES = 1024  # a source name, UTF-8

# Caps: every length read from disk is checked against these before use.
MAX_FRAME_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_KEY_BYTES = 1024 * 1024
MAX_TABLE_NAME_BYTES = 255
MAX_TABLE_ID = 65535
# A table's schema version (docs/migrations.md): 1 until a migration or an
# upcaster says otherwise; frames stamp it in their declarations.
MAX_TABLE_VERSION = (1 << 32) - 1
MIN_RECORD_BYTES = 4  # op + table id + key length + value length, all empty

# Writer policy (not format): frames are cut near this many raw payload bytes,
# and compressed only when LZ4 saves at least 1/8 of a payload this large.
FRAME_TARGET_BYTES = 256 * 1024
COMPRESS_MIN_BYTES = 512

# Record ops
OP_PUT = 1
OP_DELETE = 2
OP_INCR = 3
OP_CLEAR = 4
OP_NOOP = 5  # changes no table; carries a batch that is only source offsets
OP_CUSTOM = 6  # a custom table's own op: value is msgpack [op name, value]

# Table kinds (declared in each frame that uses the table; docs/tables.md)
KIND_KV = 1  # native hash table of key bytes -> msgpack bytes
KIND_DICT = 2  # a Python dict of decoded values; same records as KV
KIND_CUSTOM = 3  # a user StateType; the class is found by table name at open
KIND_NUMERIC = 4  # fixed-schema numeric columns; its declaration carries the schema
MAX_SCHEMA_BYTES = 65536  # a numeric table's schema in a declaration
# A declaration's kind byte with this bit set ends with version:varint (>= 2);
# the low 7 bits are the kind. Without it the table's version is 1.
DECL_VERSION_FLAG = 0x80
DECL_KIND_MASK = 0x7F

# Canonical key encoding: one tag byte, then the key's bytes.
KEY_TAG_BYTES = 0x01
KEY_TAG_STR = 0x02
KEY_TAG_INT = 0x03  # 8 bytes, little-endian two's complement

# Manifest: magic[8] payload_len:u32 crc32c:u32, then UTF-8 JSON payload
MANIFEST_MAGIC = b"RHMANIF1"
MANIFEST_HEADER_BYTES = 16
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

# Scan status codes returned by the core's segment scanner.
SCAN_OK = 0  # reached the end of the buffer on a frame boundary
SCAN_TRUNCATED = 1  # a header or payload runs past the end of the buffer
SCAN_BAD_MAGIC = 2
SCAN_BAD_HEADER = 3  # impossible lengths, unknown codec or flags
SCAN_BAD_CRC = 4
SCAN_LSN_GAP = 5  # first_lsn above the expected next LSN
SCAN_LSN_OVERLAP = 6  # first_lsn below the expected next LSN
SCAN_BAD_PAYLOAD = 7  # checksummed, but does not decode (or decompress)
SCAN_APPLY_ERROR = 8  # decoded, but an op cannot apply (incr on a non-number)
SCAN_CANCELLED = 9

SCAN_STATUS_NAMES = {
    SCAN_OK: "ok",
    SCAN_TRUNCATED: "truncated",
    SCAN_BAD_MAGIC: "bad_magic",
    SCAN_BAD_HEADER: "bad_header",
    SCAN_BAD_CRC: "bad_crc",
    SCAN_LSN_GAP: "lsn_gap",
    SCAN_LSN_OVERLAP: "lsn_overlap",
    SCAN_BAD_PAYLOAD: "bad_payload",
    SCAN_APPLY_ERROR: "apply_error",
    SCAN_CANCELLED: "cancelled",
}


def frame_magic(version: int) -> int:
    """The frame magic of a segment of format ``version``."""
    return FRAME_MAGIC_V1 if version == 1 else FRAME_MAGIC


def frame_header_bytes(version: int) -> int:
    """The frame header size of a segment of format ``version``."""
    return FRAME_HEADER_BYTES_V1 if version == 1 else FRAME_HEADER_BYTES


def slot_capacity(keys: int) -> int:
    """The native table's slot count for ``keys`` entries (a power of two from
    8, load <= 0.7): what a snapshot image records (docs/FORMAT.md) and what
    a plan counts as memory. kvcore.h's rh_capacity_for is the same rule."""
    cap = 8
    while keys * 10 > cap * 7:
        cap <<= 1
    return cap
