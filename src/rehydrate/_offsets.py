"""Source offsets: the upstream positions a batch consumed, stored with it.

Shared by both cores (as ``_values.py`` is): offsets are rare next to
records, so one Python spelling of their bytes keeps the twins identical.
The section's grammar is in docs/FORMAT.md.
"""

from __future__ import annotations

import struct

from . import _format as F
from ._varint import decode_varint as _decode_varint
from ._varint import encode_varint as _encode_varint
from .errors import ConfigError

_I64 = struct.Struct("<q")


def check_offsets(offsets) -> dict:
    """A copy of ``offsets`` ({source name: int64}); ConfigError if it is not one."""
    if not isinstance(offsets, dict):
        raise ConfigError(f"offsets must be a dict, not {type(offsets).__name__}")
    if len(offsets) > F.MAX_SOURCES:
        raise ConfigError(f"more than {F.MAX_SOURCES} sources in one batch")
    for source, off in offsets.items():
        try:
            size = len(source.encode("utf-8")) if type(source) is str else 0
        except UnicodeEncodeError:  # a lone surrogate
            size = 0
        if not 1 <= size <= F.MAX_SOURCE_BYTES:
            raise ConfigError(f"a source is a str of 1..{F.MAX_SOURCE_BYTES} UTF-8 bytes, "
                              f"not {source!r}")
        if type(off) is not int or not F.INT64_MIN <= off <= F.INT64_MAX:
            raise ConfigError(f"offset of {source!r} must be an int in int64, not {off!r}")
    return dict(offsets)


def encode_offsets(offsets: dict) -> bytes:
    """The offsets section: count, then (name, int64) sorted by name bytes."""
    items = sorted((s.encode("utf-8"), off) for s, off in offsets.items())
    parts = [_encode_varint(len(items))]
    for name, off in items:
        parts += [_encode_varint(len(name)), name, _I64.pack(off)]
    return b"".join(parts)


def split_offsets(payload):
    """(offsets dict, bytes it took) of the section at the start of a payload.

    ValueError unless it is well formed: 1..MAX_SOURCES entries, names of
    1..MAX_SOURCE_BYTES UTF-8 bytes in strictly increasing byte order.
    """
    end = len(payload)
    n, i = _decode_varint(payload, 0, end)
    if n < 1 or n > F.MAX_SOURCES:
        raise ValueError("bad source offsets count")
    out = {}
    prev = None
    for _ in range(n):
        nlen, i = _decode_varint(payload, i, end)
        if nlen < 1 or nlen > F.MAX_SOURCE_BYTES or i + nlen + 8 > end:
            raise ValueError("bad source name length")
        name = bytes(payload[i:i + nlen])
        i += nlen
        if prev is not None and name <= prev:
            raise ValueError("source offsets out of order")
        prev = name
        try:
            source = name.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("source name is not UTF-8") from None
        out[source] = _I64.unpack_from(payload, i)[0]
        i += 8
    return out, i



