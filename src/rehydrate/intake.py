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

Every wait of a write for admission (here, and a handoff's hold in
roles.py) goes through ``admission_wait``, which a caller on another
thread's behalf can end: ``call_with(WriteContext(abort), store.put, ...)``
runs a write whose waits raise ``Aborted`` once ``abort.abort()`` is called,
before anything is applied or logged (rehydrate.aio's cancellation,
docs/asyncio.md). A ``WriteContext`` may also defer the step that makes a
write durable (an fsync under ``sync="always"``, the flush of a full
buffer) to its caller, who runs it where blocking is harmless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar

from .errors import BackpressureError, ConfigError

DEFAULT_MAX_PENDING_RECORDS = 1_000_000
DEFAULT_MAX_PENDING_BYTES = 256 << 20
DEFAULT_ADMISSION_TIMEOUT_S = 30.0
_PUT, _DELETE, _CLEAR = 1, 2, 4
T = TypeVar("T")


class NotReady(Exception):
    """Internal: the op needs its table's state, which is not in yet."""


class Aborted(Exception):
    """Internal: the write's ``Abort`` was set while (or before) it waited for
    admission; nothing of it was applied or logged."""


class Abort:
    """A write's way out of its waits for admission. ``abort()`` wakes the
    write if it waits (it then raises ``Aborted``); a write not yet waiting
    raises ``Aborted`` at its first wait. A write already past its waits
    (applied, handed to the log) is not affected: it completes."""

    __slots__ = ("aborted", "_cv")

    def __init__(self, aborted: bool = False) -> None:
        self.aborted = aborted
        self._cv: Optional[threading.Condition] = None  # what the write waits on now

    def abort(self) -> None:
        # Set before reading ``_cv``; the waiter sets ``_cv`` before it looks
        # at ``aborted`` (with the condition's lock held): one of the two sees
        # the other, so the write never sleeps through its abort.
        self.aborted = True
        cv = self._cv
        if cv is not None:
            with cv:
                cv.notify_all()


# An Abort that is set from the start: a write under it raises Aborted
# instead of waiting at all (a caller that must not block tries this first).
NEVER_WAIT = Abort(aborted=True)


class WriteContext:
    """How the writes of one call on this thread behave (``call_with``):
    ``abort`` ends their admission waits; with ``defer_durability``, what
    would make a write durable, or flush a full buffer, after it is applied
    is left in ``deferred`` (a callable, or None when nothing is due) for the
    caller to run, instead of being run on this thread."""

    __slots__ = ("abort", "defer_durability", "deferred")

    def __init__(self, abort: Optional[Abort] = None, defer_durability: bool = False) -> None:
        self.abort = abort
        self.defer_durability = defer_durability
        self.deferred: Optional[Callable[[], None]] = None


_local = threading.local()


def current_context() -> Optional[WriteContext]:
    """The ``WriteContext`` of the call running on this thread, if any."""
    context: Optional[WriteContext] = getattr(_local, "context", None)
    return context


