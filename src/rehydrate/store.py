"""Store: open a state directory, get the state back, keep writing the log.

The store is the surface a service uses; the work is done by the modules
it holds together (README, "Layout"): ``options`` checks the options,
``opening`` rebuilds the state, ``journal`` writes the log,
``checkpointing`` writes snapshots, ``intake`` takes writes during a
background open, ``migrate`` runs the migrate phase.

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
import copy
import functools
import os
import threading
import time
import weakref
from typing import Any, Callable, Optional

from . import _format as F
from . import checkpointing as _checkpointing
from . import forking as _forking
from . import hints as _hints
from . import intake as _intake
from . import manifest as _manifest
from . import opening as _opening
from . import plan as _plan
from ._backend import core as _core
from .errors import (
    ConfigError, ForkedStoreError, RehydrateError, StorageIOError, StoreClosedError,
    StoreFailedError,
)
from .journal import Journal
from .writes import Writes
from .lockfile import DirLock
from .migrations import Migrations
from .options import (
    DEFAULT_KEEP_SNAPSHOTS, DEFAULT_SEGMENT_BYTES, DEFAULT_SYNC_INTERVAL_MS, MIN_SEGMENT_BYTES,
    OPTION_NAMES, SYNC_MODES, check_options,
)
from .recovery import RecoveryReport
from .tables import TableRegistry
from .warmup import Warmup, WarmupRun

__all__ = ["Store", "abandon", "SYNC_MODES", "DEFAULT_SEGMENT_BYTES",
           "DEFAULT_SYNC_INTERVAL_MS", "MIN_SEGMENT_BYTES"]

_FRAME_TARGET = F.FRAME_TARGET_BYTES
# How long a fork waits for a store's _lock (held for microseconds by a
# write, for a memcpy by a checkpoint). Past it (the forking thread holds
# the lock itself, say from a custom table's apply) the fork goes on, and
# the child gets a fresh lock.
_FORK_LOCK_WAIT_S = 10.0


class Store(Writes):
    """A state directory opened for reading and writing. Use ``Store.open``."""

    def __init__(self) -> None:  # pragma: no cover - use Store.open
        raise TypeError("use Store.open(path, ...)")

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        sync: str = "interval",
        recovery: str = "tolerate-tail",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
        progress: Optional[Callable[[int, int], None]] = None,
        tables: Optional[dict[str, Any]] = None,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        checkpoint_every_bytes: Optional[int] = None,
        checkpoint_every_s: Optional[float] = None,
        warmup: Optional[Warmup] = None,
        max_memory_bytes: Optional[int] = None,
        migrations: Optional[Migrations] = None,
        strict_migrations: bool = False,
    ) -> Store:
        """Lock ``path``, replay its log into memory, and return the live store.

        ``progress(bytes_done, bytes_total)`` is called during replay.
        ``tables`` maps a table name to its kind, ``rehydrate.DictTable``, a
        ``rehydrate.NumericTable(...)`` or a ``rehydrate.StateType`` subclass
        (docs/tables.md); any other table is a KVTable. ``warmup`` (a
        ``rehydrate.Warmup``) sets the phases' budgets, stall watchdog,
        hooks, criteria and listeners (docs/warmup.md); the phases are
        reported in ``store.warmup_report`` either way. ``max_memory_bytes``:
        refuse (MemoryBudgetError, before loading anything) an open predicted
        to need more; one predicted to need more than the memory available
        is refused either way. A log that declares another kind for a name, or a custom
        table with no class here, is a ConfigError naming the table.
        ``migrations`` (a ``rehydrate.Migrations``): upcasters for older
        versions' records, and migrations run once in the migrate phase
        (docs/migrations.md); a migration whose code changed since it ran is a
        MigrationDriftWarning, or with ``strict_migrations`` a MigrationError.
        Raises ConfigError (bad argument, before touching anything),
        NotAStoreError, LockedError, CorruptionError / TornTailError (as the
        recovery mode decides), UnsupportedFormatError.
        """
        self = cls._new(path, _open_options(locals()))
        self._run_open()
        return self

    @classmethod
    def open_background(
        cls,
        path: str | os.PathLike[str],
        *,
        max_pending_records: int = _intake.DEFAULT_MAX_PENDING_RECORDS,
        max_pending_bytes: int = _intake.DEFAULT_MAX_PENDING_BYTES,
        admission_timeout_s: float = _intake.DEFAULT_ADMISSION_TIMEOUT_S,
        create: bool = True,
        sync: str = "interval",
        recovery: str = "tolerate-tail",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
        progress: Optional[Callable[[int, int], None]] = None,
        tables: Optional[dict[str, Any]] = None,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        checkpoint_every_bytes: Optional[int] = None,
        checkpoint_every_s: Optional[float] = None,
        warmup: Optional[Warmup] = None,
        max_memory_bytes: Optional[int] = None,
        migrations: Optional[Migrations] = None,
        strict_migrations: bool = False,
    ) -> Store:
        """Like ``Store.open`` (same options), but returns at once, with the
        open running on a thread (docs/warmup.md, "Background open").

        ``store.readiness()`` says how far it is, ``store.wait_ready(timeout)``
        waits for it. Writes are taken as soon as the log's end is known:
        logged (durable as ``sync`` says) and applied in LSN order once their
        table's state is in. At most ``max_pending_records`` /
        ``max_pending_bytes`` of them wait to be applied; beyond that, or
        before writes are taken, a writer waits up to ``admission_timeout_s``
        and then gets BackpressureError. ``store.table(name)`` of a table not
        yet ready is a view whose reads wait for it. Errors the open can find
        at once (ConfigError, NotAStoreError, LockedError) raise here; the
        rest come from ``wait_ready`` (and refuse writes).
        """
        _intake.check_limits(max_pending_records, max_pending_bytes, admission_timeout_s)
        self = cls._new(path, _open_options(locals()))
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
        self._opener = threading.Thread(target=self._run_open_in_background,
                                        name=f"rehydrate-open:{self.path}", daemon=True)
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)
        self._opener.start()
        return self

    @classmethod
    def _new(cls, path: str | os.PathLike[str], options: dict[str, Any]) -> Store:
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
        self._lock = threading.Lock()
        self._journal = Journal(self.path, o.segment_bytes, o.sync, o.sync_interval_ms / 1000.0,
                                self._take_buffered, self._refuse_writes, self._check_owner,
                                self._note_written)
        self._sync_always = o.sync == "always"
        self._buffered = not self._sync_always
        self._open_error: Optional[BaseException] = None
        self._closed = False
        self._owner_pid = os.getpid()
        self._forked = False  # set in a child that inherited this store
        self._held_for_fork = False  # _lock taken by the before-fork hook
        self._dirlock: Optional[DirLock] = None
        # Writers bind the buffer's methods before they are admitted: until
        # a background open takes writes they bind this stand-in, and are
        # rebound to the real buffer when let in (_write_warming).
        self._buf = self._core.LogBuffer(1)
        self._auto: Optional[_checkpointing.AutoCheckpoint] = None
        self._opener: Optional[threading.Thread] = None
        self._atexit: Optional[Callable[[], None]] = None
        self._intake: Optional[_intake.Intake] = None
        self._warming = False  # a background open whose tables are not all in
        self._ready = threading.Event()
        self._targets: dict = {}  # name -> (table, id) while writable: put's fast path
        self._pending_offsets: dict = {}  # offsets of records not yet framed
        self._offsets: dict = {}
        self._registry: Optional[TableRegistry] = None
        self._manifest: dict = {}
        self._plan: Optional[dict] = None
        self._metrics_registry = None
        self.recovery_report = RecoveryReport(mode=o.recovery)
        self.warmup_report: Optional[dict] = None
        self.open_stats: Optional[dict] = None
        self.checkpoint_stats = {"count": 0, "last_duration_s": 0.0, "last_pause_s": 0.0,
                                 "last_lsn": 0}
        _forking.track(self, self._hold_for_fork, self._release_after_fork,
                       self._inherited_across_fork)
        return self

    def _run_open(self) -> None:
        """The open itself, on this thread: state in, writer open, warm up."""
        try:
            self._rebuild_state()
        except RehydrateError:
            raise
        except OSError as e:
            raise StorageIOError.wrap(e, self.path) from e
        try:
            self._warm_up()
        except BaseException as e:
            self.close()
            if isinstance(e, OSError) and not isinstance(e, RehydrateError):
                raise StorageIOError.wrap(e, self.path) from e  # (a migration's checkpoint)
            raise
        self._ready.set()

    def _run_open_in_background(self) -> None:
        try:
            self._run_open()
        except BaseException as e:  # noqa: BLE001 - kept for wait_ready and writers
            with self._lock:
                self._open_error = e
                self._warming = False
                self._closed = True
                self._targets.clear()
                self._intake.cv.notify_all()
            self._ready.set()

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
        if o.auto_checkpoint:
            self._auto = _checkpointing.AutoCheckpoint(
                self.checkpoint, o.checkpoint_every_bytes, o.checkpoint_every_s,
                name=f"rehydrate-checkpoint:{self.path}")
        if self._atexit is None:
            # A store left open when the interpreter exits is closed then (its
            # buffered writes written and fsynced), as a file object would be.
            self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
            atexit.register(self._atexit)

    def _warm_up(self) -> None:
        """The phases that run on the open store: migrate (the pending
        migrations), populate and prime (the hooks); then the store is ready."""
        run = self._warmup
        run.start("migrate")
        applied = []
        if self._options.migrations is not None:
            from .migrate_phase import MigrationHost, run_pending

            host = MigrationHost(self.path, self._core, self._registry, self._checkpoint_lock,
                                 lambda: self.lsn, lambda: self._manifest, self._state_digest,
                                 self._checkpoint_locked, self._replace_state,
                                 self._log_in_new_segment)
            applied = run_pending(host, self._options.migrations, run)
        self._all_ready()
        run.end(self, migrations=applied)
        for phase in ("populate", "prime"):
            run.run_hooks(phase, self)
        self.warmup_report = run.report()
        self.warmup_report["predicted_s"] = self._plan["predicted_s"]
        self.warmup_report["plan"] = self._plan
        _plan.record_open(self.path, self._plan, self.warmup_report)

    def _replace_state(self, name: str, table: Any, version: int) -> None:
        with self._lock:
            self._registry.replace_state(name, table, version)
            self._targets.pop(name, None)  # (the next write takes the new table)

    def _log_in_new_segment(self, lsn: int) -> int:
        self._journal.roll_to(lsn)
        with self._lock:
            got = self._buf.noop()
        if got == lsn:
            self._journal.make_durable(lsn)
        return got

    def _open_writer(self, next_lsn: int, resume_path: Optional[str], resume_size: int) -> None:
        """Open the log for appending at ``next_lsn`` and start taking writes."""
        if "clean_end" in self._manifest:
            # The record of the last clean close goes, durably, before the
            # log can grow: a crash from here on is a crash (docs/recovery.md).
            del self._manifest["clean_end"]
            try:
                _manifest.write(self.path, self._manifest)
            except OSError as e:
                raise StorageIOError.wrap(e, self.path) from e
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

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the store is open and warm: True, or False when
        ``timeout`` seconds pass first. Raises the error a background open
        failed with (a WarmupError, CorruptionError, ...)."""
        if not self._ready.wait(timeout):
            return False
        if self._open_error is not None:
            raise self._open_error
        return True

    # ----------------------------------------------------------- checkpoints
    def checkpoint(self) -> dict[str, Any]:
        """Write a snapshot of the state as of now, while writers keep going.

        Writers pause only while the tables are copied (``pause_s``); the files
        are written after. The snapshot is published (MANIFEST) only once it
        and the log up to its LSN are durable; then snapshots beyond
        ``keep_snapshots`` are deleted (not one a migration may still roll
        back to: docs/migrations.md), and the log is trimmed to what the kept
        snapshots need.
        Returns {"lsn", "bytes", "duration_s", "pause_s", "path", "digest"}.
        A failed file operation raises StorageIOError (the store goes on: the
        log was not at risk), or StoreFailedError if it was the log's.
        """
        self._check_owner()
        self._wait_whole()
        with self._checkpoint_lock:
            try:
                return self._checkpoint_locked()
            except RehydrateError:
                raise
            except OSError as e:  # a snapshot file, the MANIFEST: the log is not at risk
                raise StorageIOError.wrap(e, self.path) from e

    def _checkpoint_locked(self, commit: Optional[Callable[[dict], None]] = None
                           ) -> dict[str, Any]:
        """A checkpoint (``_checkpoint_lock`` held). ``commit(manifest)``
        changes the MANIFEST that publishes the snapshot (a migration's
        ledger entry goes in with it, in the same write)."""
        result, self._manifest = _checkpointing.checkpoint(
            self.path, self._manifest, self._registry, self._capture, self._journal,
            self._options.keep_snapshots, commit)
        if not result.get("existing"):
            self.checkpoint_stats = {"count": self.checkpoint_stats["count"] + 1,
                                     "last_duration_s": result["duration_s"],
                                     "last_pause_s": result["pause_s"],
                                     "last_lsn": result["lsn"]}
        return result

    def _capture(self, prepared: dict) -> tuple:
        """The state as of now, copied under ``_lock`` (writers wait)."""
        with self._lock:
            self._writable()
            if self._auto is not None:
                self._auto.bytes_since = 0
            return _checkpointing.capture(self._registry, self.lsn, self._offsets, prepared)

    @property
    def auto_checkpoint_error(self) -> Optional[BaseException]:
        """What the last automatic checkpoint raised; None after one succeeds."""
        return self._auto.error if self._auto is not None else None

    @property
    def ledger(self) -> list[dict[str, Any]]:
        """The migrations applied to this store, oldest first: the MANIFEST's
        ledger entries (docs/migrations.md), as dicts."""
        return copy.deepcopy(self._manifest.get("ledger") or [])

    # ---------------------------------------------------------------- writes
    def _writable(self) -> None:
        if self._forked:
            raise self._forked_error()
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
            self._journal.make_durable(lsn)
        elif self._buf.pending_bytes >= _FRAME_TARGET:
            self._journal.flush(fsync=False)

    def _refuse_writes(self) -> None:
        """The journal failed a write: every later write goes the slow way
        (``_writable``), which refuses it."""
        with self._lock:
            self._targets.clear()

    def _note_written(self, nbytes: int) -> None:
        if self._auto is not None:
            self._auto.note_written(nbytes)

    def sync(self) -> int:
        """Make every earlier write durable; returns the durable LSN."""
        with self._lock:
            self._writable()
            if self._journal.wal is None:
                return self._journal.durable_lsn  # nothing taken yet
            lsn = self._buf.next_lsn - 1
        self._journal.make_durable(lsn)
        return self._journal.durable_lsn

    # ------------------------------------------------------------- reads
    def table(self, name: str) -> Any:
        """The live, read-only mapping of ``name``; KeyError if never written.

        During a background open, a table whose state is not in yet is a
        view (``ready`` False) whose reads wait for it; so is any name
        before the open knows the log's tables.
        """
        if self._warming:
            intake = self._intake
            with self._lock:
                if not intake.open or (name in self._registry.by_name
                                       and name not in intake.ready):
                    return _intake.TableView(intake, name, lambda: self.table(name),
                                             self._failure, self.path)
        if self._open_error is not None:
            raise self._open_failed() from self._open_error
        info = self._registry.by_name.get(name)
        if info is None:
            raise KeyError(f"no table {name!r} in {self.path}")
        return info.table

    def digest(self) -> int:
        """The state's content digest (docs/FORMAT.md, "Digest"): a 64-bit int,
        equal for equal states whatever their history. Written down (the
        CLI, snapshot META, the ledger, ``checkpoint()``'s dict) it is 16 hex
        digits: ``rehydrate.format_digest(store.digest())`` is what
        ``rehydrate digest`` prints, ``rehydrate.parse_digest`` the way back.
        Taken under the write lock, so it is the digest of one consistent
        state. ConfigError (reason ``no_digest``) for a store with a custom
        table, which has no content digest (docs/tables.md)."""
        self._wait_whole()
        return self._state_digest()

    def _state_digest(self) -> int:
        from .digest import state_digest

        with self._lock:
            return state_digest({n: self._registry.by_name[n].table
                                 for n in self._registry.names()})

    # ------------------------------------------------------ observability
    def readiness(self) -> dict[str, Any]:
        """{"ready", "phase", "progress", "eta_s", "writes", "tables", ...}.

        ``phase`` is the warmup phase running, "ready", "failed" or
        "closed"; ``progress`` (0..1) and ``eta_s`` come from the replay's
        bytes and the plan's prediction; ``writes`` is "taken" or "waiting"
        (for the log's end); ``tables`` maps each known table to whether its
        state is in. A store from ``Store.open`` is ready as it is returned.
        """
        warm = self._ready.is_set() and self._open_error is None
        ready = warm and not self._closed
        run = self._warmup
        if self._open_error is not None:
            phase = "failed"
        elif self._closed:
            phase = "closed"
        elif ready:
            phase = "ready"
        else:
            phase = run.current or "plan"
        # A store closed after its warmup finished had finished it: 1.0.
        progress, eta = run.progress(self._plan, done=warm)
        out = {"ready": ready, "phase": phase, "progress": progress, "eta_s": eta}
        intake = self._intake
        if intake is not None:
            with self._lock:
                out["writes"] = "taken" if intake.open else "waiting"
                out["pending_records"], out["pending_bytes"] = intake.records, intake.nbytes
                names = self._registry.names() if self._registry is not None else []
                out["tables"] = {n: intake.all_ready or n in intake.ready for n in names}
        if self._open_error is not None:
            out["error"] = f"{type(self._open_error).__name__}: {self._open_error}"
        return out

    def _wait_whole(self) -> None:
        """What needs every table (digest, checkpoint) waits for a background
        open's replay; raises if the open failed."""
        if self._warming:
            with self._lock:
                while self._warming and self._open_error is None:
                    self._intake.cv.wait()
        if self._open_error is not None:
            raise self._open_failed() from self._open_error

    def metrics(self, registry: Any = None) -> Any:
        """A prometheus_client registry with this store's metrics (read at
        scrape time; docs/warmup.md). Pass ``registry`` to add them to yours
        (one store per registry: the metric names are the store's)."""
        from . import observe

        if self._metrics_registry is None or registry is not None:
            self._metrics_registry = observe.register(self, registry)
        return self._metrics_registry

    def serve_http(self, port: int = 0, host: str = "127.0.0.1", registry: Any = None) -> Any:
        """Serve ``/readyz``, ``/livez`` and ``/metrics`` from a thread; returns
        a server with ``.port`` and ``.close()``. ConfigError when the port
        cannot be had (in use, not allowed)."""
        from . import observe

        if type(port) is not int or not 0 <= port <= 65535:
            raise ConfigError(f"port must be an int in 0..65535, not {port!r}")
        return observe.ReadinessServer(self, host, port, self.metrics(registry))

    def tables(self) -> list[str]:
        """Table names, in order of creation (during a background open, those
        known so far)."""
        return self._registry.names() if self._registry is not None else []

    @property
    def lsn(self) -> int:
        """LSN of the last write logged (0 for an empty store, or a
        background open that takes no writes yet)."""
        return self._buf.next_lsn - 1

    @property
    def durable_lsn(self) -> int:
        """Every write up to this LSN survives power loss."""
        return self._journal.durable_lsn

    @property
    def sync_mode(self) -> str:
        return self._options.sync

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> bool:
        return self._journal.failed is not None

    # ------------------------------------------------------------- close
    def close(self) -> None:
        """Write and fsync what is pending (every sync mode), then unlock.

        Closing twice is fine. A failed store closes without writing. In a
        process that inherited the store across fork(), close touches nothing
        on disk: the parent's buffered writes, log and LOCK stay its own.
        """
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
        if not self._stop_taking_writes():
            return
        self._stop_threads()
        journal = self._journal
        try:
            if journal.failed is None and journal.wal is not None:
                journal.flush(fsync=True)
                _hints.write(self.path, [(n, self._registry.by_name[n].table)
                                         for n in self._registry.names()])
                self._record_clean_end()
        finally:
            self._release()

    def _stop_taking_writes(self) -> bool:
        """Refuse writes from now on; False when the store was closed already."""
        with self._lock:
            if self._closed:
                return False
            # From here no write is accepted, so a flush after is the last.
            self._closed = True
            self._targets.clear()
            if self._intake is not None:
                self._intake.cv.notify_all()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
        return True

    def _stop_threads(self) -> None:
        self._journal.stop()
        if self._auto is not None:
            self._auto.stop()

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
        try:
            self._journal.close()
        except OSError as e:  # (everything was fsynced: nothing is lost)
            raise StorageIOError.wrap(e, self.path) from e
        finally:
            # Always: a lock left held would refuse every later open here.
            if self._dirlock is not None:
                self._dirlock.release()
                self._dirlock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "failed" if self.failed else "closed" if self._closed else "open"
        return f"<rehydrate.Store {self.path!r} {state} lsn={self.lsn}>"

    # ------------------------------------------------------------- fork
    @property
    def forked(self) -> bool:
        """True in a process that inherited this store across fork(): a
        read-only view of the state as of the fork (ForkedStoreError on
        every write, sync and checkpoint)."""
        return self._forked

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
        self._forked = True
        self._targets.clear()  # so put's fast path goes through _writable
        if self._intake is not None:
            self._intake.cv = threading.Condition(self._lock)
        if not self._ready.is_set():
            self._open_error = ForkedStoreError("open not over at the fork",
                                                path=self.path, owner_pid=self._owner_pid)
        self._ready = threading.Event()
        self._ready.set()  # (wait_ready answers at once: ready, or the error above)
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


def _open_options(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``Store.open`` among an open method's ``locals()``
    (the options ``check_options`` takes)."""
    return {k: args[k] for k in OPTION_NAMES}


def abandon(store: Store) -> None:
    """Let go of ``store`` as a killed process would: its threads stopped and
    its directory unlocked, without writing anything more (buffered writes
    are lost; what reached the OS stays). For crash tests (rehydrate.testing)."""
    store._stop_taking_writes()
    store._stop_threads()
    store._release()


def _close_at_exit(ref: weakref.ref[Store]) -> None:
    store = ref()
    if store is not None:
        try:
            store.close()
        except RehydrateError:
            pass  # a failed store has nothing more it may write
