"""The write surface of a store: put, delete, incr, custom ops, clear,
batches and consumed offsets, applied to the in-memory tables under the
store's lock and buffered for the log (docs/store.md).

``Writes`` is the base class of ``Store``: it owns the write path's
fields and methods; the store opens the state they work on and provides
the three hooks at the end of the class (whether it takes writes, what
follows a write, and the error of a failed background open). During a
background open, writes go through the intake (intake.py).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from . import _format as F
from . import _offsets
from . import intake as _intake
from ._types import Key, Number, Offsets, Value
from .batch import Batch
from .errors import ConfigError
from .journal import Taken
from .numeric import NumericTable
from .opening import LogIndex
from .tables import TableInfo, TableRegistry

_FRAME_TARGET = F.FRAME_TARGET_BYTES


class Writes:
    """What a store does with a write. Its fields, set by the store:

    ``_lock`` guards the tables, the record buffer ``_buf`` (the core's
    LogBuffer) and everything below; ``_targets`` maps a table name to
    (table, id) while the store is writable (emptied when it closes or
    fails, so the fast path needs no other check and everything unusual
    goes through ``_write_locked``); ``_offsets`` are the source offsets in
    the state, ``_pending_offsets`` those not yet framed; ``_intake`` and
    ``_warming`` are a background open's.
    """

    path: str
    _core: Any  # the core module in use (native or pure)
    _lock: threading.Lock
    _buf: Any  # the core's LogBuffer
    _buffered: bool
    _targets: dict[str, tuple[Any, int]]  # table name -> (table, id)
    # table name -> where its writes go instead of the table itself (an
    # online migration's Mirror, online.py), ``_lock`` held to change.
    _write_to: dict[str, Any]
    _registry: Optional[TableRegistry]  # (None until the open's plan phase makes it)
    _offsets: Offsets
    _pending_offsets: Offsets
    _intake: Optional[_intake.Intake]
    _warming: bool

    def _init_writes(self, sync_always: bool) -> None:
        self._lock = threading.Lock()
        # Writers bind the buffer's methods before they are admitted: until
        # a background open takes writes they bind this stand-in, and are
        # rebound to the real buffer when let in (_write_warming).
        self._buf = self._core.LogBuffer(1)
        self._buffered = not sync_always  # (put returns before any flush)
        self._targets = {}
        self._write_to = {}
        self._offsets = {}
        self._pending_offsets = {}
        self._registry = None
        self._intake = None
        self._warming = False  # a background open whose tables are not all in

    @property
    def _open_registry(self) -> TableRegistry:
        """The table registry, which the open's plan phase makes (an
        internal error before it)."""
        registry = self._registry
        if registry is None:
            raise RuntimeError(f"internal error: the tables of {self.path} are not planned yet")
        return registry

    # The write path. ``_targets`` maps a table name to (table, id) while the
    # store is writable; it is emptied when the store closes or fails, so the
    # fast path needs no other check and everything unusual (a new table, a
    # closed or failed store) goes through ``_write_locked``.
    def _write_locked(self, method: Callable[..., int], table: str, args: tuple[Any, ...]) -> int:
        """One write with ``_lock`` held: check, create the table, apply, log."""
        self._writable()
        if self._warming:
            return self._write_warming(method, table, args)
        # (_writable may have waited out a handoff, whose promote gave this
        # store a new log buffer: write to that one.)
        return self._write_plain(self._rebound(method), table, args)

    def _write_plain(self, method: Callable[..., int], table: str, args: tuple[Any, ...]) -> int:
        registry = self._registry
        assert registry is not None  # (planned before any write gets here)
        info = registry.by_name.get(table)
        new = info is None
        if info is None:
            info = registry.create(table)
        target = self._write_to.get(table, info.table)
        try:
            lsn = method(target, info.tid, *args)
        except BaseException:
            if new:
                registry.drop_if_new(info)
            raise
        self._targets[table] = (target, info.tid)
        return lsn

    def _write_warming(self, method: Callable[..., int], table: str,
                       args: tuple[Any, ...]) -> int:
        """A write during a background open (``_lock`` held): applied now to a
        ready table, kept for one that is not, or waited with (intake.py)."""
        intake = self._intake
        assert intake is not None  # (a background open's)
        wait = _intake.Deadline(intake, self.path)
        while True:
            self._writable()
            if not self._warming:
                return self._write_plain(self._rebound(method), table, args)
            if not intake.open:
                wait.wait("the open has not yet found the log's end")
                continue
            info = self._open_registry.by_name.get(table)
            if info is None or table in intake.ready:
                # Every table of the log is known once writes are taken: a
                # name not among them is a new table, ready at once.
                lsn = self._write_plain(self._rebound(method), table, args)
                intake.ready.add(table)
                return lsn
            if intake.full():
                wait.wait(f"{intake.records} pending writes ({intake.nbytes} bytes) wait "
                          f"for their tables (max_pending_records {intake.max_records}, "
                          f"max_pending_bytes {intake.max_bytes})")
                continue
            sink = intake.sink(table, info.table, info.kind == F.KIND_CUSTOM)
            method = self._rebound(method)
            try:
                return method(sink, info.tid, *args)
            except _intake.NotReady:
                wait.wait(f"this write needs table {table!r}, whose state is not in yet")

    def _rebound(self, method: Callable[..., int]) -> Callable[..., int]:
        """``method`` of the log buffer writes go to now (see ``_buf``)."""
        owner = getattr(method, "__self__", None)
        if owner is self or owner is self._buf:
            return method
        rebound: Callable[..., int] = getattr(self._buf, method.__name__)
        return rebound

    def _write(self, method: Callable[..., int], table: str, *args: Any) -> int:
        with self._lock:
            lsn = self._write_locked(method, table, args)
        self._after_write(lsn)
        return lsn

    def put(self, table: str, key: Key, value: Value) -> int:
        """Set ``key`` to ``value`` in ``table``; returns the write's LSN.

        Raises UnsupportedKeyError / ValueEncodingError before anything is
        written; StoreClosedError / StoreFailedError on a closed or failed store.
        """
        # The hottest call a service makes: the common case stays inline.
        with self._lock:
            target = self._targets.get(table)
            if target is None:
                lsn = self._write_locked(self._buf.put, table, (key, value))
            else:
                lsn = self._buf.put(target[0], target[1], key, value)
            if self._buffered and self._buf.pending_bytes < _FRAME_TARGET:
                return lsn
        self._after_write(lsn)
        return lsn

    def delete(self, table: str, key: Key) -> int:
        """Remove ``key`` (absent keys are fine: the delete is still logged)."""
        return self._write(self._buf.delete, table, key)

    def incr(self, table: str, key: Key, delta: Number = 1,
             column: Optional[str] = None) -> int:
        """Add ``delta`` to a number (an absent key counts as 0); for a
        NumericTable, ``key`` is the row and ``column`` names the cell.

        InvalidOperationError, before anything is written, when the value is
        not a number, the delta is not an int or float, or an int result
        leaves int64.
        """
        if column is not None:
            return self._write(self._incr_column, table, key, delta, column)
        return self._write(self._buf.incr, table, key, delta)

    def _incr_column(self, t: Any, tid: int, row: int, delta: Number, column: str) -> int:
        # Logged as a put of the cell's new value (computed here, under the
        # lock): replay then only sets cells, and every record is idempotent.
        if getattr(t, "_pending", False):
            raise _intake.NotReady()  # the new value needs the cell's state
        if not isinstance(t, NumericTable):
            raise ConfigError(f"column= is for NumericTable tables, not {type(t).__name__}")
        lsn: int = self._buf.put(t, tid, row, {column: t._added(row, column, delta)})
        return lsn

    def write(self, table: str, op: str, key: Optional[Key] = None, value: Value = None) -> int:
        """A custom table's own op: its ``apply(op, key, value)`` gets it, now
        and at every replay. ``op`` is any name but put/delete/incr/clear;
        ``key`` may be None. InvalidOperationError, before anything is
        written, when the table is not a custom one or its apply refuses.
        """
        if type(op) is not str or not op or op in ("put", "delete", "incr", "clear"):
            raise ConfigError(f"a custom op is a name other than put/delete/incr/clear, "
                              f"not {op!r}")
        return self._write(self._buf.custom, table, key, op, value)

    def clear(self, table: str) -> int:
        """Remove every key of ``table`` (one record)."""
        return self._write(self._buf.clear, table)

    def batch(self, offsets: Optional[Offsets] = None) -> Batch:
        """A context manager collecting writes applied all together at exit.

        After a crash, a batch is either wholly there or wholly absent.
        ``offsets`` ({source: int64}) are the upstream positions the batch
        consumed; they become durable atomically with its records and come
        back in ``store.offsets`` after a restart. ConfigError for bad offsets.
        """
        return Batch(self._core.Staging(), self._commit, self._writable_early,
                     _offsets.check_offsets(offsets) if offsets else None)

    def consume(self, source: str, offset: int) -> Optional[Batch]:
        """A batch recording that ``offset`` of ``source`` was consumed, or None
        when the state already includes it (``offset <= store.offsets[source]``).

        Turns at-least-once input into exactly-once state::

            b = store.consume("orders/3", 1200)
            if b is not None:
                with b:
                    b.put("orders", order_id, order)

        The check is repeated when the batch commits, so two threads
        consuming the same offset apply it once (the other batch's ``lsn``
        stays None and its ``skipped`` is True).
        """
        offsets = _offsets.check_offsets({source: offset})
        with self._lock:
            self._writable()
            self._wait_offsets_locked()
            if self._already_consumed(offsets):
                return None
        return Batch(self._core.Staging(), self._commit, self._writable_early, offsets,
                     consume=True)

    def _already_consumed(self, offsets: Offsets) -> bool:
        return all(s in self._offsets and off <= self._offsets[s] for s, off in offsets.items())

    @property
    def offsets(self) -> Offsets:
        """The latest upstream offset per source included in the state
        (during a background open, waits for the replay to end)."""
        with self._lock:
            self._wait_offsets_locked(raise_timeout=False)
            return dict(self._offsets)

    def _wait_offsets_locked(self, raise_timeout: bool = True) -> None:
        """(``_lock`` held) Source offsets are whole only once the replay is
        over: wait for that (up to admission_timeout_s; then
        BackpressureError, or for a reader, wait on)."""
        intake = self._intake
        if not self._warming:
            return
        assert intake is not None  # (a background open's)
        wait = _intake.Deadline(intake, self.path)
        while self._warming:
            self._raise_if_open_failed()
            if raise_timeout:
                wait.wait("source offsets are known once the replay is over")
            else:
                intake.cv.wait()

    def _commit(self, staging: Any, offsets: Optional[Offsets] = None,
                consume: bool = False) -> tuple[Optional[int], bool]:
        """(last LSN or None, skipped): apply and log a batch."""
        with self._lock:
            lsn, skipped = self._commit_locked(staging, offsets, consume)
        if lsn is not None:
            self._after_write(lsn)
        return lsn, skipped

    def _commit_locked(self, staging: Any, offsets: Optional[Offsets],
                       consume: bool) -> tuple[Optional[int], bool]:
        self._writable()
        if offsets:
            self._wait_offsets_locked()
        if self._warming:
            return self._commit_warming(staging)
        if consume and offsets is not None and self._already_consumed(offsets):
            return None, True
        if offsets and not len(staging):
            # Offsets alone still take an LSN (a no-op record), so they are
            # logged, made durable and waited for like any write.
            lsn = self._buf.noop()
        else:
            registry = self._open_registry
            created: list[TableInfo] = []
            infos: list[TableInfo] = []
            for name in staging.names:
                info = registry.by_name.get(name)
                if info is None:
                    info = registry.create(name)
                    created.append(info)
                infos.append(info)
            write_to = self._write_to
            tables = [write_to.get(i.name, i.table) for i in infos]
            try:
                lsn = self._buf.commit(staging, tables, [i.tid for i in infos])
            except BaseException:
                for info in reversed(created):
                    registry.drop_if_new(info)
                raise
            for info, table in zip(infos, tables):
                self._targets[info.name] = (table, info.tid)
        if offsets and lsn is not None:
            self._pending_offsets.update(offsets)
            self._offsets.update(offsets)
        return lsn, False

    def _commit_warming(self, staging: Any) -> tuple[Optional[int], bool]:
        """A batch (without offsets) during a background open, ``_lock``
        held: its tables not yet ready get their ops kept (PendingSink); a
        batch that needs a table's state waits for it. All or nothing."""
        intake = self._intake
        assert intake is not None  # (a background open's)
        wait = _intake.Deadline(intake, self.path)
        while True:
            self._writable()
            if not self._warming:
                return self._commit_locked(staging, None, False)
            if not intake.open:
                wait.wait("the open has not yet found the log's end")
                continue
            if intake.full():
                wait.wait(f"{intake.records} pending writes wait for their tables")
                continue
            registry = self._open_registry
            created: list[TableInfo] = []
            tables: list[Any] = []
            tids: list[int] = []
            sinks: list[tuple[_intake.PendingSink, int]] = []
            for name in staging.names:
                info = registry.by_name.get(name)
                if info is None:
                    info = registry.create(name)
                    created.append(info)
                if name in intake.ready or info in created:
                    tables.append(info.table)
                else:
                    sink = intake.sink(name, info.table, info.kind == F.KIND_CUSTOM)
                    sinks.append((sink, len(sink.ops)))
                    tables.append(sink)
                tids.append(info.tid)
            try:
                lsn = self._buf.commit(staging, tables, tids)
            except BaseException as e:
                # The core undid the batch on real tables; a sink is undone
                # by cutting its ops back (its undo entries are stand-ins).
                for sink, n in sinks:
                    sink.truncate(n)
                for info in reversed(created):
                    registry.drop_if_new(info)
                if isinstance(e, _intake.NotReady):
                    wait.wait("this batch needs the state of a table not ready yet")
                    continue
                raise
            for info in created:
                intake.ready.add(info.name)
                self._targets[info.name] = (info.table, info.tid)
            return lsn, False

    def _take_buffered(self) -> Taken:
        """For the journal: what writers buffered, and the offsets and table
        declarations that go in the same frame."""
        with self._lock:
            used = self._buf.used_tids()
            first, count, records = self._buf.take()
            offsets, self._pending_offsets = self._pending_offsets, {}
        return first, count, records, self._open_registry.decls(used) if count else [], offsets


    # A background open (intake.py): the store's open calls these.
    def _live_targets(self) -> Optional[dict[str, tuple[Any, int]]]:
        """(``_lock`` held) Where a table made ready goes for writes: None
        once the store takes none."""
        return self._targets if self._takes_writes() else None

    def _take_writes(self, index: LogIndex) -> None:
        """A background open found the log's end: open the writer there and
        take writes (tables with records still to replay wait for them)."""
        intake = self._intake
        assert intake is not None  # (a background open's)
        self._open_writer(index.next_lsn, index.resume_path, index.resume_size)
        with self._lock:
            intake.take_writes(self._open_registry, index.last_lsn, self._live_targets())
        self._reevaluate_gates()

    def _replayed_through(self, path: str, next_lsn: Optional[int]) -> None:
        intake = self._intake
        assert intake is not None  # (a background open's)
        if next_lsn is not None and intake.waiting:
            with self._lock:
                intake.replayed_through(next_lsn, self._open_registry, self._live_targets())
            self._reevaluate_gates()

    def _all_ready(self) -> None:
        """The replay is over: every table's state is in."""
        intake = self._intake
        if intake is None:
            return
        with self._lock:
            intake.all_in(self._open_registry, self._live_targets())
            self._warming = False
        self._reevaluate_gates()

    # The store's part.
    def _reevaluate_gates(self) -> None:
        """Table readiness changed: the feature gates look again (without
        ``_lock`` held)."""
        raise NotImplementedError

    def _writable(self) -> None:
        """Raise unless the store takes writes (closed, failed, forked);
        ``_lock`` held."""
        raise NotImplementedError

    def _writable_early(self) -> None:
        """A batch's check as it starts (``_lock`` not held): raise now what
        its commit would certainly raise; a handoff's hold is waited out at
        the commit."""
        raise NotImplementedError

    def _after_write(self, lsn: int) -> None:
        """After ``_lock`` is released: make ``lsn`` durable, or flush, as
        the sync mode says."""
        raise NotImplementedError

    def _raise_if_open_failed(self) -> None:
        """Raise what a failed background open left (nothing otherwise)."""
        raise NotImplementedError

    def _takes_writes(self) -> bool:
        """False once the store is closed or failed."""
        raise NotImplementedError

    def _open_writer(self, next_lsn: int, resume_path: Optional[str], resume_size: int) -> None:
        """Open the log for appending at ``next_lsn``."""
        raise NotImplementedError
