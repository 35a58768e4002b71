"""The digest's arithmetic in Python (docs/FORMAT.md, "Digest"), shared by
the pure twin, DictTable and the snapshot loader; the native core has the
same in kvcore.h."""

from __future__ import annotations

import struct

import xxhash

MASK64 = (1 << 64) - 1
_U32 = struct.Struct("<I")
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
