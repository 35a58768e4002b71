# On-disk format constants: the C spelling of src/rehydrate/_format.py.
#
# cdef enum (not DEF) so they are real C constants usable in switch cases
# and visible to every module that cimports them; tests/test_core_native.py
# checks each value against the Python module through codec._format_constants().
# Byte-string constants (magics) stay in Python only.

cdef enum:
    FORMAT_VERSION = 2
    MIN_FORMAT_VERSION = 1

    SEGMENT_HEADER_BYTES = 32
    SEGMENT_NAME_DIGITS = 20

    FRAME_MAGIC = 0x32424852  # b"RHB2" little-endian (format 2)
    FRAME_HEADER_BYTES = 36
    FRAME_MAGIC_V1 = 0x31424852  # b"RHB1" little-endian (format 1, read only)
    FRAME_HEADER_BYTES_V1 = 32
    FRAME_HEADER_CRC_SPAN = 24
    CODEC_NONE = 0
    CODEC_LZ4 = 1
    FLAG_OFFSETS = 0x01
    KNOWN_FLAGS = 0x01
    MAX_SOURCES = 65536
    MAX_SOURCE_BYTES = 1024

    MAX_FRAME_PAYLOAD_BYTES = 64 * 1024 * 1024
    MAX_KEY_BYTES = 1024 * 1024
    MAX_TABLE_NAME_BYTES = 255
    MAX_TABLE_ID = 65535
    MIN_RECORD_BYTES = 4

    FRAME_TARGET_BYTES = 256 * 1024
    COMPRESS_MIN_BYTES = 512

    OP_PUT = 1
    OP_DELETE = 2
    OP_INCR = 3
    OP_CLEAR = 4
    OP_NOOP = 5
    OP_CUSTOM = 6

    KIND_KV = 1
    KIND_DICT = 2
    KIND_CUSTOM = 3
    KIND_NUMERIC = 4
    MAX_SCHEMA_BYTES = 65536
    DECL_VERSION_FLAG = 0x80
    DECL_KIND_MASK = 0x7F

    KEY_TAG_BYTES = 0x01
    KEY_TAG_STR = 0x02
    KEY_TAG_INT = 0x03

    MANIFEST_HEADER_BYTES = 16
    MAX_MANIFEST_BYTES = 16 * 1024 * 1024

    SCAN_OK = 0
    SCAN_TRUNCATED = 1
    SCAN_BAD_MAGIC = 2
    SCAN_BAD_HEADER = 3
    SCAN_BAD_CRC = 4
    SCAN_LSN_GAP = 5
    SCAN_LSN_OVERLAP = 6
    SCAN_BAD_PAYLOAD = 7
    SCAN_APPLY_ERROR = 8
    SCAN_CANCELLED = 9

# Wider than a C enum (an int) holds, so a typed constant.
cdef extern from *:
    """
    #define RH_MAX_TABLE_VERSION 0xFFFFFFFFu
    """
    const unsigned int MAX_TABLE_VERSION "RH_MAX_TABLE_VERSION"  # a declaration's version
