"""KVTable: the key/value table, plain-Python reference.

The native twin (``src/rehydrate/_core/kvtable.pyx``) is an open-addressing hash table
with keys and msgpack value bytes in an arena. Both expose the same read-only
``Mapping`` surface to users and the same ``_raw`` methods to the writer and
the replay loop. Keys are canonical key bytes (see ``encode_key``); values are
msgpack bytes, decoded when read.
"""

from __future__ import annotations

from typing import Any, Optional

import struct
import sys
from collections.abc import ItemsView, KeysView, Mapping, ValuesView

import xxhash

from .. import _format as F
from .._hashing import MASK64, entry_hash, pairs_digest
from ..errors import CorruptionError, UnsupportedKeyError
from .codec import decode_key, encode_key, incr_value, pack_value, unpack_value


def shallow_dict_bytes(d: dict) -> int:
    """A dict's size with its keys and values (not what they refer to)."""
    return sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())


def checked_pairs(koff, kdata, voff, vdata) -> list:
    """(key bytes, value bytes) of two Arrow-style binary columns, all checked
    before any is returned (CorruptionError for a bad offset or key)."""
    from .codec import key_is_wellformed

    koff, voff = memoryview(koff).cast("B").cast("i"), memoryview(voff).cast("B").cast("i")
    kdata, vdata = bytes(memoryview(kdata).cast("B")), bytes(memoryview(vdata).cast("B"))
    n = len(koff) - 1
    if n < 0 or len(voff) != n + 1:
        raise CorruptionError("key and value columns differ in length", reason="bad_snapshot")
    pairs = []
    for i in range(n):
        a, b, c, d = koff[i], koff[i + 1], voff[i], voff[i + 1]
        kb = kdata[a:b]
        if (a < 0 or b < a or b > len(kdata) or c < 0 or d < c + 1 or d > len(vdata)
                or not key_is_wellformed(kb)):
            raise CorruptionError(f"malformed pair {i} in a snapshot column",
                                  reason="bad_snapshot")
        pairs.append((kb, vdata[c:d]))
    return pairs


def pairs_digest_sum(koff, kdata, voff, vdata):
    """The native pairs_digest_sum: the entry hashes' sum (mod 2^64) of two
    Arrow-style binary columns, or None for an offset out of order or bounds."""
    koff, voff = memoryview(koff).cast("B").cast("i"), memoryview(voff).cast("B").cast("i")
    kdata, vdata = memoryview(kdata).cast("B"), memoryview(vdata).cast("B")
    n = len(koff) - 1
    if n < 0 or len(voff) != n + 1:
        return None
    total = 0
    for i in range(n):
        a, b, c, d = koff[i], koff[i + 1], voff[i], voff[i + 1]
        if a < 0 or b < a or b > len(kdata) or c < 0 or d < c or d > len(vdata):
            return None
        total += entry_hash(bytes(kdata[a:b]), bytes(vdata[c:d]))
    return total & MASK64


def image_digest_sum(data):
    """The native image_digest_sum: the entry-hash sum (mod 2^64) of a KV
    snapshot image (docs/FORMAT.md), or None when its header or an entry
    is malformed. The pure twin never maps images; this reads one."""
    from .codec import key_is_wellformed

    v = memoryview(data).cast("B")
    if len(v) < 4096 or bytes(v[:8]) != b"RHKVIMG1":
        return None
    version, bbits, count, alen, slots = struct.unpack_from("<IIQQQ", v, 8)
    sbits = (slots - 1).bit_length() if slots > 1 else 0
    if version != 1 or alen < 8 or alen != len(v) - 4096 or alen % 8 or \
            count > (alen - 8) // 16 or slots != F.slot_capacity(count) or \
            bbits != sbits or any(v[40:4096]) or any(v[4096:4104]):
        return None
    off, end, total, n = 4104, len(v), 0, 0
    while off < end:
        if end - off < 12:
            return None
        klen, vlen, vcap = struct.unpack_from("<III", v, off)
        size = (12 + klen + vcap + 7) & ~7
        if not (1 <= klen <= (1 << 20) + 1 and 1 <= vlen <= vcap <= 0x7FFFFF00) or \
                size > end - off or size != (12 + klen + vlen + 7) & ~7 or \
                vcap != size - 12 - klen:
            return None
        kb = bytes(v[off + 12:off + 12 + klen])
        if not key_is_wellformed(kb) or any(v[off + 12 + klen + vlen:off + size]):
            return None
        total += entry_hash(kb, bytes(v[off + 12 + klen:off + 12 + klen + vlen]))
        off += size
        n += 1
    return total & MASK64 if n == count else None


