"""The digest's arithmetic in Python (docs/FORMAT.md, "Digest"), shared by
the pure twin, DictTable, the snapshot loader, verify and digest.py; the
native core has the same in kvcore.h. The public names are re-exported by
``rehydrate.digest``."""

from __future__ import annotations

import struct
from collections.abc import Mapping

import xxhash

MASK64 = (1 << 64) - 1
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")


def entry_hash(kb: bytes, vb: bytes) -> int:
    """XXH64(u32le(len(key)) key value): one entry's share of a table digest."""
    return xxhash.xxh64_intdigest(_U32.pack(len(kb)) + kb + vb)


def finish_digest(total: int, count: int) -> int:
    """A table digest from the sum of its entry hashes and its entry count."""
    return xxhash.xxh64_intdigest(_U64X2.pack(total & MASK64, count))


def pairs_digest(pairs, count: int) -> int:
    """The digest of ``count`` (key bytes, value bytes) pairs."""
    # The sum is kept unbounded and wrapped once: the same as adding mod
    # 2^64 at every step, as the native core does.
    return finish_digest(sum(entry_hash(kb, vb) for kb, vb in pairs), count)


def table_digest(table) -> int:
    """The content digest of one table, a 64-bit int.

    The native walk holds the GIL, as every writer does, so a concurrent
    write cannot move memory under it; ``Store.digest`` also takes the
    store's lock, for a digest of one consistent multi-table state.
    TypeError for an object that is no table; a table kind that cannot be
    digested says why (ConfigError).
    """
    digest = getattr(table, "_digest", None)
    if digest is None:
        raise TypeError(f"{type(table).__name__} is not a rehydrate table: it has no digest")
    return digest()


def combine_digests(digests: Mapping) -> int:
    """The state digest from name -> table digest."""
    # Sorted by the UTF-8 bytes, the order the spec states (for valid str it
    # is also the code point order, so sorting the str would agree).
    named = sorted((str(name).encode("utf-8"), d) for name, d in digests.items())
    parts = []
    for name, d in named:
        parts.append(_U32.pack(len(name)))
        parts.append(name)
        parts.append(_U64.pack(d))
    return xxhash.xxh64_intdigest(b"".join(parts))


def format_digest(value: int) -> str:
    """A digest as 16 lowercase hex digits (zero-padded: every digest has one length)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"a digest is an unsigned 64-bit int, not {value!r}")
    return f"{value:016x}"
