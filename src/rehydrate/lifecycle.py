"""A store's life: how it is made, opened, warmed up, closed and carried
across fork() (docs/store.md).

``Lifecycle`` is the base of ``Roles`` (roles.py: primary, standby,
reader; following and handoff) and so of ``Store`` (store.py, the surface a
service uses), itself on ``Writes`` (writes.py, the write path). It holds
the store together: the checked options (options.py), the open pipeline
(opening.py), the log writer (journal.py), checkpoints (checkpointing.py),
the migrate phase (migrate_phase.py) and the fork hooks (forking.py), each
given what it needs as arguments and callbacks.

Locking (why two locks): ``_lock`` guards the in-memory state and the record
buffer and is held only for the few microseconds a write takes; the
journal's ``io_lock`` serializes framing, writing and fsync, and is never
taken while ``_lock`` is held (order: ``io_lock`` then ``_lock``). So
writers keep appending while one thread is in ``fsync``, and the next fsync
covers them all (group commit).

Fork: a store belongs to the process that opened it. Around ``os.fork()``
(forking.py) every live store's ``_lock`` is taken (so no write is
half-applied in the child's copy); in the child each store turns into a
read-only view as of the fork that never touches the parent's files
(docs/store.md, "Pre-forking servers").
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Self

from . import _format as F
from . import checkpointing as _checkpointing
from . import crashloop as _crashloop
from . import forking as _forking
from . import gates as _gates
from . import hints as _hints
from . import intake as _intake
from . import manifest as _manifest
from . import online as _online_mod
from . import opening as _opening
from . import plan as _plan
from . import shutdown_risk as _shutdown_risk
from . import standby as _standby
from . import tracing as _tracing
from ._backend import core as _core
from ._types import StrPath
from .errors import (
    ConfigError, ForkedStoreError, MovedError, RehydrateError, StorageIOError, StoreClosedError,
    StoreFailedError,
)
from .journal import Journal
from .lockfile import DirLock
from .options import OPTION_NAMES, Options, check_options

if TYPE_CHECKING:
    from .archiver import Archiver
    from .objstore import ObjectStore
from .recovery import RecoveryReport
from .warmup import WarmupRun
from .writes import Writes

# How long a fork waits for a store's _lock (held for microseconds by a
# write, for a memcpy by a checkpoint). Past it (the forking thread holds
# the lock itself, say from a custom table's apply) the fork goes on, and
# the child gets a fresh lock.
_FORK_LOCK_WAIT_S = 10.0
_guard_log = logging.getLogger("rehydrate.warmup")


# How long an online migration's cutover may hold writers (they wait; past
# it, BackpressureError): it writes two snapshots.
_CUTOVER_HOLD_S = 600.0


class Lifecycle(Writes):
    """The fields and inner workings of a store; ``Store`` is its surface.

    Every field is set by ``_new`` (with the write path's, ``Writes``).
    """

    _options: Options
    _cancel: bytearray  # set: stop the open (a watchdog, or close())
    _warmup: WarmupRun
    _checkpoint_lock: threading.Lock
    _sync_always: bool
    _journal: Journal
    _open_error: Optional[BaseException]
    _closed: bool
    _closer: Optional[threading.Thread]  # the thread whose close() is closing the store
    _close_done: threading.Event  # set once that close is over
    _risk_checked: bool  # the SIGTERM warning's check ran (shutdown_risk.py)
    _owner_pid: int
    _forked: bool  # set in a child that inherited this store
    _held_for_fork: bool  # _lock taken by the before-fork hook
    _dirlock: Optional[DirLock]
    _auto: Optional[_checkpointing.AutoCheckpoint]
    _archiver: Optional[Archiver]
    _archive_store: Optional[ObjectStore]  # where ``archive=`` points, resolved by _new
    _opener: Optional[threading.Thread]  # a background open's thread
    _atexit: Optional[Callable[[], None]]
    _ready: threading.Event
    _manifest: dict[str, Any]
    _plan: Optional[dict[str, Any]]
    _metrics_registry: Any  # a prometheus_client registry, once asked for
    _gates: _gates.Gates  # the feature gates (gates.py)
    recovery_report: RecoveryReport
    # A dict once the store is warm (None before: a background open's). Any,
    # as it was, so that code reading a Store.open store's report needs no
    # None check.
    warmup_report: Any
    open_stats: Optional[dict[str, Any]]
    checkpoint_stats: dict[str, Any]
    # Replication (docs/replication.md): the role, the directory's epoch as
    # this store knows it, its identity; a handoff's hold on writes; what a
    # moved store tells writers; a standby's or reader's follower.
    _role: str
    _epoch: int
    _store_id: Optional[str]
    _hold: Optional[dict[str, Any]]
    _hold_cv: threading.Condition
    _moved: Optional[dict[str, Any]]
    _follow: Optional[_standby.Follow]
    _source: Optional[str]
    _max_lag_s: float
    _manifest_stamp: Optional[tuple[int, int, int]]
    _handing_over: bool  # a local handoff's thread is running
    _handoff_thread: Optional[threading.Thread]  # (joined by close)
    _remote: Optional[_standby.Receiver]  # a standby of a primary over HTTP
    _files_lock: threading.Lock  # the log's and the LOCK's release
    _resume_detail: dict[str, float]  # how a promote's resume went, for its result
    # The crash-loop guard (crashloop.py): safe mode's {"reason", "skipped",
    # "failed_opens"} (None: a full open), and the failed opens recorded.
    _degraded: Optional[dict[str, Any]]
    _failed_opens: int
    _online: _online_mod.Runs  # online migrations' runs (online.py)

    # (What the surface provides that the workings call.)
    def close(self) -> None:
        raise NotImplementedError

    def checkpoint(self) -> dict[str, Any]:
        raise NotImplementedError

    def sync(self) -> int:
        raise NotImplementedError

    def _state_digest(self) -> int:
        raise NotImplementedError

    @property
    def lsn(self) -> int:
        """LSN of the last write logged (0 for an empty store, or a
        background open that takes no writes yet); on a standby or a
        reader, of the last record applied."""
        follow = self._follow
        if follow is not None:
            return follow.follower.lsn
        lsn: int = self._buf.next_lsn - 1
        return lsn

    @classmethod
    def _new(cls, path: StrPath, options: dict[str, Any]) -> Self:
        """A Store with its options checked and its fields set; nothing on
        disk touched yet. ConfigError for a bad option."""
        o = check_options(**options)
        self = object.__new__(cls)
        self.path = os.fspath(path)
        self._options = o
        self._core = _core()
        self._cancel = bytearray(1)  # set: stop the open (a watchdog, or close())
        self._warmup = WarmupRun(o.warmup, self.path, self._cancel)
        self._checkpoint_lock = threading.Lock()
        self._init_writes(o.sync == "always")
        self._sync_always = o.sync == "always"
        self._journal = Journal(self.path, o.segment_bytes, o.sync, o.sync_interval_ms / 1000.0,
                                self._take_buffered, self._refuse_writes, self._check_owner,
                                self._note_written, self._check_fence, self._look_for_handoff)
        self._open_error = None
        self._closed = False
        self._closer = None
        self._close_done = threading.Event()
        self._risk_checked = False
        self._owner_pid = os.getpid()
        self._forked = False  # set in a child that inherited this store
        self._held_for_fork = False  # _lock taken by the before-fork hook
        self._dirlock = None
        self._auto = None
        self._archiver = None
        self._archive_store = None
        if o.archive is not None:
            # (Resolved now, before anything on disk is touched: a URI that
            # pyarrow refuses is a ConfigError here, not a store left open
            # and locked by a failing archiver.)
            from .objstore import open_object_store

            self._archive_store = open_object_store(o.archive, attempts=1)
        self._opener = None
        self._atexit = None
        self._ready = threading.Event()
        self._manifest = {}
        self._plan = None
        self._metrics_registry = None
        self.recovery_report = RecoveryReport(mode=o.recovery)
        self.warmup_report = None
        self.open_stats = None
        self.checkpoint_stats = {"count": 0, "last_duration_s": 0.0, "last_pause_s": 0.0,
                                 "last_lsn": 0}
        self._role = "primary"
        self._epoch = 1
        self._store_id = None
        self._hold = None
        self._hold_cv = threading.Condition(self._lock)
        self._moved = None
        self._follow = None
        self._source = None
        self._max_lag_s = 1.0
        self._manifest_stamp = None
        self._handing_over = False
        self._handoff_thread = None
        self._files_lock = threading.Lock()
        self._resume_detail = {}
        self._remote = None
        self._gates = _gates.Gates(_gates.GateHost(
            self, self.path, self._gate_table_state, self._gate_phase_done,
            self._gate_migration_state, self._gate_lag_s, self._gate_failure,
            lambda: self._open_error, self._warmup.notify, self._gate_migration_fraction))
        self._warmup.after_phase = self._reevaluate_gates
        self._degraded = None
        self._failed_opens = 0
        self._online = _online_mod.Runs()
        _forking.track(self, self._hold_for_fork, self._release_after_fork,
                       self._inherited_across_fork)
        return self

    def _gate_migration_fraction(self, migration: str) -> Optional[float]:
        # The fraction a live online run of ``migration`` routes (gates'
        # migration_at below 1); None without one, or without online runs.
        runs = getattr(self, "migrations_status", None)
        if not callable(runs):
            return None
        for st in runs():
            if st.get("id") == migration and st.get("state") in ("building", "caught_up"):
                f = st.get("fraction")
                return float(f) if isinstance(f, (int, float)) else None
        return None

    def _start_in_background(self, max_pending_records: int, max_pending_bytes: int,
                             admission_timeout_s: float) -> None:
        """Lock the directory, then run the open on a thread."""
        self._intake = _intake.Intake(self._lock, max_pending_records, max_pending_bytes,
                                      admission_timeout_s)
        self._warming = True
        try:
            _opening.prepare_directory(self.path, self._options.create)
            self._dirlock = DirLock(self.path)
        except RehydrateError:
            raise
        except OSError as e:
            raise StorageIOError.wrap(e, self.path) from e
        # The open's span starts here, under this (the caller's) thread's
        # current span; the opener thread makes it current there.
        self._start_trace("background")
        self._opener = threading.Thread(target=self._run_open_in_background,
                                        name=f"rehydrate-open:{self.path}", daemon=True)
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)
        self._opener.start()

    def _start_trace(self, mode: str) -> None:
        self._warmup.trace = _tracing.start_open(self.path, mode=mode,
                                                 recovery=self._options.recovery)

    def _run_open(self) -> None:
        """The open itself, on this thread, traced (tracing.py)."""
        trace = self._warmup.trace
        # (A background open started its trace on the caller's thread.)
        if trace is _tracing.NO_TRACE:
            self._start_trace("foreground")
            trace = self._warmup.trace
        with trace.current():
            try:
                self._open_here()
            except BaseException as e:
                trace.failed(e)
                raise
        # (Ended before the store says ready: whoever waits for it finds
        # the open's span over.)
        trace.finished(lsn=self.lsn, predicted_s=self._warmup.predicted.get("open"))
        self._ready.set()
        if self._options.migrations is not None and not self._closed:
            # Online runs a crash or kill cut: abandoned or rebuilt (online.py).
            _online_mod.resume(self._online_host(), self._online)

    def _open_here(self) -> None:
        """State in, writer open, warm up."""
        try:
            self._rebuild_state()
        except RehydrateError:
            raise
        except OSError as e:
            raise StorageIOError.wrap(e, self.path) from e
        try:
            self._warm_up()
        except BaseException as e:
            self._record_failed_open(e)
            self.close()
            if isinstance(e, OSError) and not isinstance(e, RehydrateError):
                raise StorageIOError.wrap(e, self.path) from e  # (a migration's checkpoint)
            raise

    def _run_open_in_background(self) -> None:
        intake = self._intake
        assert intake is not None  # (made before this thread started)
        try:
            self._run_open()
        except BaseException as e:  # noqa: BLE001 - kept for wait_ready and writers
            with self._lock:
                self._open_error = e
                self._warming = False
                self._closed = True
                self._targets.clear()
                intake.cv.notify_all()
            self._ready.set()
            self._reevaluate_gates()  # (every gate closes: the open failed)

    def _rebuild_state(self) -> None:
        """Plan, snapshot, replay (opening.py), then open the log for writing."""
        t0 = time.perf_counter()
        o = self._options
        if self._dirlock is None:  # (a background open took it already)
            _opening.prepare_directory(self.path, o.create)
            self._dirlock = DirLock(self.path)
        try:
            planned = _opening.plan_open(self.path, o, self._core, self._warmup, self, t0)
            self._manifest, self._plan = planned.manifest, planned.plan
            self._epoch = _manifest.epoch(self._manifest, self.path)
            moved = self._manifest.get("handoff") or {}
            if moved.get("away") is True:
                raise MovedError(
                    f"this directory handed its writes to {moved.get('to') or 'a standby'} at "
                    f"epoch {moved.get('epoch')} (LSN {moved.get('final_lsn')}): another "
                    "directory is the primary's now; open a standby of it instead "
                    "(docs/replication.md, \"Handoff\")", path=self.path,
                    address=moved.get("to"), epoch=moved.get("epoch"))
            self._registry = planned.registry
            early = self._intake is not None
            opened = _opening.load_and_replay(
                self.path, o, self._core, self._warmup, self._cancel, planned, self,
                take_writes=self._take_writes if early else None,
                on_replayed=self._replayed_through if early else None)
            t_replay = opened.ended
            self.recovery_report = opened.report
            with self._lock:
                self._offsets = opened.offsets
            if not opened.writes_taken:
                self._open_writer(opened.next_lsn, opened.resume_path, opened.resume_size)
            if not _opening.migrations_pending(self._manifest, o.migrations):
                self._all_ready()  # (else once the migrate phase is over)
            t_end = time.perf_counter()
            self.open_stats = {"phases": opened.phases + [
                {"name": "resume", "duration_s": t_end - t_replay}], "total_s": t_end - t0}
        except BaseException:
            self._abandon()
            raise
        self._start_auto_checkpoint()
        self._start_archiver()
        self._close_at_exit()

    def _warm_up(self) -> None:
        """The phases that run on the open store: migrate (the pending
        migrations), populate and prime (the hooks); then the store is ready.
        In safe mode the steps the crash-loop guard names are left out."""
        run = self._warmup
        guard = self._options.max_failed_opens
        decision = _crashloop.decide(self.path, guard) if guard else _crashloop.Decision()
        run.skip = decision.skip
        run.start("migrate")
        applied: list[str] = []
        if self._options.migrations is not None:
            from .migrate_phase import run_pending

            with run.trace.in_phase():
                applied = run_pending(self._migration_host(), self._options.migrations, run)
        self._all_ready()
        run.end(self, migrations=applied,
                skipped=[s.name for s in run.skipped if s.kind == "migration"])
        for phase in ("populate", "prime"):
            run.run_hooks(phase, self)
        self.warmup_report = report = run.report()
        plan = self._plan
        assert plan is not None  # (the plan phase made it)
        report["predicted_s"] = plan["predicted_s"]
        report["plan"] = plan
        skipped = [s.as_dict() for s in run.skipped]
        if skipped:
            self._degraded = {"reason": decision.reason, "skipped": skipped,
                              "failed_opens": decision.failed_opens}
            self._failed_opens = decision.failed_opens
            _guard_log.warning(
                "%s: opened in safe mode (degraded) after %d failed opens: left out %s. "
                "Fix the step, or run `rehydrate status %s --clear-failures` to try it "
                "again", self.path, decision.failed_opens,
                ", ".join(s.label() for s in run.skipped), self.path)
        report["degraded"] = bool(skipped)
        report["degraded_reason"] = decision.reason if skipped else None
        report["skipped_steps"] = skipped
        report["failed_opens"] = self._failed_opens
        # A full open ends the crash-loop count.
        cleared = _plan.record_open(self.path, plan, report, clear_failures=not skipped)
        if cleared:
            _guard_log.info("%s: a full open: %d failed opens cleared", self.path, cleared)

    def _record_failed_open(self, e: BaseException) -> None:
        """Record in HISTORY (crashloop.py) a warmup that failed at a
        migration or a hook; not an open given up by close(), nor one
        interrupted (KeyboardInterrupt), nor a failure of no such step."""
        step = self._warmup.step
        guard = self._options.max_failed_opens
        if step is None or not guard or not isinstance(e, Exception) \
                or getattr(e, "reason", None) == "cancelled":
            return
        reason = e.reason if isinstance(e, RehydrateError) else type(e).__name__
        n = _crashloop.record_failure(self.path, step, reason, f"{type(e).__name__}: {e}")
        if n:
            _guard_log.warning(
                "%s: the open failed at %s (%s); %d failed opens of it in a row%s",
                self.path, step.label(), reason, n,
                "; the next open leaves it out (safe mode)" if n >= guard
                else f"; safe mode after {guard}")

    def _migration_host(self) -> Any:
        """What a migration's commit may do with this store (migrate_phase.py)."""
        from .migrate_phase import MigrationHost

        return MigrationHost(self.path, self._core, self._open_registry, self._checkpoint_lock,
                             lambda: self.lsn, lambda: self._manifest, self._state_digest,
                             self._checkpoint_locked, self._replace_state,
                             self._log_in_new_segment)

    def _online_host(self) -> _online_mod.OnlineHost:
        """What an online migration's run may do with this store (online.py)."""
        migrations = self._options.migrations
        if migrations is None:
            raise ConfigError("this store has no migrations (Store.open(..., migrations=...))",
                              path=self.path, reason="unknown_migration")
        return _online_mod.OnlineHost(
            self.path, self._core, self._open_registry, self._lock, migrations,
            lambda: self._manifest, self._update_manifest, self._set_write_target,
            self._check_serving, self._hold_writes, self._migration_host,
            lambda event, status: self._warmup.notify(event, self, status), self,
            self._gates.migration_routed, self._fail_stop)

    def _update_manifest(self, change: Callable[[dict[str, Any]], None]) -> None:
        """``change`` the MANIFEST, durably (a copy written, then kept)."""
        with self._checkpoint_lock:
            man = dict(self._manifest)
            change(man)
            try:
                _manifest.write(self.path, man)
            except OSError as e:
                raise StorageIOError.wrap(e, self.path) from e
            self._manifest.clear()
            self._manifest.update(man)

    def _set_write_target(self, name: str, target: Optional[Any]) -> None:
        """(``_lock`` held) Writes of ``name`` go to ``target``, or (None)
        to the table again."""
        if target is None:
            self._write_to.pop(name, None)
        else:
            self._write_to[name] = target
        self._targets.pop(name, None)  # (the next write takes the new target)

    def _check_serving(self) -> None:
        """(``_lock`` held) Raise unless this store is open, warm and a
        writable primary: an online migration runs only on one."""
        self._writable()
        if self._warming or not self._ready.is_set():
            raise ConfigError("the store is still opening (wait_ready() first)",
                              path=self.path, reason="not_ready")

    @contextlib.contextmanager
    def _hold_writes(self) -> Iterator[None]:
        """No write lands inside (writers wait, as in a handoff's hold; this
        thread's own checkpoint and records go on): an online migration's
        cutover."""
        me = threading.current_thread()
        with self._lock:
            self._writable()
            now = time.monotonic()
            self._hold = {"request": "migration", "since": now,
                          "deadline": now + _CUTOVER_HOLD_S, "owner": me}
            self._targets.clear()
        try:
            yield
        finally:
            with self._lock:
                if self._hold is not None and self._hold.get("owner") is me:
                    self._hold = None
                    self._hold_cv.notify_all()

    def _replace_state(self, name: str, table: Any, version: int) -> None:
        with self._lock:
            self._open_registry.replace_state(name, table, version)
            self._targets.pop(name, None)  # (the next write takes the new table)

    def _log_in_new_segment(self, lsn: int) -> int:
        self._journal.roll_to(lsn)
        with self._lock:
            got: int = self._buf.noop()
        if got == lsn:
            self._journal.make_durable(lsn)
        return got

    def _open_writer(self, next_lsn: int, resume_path: Optional[str], resume_size: int) -> None:
        """Open the log for appending at ``next_lsn`` and start taking writes."""
        if "clean_end" in self._manifest or "store_id" not in self._manifest:
            # The record of the last clean close goes, durably, before the
            # log can grow: a crash from here on is a crash (docs/recovery.md).
            # (A store from before identities gets its store_id here.)
            self._manifest.pop("clean_end", None)
            try:
                _manifest.write(self.path, self._manifest)
            except OSError as e:
                raise StorageIOError.wrap(e, self.path) from e
        self._store_id = _manifest.store_id(self._manifest, self.path)
        self._manifest_stamp = _manifest.stamp(self.path)
        self._buf = self._core.LogBuffer(next_lsn)
        self._journal.open(next_lsn, resume_path, resume_size)

    def _abandon(self) -> None:
        """An open that failed: make the writes it took durable, let go."""
        self._journal.stop()
        try:
            if self._journal.wal is not None and self._journal.failed is None:
                self._journal.flush(fsync=True)
        finally:
            self._release()

    # ------------------------------------------------- background open
    def _takes_writes(self) -> bool:
        return not self._closed and self._journal.failed is None

    def _raise_if_open_failed(self) -> None:
        if self._open_error is not None:
            raise self._open_failed() from self._open_error

    def _failure(self) -> Optional[RehydrateError]:
        """What a reader waiting on a background open raises: None while it
        has not failed."""
        return None if self._open_error is None else self._open_failed()

    def _open_failed(self) -> RehydrateError:
        e = self._open_error
        if isinstance(e, ForkedStoreError):
            return self._forked_error(" (its open was still running at the fork, and goes on "
                                      "only there)")
        return StoreFailedError(f"the background open failed: {type(e).__name__}: {e}",
                                path=self.path)

    # ---------------------------------------------- feature gates (gates.py)
    def _reevaluate_gates(self) -> None:
        """The state a gate reads changed (never called with ``_lock`` held)."""
        self._gates.evaluate()

    def _gate_table_state(self, name: str) -> str:
        registry, intake = self._registry, self._intake
        known = registry is not None and name in registry.by_name
        if intake is not None and not intake.all_ready:
            if not intake.open:
                # (Before the checking pass, the log's tables are not known.)
                return "pending" if known else "unknown"
            if known:
                return "ready" if name in intake.ready else "pending"
            return "absent"
        if registry is None:
            return "unknown"
        return "ready" if known else "absent"

    def _gate_phase_done(self, phase: str) -> bool:
        if self._ready.is_set() and self._open_error is None:
            return True  # (warm; a standby or a reader runs no phases)
        return any(p["name"] == phase for p in list(self._warmup.phases))

    def _gate_migration_state(self, migration: str) -> str:
        manifest = self._manifest
        if any(e.get("id") == migration for e in manifest.get("ledger") or []):
            return "applied"
        registered = self._options.migrations
        if registered is not None and any(m.id == migration for m in registered.migrations):
            return "pending"
        return "absent" if manifest else "unknown"  # ({}: the MANIFEST not read yet)

    def _gate_lag_s(self) -> Optional[float]:
        follow = self._follow
        if follow is None:
            return 0.0 if self._role == "primary" else None
        lag = follow.lag()
        if lag["state"] not in ("following", "catching_up", "stalled"):
            return None
        seconds: float = lag["seconds"]
        return seconds

    def _gate_failure(self) -> Optional[str]:
        error = self._open_error
        if error is not None:
            return f"the open failed: {type(error).__name__}: {error}"
        return "the store is closed" if self._closed else None

    def _checkpoint_now(self) -> dict[str, Any]:
        with self._checkpoint_lock:
            try:
                return self._checkpoint_locked()
            except RehydrateError:
                raise
            except OSError as e:  # a snapshot file, the MANIFEST: the log is not at risk
                raise StorageIOError.wrap(e, self.path) from e

    def _close(self) -> None:
        if self._forked or os.getpid() != self._owner_pid:
            self._close_inherited()
            return
        opener = self._opener
        if opener is not None and opener is not threading.current_thread() \
                and opener.is_alive():
            # Stop a background open first (its replay polls this flag, its
            # hook wait too); the writes it took are flushed below.
            self._cancel[0] = 1
            opener.join()
        if not self._closed and self._ready.is_set():
            # A live online run stops first (reverted, "store closed"): its
            # record goes in the MANIFEST while the store still writes it.
            self._online.close()
        if not self._stop_taking_writes():
            self._wait_for_other_close()
            return
        try:
            self._close_taken()
        finally:
            self._close_done.set()

    def _wait_for_other_close(self) -> None:
        """A close while another thread's close is under way returns once
        that one is over: a caller that exits after ``close()`` (a shutdown
        on a signal, the main thread's ``finally``) never cuts the other's
        final flush short."""
        closer = self._closer
        if closer is not None and closer is not threading.current_thread():
            self._close_done.wait()

    def _close_taken(self) -> None:
        """The close, once this thread has stopped the writes."""
        self._stop_threads(keep_archiver=True)
        handoff = self._handoff_thread
        if handoff is not None and handoff is not threading.current_thread():
            # A local handoff under way ends first (fenced: this store is
            # moved and records no clean end; or given up: still primary).
            # Else this close could take itself for the primary and write its
            # MANIFEST, at the old epoch, over the fence.
            handoff.join()
        journal = self._journal
        try:
            if journal.failed is None and journal.wal is not None and self._role == "primary":
                journal.flush(fsync=True)
                registry = self._open_registry
                _hints.write(self.path, [(n, registry.by_name[n].table)
                                         for n in registry.names()])
                self._record_clean_end()
                if self._archiver is not None:
                    # (After the log's last write: one last upload, within a deadline.)
                    self._archiver.stop(final=True)
        finally:
            if self._archiver is not None:
                self._archiver.stop(final=False)
            self._release()

    def _checkpoint_locked(self, commit: Optional[_checkpointing.Commit] = None
                           ) -> dict[str, Any]:
        """A checkpoint (``_checkpoint_lock`` held). ``commit(manifest)``
        changes the MANIFEST that publishes the snapshot (a migration's
        ledger entry goes in with it, in the same write)."""
        archiver = self._archiver
        with _tracing.span("rehydrate.checkpoint", path=self.path) as span:
            result = _checkpointing.checkpoint(
                self.path, self._manifest, self._open_registry, self._capture, self._journal,
                self._options.keep_snapshots, commit,
                keep_after=None if archiver is None else lambda: archiver.sealed_through)
            span.set(lsn=result.get("lsn"), bytes=result.get("bytes"),
                     duration_s=result.get("duration_s"), pause_s=result.get("pause_s"),
                     existing=bool(result.get("existing")))
        if archiver is not None:
            archiver.wake()
        if not result.get("existing"):
            self.checkpoint_stats = {"count": self.checkpoint_stats["count"] + 1,
                                     "last_duration_s": result["duration_s"],
                                     "last_pause_s": result["pause_s"],
                                     "last_lsn": result["lsn"]}
        return result

    def _capture(self, prepared: dict[str, Any]) -> _checkpointing.Captured:
        """The state as of now, copied under ``_lock`` (writers wait)."""
        with self._lock:
            self._writable()
            if self._auto is not None:
                self._auto.bytes_since = 0
            return _checkpointing.capture(self._open_registry, self.lsn, self._offsets, prepared)

    def _writable_early(self) -> None:
        self._writable(hold=False)

    def _writable(self, hold: bool = True) -> None:
        if self._forked:
            raise self._forked_error()
        if self._hold is not None:
            # A handoff under way: on a primary, its hold on writes; on a
            # standby being promoted, the wait until it takes writes. (A
            # batch's early check leaves it to the commit.)
            if not hold:
                return
            if self._hold.get("owner") is not threading.current_thread():
                self._wait_out_hold()
        if self._role != "primary":
            raise self._not_primary()
        if self._open_error is not None:
            raise self._open_failed() from self._open_error
        failed = self._journal.failed
        if failed is not None:
            raise StoreFailedError(f"store failed and refuses writes: {failed}",
                                   path=self.path, lsn=self._journal.durable_lsn) from failed
        if self._closed:
            raise StoreClosedError("store is closed", path=self.path)

    # ------------------------------------------------------------ durability
    def _after_write(self, lsn: int) -> None:
        if self._sync_always:
            durable: Optional[Callable[[], None]] = functools.partial(
                self._journal.make_durable, lsn)
        elif self._buf.pending_bytes >= F.FRAME_TARGET_BYTES:
            durable = functools.partial(self._journal.flush, False)
        else:
            return
        context = _intake.current_context()
        if context is not None and context.defer_durability:
            # The caller runs it (rehydrate.aio, on a thread of its own).
            context.deferred = durable
            return
        assert durable is not None
        durable()

    def _fail_stop(self, e: BaseException) -> None:
        """Stop taking writes for good, as after a failed log write (an
        online cutover that failed once the state had changed in memory)."""
        if self._journal.failed is None:
            self._journal.failed = e
        self._refuse_writes()

    def _refuse_writes(self) -> None:
        """The journal failed a write: every later write goes the slow way
        (``_writable``), which refuses it."""
        with self._lock:
            self._targets.clear()

    def _note_written(self, nbytes: int) -> None:
        if not self._risk_checked:
            # Once per store, at its first frame rather than on every write:
            # a buffered store that has taken writes, in a process a SIGTERM
            # would end without its close (shutdown_risk.py).
            self._risk_checked = True
            if not self._sync_always:
                _shutdown_risk.check(self.path, self._options.sync)
        if self._auto is not None:
            self._auto.note_written(nbytes)
        archiver = self._archiver
        if archiver is not None:
            archiver.note_frame(self._journal.written_lsn)

    def _stop_taking_writes(self) -> bool:
        """Refuse writes from now on; False when the store was closed already."""
        with self._lock:
            if self._closed:
                return False
            # From here no write is accepted, so a flush after is the last.
            self._closed = True
            self._closer = threading.current_thread()
            self._targets.clear()
            if self._intake is not None:
                self._intake.cv.notify_all()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
        return True

    def _stop_threads(self, keep_archiver: bool = False) -> None:
        self._journal.stop()
        if self._auto is not None:
            self._auto.stop()
        if self._archiver is not None and not keep_archiver:
            self._archiver.stop(final=False)
        if self._remote is not None:
            self._remote.stop(wait=True)
        if self._follow is not None:
            self._follow.stop()

    def _record_clean_end(self) -> None:
        """Write down, durably, where this clean close leaves the log: the
        next open then holds the log to it, so a cut or a damaged length at
        the end is damage, never a torn tail (no crash can have made it)."""
        clean_end = self._journal.clean_end(self.lsn)
        if clean_end is None:
            return
        self._manifest["clean_end"] = clean_end
        try:
            _manifest.write(self.path, self._manifest)
        except OSError as e:
            raise StorageIOError.wrap(e, self.path) from e

    def _release(self) -> None:
        _forking.untrack(self)
        self._release_files()

    def _release_files(self) -> None:
        """Close the log and unlock the directory, once (a close and a
        handoff's release may race: ``_files_lock``)."""
        with self._files_lock:
            try:
                self._journal.close()
            except OSError as e:  # (everything was fsynced: nothing is lost)
                raise StorageIOError.wrap(e, self.path) from e
            finally:
                # Always: a lock left held would refuse every later open here.
                if self._dirlock is not None:
                    self._dirlock.release()
                    self._dirlock = None

    def _forked_error(self, more: str = "") -> ForkedStoreError:
        return ForkedStoreError(
            f"store belongs to process {self._owner_pid}, which opened it; process "
            f"{os.getpid()} inherited it across fork() and has a read-only view as of the "
            f"fork{more}: writes, sync and checkpoint are refused here (open the store in "
            f"one process, after the fork, to write)",
            path=self.path, lsn=self.lsn, owner_pid=self._owner_pid)

    def _check_owner(self) -> None:
        if self._forked or os.getpid() != self._owner_pid:
            raise self._forked_error()

    def _hold_for_fork(self) -> None:
        self._held_for_fork = self._lock.acquire(timeout=_FORK_LOCK_WAIT_S)

    def _release_after_fork(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()

    def _inherited_across_fork(self) -> None:
        """In a forked child, from the at-fork hook: the only thread left.

        Threads did not survive the fork, so locks they held stay held:
        ``_lock`` was taken for the fork by this thread (released here) or
        is replaced; the others are replaced. The background flusher, the
        checkpoint thread and a background open are gone: nothing here waits
        for them. A background open not over at the fork never ends here:
        what would wait for it raises ForkedStoreError instead.
        """
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()
        else:
            self._lock = threading.Lock()
        self._journal.inherited()
        self._checkpoint_lock = threading.Lock()
        self._hold_cv = threading.Condition(self._lock)
        self._hold = None
        self._forked = True
        self._targets.clear()  # so put's fast path goes through _writable
        if self._intake is not None:
            self._intake.cv = threading.Condition(self._lock)
        if not self._ready.is_set():
            self._open_error = ForkedStoreError("open not over at the fork",
                                                path=self.path, owner_pid=self._owner_pid)
        self._ready = threading.Event()
        self._ready.set()  # (wait_ready answers at once: ready, or the error above)
        self._gates.inherited()
        self._drop_parent_files()

    def _drop_parent_files(self) -> None:
        """Let go of the parent's files without a write, flush, fsync,
        unlink or unlock: the descriptors are this process's copies."""
        self._journal.forget()
        if self._dirlock is not None:
            self._dirlock.forget()
            self._dirlock = None
        if self._atexit is not None:
            atexit.unregister(self._atexit)  # (the parent's exit closes it, not ours)
            self._atexit = None

    def _close_inherited(self) -> None:
        """``close()`` in a process that inherited the store: references
        only, nothing on disk."""
        if not self._forked:
            # A fork that ran no at-fork hooks (a raw fork() from C): the
            # locks may be held by threads that are gone; take none.
            self._forked = True
            self._drop_parent_files()
        self._closed = True
        self._targets.clear()

    # The replication hooks the workings call (roles.py implements them).
    def _not_primary(self) -> RehydrateError:
        raise NotImplementedError

    def _wait_out_hold(self) -> None:
        raise NotImplementedError

    def _check_fence(self) -> None:
        raise NotImplementedError

    def _look_for_handoff(self) -> None:
        raise NotImplementedError

    def _start_auto_checkpoint(self) -> None:
        o = self._options
        if o.auto_checkpoint:
            self._auto = _checkpointing.AutoCheckpoint(
                self.checkpoint, o.checkpoint_every_bytes, o.checkpoint_every_s,
                name=f"rehydrate-checkpoint:{self.path}")

    def _start_archiver(self) -> None:
        """Ship the log and snapshots to ``archive=`` (docs/archive.md)."""
        o = self._options
        if o.archive is None or self._archiver is not None:
            return
        from .archiver import Archiver

        journal = self._journal
        self._archiver = archiver = Archiver(
            self.path, o.archive, store_id=self._store_id or "", epoch=self._epoch,
            position=journal.durable_position, local_manifest=lambda: self._manifest,
            written_lsn=lambda: journal.written_lsn, every_s=o.archive_every_s,
            retention_s=o.archive_retention_s, keep_snapshots=o.keep_snapshots,
            seal=journal.seal_active, store=self._archive_store)
        archiver.start()

    def _close_at_exit(self) -> None:
        """A store left open when the interpreter exits is closed then (its
        buffered writes written and fsynced), as a file object would be."""
        if self._atexit is None:
            self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
            atexit.register(self._atexit)

def open_options(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``Store.open`` among an open method's ``locals()``
    (the options ``check_options`` takes)."""
    return {k: args[k] for k in OPTION_NAMES}


def abandon(store: Lifecycle) -> None:
    """Let go of ``store`` as a killed process would: its threads stopped and
    its directory unlocked, without writing anything more (buffered writes
    are lost; what reached the OS stays). For crash tests (rehydrate.testing)."""
    store._stop_taking_writes()
    try:
        store._stop_threads()
        store._release()
    finally:
        store._close_done.set()


def _close_at_exit(ref: weakref.ref[Lifecycle]) -> None:
    store = ref()
    if store is not None:
        try:
            store.close()
        except RehydrateError:
            pass  # a failed store has nothing more it may write
