"""Keys, values, varints, checksums and LZ4: the byte-level codecs.

Plain-Python reference for ``rehydrate._core`` (``src/rehydrate/_core/codec.pyx``);
names, results and errors are identical, and tests compare the two.
"""

from __future__ import annotations

import struct

import crc32c as _crc32c_mod
import lz4.block
import msgpack

from .. import _format as F
from .._values import unpack_container
from .._varint import decode_varint, encode_varint  # noqa: F401  (core names)
from ..errors import (
    CorruptionError,
    InvalidOperationError,
    UnsupportedKeyError,
    ValueEncodingError,
)

_I64 = struct.Struct("<q")
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def crc32c(data, value: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``value``."""
    return _crc32c_mod.crc32c(data, value)


def crc32c_backend() -> str:
    """Which CRC32C implementation runs: here always the ``crc32c`` package."""
    return "python-crc32c"


def encode_key(key) -> bytes:
    """Canonical key bytes: a tag, then the key, so "a", b"a" and 1 differ.

    Raises UnsupportedKeyError for any other type (bool included), ints
    outside int64, and keys longer than MAX_KEY_BYTES.
    """
    t = type(key)
    if t is str:
        try:
            out = b"\x02" + key.encode("utf-8", "strict")
        except UnicodeEncodeError:
            raise UnsupportedKeyError("str key is not valid Unicode (lone surrogate)") from None
    elif t is bytes:
        out = b"\x01" + key
    elif t is int:
        if not F.INT64_MIN <= key <= F.INT64_MAX:
            raise UnsupportedKeyError(f"int key {key} is outside int64")
        return b"\x03" + _I64.pack(key)
    else:
        raise UnsupportedKeyError(
            f"keys must be str, bytes or int, not {t.__name__}"
        )
    if len(out) > F.MAX_KEY_BYTES:
        raise UnsupportedKeyError(f"key of {len(out) - 1} bytes exceeds MAX_KEY_BYTES")
    return out


def key_is_wellformed(kb) -> bool:
    """The structural check replay applies to a stored key (tag and length)."""
    n = len(kb)
    if n < 1:
        return False
    tag = kb[0]
    if tag == F.KEY_TAG_INT:
        return n == 9
    return tag == F.KEY_TAG_BYTES or tag == F.KEY_TAG_STR


def decode_key(kb):
    """Inverse of encode_key; CorruptionError on bytes it cannot produce."""
    kb = bytes(kb)
    if not key_is_wellformed(kb):
        raise CorruptionError(f"malformed key bytes {kb[:16]!r}", reason="bad_key")
    tag = kb[0]
    if tag == F.KEY_TAG_BYTES:
        return kb[1:]
    if tag == F.KEY_TAG_STR:
        try:
            return kb[1:].decode("utf-8", "strict")
        except UnicodeDecodeError as e:
            raise CorruptionError(f"key is not UTF-8: {e}", reason="bad_key") from None
    return _I64.unpack_from(kb, 1)[0]


def pack_value(value) -> bytes:
    """msgpack bytes of ``value`` (bin for bytes, str for str)."""
    try:
        return _packb(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueEncodingError(f"value cannot be encoded: {e}") from None


def unpack_value(raw):
    """Decode one stored value; CorruptionError if it is not one msgpack object."""
    return unpack_container(raw)


def check_delta(delta) -> None:
    """An ``incr`` delta is an int in int64 or a float (bool is refused)."""
    t = type(delta)
    if t is float:
        return
    if t is int:
        if not F.INT64_MIN <= delta <= F.INT64_MAX:
            raise InvalidOperationError(f"incr delta {delta} is outside int64")
        return
    raise InvalidOperationError(f"incr delta must be int or float, not {t.__name__}")


def decode_number(raw):
    """The int or float a stored msgpack number holds, or None if not a number."""
    if len(raw) == 0:
        return None
    b = raw[0]
    # Only the msgpack number encodings count; bool (0xc2/0xc3) does not.
    if b <= 0x7F or b >= 0xE0 or 0xCA <= b <= 0xD3:
        try:
            v = msgpack.unpackb(raw)
        except Exception:
            return None
        if type(v) in (int, float):
            return v
    return None


def incr_value(old, delta) -> bytes:
    """New stored bytes for ``incr`` of ``old`` (bytes or None) by ``delta``.

    int + int stays int and must stay within int64; anything + float is a
    float. InvalidOperationError when the stored value is not a number.
    """
    if old is None:
        return _packb(delta)
    cur = decode_number(old)
    if cur is None:
        raise InvalidOperationError("incr on a value that is not a number")
    if type(cur) is int and not F.INT64_MIN <= cur <= F.INT64_MAX:
        raise InvalidOperationError("incr on an integer outside int64")
    res = cur + delta
    if type(res) is int and not F.INT64_MIN <= res <= F.INT64_MAX:
        raise InvalidOperationError(f"incr result {res} overflows int64")
    return _packb(res)


def lz4_decompress(src, raw_len: int) -> bytes:
    """Decompress one LZ4 block to exactly ``raw_len`` bytes (ValueError else)."""
    if raw_len < 0 or raw_len > F.MAX_FRAME_PAYLOAD_BYTES:
        raise ValueError("raw length out of range")
    try:
        out = lz4.block.decompress(bytes(src), uncompressed_size=raw_len)
    except Exception as e:
        raise ValueError(f"LZ4 block does not decompress: {e}") from None
    if len(out) != raw_len:
        raise ValueError("LZ4 block decompressed to the wrong length")
    return out


def lz4_compress(raw) -> bytes:
    """One LZ4 block, no size prefix (the frame header carries raw_len)."""
    return lz4.block.compress(bytes(raw), mode="default", store_size=False)
