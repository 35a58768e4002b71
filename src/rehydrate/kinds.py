"""Table kinds other than the native KVTable: DictTable and custom StateTypes.

The cores (LogBuffer, Staging/commit, scan_frames, in both twins) drive any
table that is not a native KVTable through one raw surface:
``_put_raw(kb, vb)``, ``_delete_raw(kb)``, ``_incr_raw(kb, delta)``,
``_clear()``, and, for a batch's undo, ``_get_raw(kb)`` / ``_items_raw()``.
``kb`` is canonical key bytes and ``vb`` msgpack bytes, exactly what the log
holds, so every kind writes the same records as a KVTable and a log decodes
without the code that wrote it. The classes here implement that surface by
decoding. See docs/tables.md for the contracts.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional

from . import _format as F
from .errors import ConfigError, InvalidOperationError
from ._types import Key, TableKinds, Value
from .ready import Ready

if TYPE_CHECKING:
    import pyarrow

    from .export import LockOf

__all__ = ["DictTable", "StateType", "resolve_kinds"]

_MISSING = object()
_REPR_CHARS = 80


def _short(obj) -> str:
    text = repr(obj)
    return text if len(text) <= _REPR_CHARS else text[:_REPR_CHARS] + "..."


def _default_core():
    from ._backend import core

    return core()


# --------------------------------------------------------------- DictTable

class DictTable(Ready, Mapping[Key, Value]):
    """A table kept as a plain dict of decoded keys and live Python values.

    For small tables and code that wants live objects: a read returns the
    stored object itself, with no decoding. Mutating a value you read changes
    the state without a log record: that is the caller's bug (the change is
    lost at the next open). The records it writes are a KVTable's, byte for
    byte; ``incr`` follows the KVTable's rules exactly.

    Pass the class in ``Store.open(..., tables={"name": rehydrate.DictTable})``;
    the store makes the instance. ``store.table(name)`` is that instance, a
    read-only Mapping.
    """

    __slots__ = ("_d", "_version", "_name", "_c", "_export_lock")

    def __init__(self, _core: Any = None, _name: str = "") -> None:
        self._d: dict[Key, Value] = {}
        # Bumped by every change, so an iteration that sees one raises (as KVTable).
        self._version = 0
        self._name = _name
        self._c = _core if _core is not None else _default_core()
        # The store's lock for ``to_arrow``'s copy (set by Store.table).
        self._export_lock: Optional[LockOf] = None

    # -- Mapping surface -------------------------------------------------
    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, key: Key) -> Value:
        v = self._d.get(key, _MISSING) if type(key) in _KEY_TYPES else _MISSING
        if v is _MISSING:
            # The same refusal as a KVTable for a key that cannot exist
            # (bool, float, int outside int64, lone surrogate): True == 1
            # must not find key 1.
            self._c.encode_key(key)
            raise KeyError(key)
        return v

    def get(self, key: object, default: Any = None) -> Any:
        if type(key) not in _KEY_TYPES:
            return default
        return self._d.get(key, default)  # type: ignore[call-overload]

    def __contains__(self, key: object) -> bool:
        return type(key) in _KEY_TYPES and key in self._d

    def __iter__(self) -> Iterator[Key]:
        version = self._version
        for k in self._d:
            if self._version != version:
                raise RuntimeError("table changed during iteration")
            yield k
        if self._version != version:
            raise RuntimeError("table changed during iteration")

    # keys(), values() and items() are Mapping's own views.

    def to_dict(self) -> dict[Key, Value]:
        """A plain dict copy (shallow: its values are the live objects)."""
        return dict(self._d)

    def to_arrow(self) -> pyarrow.Table:
        """The table as a pyarrow.Table of ``key`` and ``value`` columns
        (docs/tables.md, "Data out"): one consistent state, the values
        converted (never shared with the table)."""
        from .export import dict_to_arrow

        return dict_to_arrow(self, self._export_lock)

    # __eq__ (against any mapping) is Mapping's own, and so __hash__ is None.

    def __repr__(self) -> str:
        return f"<DictTable {self._name!r} {len(self._d)} keys>"

    @property
    def memory_bytes(self) -> int:
        """The dict, its keys and its values (shallow sizes)."""
        from ._pure.kvtable import shallow_dict_bytes

        return shallow_dict_bytes(self._d)

    def _load_pairs(self, koff, kdata, voff, vdata, summed=True) -> None:
        """Fill from a snapshot's key and value columns (checked first)."""
        from ._pure.kvtable import checked_pairs

        for kb, vb in checked_pairs(koff, kdata, voff, vdata):
            self._put_raw(kb, vb)

    def _reserve(self, keys, arena_bytes=0, bulk=False) -> None:
        """A dict does not presize: a no-op, as in the pure KVTable."""

    def _loaded(self) -> None:
        """The end of a bulk load: nothing to do for a dict."""

    # -- raw surface for the cores ---------------------------------------
    def _get_raw(self, kb):
        v = self._d.get(self._c.decode_key(kb), _MISSING)
        return None if v is _MISSING else self._c.pack_value(v)

    def _put_raw(self, kb, vb) -> None:
        c = self._c
        try:
            key, value = c.decode_key(kb), c.unpack_value(vb)
        except Exception as e:
            # Only a log can hold bytes that do not decode (a KVTable would
            # find out at read time); as an apply error the open names the
            # file and LSN instead of failing without a position.
            raise _apply_error(self._name, "put", None, e) from e
        self._d[key] = value
        self._version += 1

    def _delete_raw(self, kb) -> bool:
        self._version += 1
        return self._d.pop(self._c.decode_key(kb), _MISSING) is not _MISSING

    def _incr_raw(self, kb, delta):
        key = self._c.decode_key(kb)
        cur = self._d.get(key, _MISSING)
        if cur is _MISSING:
            new = delta
        elif (type(cur) is int and type(delta) is int
              and F.INT64_MIN <= cur <= F.INT64_MAX
              and F.INT64_MIN <= cur + delta <= F.INT64_MAX):
            new = cur + delta  # the common counter, without a round trip
        else:
            # Everything else through the core's own rule on the re-encoded
            # value, so DictTable and KVTable cannot disagree (bool, uint64,
            # floats, non-numbers, overflow) and raise the same errors.
            new = self._c.unpack_value(self._c.incr_value(self._c.pack_value(cur), delta))
        self._d[key] = new
        self._version += 1
        return new

    def _clear(self) -> None:
        self._d.clear()
        self._version += 1

    def _items_raw(self) -> list:
        c = self._c
        return [(c.encode_key(k), c.pack_value(v)) for k, v in self._d.items()]

    def _digest(self) -> int:
        """The content digest (docs/FORMAT.md, "Digest") of the re-encoded
        entries: the same as a KVTable's holding the same content."""
        from ._hashing import pairs_digest

        return pairs_digest(self._items_raw(), len(self._d))