class KVTable:
    """A live, read-only mapping view over one table's state.

    Reads decode the stored msgpack value each time; a mutation of the table
    during iteration raises RuntimeError (as ``dict`` does).
    """

    __slots__ = ("_d", "_version", "_export_lock", "__weakref__")

    def __init__(self) -> None:
        self._d: dict[bytes, bytes] = {}
        self._version = 0
        # The store's lock for ``to_arrow``'s copy (set by Store.table).
        self._export_lock = None

    # -- Mapping surface -------------------------------------------------
    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, key):
        raw = self._d.get(encode_key(key))
        if raw is None:
            raise KeyError(key)
        return unpack_value(raw)

    def get(self, key, default=None):
        try:
            kb = encode_key(key)
        except UnsupportedKeyError:
            return default
        raw = self._d.get(kb)
        return default if raw is None else unpack_value(raw)

    def __contains__(self, key) -> bool:
        try:
            return encode_key(key) in self._d
        except UnsupportedKeyError:
            return False

    def __iter__(self):
        version = self._version
        for kb in self._d:
            if self._version != version:
                raise RuntimeError("table changed during iteration")
            yield decode_key(kb)
        if self._version != version:
            raise RuntimeError("table changed during iteration")

    def keys(self):
        return KeysView(self)

    def values(self):
        return ValuesView(self)

    def items(self):
        return ItemsView(self)

    def to_dict(self) -> dict:
        """A plain dict of decoded keys and values (a copy)."""
        return {decode_key(k): unpack_value(v) for k, v in self._d.items()}

    def to_arrow(self):
        """The table as a pyarrow.Table of ``key`` and ``value`` columns
        (docs/tables.md, "Data out"): one consistent state, decoded."""
        from ..export import kv_to_arrow

        return kv_to_arrow(self, self._export_lock)

    def __eq__(self, other):
        if isinstance(other, Mapping) or isinstance(other, KVTable):
            return self.to_dict() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<KVTable {len(self._d)} keys>"

    @property
    def ready(self) -> bool:
        """True: the store hands out a table object only once its state is in."""
        return True

    def wait_ready(self, timeout=None) -> bool:
        """True at once (see ``ready``)."""
        return True

    @property
    def memory_bytes(self) -> int:
        """Bytes this table holds: the dict, its keys and its values."""
        return shallow_dict_bytes(self._d)

    def _reserve(self, keys, arena_bytes=0, bulk=False) -> None:
        """Room for ``keys`` entries up front: a no-op for a dict."""
        if keys < 0 or arena_bytes < 0:
            raise ValueError("reserve sizes must be >= 0")

    def _loaded(self) -> None:
        """The end of a bulk load: nothing to do for a dict."""

    # -- raw surface for the writer and replay ---------------------------
    def _get_raw(self, kb):
        return self._d.get(bytes(kb))

    def _put_raw(self, kb, vb) -> None:
        self._d[bytes(kb)] = bytes(vb)
        self._version += 1

    def _put_items(self, items) -> None:
        """Put each ``(key, value)`` of ``items``, decoded pairs, encoding as
        it goes (what a migration's result is built with); the first pair
        the table cannot hold raises (the pairs before it are in)."""
        for key, value in items:
            self._put_raw(encode_key(key), pack_value(value))

    def _put_pairs(self, pairs: list) -> bool:
        """Put every ``(key, value)`` of ``pairs`` when all of them can be
        held: True. False, with nothing put, when a key or a value does not
        encode (the caller then puts them one by one, so errors are per
        pair); the native twin packs the values in bulk."""
        try:
            raw = [(encode_key(k), pack_value(v)) for k, v in pairs]
        except Exception:  # noqa: BLE001 - the caller's one-by-one path names the pair
            return False
        if any(len(vb) > 0x7FFFFF00 for _, vb in raw):
            return False  # RH_VALUE_MAX: what the native table cannot hold
        for kb, vb in raw:
            self._put_raw(kb, vb)
        return True

    def _copy_prepare(self):
        """Nothing to prepare for a dict copy (the native core faults its
        memory in here, before the store's lock)."""
        return None

    def _copy(self, prep=None) -> "PairsCopy":
        """A copy of the entries as they are now: what a checkpoint snapshots."""
        return PairsCopy(dict(self._d))

    def _load_pairs(self, koff, kdata, voff, vdata, summed=True):
        """Put every pair of two Arrow-style binary columns (n+1 int32 offsets
        into each data buffer). All pairs are checked first: CorruptionError,
        and the table unchanged, for offsets out of order or bounds or a
        malformed key; a key already there or twice is CorruptionError and
        empties the table (as natively). Returns the sum (mod 2^64) of the
        pairs' entry hashes (None with ``summed=False``)."""
        total = 0
        for kb, vb in checked_pairs(koff, kdata, voff, vdata):
            if kb in self._d:
                self._clear()
                raise CorruptionError("a snapshot holds the same key twice",
                                      reason="bad_snapshot")
            self._put_raw(kb, vb)
            if summed:
                total += entry_hash(kb, vb)
        return total & MASK64 if summed else None

    def _delete_raw(self, kb) -> bool:
        self._version += 1
        return self._d.pop(bytes(kb), None) is not None

    def _incr_raw(self, kb, delta) -> bytes:
        """Add ``delta`` in place; InvalidOperationError leaves the table as is."""
        kb = bytes(kb)
        new = incr_value(self._d.get(kb), delta)
        self._d[kb] = new
        self._version += 1
        return new

    def _clear(self) -> None:
        self._d.clear()
        self._version += 1

    def _items_raw(self) -> list:
        return list(self._d.items())

    def _digest(self) -> int:
        """The content digest (docs/FORMAT.md, "Digest"): a 64-bit int that
        depends only on the entries, not on the table's history."""
        return pairs_digest(self._d.items(), len(self._d))


