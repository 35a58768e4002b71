"""Data out: a table's content as a ``pyarrow.Table`` (docs/tables.md, "Data out").

``to_arrow()`` on the tables the store hands out (KVTable in both cores,
DictTable, NumericTable) calls the functions here. A key-value table becomes
two columns, ``key`` and ``value``, of decoded keys and values, rows sorted by
key; each column gets an Arrow type by what it holds (``column_for``):

- one scalar type throughout (None allowed as null): int64 (uint64 when an
  int is past int64 and none is negative), float64, bool, string, binary;
  only None, or no rows: null;
- anything else (mixed types, lists, dicts, msgpack ext values): the type
  Arrow infers, kept only when reading it back gives every value exactly
  (same types, same dict key order); otherwise binary, each cell the msgpack
  bytes of its value, the field's metadata saying so
  (``rehydrate.encoding: msgpack``). Nothing is lost silently.

``from_arrow`` is the way back: the dict of keys and values an exported table
holds, msgpack columns decoded.

The copy is taken under the store's lock when the table came from a store
(``lock_of``, which ``Store.table`` gives the table), so the export is one
consistent state, as ``store.digest()`` is; decoding and building the Arrow
columns happen after, without it. pyarrow (and, for a NumericTable, numpy)
is imported here, when an export runs, never by ``import rehydrate``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ContextManager, Optional

from ._backend import core as _core
from .errors import ConfigError

if TYPE_CHECKING:
    import pyarrow

__all__ = ["ENCODING", "MSGPACK", "LockOf", "column_for", "dict_to_arrow", "from_arrow",
           "kv_to_arrow", "numeric_to_arrow", "pairs_to_arrow", "refuse_custom"]

#: A field's metadata key saying how its cells are encoded, and the one value
#: it takes: each cell is the msgpack bytes of one key or value.
ENCODING = b"rehydrate.encoding"
MSGPACK = b"msgpack"

#: What ``Store.table`` gives a table: a callable returning the lock to hold
#: while the table is copied (the store's write lock).
LockOf = Callable[[], ContextManager[Any]]

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
# How many times a copy without the store's lock is taken again when a write
# moved the table under it (only if a finalizer ran Python code mid-walk).
_COPY_TRIES = 100


def _held(lock_of: Optional[LockOf]) -> ContextManager[Any]:
    return contextlib.nullcontext() if lock_of is None else lock_of()


def _raw_columns(table: Any, lock_of: Optional[LockOf]) -> tuple[list[bytes], list[bytes]]:
    """(key bytes, value bytes) of every entry, as of one moment.

    From a store (``lock_of``): the table's checkpoint copy (``_copy``: one
    memcpy of the native arena, a dict copy in the pure core), taken under
    the store's lock like a checkpoint's, its memory allocated before; its
    pairs are read out of the copy after. Without a store, nothing else
    writes the table but a thread of the caller's: the pairs are copied
    without releasing the GIL, which every writer holds (the native copy
    checks the table's version, raises RuntimeError if a write got in
    anyway, and is then taken again).
    """
    if lock_of is None:
        pairs = _items_now(table)
        return [k for k, _ in pairs], [v for _, v in pairs]
    import pyarrow as pa

    prepared = table._copy_prepare()
    with lock_of():
        copy = table._copy(prepared)
    keys: list[bytes] = []
    values: list[bytes] = []
    # The snapshot writer's columns (Arrow binary layout), read as bytes.
    for n, koff, kdata, voff, vdata in copy._columns():
        for out, off, data in ((keys, koff, kdata), (values, voff, vdata)):
            column = pa.Array.from_buffers(pa.binary(), n,
                                           [None, pa.py_buffer(off), pa.py_buffer(data)])
            out.extend(column.to_pylist())
    return keys, values


def _items_now(table: Any) -> list[tuple[bytes, bytes]]:
    for _ in range(_COPY_TRIES - 1):
        try:
            pairs: list[tuple[bytes, bytes]] = table._items_raw()
            return pairs
        except RuntimeError:  # a write got in: copy again
            pass
    pairs = table._items_raw()
    return pairs


def kv_to_arrow(table: Any, lock_of: Optional[LockOf] = None) -> pyarrow.Table:
    """A KVTable (either core) as a ``key``/``value`` pyarrow.Table: its
    entries copied as bytes (under ``lock_of()``), then decoded as a read
    decodes them."""
    kbs, vbs = _raw_columns(table, lock_of)
    core = _core()
    return pairs_to_arrow(list(map(core.decode_key, kbs)), list(map(core.unpack_value, vbs)))


def dict_to_arrow(table: Any, lock_of: Optional[LockOf] = None) -> pyarrow.Table:
    """A DictTable as a ``key``/``value`` pyarrow.Table (its dict copied
    under ``lock_of()``; the values are converted, never shared)."""
    with _held(lock_of):
        d: dict[Any, Any] = table.to_dict()
    return pairs_to_arrow(list(d), list(d.values()))


def numeric_to_arrow(names: Sequence[str], arrays: Sequence[Any],
                     lock_of: Optional[LockOf] = None) -> pyarrow.Table:
    """A NumericTable's columns as a pyarrow.Table, one column per name, row
    i of each at position i. The columns are copied (under ``lock_of()``)
    and the Arrow arrays wrap those copies without copying again: the result
    never changes when the table does."""
    import pyarrow as pa

    with _held(lock_of):
        copies = [a.copy() for a in arrays]
    return pa.Table.from_arrays([pa.array(c) for c in copies], names=list(names))


def refuse_custom(name: Optional[str]) -> ConfigError:
    """The error ``to_arrow`` raises on a custom table: its state is the
    class's own, with no key/value form to export."""
    return ConfigError(f"custom table {name!r} has no Arrow export: its state is its class's "
                       "own; build a pyarrow.Table from it yourself", reason="no_export")