_KEY_TYPES = (str, bytes, int)


# ------------------------------------------------------------- StateType

class _UndoBase:
    """The msgpack bytes of a custom table's snapshot() before a batch."""

    __slots__ = ("data", "done", "__weakref__")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = False


class _Undo:
    """What ``_get_raw`` gives a batch's undo list for a custom table."""

    __slots__ = ("base",)

    def __init__(self, base: _UndoBase) -> None:
        self.base = base


class StateType(Ready):
    """Base of a custom table type: a Python object fed the table's records.

    Subclass it and name the class in ``Store.open(..., tables={"top": TopK})``;
    the store makes one instance with ``TopK()`` and ``store.table("top")``
    returns it. Override:

    - ``apply(op, key, value)``: one record. ``op`` is "put" (value: the
      decoded value), "delete" (value None), "incr" (value: the delta) or
      "clear" (key and value None). Called during replay and, on a live
      write, before the record is logged. Validate before you mutate: an
      exception means "this op does not apply", and is raised to the writer
      as InvalidOperationError (reason "apply_error", ``__cause__`` your
      exception) with nothing logged; during replay it fails the open.
    - ``apply_many(records)``: a list of (op, key, value); by default calls
      ``apply`` for each. Replay hands a class that overrides it each run of
      consecutive records of its table within a frame (up to a frame's
      records) in one call; live writes still go through ``apply``.
    - ``snapshot()``: the state as something msgpack encodes, and
      ``restore(data)`` (a classmethod) building an instance from it. A
      store.batch() that touches the table uses them to undo a failed batch.
    - ``__len__`` (optional): a size for ``inspect`` and HINTS; 0 by default.
    """

    # Internal state lives in slots so that a restore, which replaces the
    # instance's __dict__, never touches it.
    __slots__ = ("_rh_name", "_rh_core", "_rh_base")

    # Whether the class has its own apply_many (then replay batches records).
    _rh_many = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._rh_many = cls.apply_many is not StateType.apply_many

    def apply(self, op: str, key: Optional[Key], value: Value) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define apply(op, key, value)")

    def apply_many(self, records: Iterable[tuple[str, Optional[Key], Value]]) -> None:
        for op, key, value in records:
            self.apply(op, key, value)

    def snapshot(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define snapshot()")

    @classmethod
    def restore(cls, data: Any) -> StateType:
        raise NotImplementedError(f"{cls.__name__} does not define restore(data)")

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        # A StateType is a state object, not a container: an empty-looking
        # len() must not make it falsy.
        return True

    def to_arrow(self) -> pyarrow.Table:
        """ConfigError (reason ``no_export``): a custom state is the class's
        own, with no key/value form to export. A class may define its own."""
        from .export import refuse_custom

        raise refuse_custom(getattr(self, "_rh_name", None))

    def _digest(self) -> int:
        # The digest is defined over entries (docs/FORMAT.md); a custom
        # state's content is the class's own, so there is none to compute.
        raise ConfigError(f"table {getattr(self, '_rh_name', '?')!r} is a custom type "
                          f"({type(self).__name__}): a content digest is not defined for "
                          "custom tables (docs/tables.md)", reason="no_digest")

    # -- raw surface for the cores ---------------------------------------
    def _rh_bind(self, name: str, core) -> None:
        self._rh_name = name
        self._rh_core = core
        self._rh_base: Any = None

    def _rh_apply(self, op, kb, value) -> None:
        key = None
        try:
            if kb is not None:
                key = self._rh_core.decode_key(kb)
            self.apply(op, key, value)
        except Exception as e:
            # One exception type for "this op does not apply", as incr on a
            # KVTable: the scanners turn it into an apply_error stop (the open
            # then names the file and LSN), and a live write raises it with
            # nothing logged. BaseException (KeyboardInterrupt) passes as is.
            raise _apply_error(getattr(self, "_rh_name", "?"), op, key, e,
                               type(self).__name__) from e

    def _rh_apply_raw_many(self, raws) -> None:
        """Replay's path for a class with its own apply_many: ``raws`` is a
        list of (record op code, key bytes or None, value bytes), decoded
        here and handed over in one call. Any failure is an apply error
        naming the table and the number of records."""
        c = self._rh_core
        records = []
        try:
            for op, kb, vb in raws:
                key = c.decode_key(kb) if kb else None
                if op == F.OP_PUT:
                    records.append(("put", key, c.unpack_value(vb)))
                elif op == F.OP_DELETE:
                    records.append(("delete", key, None))
                elif op == F.OP_INCR:
                    records.append(("incr", key, c.decode_number(vb)))
                elif op == F.OP_CLEAR:
                    records.append(("clear", None, None))
                else:  # OP_CUSTOM: [op name, value]
                    name, value = c.unpack_value(vb)
                    if type(name) is not str:
                        raise ValueError("a custom op's name is a str")
                    records.append((name, key, value))
            self.apply_many(records)
        except Exception as e:
            raise _apply_error(self._rh_name, f"apply_many of {len(raws)} records", None, e,
                               type(self).__name__) from e

    def _put_raw(self, kb, vb) -> None:
        if type(vb) is _Undo:
            return self._rh_undo(vb)
        try:
            value = self._rh_core.unpack_value(vb)
        except Exception as e:
            raise _apply_error(self._rh_name, "put", None, e, type(self).__name__) from e
        self._rh_apply("put", kb, value)

    def _delete_raw(self, kb) -> bool:
        self._rh_apply("delete", kb, None)
        return True

    def _custom_raw(self, kb, vb) -> None:
        """A record of ``store.write``: value is msgpack [op name, value]."""
        try:
            op, value = self._rh_core.unpack_value(vb)
            if type(op) is not str:
                raise ValueError("a custom op's name is a str")
        except Exception as e:
            raise _apply_error(self._rh_name, "custom", None, e, type(self).__name__) from e
        self._rh_apply(op, kb, value)

    def _incr_raw(self, kb, delta) -> None:
        self._rh_apply("incr", kb, delta)

    def _clear(self) -> None:
        self._rh_apply("clear", None, None)

    # A batch (commit, in both cores) asks for each key's old value before
    # changing it, and on failure puts the old values back in reverse order.
    # An opaque apply cannot be inverted, so the "old value" is a token for
    # the whole state before the batch: one snapshot per batch, shared by
    # every token of that batch. The commit's undo list holds the only strong
    # references, so when the batch ends (committed or undone) the shared
    # base is freed and the weak reference dies: the next batch snapshots
    # afresh, never restoring a state older than its own start.
    def _rh_token(self) -> _Undo:
        ref = self._rh_base
        base = ref() if ref is not None else None
        if base is None or base.done:
            try:
                data = self._rh_core.pack_value(self.snapshot())
            except Exception as e:
                raise InvalidOperationError(
                    f"table {self._rh_name!r}: a batch needs {type(self).__name__}.snapshot() "
                    f"and restore() to be undoable ({type(e).__name__}: {e})",
                    reason="apply_error") from e
            base = _UndoBase(data)
            self._rh_base = weakref.ref(base)
        return _Undo(base)

    def _get_raw(self, kb):
        return self._rh_token()

    def _items_raw(self) -> list:
        return [(b"", self._rh_token())]

    def _rh_undo(self, token: _Undo) -> None:
        base = token.base
        if base.done:
            return  # an earlier token of this batch already restored it
        base.done = True
        self._rh_base = None
        fresh = type(self).restore(self._rh_core.unpack_value(base.data))
        if type(fresh) is not type(self):
            raise TypeError(f"{type(self).__name__}.restore returned {type(fresh).__name__}")
        # In place: the store, the LogBuffer and the caller all hold this
        # very object, so the restored state must move into it.
        if hasattr(self, "__dict__"):
            self.__dict__.clear()
            self.__dict__.update(getattr(fresh, "__dict__", {}))
        for cls in type(self).__mro__:
            if cls is StateType:
                break
            slots = cls.__dict__.get("__slots__", ())
            for slot in ((slots,) if isinstance(slots, str) else slots):
                if slot in ("__dict__", "__weakref__"):
                    continue
                if hasattr(fresh, slot):
                    setattr(self, slot, getattr(fresh, slot))
                elif hasattr(self, slot):
                    delattr(self, slot)


def _apply_error(name, op, key, exc, type_name="DictTable") -> InvalidOperationError:
    where = f"{type_name}.apply({op!r}, {_short(key)})" if key is not None else \
        f"{type_name}.apply({op!r})"
    return InvalidOperationError(
        f"table {name!r}: {where} raised {type(exc).__name__}: {exc}", reason="apply_error")


# ------------------------------------------------- stand-ins for readers

class OpaqueTable:
    """A custom table read without its class (inspect, digest): records are
    checked but not interpreted; it tracks which keys the records leave
    present, so ``len`` says how many keys the log addresses. Restored from
    a snapshot (whose data only the class can read), it cannot know its
    keys: ``keys_known`` is then False."""

    __slots__ = ("_keys", "_name", "keys_known")

    def __init__(self, name: str = "", keys_known: bool = True) -> None:
        self._keys: set = set()
        self._name = name
        self.keys_known = keys_known

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        return iter(())

    @property
    def memory_bytes(self) -> int:
        return sys.getsizeof(self._keys) + sum(sys.getsizeof(k) for k in self._keys)

    def _rh_bind(self, name: str, core) -> None:
        self._name = name

    def _put_raw(self, kb, vb) -> None:
        self._keys.add(bytes(kb))

    def _incr_raw(self, kb, delta) -> None:
        self._keys.add(bytes(kb))

    def _delete_raw(self, kb) -> bool:
        self._keys.discard(bytes(kb))
        return True

    def _custom_raw(self, kb, vb) -> None:
        """A custom op: meaningful only to the class, which a reader lacks."""

    def _clear(self) -> None:
        self._keys.clear()
        # After a clear the table holds exactly what the records leave.
        self.keys_known = True

    def _digest(self) -> int:
        raise ConfigError(f"table {self._name!r} is a custom type: a content digest is not "
                          "defined for custom tables (docs/tables.md)", reason="no_digest")

    def __repr__(self) -> str:
        return f"<custom table {self._name!r} (no class)>"


class OpaqueRestorer:
    """What a reader without the class loads a custom table's snapshot with:
    ``restore`` keeps nothing of the data (only the class can read it)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def restore(self, data) -> OpaqueTable:
        return OpaqueTable(self._name, keys_known=False)


class RefusedTable:
    """A table whose kind in the log differs from what ``tables=`` asks for.

    A declaration cannot raise ConfigError itself (the scanners report any
    error there as a damaged frame), so the registry hands the scanner this
    object and its first record raises the ConfigError, which the scanners
    let through: the open fails with it, and a live write is refused.
    """

    __slots__ = ("_error",)

    def __init__(self, error: ConfigError) -> None:
        self._error = error

    def __len__(self) -> int:
        return 0

    def _refuse(self, *args):
        raise ConfigError(self._error.detail, reason=self._error.reason)

    _put_raw = _delete_raw = _incr_raw = _clear = _get_raw = _items_raw = _refuse

    def __repr__(self) -> str:
        return f"<refused table: {self._error.detail}>"


# ------------------------------------------------------ the tables= option

KIND_NAMES = {F.KIND_KV: "kv", F.KIND_DICT: "dict", F.KIND_CUSTOM: "custom",
              F.KIND_NUMERIC: "numeric"}


def resolve_kinds(tables: Optional[TableKinds]) -> dict[str, tuple[int, Any]]:
    """{name: (kind code, StateType subclass, NumericTable declaration or
    None)} from ``tables=``.

    ConfigError for anything but a mapping of valid table names to
    ``DictTable``, a ``NumericTable(...)`` or a StateType subclass (the
    class, not an instance).
    """
    from .numeric import NumericTable

    if tables is None:
        return {}
    if not isinstance(tables, Mapping):
        raise ConfigError("tables= must be a mapping of table name -> DictTable or a "
                          "StateType subclass")
    out: dict[str, tuple[int, Any]] = {}
    core = _default_core()
    for name, kind in tables.items():
        core.check_table_name(name)
        if kind is DictTable:
            out[name] = (F.KIND_DICT, None)
        elif isinstance(kind, NumericTable):
            out[name] = (F.KIND_NUMERIC, kind)
        elif kind is NumericTable:
            raise ConfigError(f"tables[{name!r}]: NumericTable needs its columns and rows: "
                              "NumericTable({'hits': 'int64'}, rows=1000)")
        elif isinstance(kind, type) and issubclass(kind, StateType) and kind is not StateType:
            out[name] = (F.KIND_CUSTOM, kind)
        elif isinstance(kind, StateType):
            raise ConfigError(f"tables[{name!r}]: pass the class {type(kind).__name__}, "
                              f"not an instance (the store makes the instance)")
        else:
            raise ConfigError(f"tables[{name!r}] must be rehydrate.DictTable, a "
                              f"rehydrate.NumericTable(...) or a rehydrate.StateType "
                              f"subclass, not {_short(kind)}")
    return out