class PairsCopy:
    """A checkpoint's copy of one table: its pairs, frozen."""

    __slots__ = ("_d", "_items")

    def __init__(self, d: dict):
        self._d = d
        self._items: Optional[list] = None  # the pairs in order, for _batch

    def _batch(self, start: int, max_rows: int) -> tuple:
        """The native ArenaCopy._batch: up to ``max_rows`` entries decoded
        from the cursor ``start`` (0 first): (keys, values, next cursor),
        the cursor -1 once no entry is left. Here the cursor is an index."""
        if start < 0 or max_rows < 1:
            raise ValueError("a batch starts at a cursor >= 0 and holds at least one row")
        if self._items is None:
            self._items = list(self._d.items())
        chunk = self._items[start:start + max_rows]
        nxt = start + len(chunk)
        return ([decode_key(kb) for kb, _ in chunk], [unpack_value(vb) for _, vb in chunk],
                nxt if nxt < len(self._items) else -1)

    def __len__(self) -> int:
        return len(self._d)

    def _digest(self) -> int:
        return pairs_digest(self._d.items(), len(self._d))

    def _columns(self, max_rows=1 << 20, max_bytes=(1 << 31) - 1) -> list:
        """The native ArenaCopy._columns: batches of (n, key offsets, key
        data, value offsets, value data), offsets as native int32."""
        from array import array

        if max_rows < 1 or max_bytes < 0x7FFFFF00:
            raise ValueError("batches must hold at least one pair of any size")
        out, items = [], list(self._d.items())
        i = 0
        while i < len(items):
            ks: list[Any] = []
            vs: list[Any] = []
            ko, vo = array("i", [0]), array("i", [0])
            kn = vn = 0
            while i < len(items) and len(ks) < max_rows:
                kb, vb = items[i]
                if ks and (kn + len(kb) > max_bytes or vn + len(vb) > max_bytes):
                    break
                kn, vn = kn + len(kb), vn + len(vb)
                ks.append(kb)
                vs.append(vb)
                ko.append(kn)
                vo.append(vn)
                i += 1
            out.append((len(ks), ko.tobytes(), b"".join(ks), vo.tobytes(), b"".join(vs)))
        return out


def _xxh64(data, seed=0) -> int:
    """XXH64 of a bytes-like object (the twin of the native test hook)."""
    return xxhash.xxh64_intdigest(bytes(data), seed)


def _xxh64_x4(a, b, c, d, seed=0) -> tuple:
    """XXH64 of four bytes objects (the twin of the native four-way form)."""
    return tuple(xxhash.xxh64_intdigest(bytes(x), seed) for x in (a, b, c, d))


def _xxh64_parts(parts, seed=0) -> int:
    """XXH64 of the concatenation of ``parts``, fed piece by piece."""
    h = xxhash.xxh64(seed=seed)
    for part in parts:
        h.update(bytes(part))
    return h.intdigest()


Mapping.register(KVTable)
