"""The format's varint (unsigned LEB128, minimal, at most 5 bytes, <= 2^32-1).

Plain Python, shared by the pure twin and by the Python-side format code
(source offsets); the native core has its own C spelling in rhbuf.h.
"""

from __future__ import annotations


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf, pos: int, end: int):
    """(value, new_pos), or (-1, pos) on a truncated, overlong or >u32 varint."""
    result = 0
    shift = 0
    i = pos
    while i < end and shift <= 28:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if (b == 0 and shift > 0) or result > 0xFFFFFFFF:
                return -1, pos  # non-minimal, or does not fit u32
            return result, i
        shift += 7
    return -1, pos
