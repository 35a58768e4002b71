"""NumericTable: fixed-schema numeric columns indexed by row (docs/tables.md).

A table of ``rows`` rows and named columns, each an int64 or float64 numpy
array; every cell starts at 0. It is declared in ``Store.open(...,
tables={"stats": NumericTable({"hits": "int64", "score": "float64"},
rows=1_000_000)})`` and written with:

- ``store.put("stats", row, {"score": 0.5, "hits": 3})``: set those cells;
- ``store.incr("stats", row, 1, column="hits")``: add to one cell;
- ``store.delete("stats", row)``: zero the row; ``store.clear("stats")``: all.

The log records a put as op put with the msgpack map {column: value}; an
incr is logged as a put of the cell's new value (computed under the store's
lock), so replay only ever sets cells and each record is idempotent. The
schema travels in every declaration of the table (docs/FORMAT.md), so a
reader rebuilds the table without user code.

numpy is imported when a NumericTable is first made, never by ``import
rehydrate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import _format as F
from .errors import ConfigError, CorruptionError, InvalidOperationError
from .ready import Ready

if TYPE_CHECKING:
    import numpy
    import pyarrow

    from .export import LockOf

DTYPES = ("int64", "float64")
MAX_COLUMNS = 1024
MAX_ROWS = (1 << 31) - 1  # one Arrow record batch holds a whole column
_INT_MIN, _INT_MAX = F.INT64_MIN, F.INT64_MAX


def _check_columns(columns) -> tuple:
    """((name, dtype), ...) from a mapping; ConfigError if unusable."""
    if not hasattr(columns, "items") or not columns:
        raise ConfigError("NumericTable needs a non-empty mapping of column name -> "
                          f"dtype ({' or '.join(DTYPES)})")
    out = []
    for name, dtype in columns.items():
        if type(name) is not str or not name or len(name.encode("utf-8", "replace")) > 255:
            raise ConfigError(f"a NumericTable column name is a str of 1-255 bytes, not {name!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"column {name!r}: dtype must be one of {DTYPES}, not {dtype!r}")
        out.append((name, dtype))
    if len(out) > MAX_COLUMNS:
        raise ConfigError(f"a NumericTable has at most {MAX_COLUMNS} columns")
    return tuple(out)


def _check_rows(rows) -> int:
    if type(rows) is not int or not 1 <= rows <= MAX_ROWS:
        raise ConfigError(f"NumericTable rows must be an int in 1..2^31-1, not {rows!r}")
    return rows


class NumericTable(Ready):
    """Numeric columns indexed by row: a declaration for ``tables=`` and the
    live table ``store.table(name)`` returns (reads only; writes go through
    the store, so they are logged)."""

    __slots__ = ("_columns", "_rows", "_index", "_arrays", "_name", "_export_lock",
                 "__weakref__")
    # How the native core knows this table without importing this module:
    # replay may set cells of ``_live()``'s arrays itself, with
    # ``rows`` and ``columns`` as the layout.
    _rh_numeric_columns = True

    def __init__(self, columns: Mapping[str, str], rows: int) -> None:
        self._columns = _check_columns(columns)
        self._rows = _check_rows(rows)
        self._index = {name: i for i, (name, _) in enumerate(self._columns)}
        self._arrays: Any = None  # numpy arrays once the store makes the live table
        self._name: str | None = None
        # The store's lock for ``to_arrow``'s copy (set by Store.table).
        self._export_lock: LockOf | None = None

    # -- schema ----------------------------------------------------------
    def schema(self) -> dict[str, Any]:
        """{"columns": [[name, dtype], ...], "rows": n}: what the log and
        snapshots record."""
        return {"columns": [[n, d] for n, d in self._columns], "rows": self._rows}

    def _schema_bytes(self) -> bytes:
        import msgpack

        return msgpack.packb(self.schema(), use_bin_type=True)

    @classmethod
    def _from_schema(cls, schema) -> "NumericTable":
        """The declaration a schema (msgpack bytes, or the decoded dict) from
        disk describes; CorruptionError if it is not one (untrusted bytes)."""
        try:
            if isinstance(schema, (bytes, bytearray, memoryview)):
                import msgpack

                schema = msgpack.unpackb(bytes(schema), raw=False)
            if not isinstance(schema, dict) or set(schema) != {"columns", "rows"} or \
                    not isinstance(schema["columns"], list) or \
                    not all(isinstance(c, list) and len(c) == 2 for c in schema["columns"]):
                raise ValueError("not {columns: [[name, dtype]...], rows: n}")
            names = [c[0] for c in schema["columns"]]
            if len(set(names)) != len(names):
                raise ValueError("a column name twice")
            return cls(dict(schema["columns"]), schema["rows"])
        except (ValueError, TypeError, ConfigError) as e:
            raise CorruptionError(f"bad numeric table schema: {e}",
                                  reason="bad_declaration") from None

    def _fresh(self, name: str, arrays=None) -> "NumericTable":
        """A live table of this schema: zeros, or ``arrays`` (one per column)."""
        import numpy as np

        t = NumericTable(dict(self._columns), self._rows)
        t._name = name
        if arrays is None:
            arrays = [np.zeros(self._rows, dtype=d) for _, d in self._columns]
        t._arrays = list(arrays)
        return t

    # -- reads -----------------------------------------------------------
    @property
    def rows(self) -> int:
        return self._rows

    @property
    def columns(self) -> dict[str, str]:
        """{name: dtype}, in schema order."""
        return dict(self._columns)

    def _live(self):
        if self._arrays is None:
            raise ConfigError("this NumericTable is a declaration; read the store's table: "
                              "store.table(name)")
        return self._arrays

    def column(self, name: str) -> numpy.ndarray[Any, Any]:
        """A read-only numpy view of one column (it follows later writes)."""
        arrays = self._live()
        i = self._index.get(name)
        if i is None:
            raise KeyError(f"no column {name!r}; columns: {list(self._index)}")
        view = arrays[i].view()
        view.flags.writeable = False
        return view

    def to_arrow(self) -> pyarrow.Table:
        """The columns as a pyarrow.Table (int64 / float64, schema order, row
        i at position i; docs/tables.md, "Data out"). A copy taken under the
        store's lock: one consistent state, which later writes never change
        (``column(name)`` is the live, zero-copy view)."""
        from .export import numeric_to_arrow

        return numeric_to_arrow([n for n, _ in self._columns], self._live(), self._export_lock)

    def __getitem__(self, row: int) -> dict[str, int | float]:
        """{column: value} of one row (Python ints and floats)."""
        arrays = self._live()
        r = self._row_index(row)
        return {name: arrays[i][r].item() for i, (name, _) in enumerate(self._columns)}

    def __len__(self) -> int:
        return self._rows

    @property
    def memory_bytes(self) -> int:
        return sum(a.nbytes for a in self._live())

    def __repr__(self) -> str:
        cols = ", ".join(f"{n}: {d}" for n, d in self._columns)
        return f"<NumericTable {self._name or '(declaration)'} {self._rows} rows {{{cols}}}>"

    # -- checks shared by the write paths --------------------------------
    def _row_index(self, row) -> int:
        if type(row) is not int or not 0 <= row < self._rows:
            raise InvalidOperationError(
                f"row {row!r} is not an int in 0..{self._rows - 1} of numeric table "
                f"{self._name!r}")
        return row

    def _column_index(self, column) -> int:
        i = self._index.get(column) if type(column) is str else None
        if i is None:
            raise InvalidOperationError(f"numeric table {self._name!r} has no column "
                                        f"{column!r}; columns: {list(self._index)}")
        return i

    def _cell_value(self, i: int, value):
        """``value`` as column i stores it; InvalidOperationError if it cannot."""
        dtype = self._columns[i][1]
        if dtype == "int64":
            if type(value) is bool or not isinstance(value, int) or \
                    not _INT_MIN <= value <= _INT_MAX:
                raise InvalidOperationError(f"column {self._columns[i][0]!r} is int64: "
                                            f"{value!r} is not an int64")
            return int(value)
        if type(value) is bool or not isinstance(value, (int, float)):
            raise InvalidOperationError(f"column {self._columns[i][0]!r} is float64: "
                                        f"{value!r} is not a number")
        return float(value)

    def _cells(self, value) -> list:
        """[(column index, stored value)] of a put's {column: value} map,
        all checked before any is set."""
        if not isinstance(value, dict) or not value:
            raise InvalidOperationError(f"a put to numeric table {self._name!r} takes a "
                                        f"non-empty dict {{column: number}}, not {value!r}")
        out = []
        for column, v in value.items():
            i = self._column_index(column)
            out.append((i, self._cell_value(i, v)))
        return out

    def _added(self, row, column, delta):
        """The value a cell would hold after adding ``delta`` (checked; not set)."""
        arrays = self._live()
        r, i = self._row_index(row), self._column_index(column)
        if type(delta) is bool or not isinstance(delta, (int, float)):
            raise InvalidOperationError(f"incr delta must be an int or float, not {delta!r}")
        if self._columns[i][1] == "int64":
            if not isinstance(delta, int):
                raise InvalidOperationError(f"column {column!r} is int64: delta {delta!r} "
                                            "is not an int")
            new = int(arrays[i][r]) + delta
            if not _INT_MIN <= new <= _INT_MAX:
                raise InvalidOperationError(f"incr of {column!r} row {r} by {delta} leaves "
                                            "int64")
            return new
        return float(arrays[i][r]) + float(delta)

    # -- raw surface: the cores' write and replay paths -------------------
    def _row_of_key(self, kb) -> int:
        kb = bytes(kb)
        if len(kb) != 9 or kb[0] != F.KEY_TAG_INT:
            raise InvalidOperationError(f"numeric table {self._name!r} takes int row keys")
        return self._row_index(int.from_bytes(kb[1:], "little", signed=True))

    def _check_put_raw(self, kb, vb):
        """(row, [(column index, value)]) of a put, checked; nothing is set
        (a background open checks writes to a table not yet ready with it)."""
        from ._values import unpack_container

        r = self._row_of_key(kb)
        try:
            value = unpack_container(bytes(vb))
        except Exception as e:  # noqa: BLE001 - any decode failure is the value's fault
            raise InvalidOperationError(f"numeric put value does not decode: {e}") from None
        return r, self._cells(value)

    def _put_raw(self, kb, vb) -> None:
        arrays = self._live()
        r, cells = self._check_put_raw(kb, vb)
        for i, v in cells:
            arrays[i][r] = v

    def _get_raw(self, kb):
        """The row as a put value would set it (a batch's undo uses this)."""
        import msgpack

        arrays = self._live()
        r = self._row_of_key(kb)
        return msgpack.packb({name: arrays[i][r].item()
                              for i, (name, _) in enumerate(self._columns)})

    def _delete_raw(self, kb) -> bool:
        r = self._row_of_key(kb)
        for a in self._live():
            a[r] = 0
        return True

    def _incr_raw(self, kb, delta):
        raise InvalidOperationError(f"an incr of numeric table {self._name!r} names its "
                                    "column: store.incr(table, row, delta, column=...)")

    def _clear(self) -> None:
        for a in self._live():
            a[:] = 0

    def _items_raw(self) -> list:
        """(row key, msgpack {column: value}) of every row with a cell that
        is not 0, the cells that are not 0 in schema order: what a batch's
        undo of a clear puts back."""
        import msgpack
        import numpy as np

        arrays = self._live()
        nonzero = np.zeros(self._rows, dtype=bool)
        for a in arrays:
            nonzero |= a != 0
        out = []
        for r in np.flatnonzero(nonzero).tolist():
            cells = {}
            for i, (name, _) in enumerate(self._columns):
                v = arrays[i][r].item()
                if v != 0 or (isinstance(v, float) and math.isnan(v)):
                    cells[name] = v
            out.append((b"\x03" + r.to_bytes(8, "little", signed=True), msgpack.packb(cells)))
        return out

    def _digest(self) -> int:
        """The content digest (docs/FORMAT.md, "Digest"): XXH64 of the schema
        then every column's little-endian bytes, in schema order. A row is a
        position, not history, so hashing in row order is still independent
        of how the table got its values; ~3 ms per 16 MB of columns."""
        return column_digest(self._schema_bytes(), self._live())


def column_digest(schema: bytes, arrays) -> int:
    import xxhash

    h = xxhash.xxh64()
    h.update(len(schema).to_bytes(4, "little") + schema)
    for a in arrays:
        h.update(memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False)).cast("B"))
    return h.intdigest()
