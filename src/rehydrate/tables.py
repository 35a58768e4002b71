"""The registry of a store's tables: names, ids, kinds and live table objects.

Table ids are what records carry on disk; names are what users see. Every
frame declares the ids it uses (docs/FORMAT.md), and the registry checks
those declarations agree across the whole log: one id, one name, one kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _format as F
from .errors import CorruptionError

KIND_NAMES = {F.KIND_KV: "kv"}


@dataclass
class TableInfo:
    name: str
    tid: int
    kind: int
    table: Any  # the core's KVTable, or None in a registry that only checks


class TableRegistry:
    """Name <-> id <-> table. ``declare`` is the callback the replay scanner uses.

    With ``materialize=False`` (verify) it checks declarations but creates no
    tables, so verifying costs no memory for state.
    """

    def __init__(self, core, materialize: bool = True, size_hints=None) -> None:
        self._core = core
        self._materialize = materialize
        # name -> (keys, arena bytes) to reserve when the table first appears.
        self._size_hints = size_hints or {}
        self.by_name: dict[str, TableInfo] = {}
        self.by_id: dict[int, TableInfo] = {}
        # (tid, kind, name bytes) of every table, in creation order.
        self.order: list[tuple[int, int, bytes]] = []

    def _add(self, name: str, tid: int, kind: int) -> TableInfo:
        table = None
        if self._materialize:
            table = self._core.KVTable()
            hint = self._size_hints.get(name)
            if hint is not None:
                table._reserve(*hint)
        info = TableInfo(name, tid, kind, table)
        self.by_name[name] = info
        self.by_id[tid] = info
        self.order.append((tid, kind, name.encode("utf-8")))
        return info

    def declare(self, tid: int, kind: int, name_bytes: bytes):
        """Bind a declaration from the log; CorruptionError if it contradicts one seen before."""
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
            info = self._add(name, tid, kind)
        elif info.name != name or info.kind != kind:
            raise CorruptionError(
                f"table id {tid} declared as {name!r}, earlier as {info.name!r}",
                reason="bad_declaration")
        return info.table

    def create(self, name: str) -> TableInfo:
        """A new table for a first write; its id is one above any id in use."""
        self._core.check_table_name(name)
        if len(self.by_id) > F.MAX_TABLE_ID:
            from .errors import ConfigError

            raise ConfigError(f"a store holds at most {F.MAX_TABLE_ID + 1} tables")
        tid = max(self.by_id, default=-1) + 1
        if tid > F.MAX_TABLE_ID:
            tid = next(i for i in range(F.MAX_TABLE_ID + 1) if i not in self.by_id)
        return self._add(name, tid, F.KIND_KV)

    def drop_if_new(self, info: TableInfo) -> None:
        """Forget a table created for a write that then failed before logging."""
        if self.order and self.order[-1][0] == info.tid and len(info.table or ()) == 0:
            self.order.pop()
            del self.by_name[info.name]
            del self.by_id[info.tid]

    def decls(self, tids) -> list[tuple[int, int, bytes]]:
        """(tid, kind, name bytes) of each table id, as frames declare them."""
        return [(tid, self.by_id[tid].kind, self.by_id[tid].name.encode("utf-8")) for tid in tids]

    def names(self) -> list[str]:
        return [self.by_id[tid].name for tid, _, _ in self.order]
