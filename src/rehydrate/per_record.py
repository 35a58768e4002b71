"""Per-record migrations: one function applied to each key and value of a
table (docs/migrations.md, "Per-record migrations").

The pieces both runs use, the offline one in the migrate phase and the
online one that builds a shadow table while the store serves
(online.py):

- ``DELETE``: what a per-record function returns to drop the record.
- ``consistent_view(table, kind, core)``: the table's entries at one
  moment. Taken with the store's lock held (it is cheap: for a KVTable one
  copy of its arena); read afterwards without any lock.
- ``View.batches(max_rows)``: the view's entries, decoded, a batch at a time.
- ``apply_fn(fn, keys, values)``: the function over one batch: what to
  put, what to delete, and which records raised.
- ``put_many(table, kind, core, pairs)``: encode and put a batch; the pairs
  whose key or value the table cannot hold come back as errors, the rest
  are put.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from . import _format as F

__all__ = ["DELETE", "View", "prepare_view", "consistent_view", "apply_fn", "put_many", "DEFAULT_BATCH_ROWS"]

#: Records decoded and handed to the function per batch.
DEFAULT_BATCH_ROWS = 4096


class _Delete:
    """The delete marker: a per-record function returns ``rehydrate.DELETE``
    to drop the record from the migrated table."""

    _instance: "_Delete | None" = None

    def __new__(cls) -> "_Delete":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "rehydrate.DELETE"

    def __reduce__(self) -> str:
        return "DELETE"


DELETE = _Delete()


class View:
    """A table's entries at one moment, as raw (key bytes, value bytes)
    pairs or a KVTable's arena copy; decoded when read."""

    def __init__(self, payload: Any, core: Any, count: int) -> None:
        self._payload, self._core, self.count = payload, core, count

    def batches(self, max_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[tuple[list[Any], list[Any]]]:
        """(keys, values) decoded, at most ``max_rows`` a batch, each
        entry once. Only the batch at hand is decoded: a KVTable's copy
        decodes from its arena at a cursor (``_batch``), values in bulk."""
        if max_rows < 1:
            raise ValueError("a batch holds at least one row")
        payload = self._payload
        if not isinstance(payload, list):
            cursor = 0
            while cursor >= 0:
                keys, values, cursor = payload._batch(cursor, max_rows)
                if keys:
                    yield keys, values
            return
        decode_key, unpack = self._core.decode_key, self._core.unpack_value
        for start in range(0, len(payload), max_rows):
            chunk = payload[start:start + max_rows]
            yield [decode_key(kb) for kb, _ in chunk], [unpack(vb) for _, vb in chunk]


def prepare_view(table: Any, kind: int) -> Any:
    """Memory for ``consistent_view``'s copy, allocated and faulted in now,
    before the store's lock is taken (as a checkpoint does): under the lock
    the copy is then one memcpy. None when there is nothing to prepare."""
    if kind == F.KIND_KV and hasattr(table, "_copy_prepare"):
        return table._copy_prepare()
    return None


def consistent_view(table: Any, kind: int, core: Any, prepared: Any = None) -> View:
    """``table``'s entries now (kv or dict table). Call with the store's
    lock held: no write may land while it is taken. ``prepared``: from
    ``prepare_view`` (the copy's memory), taken before the lock."""
    if kind == F.KIND_KV and hasattr(table, "_copy"):
        return View(table._copy(prepared), core, len(table))
    pairs = table._items_raw()
    return View(pairs, core, len(pairs))


def apply_fn(fn: Callable[[Any, Any], Any], keys: list[Any], values: list[Any]
             ) -> tuple[list[tuple[Any, Any]], list[Any], list[tuple[Any, BaseException]]]:
    """``fn(key, value)`` over one batch: (pairs to put, keys to delete,
    (key, exception) for each record whose function raised)."""
    puts: list[tuple[Any, Any]] = []
    deletes: list[Any] = []
    errors: list[tuple[Any, BaseException]] = []
    put, delete = puts.append, deletes.append  # bound once: this is the hot loop
    for k, v in zip(keys, values):
        try:
            out = fn(k, v)
        except Exception as e:  # noqa: BLE001 - the caller counts it against the record
            errors.append((k, e))
            continue
        if out is DELETE:
            delete(k)
        else:
            put((k, out))
    return puts, deletes, errors


def put_many(table: Any, kind: int, core: Any, pairs: list[tuple[Any, Any]]
             ) -> list[tuple[Any, BaseException]]:
    """Encode and put ``pairs`` into ``table``; (key, exception) for each
    pair it cannot hold (those are not put; all others are).

    A KVTable takes the whole batch in one call (values packed in bulk)
    when every pair encodes; otherwise, and for other tables, the pairs go
    one by one, so each error is the core's own for that pair."""
    if kind == F.KIND_KV and hasattr(table, "_put_pairs"):
        if table._put_pairs(pairs if type(pairs) is list else list(pairs)):
            return []
    encode_key, pack, put = core.encode_key, core.pack_value, table._put_raw
    errors: list[tuple[Any, BaseException]] = []
    for k, v in pairs:
        try:
            kb, vb = encode_key(k), pack(v)
            put(kb, vb)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - an unencodable result
            errors.append((k, e))
    return errors
