"""The registry of a store's tables: names, ids, kinds and live table objects.

Table ids are what records carry on disk; names are what users see. Every
frame declares the ids it uses (docs/FORMAT.md), and the registry checks
those declarations agree across the whole log: one id, one name, one kind.

Kinds (docs/tables.md): a store's registry is given ``kinds`` (from
``Store.open(tables=...)``) and makes each table the kind asked for; a log
that declares another kind for a name is a ConfigError, since replaying it
as something else would change what the records mean. A reader's registry
(``kinds=None``: verify, inspect, dump, digest) takes the log's word and needs
no user code: a custom table becomes an ``OpaqueTable``, unless the reader is
given the table's class (``classes``, the CLI's ``--tables``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from . import _format as F
from .errors import ConfigError, CorruptionError
from .kinds import KIND_NAMES, DictTable, OpaqueRestorer, OpaqueTable, RefusedTable
from .numeric import NumericTable


@dataclass
class TableInfo:
    name: str
    tid: int
    kind: int
    # The core's KVTable, a DictTable, a NumericTable, a StateType instance
    # (or a reader's OpaqueTable), or None in a registry that only checks.
    table: Any
    # A numeric table's schema as its declarations carry it (msgpack), else b"".
    schema: bytes = b""


class TableRegistry:
    """Name <-> id <-> table. ``declare`` is the callback the replay scanner uses.

    With ``materialize=False`` (verify) it checks declarations but creates no
    tables, so verifying costs no memory for state.
    """

    def __init__(self, core, materialize: bool = True, size_hints=None,
                 kinds: Optional[dict] = None, versions=None,
                 classes: Optional[dict] = None) -> None:
        self._core = core
        # A store's migrations.Versions: each table's version now, and the
        # upcasters for records of older ones. None: versions are not read.
        self.versions = versions
        self._upcasting: dict = {}  # (tid, version) -> migrations.Upcasting
        self._materialize = materialize
        # name -> (kind, StateType subclass or None), from kinds.resolve_kinds;
        # None: a reader, which takes each kind from the log.
        self._kinds = kinds
        # A reader's StateType classes by table name (used for custom tables
        # only; every other kind still comes from the log).
        self._classes = dict(classes or {})
        # name -> (keys, arena bytes) to reserve when the table first appears.
        self._size_hints = size_hints or {}
        self.by_name: dict[str, TableInfo] = {}
        self.by_id: dict[int, TableInfo] = {}
        # (tid, kind, name bytes) of every table, in creation order.
        self.order: list[tuple[int, int, bytes]] = []

    def _wanted(self, name: str):
        """(kind, class or NumericTable declaration) ``tables=`` asks for
        ``name``: KV unless named."""
        if self._kinds is None:
            return None, self._classes.get(name)
        return self._kinds.get(name, (F.KIND_KV, None))

    def _schema_for(self, name: str, kind: int) -> bytes:
        """The schema a table a write creates declares: ``tables=``'s for a
        numeric table, else b"" (other kinds have none)."""
        spec = self._wanted(name)[1]
        return spec._schema_bytes() if kind == F.KIND_NUMERIC else b""

    def _make(self, name: str, kind: int, schema: bytes = b"", hinted: bool = True):
        """A new, empty table of ``kind``; ConfigError if it cannot be made.
        ``hinted``: presize it from the size hints (a replay will fill it)."""
        if kind == F.KIND_NUMERIC:
            return NumericTable._from_schema(schema)._fresh(name)
        if kind == F.KIND_KV:
            table = self._core.KVTable()
            hint = self._size_hints.get(name) if hinted else None
            if hint is not None:
                table._reserve(*hint)
            return table
        if kind == F.KIND_DICT:
            return DictTable(self._core, name)
        cls = self._wanted(name)[1]
        if cls is None:
            return OpaqueTable(name)  # a reader: no class, no interpretation
        try:
            table = cls()
        except Exception as e:
            raise ConfigError(f"table {name!r}: {cls.__name__}() failed: "
                              f"{type(e).__name__}: {e}") from e
        table._rh_bind(name, self._core)
        return table

    def _add(self, name: str, tid: int, kind: int, from_log: bool = False,
             schema: bytes = b"") -> TableInfo:
        table = None
        if from_log and kind == F.KIND_NUMERIC:
            NumericTable._from_schema(schema)  # CorruptionError if it is none
        elif not from_log:
            schema = self._schema_for(name, kind)
        if self._materialize:
            want, spec = self._wanted(name)
            if from_log and want is not None and kind != want:
                table = RefusedTable(self._mismatch(name, kind, want))
            elif from_log and isinstance(spec, NumericTable) and \
                    schema != spec._schema_bytes():
                table = RefusedTable(self._schema_mismatch(name, schema, spec))
            elif from_log:
                try:
                    table = self._make(name, kind, schema)
                except ConfigError as e:
                    table = RefusedTable(e)
            else:
                table = self._make(name, kind, schema)
        info = TableInfo(name, tid, kind, table, schema)
        self.by_name[name] = info
        self.by_id[tid] = info
        self.order.append((tid, kind, name.encode("utf-8")))
        return info

    def declare(self, tid: int, kind: int, name_bytes: bytes, schema: bytes = b"",
                version: int = 1):
        """Bind a declaration from the log; CorruptionError if it contradicts
        one seen before. The table to apply to: the table itself, or for
        records of an older version an upcasting stand-in (migrations.py)."""
        info = self._declare(tid, kind, name_bytes, schema)
        if self.versions is None or info.table is None:
            return info.table
        key = (tid, version)
        target = self._upcasting.get(key)
        if target is None:
            target = self._upcasting[key] = self._reader(info, version)
        return target

    def _reader(self, info: TableInfo, version: int):
        from .migrations import Upcasting

        try:
            fns = self.versions.reader(info.name, version)
            if fns is not None and info.kind not in (F.KIND_KV, F.KIND_DICT):
                raise ConfigError(f"table {info.name!r} has version {version} records; "
                                  "upcasters are for kv and dict tables", reason="upcaster_kind")
        except ConfigError as e:
            return RefusedTable(e)
        if fns is None:
            return info.table
        return Upcasting(info.table, info.name, version, fns, self._core)

    def version(self, name: str) -> int:
        return self.versions.current(name) if self.versions is not None else 1

    def _declare(self, tid: int, kind: int, name_bytes: bytes, schema: bytes = b""):
        try:
            name = bytes(name_bytes).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptionError("table name is not UTF-8", reason="bad_declaration") from None
        info = self.by_id.get(tid)
        if info is None:
            other = self.by_name.get(name)
            if other is not None:
                raise CorruptionError(
                    f"table {name!r} declared as id {tid}, earlier as id {other.tid}",
                    reason="bad_declaration")
            return self._add(name, tid, kind, from_log=True, schema=bytes(schema))
        elif info.name != name or info.kind != kind:
            raise CorruptionError(
                f"table id {tid} declared as {name!r}, earlier as {info.name!r}",
                reason="bad_declaration")
        elif info.schema != bytes(schema):
            raise CorruptionError(f"numeric table {name!r} declared with another schema",
                                  reason="bad_declaration")
        return info

    def create(self, name: str) -> TableInfo:
        """A new table for a first write; its id is one above any id in use."""
        self._core.check_table_name(name)
        if len(self.by_id) > F.MAX_TABLE_ID:
            raise ConfigError(f"a store holds at most {F.MAX_TABLE_ID + 1} tables")
        tid = max(self.by_id, default=-1) + 1
        if tid > F.MAX_TABLE_ID:
            tid = next(i for i in range(F.MAX_TABLE_ID + 1) if i not in self.by_id)
        kind = self._wanted(name)[0] or F.KIND_KV
        return self._add(name, tid, kind)

    def _mismatch(self, name: str, logged: int, want: int) -> ConfigError:
        logged_name = KIND_NAMES.get(logged, str(logged))
        named = self._kinds is not None and name in self._kinds
        if logged == F.KIND_CUSTOM and not named:
            detail = (f"table {name!r} is a custom table (kind {logged}) in the log, but "
                      f"tables= gives no StateType class for it; pass "
                      f"tables={{{name!r}: YourStateType}}")
        else:
            asked = (f"tables= asks for {KIND_NAMES[want]}" if named
                     else "tables= does not name it (so it would be kv)")
            detail = (f"table {name!r} is {logged_name} (kind {logged}) in the log, but "
                      f"{asked}; a table keeps the kind it was created with")
        return ConfigError(detail, reason="table_kind")

    def _schema_mismatch(self, name: str, logged: bytes, spec: NumericTable) -> ConfigError:
        return ConfigError(f"numeric table {name!r} has schema "
                           f"{NumericTable._from_schema(logged).schema()} in the log, but "
                           f"tables= asks for {spec.schema()}; a table keeps its schema",
                           reason="table_kind")

    def drop_if_new(self, info: TableInfo) -> None:
        """Forget a table created for a write that then failed before logging."""
        if not (self.order and self.order[-1][0] == info.tid):
            return
        # A custom table's failed apply may have changed the instance, and
        # its len() proves nothing: it goes with the write that failed.
        if info.kind == F.KIND_CUSTOM or len(info.table or ()) == 0:
            self.order.pop()
            del self.by_name[info.name]
            del self.by_id[info.tid]

    def snapshot_table(self, name: str, tid: int, kind: int, schema: bytes = b""):
        """For a snapshot being loaded: an empty table to fill, or for a custom
        table its class (to ``restore``), or for a numeric table its
        declaration (from ``schema``, checked). ConfigError on a kind or
        schema mismatch."""
        want, spec = self._wanted(name)
        if want is not None and kind != want:
            raise self._mismatch(name, kind, want)
        if kind == F.KIND_CUSTOM:
            if spec is not None:
                return spec
            if want is None:
                # A reader without the class: the snapshot's data cannot be
                # interpreted, only carried (keys unknown, no digest).
                return OpaqueRestorer(name)
            raise self._mismatch(name, kind, F.KIND_KV)
        if kind == F.KIND_NUMERIC:
            found = NumericTable._from_schema(schema)
            if isinstance(spec, NumericTable) and found._schema_bytes() != spec._schema_bytes():
                raise self._schema_mismatch(name, found._schema_bytes(), spec)
            return found
        if kind not in (F.KIND_KV, F.KIND_DICT):
            raise CorruptionError(f"snapshot table {name!r} has unknown kind {kind}",
                                  reason="bad_snapshot")
        # Not presized from the hints: the snapshot's loader sizes it itself,
        # for a bulk load (no huge pages until it is in; kvcore.h).
        return self._make(name, kind, hinted=False)

    def add_loaded(self, name: str, tid: int, kind: int, table) -> None:
        """Register a table loaded from a snapshot (before the log replays)."""
        if name in self.by_name or tid in self.by_id or not 0 <= tid <= F.MAX_TABLE_ID:
            raise CorruptionError(f"snapshot lists table {name!r} / id {tid} twice or out of "
                                  "range", reason="bad_snapshot")
        if kind == F.KIND_CUSTOM:
            table._rh_bind(name, self._core)
        schema = table._schema_bytes() if kind == F.KIND_NUMERIC else b""
        info = TableInfo(name, tid, kind, table, schema)
        self.by_name[name] = info
        self.by_id[tid] = info
        self.order.append((tid, kind, name.encode("utf-8")))

    def decls(self, tids) -> list[tuple]:
        """(tid, kind, name bytes, schema[, version]) of each table id, as
        frames declare them (the version only when it is not 1)."""
        out = []
        for tid in tids:
            info = self.by_id[tid]
            decl = (tid, info.kind, info.name.encode("utf-8"), info.schema)
            version = self.version(info.name)
            out.append(decl if version == 1 else decl + (version,))
        return out

    def names(self) -> list[str]:
        return [self.by_id[tid].name for tid, _, _ in self.order]

    # What the open and the migrate phase do with a registry, as methods, so
    # that neither reaches into its fields.
    def new_table(self, name: str, kind: int):
        """A new, empty table of ``kind`` for ``name``, not registered (an
        upcast or migrated copy that replaces the table's state)."""
        return self._make(name, kind, hinted=False)

    def kind_for(self, name: str) -> int:
        """The kind ``name`` has, or would have if a write created it."""
        info = self.by_name.get(name)
        return info.kind if info is not None else (self._wanted(name)[0] or F.KIND_KV)

    def replace_state(self, name: str, table, version: int) -> TableInfo:
        """Make ``table`` the state of ``name`` at ``version`` (creating the
        table if the log never named it); the readers of older versions
        are dropped, as they were for the old state."""
        info = self.by_name.get(name)
        if info is None:
            info = self.create(name)
        info.table = table
        self._upcasting.clear()
        self.versions.stored[name] = version
        return info
