"""Writes and reads during a background open (docs/warmup.md, "Background open").

``Store.open_background`` returns at once; the open runs on a thread. Once
it knows where the log ends (a checking pass over the log after the
snapshot, which also names every table in it), the store takes writes:

- a write to a table whose state is in (a *ready* table) applies at once,
  as on any open store;
- a blind write (put, delete, clear) to a table not yet ready is logged at
  once, with its LSN, and its effect is kept here, in a ``PendingSink``, in
  LSN order; when the replay has passed the table's last record in the
  log, the sink's ops are applied to the table and it becomes ready;
- a write that reads the state (an incr, a custom table's op) waits for its
  table to be ready; a batch carrying source offsets, ``store.consume`` and
  ``store.offsets`` wait for the whole replay.

Pending writes are bounded (``max_pending_records``, ``max_pending_bytes``):
a writer beyond them waits up to ``admission_timeout_s`` and then gets a
BackpressureError, with nothing logged. Readers of a table not yet ready get
a ``TableView`` whose reads wait for it.

All state here is guarded by the store's ``_lock`` (the condition ``cv``
is built on it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Optional

from .errors import BackpressureError, ConfigError

DEFAULT_MAX_PENDING_RECORDS = 1_000_000
DEFAULT_MAX_PENDING_BYTES = 256 << 20
DEFAULT_ADMISSION_TIMEOUT_S = 30.0
_PUT, _DELETE, _CLEAR = 1, 2, 4


class NotReady(Exception):
    """Internal: the op needs its table's state, which is not in yet."""


def check_limits(max_pending_records, max_pending_bytes, admission_timeout_s) -> None:
    for what, v in (("max_pending_records", max_pending_records),
                    ("max_pending_bytes", max_pending_bytes)):
        if type(v) is not int or v < 1:
            raise ConfigError(f"{what} must be an int >= 1, not {v!r}")
    if type(admission_timeout_s) not in (int, float) or not 0 <= admission_timeout_s < float("inf"):
        raise ConfigError(f"admission_timeout_s must be a number of seconds >= 0, "
                          f"not {admission_timeout_s!r}")


class PendingSink:
    """Stands in for a table not yet ready on the write path: the core's
    LogBuffer logs each op as usual and hands the op here instead of to the
    table. Numeric puts are checked against the real table's schema now (so
    a bad one is refused before it is logged); ops that need the state
    raise NotReady, and the writer waits."""

    _pending = True

    def __init__(self, intake: "Intake", table, kind_custom: bool) -> None:
        self._intake = intake
        self._table = table
        self._custom = kind_custom
        self.ops: list = []
        self.nbytes = 0
        self._check = getattr(table, "_check_put_raw", None)

    def _add(self, op, kb=b"", vb=b"") -> None:
        if self._custom:
            raise NotReady()
        self.ops.append((op, kb, vb))
        n = len(kb) + len(vb)
        self.nbytes += n
        self._intake.records += 1
        self._intake.nbytes += n

    def _put_raw(self, kb, vb) -> None:
        if self._custom:
            raise NotReady()
        if self._check is not None:
            self._check(kb, vb)
        self._add(_PUT, bytes(kb), bytes(vb))

    def _delete_raw(self, kb) -> bool:
        self._add(_DELETE, bytes(kb))
        return True

    def _clear(self) -> None:
        self._add(_CLEAR)

    def _incr_raw(self, kb, delta):
        raise NotReady()

    def _custom_raw(self, kb, vb):
        if not self._custom:
            # What the real table says to a custom op that is not its kind.
            from ._custom import apply_custom

            apply_custom(self._table, kb, vb)
        raise NotReady()

    # A batch's undo asks these before it applies; the store undoes a failed
    # batch on a sink by cutting its op list back (``truncate``).
    def _get_raw(self, kb):
        return None

    def _items_raw(self) -> list:
        return []

    def truncate(self, n: int) -> None:
        for op, kb, vb in self.ops[n:]:
            self.nbytes -= len(kb) + len(vb)
            self._intake.records -= 1
            self._intake.nbytes -= len(kb) + len(vb)
        del self.ops[n:]

    def apply_to(self, table) -> None:
        """Apply the ops, in LSN order, to the table (its state is now in)."""
        for op, kb, vb in self.ops:
            if op == _PUT:
                table._put_raw(kb, vb)
            elif op == _DELETE:
                table._delete_raw(kb)
            else:
                table._clear()
        self._intake.records -= len(self.ops)
        self._intake.nbytes -= self.nbytes
        self.ops, self.nbytes = [], 0


class Intake:
    """What a background open knows about writes and table readiness."""

    def __init__(self, lock: threading.Lock, max_records: int, max_bytes: int,
                 timeout_s: float) -> None:
        self.cv = threading.Condition(lock)
        self.max_records, self.max_bytes, self.timeout_s = max_records, max_bytes, timeout_s
        self.open = False          # the log's end is known: writes are taken
        self.all_ready = False     # every table's state is in
        self.ready: set = set()    # names of the tables whose state is in
        self.waiting: dict = {}    # name -> last LSN of its records in the log
        self.sinks: dict = {}      # name -> PendingSink
        self.records = 0           # pending (logged, not yet applied) ops
        self.nbytes = 0
        self.early_s: Optional[float] = None  # when writes were first taken

    def sink(self, name: str, table, kind_custom: bool) -> PendingSink:
        s = self.sinks.get(name)
        if s is None:
            s = self.sinks[name] = PendingSink(self, table, kind_custom)
        return s

    def full(self) -> bool:
        return self.records >= self.max_records or self.nbytes >= self.max_bytes


class Deadline:
    """One writer's wait for admission: ``wait(why)`` blocks on the intake's
    condition (the store's lock held) until notified or the deadline; past
    the deadline it raises BackpressureError saying why."""

    __slots__ = ("intake", "at", "path")

    def __init__(self, intake: Intake, path: str) -> None:
        self.intake, self.path = intake, path
        self.at = time.monotonic() + intake.timeout_s

    def wait(self, why: str) -> None:
        left = self.at - time.monotonic()
        if left <= 0:
            raise BackpressureError(f"write refused after {self.intake.timeout_s} s: {why}",
                                    path=self.path)
        self.intake.cv.wait(left)


class TableView(Mapping):
    """``store.table(name)`` for a table not yet ready in a background open.

    ``ready`` says whether its state is in; ``wait_ready(timeout)`` waits for
    it (True) or the timeout (False). Every read waits for the table first,
    then reads the table itself (so a view taken early stays correct; take
    ``store.table(name)`` again once ready for the fastest reads). A read
    raises what the open failed with, or KeyError for a table the log turned
    out not to have.
    """

    def __init__(self, store, name: str) -> None:
        self._store = store
        self._name = name

    @property
    def ready(self) -> bool:
        return self._store._table_ready(self._name)

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        return self._store._wait_table(self._name, timeout)

    def _table(self):
        self._store._wait_table(self._name, None)
        return self._store.table(self._name)

    def __getitem__(self, key):
        return self._table()[key]

    def __len__(self) -> int:
        return len(self._table())

    def __iter__(self):
        return iter(self._table())

    def __contains__(self, key) -> bool:
        return key in self._table()

    def get(self, key, default=None):
        return self._table().get(key, default)

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._table(), attr)

    def __repr__(self) -> str:
        return f"<table {self._name!r} of {self._store.path!r}: " \
               f"{'ready' if self.ready else 'not ready'}>"