def call_with(context: WriteContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` (a store's write call) with ``context`` as the
    context of its writes on this thread."""
    local = _local
    previous = getattr(local, "context", None)
    local.context = context
    try:
        return fn(*args, **kwargs)
    finally:
        local.context = previous


def admission_wait(cv: threading.Condition, timeout: Optional[float]) -> None:
    """Wait on ``cv`` (its lock held) for up to ``timeout`` seconds, as a
    write held for admission does: raises Aborted, at once or on waking,
    when this thread's call was aborted."""
    context = current_context()
    abort = context.abort if context is not None else None
    if abort is None:
        cv.wait(timeout)
        return
    if abort.aborted:
        raise Aborted()  # (NEVER_WAIT, shared by threads, is never given a _cv)
    abort._cv = cv
    try:
        if abort.aborted:
            raise Aborted()
        cv.wait(timeout)
        if abort.aborted:
            raise Aborted()
    finally:
        abort._cv = None


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

    def sink(self, name: str, table, kind_custom: bool) -> PendingSink:
        s = self.sinks.get(name)
        if s is None:
            s = self.sinks[name] = PendingSink(self, table, kind_custom)
        return s

    def full(self) -> bool:
        return self.records >= self.max_records or self.nbytes >= self.max_bytes

    # Readiness. The methods that change it run with the store's lock held
    # and are given the store's registry and write targets (None: the store
    # is closed or failed, and takes no writes).
    def mark_ready(self, name: str, registry, targets: Optional[dict]) -> None:
        """``name``'s state is in: apply what waits for it."""
        info = registry.by_name[name]
        sink = self.sinks.pop(name, None)
        if sink is not None:
            sink.apply_to(info.table)
        self.waiting.pop(name, None)
        self.ready.add(name)
        if targets is not None:
            targets[name] = (info.table, info.tid)

    def take_writes(self, registry, last_lsn: dict, targets: Optional[dict]) -> None:
        """The log's end is known: take writes. A table with records in
        the log still to replay (``last_lsn``: name -> the LSN by which
        they are all in) waits for them; the others are ready now."""
        for name in registry.names():
            if name in last_lsn:
                self.waiting[name] = last_lsn[name]
            else:
                self.mark_ready(name, registry, targets)
        self.open = True
        self.cv.notify_all()

    def replayed_through(self, next_lsn: int, registry, targets: Optional[dict]) -> None:
        """The replay is past ``next_lsn - 1``: tables whose records are
        all in get their pending writes and become ready."""
        for name in [n for n, last in self.waiting.items() if last < next_lsn]:
            self.mark_ready(name, registry, targets)
        self.cv.notify_all()

    def all_in(self, registry, targets: Optional[dict]) -> None:
        """The replay is over: every table's state is in."""
        for name in registry.names():
            if name not in self.ready:
                self.mark_ready(name, registry, targets)
        self.open = self.all_ready = True
        self.cv.notify_all()

    def table_ready(self, name: str) -> bool:
        return self.all_ready or name in self.ready

    def wait_table(self, name: str, timeout: Optional[float],
                   failure: Callable[[], Optional[BaseException]]) -> bool:
        """Wait (taking the store's lock) until ``name`` is ready (True) or
        ``timeout`` passes (False); raises what ``failure()`` returns once
        the open failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while True:
                error = failure()
                if error is not None:
                    raise error
                if self.all_ready or name in self.ready:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cv.wait(left)


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
        admission_wait(self.intake.cv, left)


class TableView(Mapping):
    """``store.table(name)`` for a table not yet ready in a background open.

    ``ready`` says whether its state is in; ``wait_ready(timeout)`` waits for
    it (True) or the timeout (False). Every read waits for the table first,
    then reads the table itself (so a view taken early stays correct; take
    ``store.table(name)`` again once ready for the fastest reads). A read
    raises what the open failed with, or KeyError for a table the log turned
    out not to have.
    """

    def __init__(self, intake: Intake, name: str, get_table: Callable[[], Mapping],
                 failure: Callable[[], Optional[BaseException]], path: str) -> None:
        self._intake = intake
        self._name = name
        self._get_table = get_table  # the store's table(name)
        self._failure = failure
        self._path = path

    @property
    def ready(self) -> bool:
        return self._intake.table_ready(self._name)

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        return self._intake.wait_table(self._name, timeout, self._failure)

    def _table(self):
        self._intake.wait_table(self._name, None, self._failure)
        return self._get_table()

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

    def to_arrow(self):
        """The table's ``to_arrow()``, once it is ready (docs/tables.md)."""
        return self._table().to_arrow()

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._table(), attr)

    def __repr__(self) -> str:
        return f"<table {self._name!r} of {self._path!r}: " \
               f"{'ready' if self.ready else 'not ready'}>"
