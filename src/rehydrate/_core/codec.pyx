# cython: language_level=3
"""Keys, values, varints, checksums and LZ4: the byte-level codecs (native).

Twin of ``rehydrate._pure.codec``: same names, results, bytes and errors.
The hot paths (CRC32C, LZ4 decode, key views, scalar msgpack) are C; anything
unusual (containers, ext types, odd argument types) goes through the same
Python calls the twin makes, so error messages stay identical.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from ._format cimport (
    KEY_TAG_BYTES, KEY_TAG_INT, KEY_TAG_STR, MAX_FRAME_PAYLOAD_BYTES, MAX_KEY_BYTES,
)
from . cimport _format
from .includes.crc32c_impl cimport rh_crc32c, rh_crc32c_hw_active, rh_crc32c_init, rh_crc32c_select
from .includes.kvcore cimport rh_hash_parts, rh_key
from .includes.lz4_decode cimport RH_LZ4_SLACK, rh_lz4_decode, rh_lz4_reason
from .includes.payload cimport rh_key_wellformed
from .includes.rhbuf cimport rh_buf, rh_buf_put_bytes, rh_buf_reserve, rh_read_varint
from .includes.valcodec cimport (
    RH_INCR_NOT_NUMBER, RH_INCR_OK, RH_INCR_OUT_OF_INT64, RH_INCR_OVERFLOW, RH_NUM_F64,
    RH_NUM_I64, RH_NUM_MAX_BYTES, RH_NUM_U64, rh_decode_number, rh_incr_bytes, rh_num,
    rh_pack_f64, rh_pack_i64, rh_pack_u64,
)

import os

import lz4.block
import msgpack

from rehydrate import _format as F
from rehydrate._values import unpack_container
from rehydrate.errors import (
    CorruptionError,
    InvalidOperationError,
    UnsupportedKeyError,
    ValueEncodingError,
)

# The twin packs with one Packer of these options; ours must write the same bytes.
_packer_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_unpackb = msgpack.unpackb
_lz4_compress = lz4.block.compress

# Backend chosen once at import; REHYDRATE_CRC32C_SOFTWARE=1 forces the table
# version (tests run both and compare).
rh_crc32c_init(1 if os.environ.get("REHYDRATE_CRC32C_SOFTWARE", "") not in ("", "0") else 0)

cdef enum:
    # Above this many bytes, CRC and LZ4 work releases the GIL.
    NOGIL_BYTES = 65536


def _format_constants():
    """The integer constants of ``_format.pxd`` (tests compare them to ``_format.py``)."""
    return {
        "FORMAT_VERSION": _format.FORMAT_VERSION,
        "SEGMENT_HEADER_BYTES": _format.SEGMENT_HEADER_BYTES,
        "SEGMENT_NAME_DIGITS": _format.SEGMENT_NAME_DIGITS,
        "FRAME_MAGIC": _format.FRAME_MAGIC,
        "FRAME_HEADER_BYTES": _format.FRAME_HEADER_BYTES,
        "MIN_FORMAT_VERSION": _format.MIN_FORMAT_VERSION,
        "FRAME_MAGIC_V1": _format.FRAME_MAGIC_V1,
        "FRAME_HEADER_BYTES_V1": _format.FRAME_HEADER_BYTES_V1,
        "FRAME_HEADER_CRC_SPAN": _format.FRAME_HEADER_CRC_SPAN,
        "CODEC_NONE": _format.CODEC_NONE,
        "CODEC_LZ4": _format.CODEC_LZ4,
        "MAX_FRAME_PAYLOAD_BYTES": _format.MAX_FRAME_PAYLOAD_BYTES,
        "MAX_KEY_BYTES": _format.MAX_KEY_BYTES,
        "MAX_TABLE_NAME_BYTES": _format.MAX_TABLE_NAME_BYTES,
        "MAX_TABLE_ID": _format.MAX_TABLE_ID,
        "MAX_TABLE_VERSION": _format.MAX_TABLE_VERSION,
        "MIN_RECORD_BYTES": _format.MIN_RECORD_BYTES,
        "FRAME_TARGET_BYTES": _format.FRAME_TARGET_BYTES,
        "COMPRESS_MIN_BYTES": _format.COMPRESS_MIN_BYTES,
        "OP_PUT": _format.OP_PUT,
        "OP_DELETE": _format.OP_DELETE,
        "OP_INCR": _format.OP_INCR,
        "OP_CLEAR": _format.OP_CLEAR,
        "OP_NOOP": _format.OP_NOOP,
        "OP_CUSTOM": _format.OP_CUSTOM,
        "FLAG_OFFSETS": _format.FLAG_OFFSETS,
        "KNOWN_FLAGS": _format.KNOWN_FLAGS,
        "MAX_SOURCES": _format.MAX_SOURCES,
        "MAX_SOURCE_BYTES": _format.MAX_SOURCE_BYTES,
        "KIND_KV": _format.KIND_KV,
        "KIND_DICT": _format.KIND_DICT,
        "KIND_CUSTOM": _format.KIND_CUSTOM,
        "KIND_NUMERIC": _format.KIND_NUMERIC,
        "MAX_SCHEMA_BYTES": _format.MAX_SCHEMA_BYTES,
        "DECL_VERSION_FLAG": _format.DECL_VERSION_FLAG,
        "DECL_KIND_MASK": _format.DECL_KIND_MASK,
        "KEY_TAG_BYTES": _format.KEY_TAG_BYTES,
        "KEY_TAG_STR": _format.KEY_TAG_STR,
        "KEY_TAG_INT": _format.KEY_TAG_INT,
        "MANIFEST_HEADER_BYTES": _format.MANIFEST_HEADER_BYTES,
        "MAX_MANIFEST_BYTES": _format.MAX_MANIFEST_BYTES,
        "SCAN_OK": _format.SCAN_OK,
        "SCAN_TRUNCATED": _format.SCAN_TRUNCATED,
        "SCAN_BAD_MAGIC": _format.SCAN_BAD_MAGIC,
        "SCAN_BAD_HEADER": _format.SCAN_BAD_HEADER,
        "SCAN_BAD_CRC": _format.SCAN_BAD_CRC,
        "SCAN_LSN_GAP": _format.SCAN_LSN_GAP,
        "SCAN_LSN_OVERLAP": _format.SCAN_LSN_OVERLAP,
        "SCAN_BAD_PAYLOAD": _format.SCAN_BAD_PAYLOAD,
        "SCAN_APPLY_ERROR": _format.SCAN_APPLY_ERROR,
        "SCAN_CANCELLED": _format.SCAN_CANCELLED,
    }


# ---------------------------------------------------------------- CRC32C

cdef uint32_t crc32c_raw(uint32_t value, const unsigned char *p, size_t n) noexcept nogil:
    return rh_crc32c(value, p, n)


def crc32c(data, value=0):
    """CRC32C (Castagnoli) of ``data``, continuing from ``value``."""
    cdef Py_buffer view
    cdef uint32_t v, out
    if type(value) is not int or not PyObject_CheckBuffer(data):
        # Odd arguments: let the crc32c package raise (or answer) exactly as the
        # twin. Imported here only: the package imports importlib.metadata,
        # 20 ms of every cold start otherwise.
        import crc32c as _crc32c_mod
        return _crc32c_mod.crc32c(data, value)
    v = <uint32_t>(value & 0xFFFFFFFF)  # the package masks to 32 bits too
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len > NOGIL_BYTES:
            with nogil:
                out = rh_crc32c(v, <const unsigned char *>view.buf, <size_t>view.len)
        else:
            out = rh_crc32c(v, <const unsigned char *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def crc32c_backend():
    """Which CRC32C implementation runs: "sse4.2" or "software"."""
    return "sse4.2" if rh_crc32c_hw_active() else "software"


def _crc32c_select(name):
    """Switch the CRC32C backend ("sse4.2" or "software"); for tests. Returns the one in use."""
    if name not in ("sse4.2", "software"):
        raise ValueError(f"unknown CRC32C backend {name!r}")
    rh_crc32c_select(1 if name == "sse4.2" else 0)
    return crc32c_backend()


# ---------------------------------------------------------------- keys

cdef int key_view(object key, rh_key *k, unsigned char *ibuf, bint soft) except -1:
    cdef Py_ssize_t n
    cdef const char *p
    cdef long long v
    cdef int overflow = 0
    cdef int i
    cdef type t = type(key)
    if t is str:
        try:
            p = PyUnicode_AsUTF8AndSize(key, &n)
        except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
            if soft:
                return 1
            raise UnsupportedKeyError("str key is not valid Unicode (lone surrogate)") from None
        k.tag = KEY_TAG_STR
    elif t is bytes:
        p = PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
        k.tag = KEY_TAG_BYTES
    elif t is int:
        v = PyLong_AsLongLongAndOverflow(key, &overflow)
        if overflow:
            if soft:
                return 1
            raise UnsupportedKeyError(f"int key {key} is outside int64")
        for i in range(8):
            ibuf[i] = <unsigned char>((<uint64_t>v) >> (8 * i))
        k.tag = KEY_TAG_INT
        k.body = ibuf
        k.len = 8
        k.hash = rh_hash_parts(KEY_TAG_INT, ibuf, 8)
        return 0
    else:
        if soft:
            return 1
        raise UnsupportedKeyError(f"keys must be str, bytes or int, not {t.__name__}")
    if n + 1 > MAX_KEY_BYTES:
        if soft:
            return 1
        raise UnsupportedKeyError(f"key of {n} bytes exceeds MAX_KEY_BYTES")
    k.body = <const unsigned char *>p
    k.len = <size_t>n
    k.hash = rh_hash_parts(k.tag, k.body, k.len)
    return 0


cdef bytes key_bytes(const rh_key *k):
    cdef bytes out
    cdef unsigned char *p
    if k.tag < 0:
        return b""
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>k.len + 1)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    p[0] = <unsigned char>k.tag
    memcpy(p + 1, k.body, k.len)
    return out


def encode_key(key):
    """Canonical key bytes: a tag, then the key, so "a", b"a" and 1 differ.

    Raises UnsupportedKeyError for any other type (bool included), ints
    outside int64, and keys longer than MAX_KEY_BYTES.
    """
    cdef rh_key k
    cdef unsigned char ibuf[8]
    key_view(key, &k, ibuf, False)
    return key_bytes(&k)


def key_is_wellformed(kb):
    """The structural check replay applies to a stored key (tag and length)."""
    cdef Py_buffer view
    cdef bint ok
    if type(kb) is bytes:
        return bool(rh_key_wellformed(<const unsigned char *>PyBytes_AS_STRING(kb),
                                      <size_t>PyBytes_GET_SIZE(kb)))
    if PyObject_CheckBuffer(kb):
        PyObject_GetBuffer(kb, &view, PyBUF_SIMPLE)
        ok = rh_key_wellformed(<const unsigned char *>view.buf, <size_t>view.len)
        PyBuffer_Release(&view)
        return ok
    # Any other sequence: the twin's own steps.
    n = len(kb)
    if n < 1:
        return False
    tag = kb[0]
    if tag == F.KEY_TAG_INT:
        return n == 9
    return tag == F.KEY_TAG_BYTES or tag == F.KEY_TAG_STR


cdef object decode_key_ptr(const unsigned char *p, Py_ssize_t n):
    cdef int64_t v = 0
    cdef int i
    if not rh_key_wellformed(p, <size_t>n):
        head = PyBytes_FromStringAndSize(<const char *>p, n if n < 16 else 16)
        raise CorruptionError(f"malformed key bytes {head!r}", reason="bad_key")
    if p[0] == KEY_TAG_BYTES:
        return PyBytes_FromStringAndSize(<const char *>p + 1, n - 1)
    if p[0] == KEY_TAG_STR:
        try:
            return PyUnicode_DecodeUTF8(<const char *>p + 1, n - 1, "strict")
        except UnicodeDecodeError as e:
            raise CorruptionError(f"key is not UTF-8: {e}", reason="bad_key") from None
    for i in range(8):
        v |= (<int64_t>p[1 + i]) << (8 * i)
    return PyLong_FromLongLong(v)


def decode_key(kb):
    """Inverse of encode_key; CorruptionError on bytes it cannot produce."""
    if type(kb) is not bytes:
        kb = bytes(kb)
    return decode_key_ptr(<const unsigned char *>PyBytes_AS_STRING(kb), PyBytes_GET_SIZE(kb))


# ---------------------------------------------------------------- values


cdef inline Py_ssize_t _sized_header(unsigned char *hdr, Py_ssize_t n, unsigned char code8) noexcept:
    """msgpack's 8/16/32-bit length header (codes code8, +1, +2), big-endian
    as msgpack wants; its size, or -1 past 32 bits."""
    if n < 0x100:
        hdr[0] = code8
        hdr[1] = <unsigned char>n
        return 2
    if n < 0x10000:
        hdr[0] = code8 + 1
        hdr[1] = <unsigned char>(n >> 8)
        hdr[2] = <unsigned char>n
        return 3
    if n <= 0xFFFFFFFF:
        hdr[0] = code8 + 2
        hdr[1] = <unsigned char>(n >> 24)
        hdr[2] = <unsigned char>(n >> 16)
        hdr[3] = <unsigned char>(n >> 8)
        hdr[4] = <unsigned char>n
        return 5
    return -1

cdef Py_ssize_t pack_scalar(object value, unsigned char *hdr, const char **body,
                            Py_ssize_t *body_len) except -2:
    """msgpack header of a scalar value into hdr (<= 9 bytes), body for str/bytes.

    Returns the header length, or -1 when msgpack's Packer must do it (any
    other type, sizes past 32 bits, ints past uint64, unencodable str), so
    that the Packer's exact errors and encodings apply.
    """
    cdef type t = type(value)
    cdef Py_ssize_t n
    cdef const char *p
    cdef long long v
    cdef int overflow = 0
    cdef unsigned long long u
    body_len[0] = 0
    if t is bytes:
        n = PyBytes_GET_SIZE(value)
        body[0] = PyBytes_AS_STRING(value)
        body_len[0] = n
        return _sized_header(hdr, n, 0xC4)  # bin 8/16/32
    if t is str:
        try:
            p = PyUnicode_AsUTF8AndSize(value, &n)
        except UnicodeEncodeError:
            return -1
        body[0] = p
        body_len[0] = n
        if n < 32:
            hdr[0] = <unsigned char>(0xA0 | n)  # fixstr
            return 1
        return _sized_header(hdr, n, 0xD9)  # str 8/16/32
    if t is int:
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow == 0:
            return <Py_ssize_t>rh_pack_i64(v, hdr)
        if overflow > 0 and value <= 0xFFFFFFFFFFFFFFFF:
            u = value
            return <Py_ssize_t>rh_pack_u64(u, hdr)
        return -1
    if t is float:
        return <Py_ssize_t>rh_pack_f64(<double>value, hdr)
    if value is None:
        hdr[0] = 0xC0
        return 1
    if value is True:
        hdr[0] = 0xC3
        return 1
    if value is False:
        hdr[0] = 0xC2
        return 1
    return -1


cdef bytes pack_slow(object value):
    try:
        return _packer_pack(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueEncodingError(f"value cannot be encoded: {e}") from None


cdef int pack_into(object value, rh_buf *out) except -1:
    cdef unsigned char hdr[16]
    cdef const char *body = NULL
    cdef Py_ssize_t blen = 0
    cdef Py_ssize_t h = pack_scalar(value, hdr, &body, &blen)
    cdef bytes b
    if h < 0:
        b = pack_slow(value)
        body = PyBytes_AS_STRING(b)
        blen = PyBytes_GET_SIZE(b)
        h = 0
    if rh_buf_reserve(out, <size_t>(h + blen)) < 0:
        raise MemoryError()
    rh_buf_put_bytes(out, hdr, <size_t>h)
    rh_buf_put_bytes(out, body, <size_t>blen)
    return 0


def pack_value(value):
    """msgpack bytes of ``value`` (bin for bytes, str for str)."""
    cdef unsigned char hdr[16]
    cdef const char *body = NULL
    cdef Py_ssize_t blen = 0
    cdef Py_ssize_t h = pack_scalar(value, hdr, &body, &blen)
    cdef bytes out
    cdef char *p
    if h < 0:
        return pack_slow(value)
    out = PyBytes_FromStringAndSize(NULL, h + blen)
    p = PyBytes_AS_STRING(out)
    memcpy(p, hdr, <size_t>h)
    memcpy(p + h, body, <size_t>blen)
    return out


cdef object unpack_slow(const unsigned char *p, Py_ssize_t n):
    # Containers and corner cases: the same Python code as the twin.
    return unpack_container(PyBytes_FromStringAndSize(<const char *>p, n))


cdef inline uint32_t be_len(const unsigned char *p, int width) noexcept nogil:
    if width == 1:
        return p[0]
    if width == 2:
        return (<uint32_t>p[0] << 8) | p[1]
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef object unpack_ptr(const unsigned char *p, Py_ssize_t n):
    """One stored value; scalars decoded here, the rest by msgpack.unpackb.

    The fast path only answers when the bytes are exactly one well-formed
    scalar; everything else (containers, ext, truncation, extra bytes, bad
    UTF-8) takes the slow path so the result or error is msgpack's own.
    """
    cdef unsigned int b
    cdef int width = 0
    cdef uint32_t L
    cdef rh_num num
    if n < 1:
        return unpack_slow(p, n)
    b = p[0]
    if b <= 0x7F or b >= 0xE0 or 0xCA <= b <= 0xD3:
        if rh_decode_number(p, <size_t>n, &num):
            return num_to_py(&num)
        return unpack_slow(p, n)
    if 0xA0 <= b <= 0xBF:
        if n == 1 + (b & 0x1F):
            try:
                return PyUnicode_DecodeUTF8(<const char *>p + 1, n - 1, "strict")
            except UnicodeDecodeError:
                pass
        return unpack_slow(p, n)
    if b == 0xC0 and n == 1:
        return None
    if b == 0xC2 and n == 1:
        return False
    if b == 0xC3 and n == 1:
        return True
    if 0xC4 <= b <= 0xC6:
        width = 1 << (b - 0xC4)
        if n >= 1 + width:
            L = be_len(p + 1, width)
            if <uint64_t>n == <uint64_t>(1 + width) + L:
                return PyBytes_FromStringAndSize(<const char *>p + 1 + width, <Py_ssize_t>L)
        return unpack_slow(p, n)
    if 0xD9 <= b <= 0xDB:
        width = 1 << (b - 0xD9)
        if n >= 1 + width:
            L = be_len(p + 1, width)
            if <uint64_t>n == <uint64_t>(1 + width) + L:
                try:
                    return PyUnicode_DecodeUTF8(<const char *>p + 1 + width, <Py_ssize_t>L, "strict")
                except UnicodeDecodeError:
                    pass
        return unpack_slow(p, n)
    return unpack_slow(p, n)


def unpack_value(raw):
    """Decode one stored value; CorruptionError if it is not one msgpack object."""
    cdef Py_buffer view
    if type(raw) is bytes:
        return unpack_ptr(<const unsigned char *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
    if PyObject_CheckBuffer(raw):
        try:
            PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
        except BufferError:
            pass
        else:
            try:
                return unpack_ptr(<const unsigned char *>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
    return unpack_container(raw)


# ---------------------------------------------------------------- numbers / incr

cdef object num_to_py(const rh_num *n):
    if n.kind == RH_NUM_F64:
        return n.d
    if n.kind == RH_NUM_U64:
        return PyLong_FromUnsignedLongLong(n.u)
    return PyLong_FromLongLong(n.i)


cdef int delta_num(object delta, rh_num *out) except -1:
    # A delta to log: fast_delta's numbers, less the uint64 range it also
    # accepts for reads (a logged delta is an int64 or a float).
    if fast_delta(delta, out) and out.kind != RH_NUM_U64:
        return 0
    if type(delta) is int:
        raise InvalidOperationError(f"incr delta {delta} is outside int64")
    raise InvalidOperationError(f"incr delta must be int or float, not {type(delta).__name__}")


cdef int fast_delta(object delta, rh_num *out) except -1:
    cdef type t = type(delta)
    cdef int overflow = 0
    cdef long long v
    if t is float:
        out.kind = RH_NUM_F64
        out.d = <double>delta
        return 1
    if t is int:
        v = PyLong_AsLongLongAndOverflow(delta, &overflow)
        if overflow == 0:
            out.kind = RH_NUM_I64
            out.i = v
            return 1
        if overflow > 0 and delta <= 0xFFFFFFFFFFFFFFFF:
            out.kind = RH_NUM_U64
            out.u = delta
            return 1
    return 0


def check_delta(delta):
    """An ``incr`` delta is an int in int64 or a float (bool is refused)."""
    cdef rh_num n
    delta_num(delta, &n)
    return None


def decode_number(raw):
    """The int or float a stored msgpack number holds, or None if not a number."""
    cdef Py_buffer view
    cdef rh_num num
    cdef int ok
    if type(raw) is bytes:
        if rh_decode_number(<const unsigned char *>PyBytes_AS_STRING(raw),
                            <size_t>PyBytes_GET_SIZE(raw), &num):
            return num_to_py(&num)
        return None
    if PyObject_CheckBuffer(raw):
        PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
        ok = rh_decode_number(<const unsigned char *>view.buf, <size_t>view.len, &num)
        PyBuffer_Release(&view)
        return num_to_py(&num) if ok else None
    # Not a buffer: the twin's steps, so odd inputs fail (or not) the same way.
    if len(raw) == 0:
        return None
    b = raw[0]
    if b <= 0x7F or b >= 0xE0 or 0xCA <= b <= 0xD3:
        try:
            v = _unpackb(raw)
        except Exception:
            return None
        if type(v) in (int, float):
            return v
    return None


cdef object incr_error(int status, const rh_num *cur, object delta):
    if status == RH_INCR_NOT_NUMBER:
        return InvalidOperationError("incr on a value that is not a number")
    if status == RH_INCR_OUT_OF_INT64:
        return InvalidOperationError("incr on an integer outside int64")
    res = num_to_py(cur) + delta
    return InvalidOperationError(f"incr result {res} overflows int64")


cdef object incr_value_generic(object old, object delta):
    # The twin's incr_value step by step, for deltas the C path does not take.
    if old is None:
        return _packer_pack(delta)
    cur = decode_number(old)
    if cur is None:
        raise InvalidOperationError("incr on a value that is not a number")
    if type(cur) is int and not F.INT64_MIN <= cur <= F.INT64_MAX:
        raise InvalidOperationError("incr on an integer outside int64")
    res = cur + delta
    if type(res) is int and not F.INT64_MIN <= res <= F.INT64_MAX:
        raise InvalidOperationError(f"incr result {res} overflows int64")
    return _packer_pack(res)


def incr_value(old, delta):
    """New stored bytes for ``incr`` of ``old`` (bytes or None) by ``delta``.

    int + int stays int and must stay within int64; anything + float is a
    float. InvalidOperationError when the stored value is not a number.
    """
    cdef rh_num d, cur
    cdef unsigned char out[16]
    cdef size_t outlen = 0
    cdef int st
    cdef Py_buffer view
    if not fast_delta(delta, &d):
        return incr_value_generic(old, delta)
    if old is None:
        st = rh_incr_bytes(NULL, 0, 0, &d, &cur, out, &outlen)
    elif type(old) is bytes:
        st = rh_incr_bytes(<const unsigned char *>PyBytes_AS_STRING(old),
                           <size_t>PyBytes_GET_SIZE(old), 1, &d, &cur, out, &outlen)
    elif PyObject_CheckBuffer(old):
        PyObject_GetBuffer(old, &view, PyBUF_SIMPLE)
        st = rh_incr_bytes(<const unsigned char *>view.buf, <size_t>view.len, 1,
                           &d, &cur, out, &outlen)
        PyBuffer_Release(&view)
    else:
        return incr_value_generic(old, delta)
    if st != RH_INCR_OK:
        raise incr_error(st, &cur, delta)
    return PyBytes_FromStringAndSize(<const char *>out, <Py_ssize_t>outlen)


# ---------------------------------------------------------------- varints

def encode_varint(n):
    """Unsigned LEB128 bytes of ``n``."""
    cdef unsigned char out[10]
    cdef int i = 0
    cdef uint64_t v
    if type(n) is int and 0 <= n <= 0xFFFFFFFFFFFFFFFF:
        v = n
        while v >= 0x80:
            out[i] = <unsigned char>(v | 0x80)
            v >>= 7
            i += 1
        out[i] = <unsigned char>v
        return PyBytes_FromStringAndSize(<const char *>out, i + 1)
    # Huge ints, negatives and non-ints: the twin's loop, for its bytes or errors.
    res = bytearray()
    # extend, not append: Cython compiles append to a C conversion whose
    # error differs; extend checks each byte exactly as bytearray.append does.
    while n >= 0x80:
        res.extend(((n & 0x7F) | 0x80,))
        n >>= 7
    res.extend((n,))
    return bytes(res)


def decode_varint(buf, pos, end):
    """(value, new_pos), or (-1, pos) on a truncated, overlong or >u32 varint."""
    cdef Py_buffer view
    cdef size_t i
    cdef int64_t r
    if (type(pos) is int and type(end) is int and pos >= 0 and PyObject_CheckBuffer(buf)):
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            if end <= view.len:
                if pos >= end:
                    return -1, pos
                i = <size_t>pos
                r = rh_read_varint(<const unsigned char *>view.buf, &i, <size_t>end)
                if r < 0:
                    return -1, pos
                return r, i
        finally:
            PyBuffer_Release(&view)
    # Out-of-range positions or non-buffers: the twin's loop (and its IndexError).
    result = 0
    shift = 0
    i2 = pos
    while i2 < end and shift <= 28:
        b = buf[i2]
        i2 += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if (b == 0 and shift > 0) or result > 0xFFFFFFFF:
                return -1, pos
            return result, i2
        shift += 7
    return -1, pos


# ---------------------------------------------------------------- LZ4

cdef Py_ssize_t lz4_decode_raw(const unsigned char *src, size_t n,
                               unsigned char *dst, size_t cap) noexcept nogil:
    return rh_lz4_decode(src, n, dst, cap)


cdef str lz4_reason(Py_ssize_t status):
    return (<bytes>rh_lz4_reason(status)).decode("ascii")


def lz4_decompress(src, raw_len):
    """Decompress one LZ4 block to exactly ``raw_len`` bytes (ValueError else)."""
    cdef Py_buffer view
    cdef unsigned char *out
    cdef Py_ssize_t got, cap
    if raw_len < 0 or raw_len > F.MAX_FRAME_PAYLOAD_BYTES:
        raise ValueError("raw length out of range")
    cap = raw_len
    if not PyObject_CheckBuffer(src):
        try:
            src = bytes(src)
        except Exception as e:
            raise ValueError(f"LZ4 block does not decompress: {e}") from None
    PyObject_GetBuffer(src, &view, PyBUF_SIMPLE)
    out = <unsigned char *>malloc(<size_t>cap + RH_LZ4_SLACK)
    if out == NULL:
        PyBuffer_Release(&view)
        raise MemoryError()
    try:
        with nogil:
            got = rh_lz4_decode(<const unsigned char *>view.buf, <size_t>view.len, out, <size_t>cap)
        if got < 0:
            raise ValueError(f"LZ4 block does not decompress: {lz4_reason(got)}")
        if got != cap:
            raise ValueError("LZ4 block decompressed to the wrong length")
        return PyBytes_FromStringAndSize(<const char *>out, cap)
    finally:
        free(out)
        PyBuffer_Release(&view)


def _lz4_status(src, raw_len):
    """The native decoder's raw answer: bytes produced (>= 0) or a negative code.

    For tests: lets them tell the decoder's deliberate strictness (offset 0,
    end-of-block rules) from a real disagreement with liblz4.
    """
    cdef Py_buffer view
    cdef unsigned char *out
    cdef Py_ssize_t got
    PyObject_GetBuffer(src, &view, PyBUF_SIMPLE)
    out = <unsigned char *>malloc(<size_t>raw_len + RH_LZ4_SLACK)
    try:
        got = rh_lz4_decode(<const unsigned char *>view.buf, <size_t>view.len, out, <size_t>raw_len)
    finally:
        free(out)
        PyBuffer_Release(&view)
    return got


def lz4_compress(raw):
    """One LZ4 block, no size prefix (the frame header carries raw_len).

    The lz4 package's compressor, exactly as the twin calls it, so both cores
    write the same bytes.
    """
    return _lz4_compress(bytes(raw), mode="default", store_size=False)