# ---------------------------------------------------------------- mapping

_SCALARS = {float: "float64", bool: "bool_", str: "string", bytes: "binary"}


def pairs_to_arrow(keys: list[Any], values: list[Any]) -> pyarrow.Table:
    """The ``key``/``value`` table of decoded ``keys`` and ``values`` (same
    length), each column typed by ``column_for``, rows sorted by key (a
    msgpack key column: by its bytes)."""
    import pyarrow as pa

    kcol, kmeta = column_for(keys)
    vcol, vmeta = column_for(values)
    schema = pa.schema([pa.field("key", kcol.type, metadata=kmeta),
                        pa.field("value", vcol.type, metadata=vmeta)])
    out = pa.Table.from_arrays([kcol, vcol], schema=schema)
    if len(keys) > 1:
        out = out.sort_by("key")
    return out


def column_for(xs: list[Any]) -> tuple[Any, Optional[dict[bytes, bytes]]]:
    """(Arrow array, field metadata or None) for one column of decoded values
    (module docstring: the mapping)."""
    import pyarrow as pa

    kinds = set(map(type, xs))
    nullable = type(None) in kinds
    kinds.discard(type(None))
    if not kinds:
        return pa.array(xs, pa.null()), None
    if len(kinds) == 1:
        (kind,) = kinds
        if kind is int:
            ints = [x for x in xs if x is not None] if nullable else xs
            lo, hi = min(ints), max(ints)
            if _INT64_MIN <= lo and hi <= _INT64_MAX:
                return pa.array(xs, pa.int64()), None
            if lo >= 0 and hi <= _UINT64_MAX:
                return pa.array(xs, pa.uint64()), None
        elif kind in _SCALARS:
            return pa.array(xs, getattr(pa, _SCALARS[kind])()), None
    try:
        inferred = pa.array(xs)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        inferred = None
    if inferred is not None and _same_list(inferred.to_pylist(), xs):
        return inferred, None
    pack = _core().pack_value
    return pa.array([pack(x) for x in xs], pa.binary()), {ENCODING: MSGPACK}


def _same_list(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(map(_same, a, b))


def _same(a: Any, b: Any) -> bool:
    """``a`` is ``b`` as a value: same types all the way down, same dict key
    order, NaN the same as NaN."""
    t = type(a)
    if t is not type(b):
        return False
    if t is float:
        return bool(a == b or (a != a and b != b))
    if t is list:
        return _same_list(a, b)
    if t is dict:
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


# ---------------------------------------------------------------- way back

def from_arrow(table: pyarrow.Table) -> dict[Any, Any]:
    """The ``{key: value}`` dict a ``to_arrow()`` result of a key-value table
    holds: each column read back as Python values, a msgpack column
    (``rehydrate.encoding: msgpack`` in its field's metadata) decoded."""
    keys = _read_column(table, "key")
    values = _read_column(table, "value")
    return dict(zip(keys, values))


def _read_column(table: Any, name: str) -> list[Any]:
    field = table.schema.field(name)
    xs: list[Any] = table.column(name).to_pylist()
    if (field.metadata or {}).get(ENCODING) == MSGPACK:
        unpack = _core().unpack_value
        xs = [unpack(x) for x in xs]
    return xs
