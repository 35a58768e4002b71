"""A plain dict-of-dicts model of a store, and strict comparison helpers.

The model is the oracle the store is checked against: it applies the same
ops with the documented semantics (tables appear at their first logged
record; incr on absent = delta; int stays int within int64; anything plus a
float is a float; a failing op or batch changes nothing and logs nothing).
"""

from __future__ import annotations

import copy

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


class ModelInvalidOp(Exception):
    """The model's verdict that an incr cannot apply."""


def normalize(value):
    """What a value reads back as: tuples become lists (msgpack arrays)."""
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def canon(value):
    """A type-tagged form, so 1, 1.0 and True never compare equal."""
    if isinstance(value, (list, tuple)):
        return ("list", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((canon(k), canon(v)) for k, v in value.items()), key=repr)))
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def canon_state(state: dict, drop_empty: bool = False) -> dict:
    """{table: {canon(key): canon(value)}} of a {table: {key: value}} state."""
    out = {}
    for name, rows in state.items():
        if drop_empty and not rows:
            continue
        out[name] = {canon(k): canon(v) for k, v in rows.items()}
    return out


def store_state(store) -> dict:
    """The store's whole state as plain dicts, in table creation order."""
    return {name: store.table(name).to_dict() for name in store.tables()}


def check_delta(delta) -> None:
    t = type(delta)
    if t is float:
        return
    if t is int and INT64_MIN <= delta <= INT64_MAX:
        return
    raise ModelInvalidOp(f"bad delta {delta!r}")


def incr_value(old, delta, present: bool):
    if not present:
        return delta
    if type(old) not in (int, float):
        raise ModelInvalidOp("incr on a non-number")
    if type(old) is int and not INT64_MIN <= old <= INT64_MAX:
        raise ModelInvalidOp("stored int outside int64")
    res = old + delta
    if type(res) is int and not INT64_MIN <= res <= INT64_MAX:
        raise ModelInvalidOp("int64 overflow")
    return res


class Model:
    """Tables (dict, creation order) and the count of logged records."""

    def __init__(self) -> None:
        self.tables: dict = {}
        self.lsn = 0

    def copy(self) -> "Model":
        m = Model()
        m.tables = copy.deepcopy(self.tables)
        m.lsn = self.lsn
        return m

    def _t(self, table):
        return self.tables.setdefault(table, {})

    def put(self, table, key, value) -> int:
        self._t(table)[key] = normalize(value)
        self.lsn += 1
        return self.lsn

    def delete(self, table, key) -> int:
        self._t(table).pop(key, None)
        self.lsn += 1
        return self.lsn

    def incr(self, table, key, delta=1) -> int:
        check_delta(delta)
        rows = self.tables.get(table, {})
        new = incr_value(rows.get(key), delta, key in rows)
        self._t(table)[key] = new
        self.lsn += 1
        return self.lsn

    def clear(self, table) -> int:
        self._t(table).clear()
        self.lsn += 1
        return self.lsn

    def migrate(self, table, fn) -> int:
        """A state migration: ``fn(rows)`` reshapes the table's dict in
        place; it takes one LSN (its marker record; docs/migrations.md)."""
        fn(self._t(table))
        self.lsn += 1
        return self.lsn

    def apply(self, op) -> int:
        """Apply one op tuple: ("put", t, k, v), ("delete", t, k),
        ("incr", t, k, d), ("clear", t), ("batch", [ops]) (all or nothing)
        or ("migrate", t, fn)."""
        kind = op[0]
        if kind == "batch":
            trial = self.copy()
            for sub in op[1]:
                trial.apply(sub)
            self.tables, self.lsn = trial.tables, trial.lsn
            return self.lsn
        return getattr(self, kind)(*op[1:])

    def state(self) -> dict:
        return self.tables


def apply_to_store(store, op):
    """Run one op tuple against a store; returns the LSN it reports."""
    kind = op[0]
    if kind == "batch":
        with store.batch() as b:
            for sub in op[1]:
                getattr(b, sub[0])(*sub[1:])
        return b.lsn
    return getattr(store, kind)(*op[1:])


def record_count(op) -> int:
    return len(op[1]) if op[0] == "batch" else 1
