"""``Ready``: the base of every table object the store hands out (DictTable,
StateType, NumericTable), below both kinds.py and numeric.py."""

from __future__ import annotations

__all__ = ["Ready"]


class Ready:
    """``ready`` / ``wait_ready`` of a table object the store hands out: it
    is given only once the table's state is in (during a background open a
    table not yet in is a view that waits; docs/warmup.md)."""

    __slots__ = ()

    @property
    def ready(self) -> bool:
        return True

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True
