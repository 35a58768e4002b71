"""Store: open a state directory, get the state back, keep writing the log.

Locking (why two locks): ``_lock`` guards the in-memory state and the record
buffer and is held only for the few microseconds a write takes; ``_io_lock``
serializes framing, writing and fsync, and is never taken while ``_lock`` is
held (order: ``_io_lock`` then ``_lock``). So writers keep appending while
one thread is in ``fsync``, and the next fsync covers them all (group commit).

Fork: a store belongs to the process that opened it. ``os.fork()`` runs the
hooks at the end of this module: before the fork they take every live
store's ``_lock`` (so no write is half-applied in the child's copy); in the
child they turn each store into a read-only view as of the fork that never
touches the parent's files (docs/store.md, "Pre-forking servers").
"""

from __future__ import annotations

import atexit
import functools
import os
import threading
import weakref
import time
from typing import Callable, Optional

from . import _fileio
from . import _format as F
from . import _offsets
from . import hints as _hints
from . import intake as _intake
from . import snapshot as _snapshot
from . import manifest as _manifest
from . import plan as _plan
from ._backend import core as _core
from .errors import (
    ConfigError,
    InvalidOperationError,
    MigrationError,
    CorruptionError,
    NotAStoreError,
    RehydrateError,
    StorageIOError,
    StoreClosedError,
    StoreFailedError,
    ForkedStoreError,
)
from .kinds import resolve_kinds
from .numeric import NumericTable
from .lockfile import DirLock
from . import migrations as _migrations
from .migrations import Migrations, Versions
from .recovery import (
    CancelledError, Problem, RecoveryReport, apply_actions, check_mode, clean_end_of, walk,
)
from .tables import TableRegistry
from .warmup import Warmup, WarmupRun
from .wal import WAL_DIR, SegmentFile, WalWriter, list_segments, parse_segment_name

SYNC_MODES = ("always", "interval", "none")
_FRAME_TARGET = F.FRAME_TARGET_BYTES
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_SYNC_INTERVAL_MS = 50
MIN_SEGMENT_BYTES = 4096
# OS errors that mean a snapshot's file or folder is not there: damage.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
# The stores of this process not yet closed, for the fork hooks (weak: a
# store dropped without close() is not kept alive by them). _LIVE_LOCK
# guards the set; it is never taken while a store's lock is held.
_LIVE: "weakref.WeakSet[Store]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
# How long a fork waits for a store's _lock (held for microseconds by a
# write, for a memcpy by a checkpoint). Past it (the forking thread holds
# the lock itself, say from a custom table's apply) the fork goes on, and
# the child gets a fresh lock.
_FORK_LOCK_WAIT_S = 10.0


def _prepare_directory(path: str, create: bool) -> None:
    """Make sure ``path`` is a store (creating one if allowed), or refuse."""
    manifest_path = os.path.join(path, _manifest.MANIFEST_NAME)
    if os.path.isfile(manifest_path):
        return
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise NotAStoreError("not a directory", path=path)
        if not create:
            raise NotAStoreError("no store here (create=False)", path=path)
        _fileio.makedirs(path)
    else:
        leftovers = set(os.listdir(path)) - {"LOCK", "MANIFEST.tmp"}
        waldir = os.path.join(path, WAL_DIR)
        if "wal" in leftovers and os.path.isdir(waldir) and not list_segments(waldir)[0]:
            # A crash while this store was being created: wal/ is made before
            # the MANIFEST, so an empty wal/ and no MANIFEST is ours, unfinished.
            leftovers.discard("wal")
        if leftovers:
            raise NotAStoreError(
                f"directory is not empty and has no MANIFEST "
                f"(found {', '.join(sorted(leftovers)[:5])}); refusing to use it",
                path=path)
        if not create:
            raise NotAStoreError("no store here (create=False)", path=path)
    _fileio.makedirs(os.path.join(path, WAL_DIR))
    _manifest.write(path, _manifest.initial())
    _fileio.fsync_dir(path)


class Store:
    """A state directory opened for reading and writing. Use ``Store.open``."""

    def __init__(self) -> None:  # pragma: no cover - use Store.open
        raise TypeError("use Store.open(path, ...)")

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        path,
        *,
        create: bool = True,
        sync: str = "interval",
        recovery: str = "tolerate-tail",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
        progress: Optional[Callable[[int, int], None]] = None,
        tables: Optional[dict] = None,
        keep_snapshots: int = 2,
        checkpoint_every_bytes: Optional[int] = None,
        checkpoint_every_s: Optional[float] = None,
        warmup=None,
        max_memory_bytes: Optional[int] = None,
        migrations=None,
        strict_migrations: bool = False,
    ) -> "Store":
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
        self = cls._configured(path, create=create, sync=sync, recovery=recovery,
                               segment_bytes=segment_bytes, sync_interval_ms=sync_interval_ms,
                               progress=progress, tables=tables, keep_snapshots=keep_snapshots,
                               checkpoint_every_bytes=checkpoint_every_bytes,
                               checkpoint_every_s=checkpoint_every_s, warmup=warmup,
                               max_memory_bytes=max_memory_bytes, migrations=migrations,
                               strict_migrations=strict_migrations)
        self._open_now()
        return self

    @classmethod
    def open_background(
        cls,
        path,
        *,
        max_pending_records: int = _intake.DEFAULT_MAX_PENDING_RECORDS,
        max_pending_bytes: int = _intake.DEFAULT_MAX_PENDING_BYTES,
        admission_timeout_s: float = _intake.DEFAULT_ADMISSION_TIMEOUT_S,
        **options,
    ) -> "Store":
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
        self = cls._configured(path, **options)
        self._intake = _intake.Intake(self._lock, max_pending_records, max_pending_bytes,
                                      admission_timeout_s)
        self._warming = True
        try:
            _prepare_directory(self.path, self._options["create"])
            self._dirlock = DirLock(self.path)
        except RehydrateError:
            raise
        except OSError as e:
            raise StorageIOError.wrap(e, self.path) from e
        self._opener = threading.Thread(target=self._open_in_background,
                                        name=f"rehydrate-open:{self.path}", daemon=True)
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)
        self._opener.start()
        return self

    @classmethod
    def _configured(cls, path, *, create=True, sync="interval", recovery="tolerate-tail",
                    segment_bytes=DEFAULT_SEGMENT_BYTES,
                    sync_interval_ms=DEFAULT_SYNC_INTERVAL_MS, progress=None, tables=None,
                    keep_snapshots=2, checkpoint_every_bytes=None, checkpoint_every_s=None,
                    warmup=None, max_memory_bytes=None, migrations=None,
                    strict_migrations=False) -> "Store":
        """A Store with its options checked and its fields set; nothing on
        disk touched yet. ConfigError for a bad option."""
        if sync not in SYNC_MODES:
            raise ConfigError(f"unknown sync mode {sync!r}; expected one of {', '.join(SYNC_MODES)}")
        check_mode(recovery)
        if not isinstance(segment_bytes, int) or segment_bytes < MIN_SEGMENT_BYTES:
            raise ConfigError(f"segment_bytes must be an int >= {MIN_SEGMENT_BYTES}")
        if (type(sync_interval_ms) not in (int, float) or not sync_interval_ms > 0
                or sync_interval_ms == float("inf")):
            raise ConfigError("sync_interval_ms must be a positive number")
        if type(keep_snapshots) is not int or keep_snapshots < 1:
            raise ConfigError("keep_snapshots must be an int >= 1")
        if checkpoint_every_bytes is not None and (type(checkpoint_every_bytes) is not int
                                                   or checkpoint_every_bytes < 1):
            raise ConfigError("checkpoint_every_bytes must be a positive int or None")
        if checkpoint_every_s is not None and (type(checkpoint_every_s) not in (int, float)
                                               or not 0 < checkpoint_every_s < float("inf")):
            raise ConfigError("checkpoint_every_s must be a positive number or None")
        kinds = resolve_kinds(tables)
        if warmup is not None and not isinstance(warmup, Warmup):
            raise ConfigError("warmup must be a rehydrate.Warmup")
        if max_memory_bytes is not None and (type(max_memory_bytes) is not int
                                             or max_memory_bytes < 1):
            raise ConfigError("max_memory_bytes must be a positive int or None")
        if migrations is not None:
            if not isinstance(migrations, Migrations):
                raise ConfigError("migrations must be a rehydrate.Migrations")
            migrations.check()
        if type(strict_migrations) is not bool:
            raise ConfigError("strict_migrations must be True or False")
        self = object.__new__(cls)
        self._migrations, self._strict_migrations = migrations, strict_migrations
        self.path = os.fspath(path)
        self._options = {"create": create, "sync": sync, "recovery": recovery,
                         "segment_bytes": segment_bytes, "sync_interval_ms": sync_interval_ms,
                         "progress": progress, "kinds": kinds}
        self._cancel = bytearray(1)  # set: stop the open (a watchdog, or close())
        self._warmup = WarmupRun(warmup, self.path, self._cancel)
        self._max_memory_bytes = max_memory_bytes
        self._keep_snapshots = keep_snapshots
        self._checkpoint_lock = threading.Lock()
        self._auto_bytes, self._auto_s = checkpoint_every_bytes, checkpoint_every_s
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._failed: Optional[BaseException] = None
        self._open_error: Optional[BaseException] = None
        self._closed = False
        self._owner_pid = os.getpid()
        self._forked = False  # set in a child that inherited this store
        self._held_for_fork = False  # _lock taken by the before-fork hook
        self._dirlock = None
        self._wal = None
        # Writers bind the buffer's methods before they are admitted: until
        # a background open takes writes they bind this stand-in, and are
        # rebound to the real buffer when let in (_write_warming).
        self._buf = _core().LogBuffer(1)
        self._thread = None
        self._cp_thread = None
        self._opener = None
        self._atexit = None
        self._intake = None
        self._warming = False  # a background open whose tables are not all in
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._cp_wake = threading.Event()
        self._targets: dict = {}
        self._pending_offsets: dict = {}  # offsets of records not yet framed
        self._offsets: dict = {}
        self._registry = None
        self._plan = None
        self._metrics_registry = None
        self._bytes_since_checkpoint = 0
        self._durable_lsn = self._written_lsn = 0
        self.recovery_report = RecoveryReport(mode=recovery)
        self.warmup_report = None
        self.open_stats = None
        self.checkpoint_stats = {"count": 0, "last_duration_s": 0.0, "last_pause_s": 0.0,
                                 "last_lsn": 0}
        self.auto_checkpoint_error: Optional[BaseException] = None
        with _LIVE_LOCK:
            _LIVE.add(self)
        return self

    def _open_now(self) -> None:
        """The open itself, on this thread: state in, writer open, warm up."""
        o = self._options
        try:
            self._init(self.path, o["create"], o["sync"], o["recovery"], o["segment_bytes"],
                       o["sync_interval_ms"], o["progress"], o["kinds"])
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

    def _open_in_background(self) -> None:
        try:
            self._open_now()
        except BaseException as e:  # noqa: BLE001 - kept for wait_ready and writers
            with self._lock:
                self._open_error = e
                self._warming = False
                self._closed = True
                self._targets.clear()
                self._intake.cv.notify_all()
            self._ready.set()

    def _warm_up(self) -> None:
        """The phases that run on the open store: migrate (the pending
        migrations), populate and prime (the hooks); then the store is ready."""
        run = self._warmup
        run.start("migrate")
        applied = []
        if self._migrations is not None:
            from .migrate import run_pending

            applied = run_pending(self, self._migrations, run)
        self._all_ready()
        run.end(self, migrations=applied)
        for phase in ("populate", "prime"):
            run.run_hooks(phase, self)
        self.warmup_report = run.report()
        self.warmup_report["predicted_s"] = self._plan["predicted_s"]
        self.warmup_report["plan"] = self._plan
        _plan.record_open(self.path, self._plan, self.warmup_report)

    def _init(self, path, create, sync, recovery, segment_bytes, sync_interval_ms, progress,
              kinds=None):
        t0 = time.perf_counter()
        self._core = _core()
        self._sync_mode = sync
        self._sync_always = sync == "always"
        self._buffered = not self._sync_always
        self._interval_s = sync_interval_ms / 1000.0
        self._segment_bytes = segment_bytes
        run = self._warmup
        run.start("plan")
        if self._dirlock is None:  # (a background open took it already)
            _prepare_directory(path, create)
            self._dirlock = DirLock(path)
        try:
            self._manifest = _manifest.read(path)
            if self._manifest.get("log_end") is not None:
                from .rollback import finish_rollback

                self._manifest = finish_rollback(path, self._manifest)
            from .rollback import check_ledger

            check_ledger(self._manifest, path)
            self._versions = Versions(self._manifest, self._migrations)
            if self._migrations is not None:
                from .migrations import warn_drift

                warn_drift(self.ledger, self._migrations, self._strict_migrations, path)
            self._plan = _plan.make_plan(path, self._manifest)
            _plan.preflight(self._plan, self._max_memory_bytes)
            t_plan = time.perf_counter()
            waldir = os.path.join(path, WAL_DIR)
            for name in list_segments(waldir)[2]:  # tmp files of an interrupted create
                _fileio.unlink(os.path.join(waldir, name))
            self._registry = TableRegistry(self._core, size_hints=self._size_hints(path),
                                           kinds=kinds if kinds is not None else {},
                                           versions=self._versions)
            self._log_start = _manifest.log_start(self._manifest, path)
            run.end(self, bytes=self._plan["bytes"], predicted_s=self._plan["predicted_s"],
                    predicted_peak_bytes=self._plan["predicted_peak_bytes"])
            run.start("snapshot", snapshots=list(self._manifest.get("snapshots") or []))
            snap_lsn, snap_offsets, snap_problems = self._load_snapshot(recovery)
            if snap_lsn + 1 < self._log_start:
                raise _snapshot.no_base_error(path, self._log_start)
            if snap_lsn < _snapshot.migration_floor(self._manifest):
                # The migration's snapshot is the only way to its state.
                raise _snapshot.no_base_error(
                    path, _snapshot.migration_floor(self._manifest) + 1)
            for p in snap_problems:
                run.corruption(p)
            run.end(self, lsn=snap_lsn)
            t_snapshot = time.perf_counter()
            run.start("replay", from_lsn=snap_lsn + 1)

            def replay_progress(done, total):
                run.tick(done, total)
                if progress is not None:
                    progress(done, total)
            walk_args = dict(mode=recovery, registry=self._registry, apply=True,
                             progress=replay_progress, applied_lsn=snap_lsn,
                             offsets=snap_offsets, skip_covered=True,
                             start_lsn=self._log_start, cancel=self._cancel,
                             clean_end=clean_end_of(self._manifest, path))
            watch = run.watch(self._cancel)
            try:
                early = None
                if (self._intake is not None and recovery != "point-in-time"
                        and not self._migrations_pending()):
                    early = self._index_log(walk_args)
                if early is not None:
                    # Writers go on from the log's end while the replay reads
                    # the log as it was (docs/warmup.md, "Background open").
                    walk_args["end"] = early
                    walk_args["on_chunk"] = self._replayed_through
                result = walk(self._core, path, **walk_args)
            except CancelledError:
                if watch.error is None:
                    raise
                raise watch.error from None
            finally:
                watch.close()
            if result.next_lsn <= snap_lsn:
                # The snapshot was published only once the log held its LSN:
                # the log lost records since (a cut, a deleted tail). The
                # snapshot's state is checked whole; keep it, write on after it.
                p = Problem("log_behind_snapshot", os.path.join(path, WAL_DIR), None,
                            result.next_lsn, f"the log ends before snapshot LSN {snap_lsn}",
                            lsn_end=snap_lsn, action="skipped")
                if recovery == "strict":
                    raise CorruptionError(p.detail, path=p.path, lsn=p.lsn,
                                          reason=p.kind)
                result.report.problems.append(p)
                result.next_lsn, result.resume_path = snap_lsn + 1, None
            for p in result.report.problems:
                run.corruption(p)
            result.report.problems[:0] = snap_problems
            run.end(self, records=result.report.applied, bytes=result.report.bytes_read,
                    rate=(result.report.applied / max(time.perf_counter() - t_snapshot, 1e-9)),
                    **({"writes_taken_after_s": self._intake.early_s}
                       if self._intake is not None else {}))
            t_replay = time.perf_counter()
            self.recovery_report: RecoveryReport = result.report
            if early is not None:
                if result.actions or result.next_lsn != early[0] + 1:
                    # The checking pass found this log clean up to there.
                    raise CorruptionError("the log changed while the store was opening",
                                          path=waldir, lsn=result.next_lsn,
                                          reason="log_changed")
                with self._lock:
                    self._offsets = dict(result.offsets)
            else:
                apply_actions(path, result.actions)
                self._offsets = dict(result.offsets)
                self._open_writer(result.next_lsn, result.resume_path, result.resume_size)
            if not self._migrations_pending():
                self._all_ready()  # (else once the migrate phase is over)
            t_end = time.perf_counter()
            self.open_stats = {
                "phases": [
                    {"name": "plan", "duration_s": t_plan - t0},
                    {"name": "snapshot", "duration_s": t_snapshot - t_plan, "lsn": snap_lsn},
                    {"name": "replay", "duration_s": t_replay - t_snapshot,
                     "records": result.report.applied, "bytes": result.report.bytes_read},
                    {"name": "resume", "duration_s": t_end - t_replay},
                ],
                "total_s": t_end - t0,
            }
        except BaseException:
            self._abandon()
            raise
        if self._auto_bytes or self._auto_s:
            self._cp_thread = threading.Thread(target=self._auto_checkpoint,
                                               name=f"rehydrate-checkpoint:{path}", daemon=True)
            self._cp_thread.start()
        if self._atexit is None:
            # A store left open when the interpreter exits is closed then (its
            # buffered writes written and fsynced), as a file object would be.
            self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
            atexit.register(self._atexit)

    def _migrations_pending(self) -> bool:
        """Registered migrations not in the ledger: a background open then
        takes writes only once they have run."""
        if self._migrations is None:
            return False
        done = {e.get("id") for e in self._manifest.get("ledger") or []}
        return any(m.id not in done for m in self._migrations.migrations)

    def _open_writer(self, next_lsn: int, resume_path, resume_size: int) -> None:
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
        self._durable_lsn = self._written_lsn = next_lsn - 1
        self._wal = WalWriter(os.path.join(self.path, WAL_DIR), self._segment_bytes)
        if (resume_path is not None and resume_size < self._segment_bytes
                and WalWriter.can_append(resume_path)):
            first = parse_segment_name(os.path.basename(resume_path))
            self._wal.open_existing(SegmentFile(first, resume_path, resume_size), resume_size)
        else:
            self._wal.create(next_lsn)
        if self._sync_mode != "always":
            self._thread = threading.Thread(target=self._background_flush,
                                            name=f"rehydrate-sync:{self.path}", daemon=True)
            self._thread.start()

    def _abandon(self) -> None:
        """An open that failed: make the writes it took durable, let go."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self._wal is not None and self._failed is None:
                self._flush_out(fsync=True)
        finally:
            self._release()

    # ------------------------------------------------- background open
    def _index_log(self, walk_args: dict):
        """The checking pass of a background open over the log after the
        snapshot: if it is clean, declare every table it names, open the
        writer at its end and take writes; returns (last LSN, {newest segment:
        size}) for the replay to stop at. None (writes wait for the replay's
        end) when the log has anything a recovery mode must decide on."""
        t0 = time.perf_counter()
        reader = TableRegistry(self._core, materialize=False)
        last_lsn: dict = {}  # table id -> LSN by which its records are all in
        in_segment: set = set()
        declare = reader.declare

        def declare_noting(tid, kind, name_bytes, schema=b"", version=1):
            in_segment.add(tid)
            return declare(tid, kind, name_bytes, schema, version)

        def on_chunk(path, next_lsn):
            # Segment-grained: a table declared in a segment is taken to have
            # records up to that segment's end.
            if next_lsn is None:
                in_segment.clear()
            for tid in in_segment if next_lsn is not None else ():
                last_lsn[tid] = next_lsn - 1

        reader.declare = declare_noting
        # (Progress is the replay's to report; this pass only tells the
        # stall watchdog it is alive.)
        args = dict(walk_args, registry=reader, apply=False, mode="skip-corrupted",
                    on_chunk=on_chunk, progress=lambda done, total: self._warmup.tick(n=0))
        result = walk(self._core, self.path, **args)
        clean = (not result.actions and result.next_lsn > walk_args["applied_lsn"]
                 and all(p.kind == "foreign_file" for p in result.report.problems))
        if not clean:
            return None
        for tid in sorted(reader.by_id):
            info = reader.by_id[tid]
            self._registry.declare(tid, info.kind, info.name.encode("utf-8"), info.schema)
        end_lsn = result.next_lsn - 1
        self._open_writer(result.next_lsn, result.resume_path, result.resume_size)
        intake = self._intake
        with self._lock:
            for name in self._registry.names():
                tid = self._registry.by_name[name].tid
                if tid in last_lsn:
                    intake.waiting[name] = last_lsn[tid]
                else:
                    self._mark_ready(name)
            intake.open = True
            intake.early_s = time.perf_counter() - t0
            intake.cv.notify_all()
        sizes = {result.resume_path: result.resume_size} if result.resume_path else {}
        return end_lsn, sizes

    def _replayed_through(self, path, next_lsn) -> None:
        """The replay's on_chunk: tables whose records are all in get their
        pending writes and become ready."""
        if next_lsn is None:
            return
        intake = self._intake
        done = [n for n, last in list(intake.waiting.items()) if last < next_lsn]
        if done:
            with self._lock:
                for name in done:
                    self._mark_ready(name)
                intake.cv.notify_all()

    def _mark_ready(self, name: str) -> None:
        """(``_lock`` held) ``name``'s state is in: apply what waits for it."""
        intake = self._intake
        info = self._registry.by_name[name]
        sink = intake.sinks.pop(name, None)
        if sink is not None:
            sink.apply_to(info.table)
        intake.waiting.pop(name, None)
        intake.ready.add(name)
        if not self._closed and self._failed is None:
            self._targets[name] = (info.table, info.tid)

    def _all_ready(self) -> None:
        """The replay is over: every table's state is in."""
        intake = self._intake
        if intake is None:
            return
        with self._lock:
            for name in self._registry.names():
                if name not in intake.ready:
                    self._mark_ready(name)
            intake.open = intake.all_ready = True
            self._warming = False
            intake.cv.notify_all()

    def _table_ready(self, name: str) -> bool:
        intake = self._intake
        if intake is None or intake.all_ready:
            return True
        return name in intake.ready

    def _wait_table(self, name: str, timeout: Optional[float]) -> bool:
        """Wait until ``name`` is ready (True) or ``timeout`` passes (False);
        raises what a background open failed with."""
        deadline = None if timeout is None else time.monotonic() + timeout
        intake = self._intake
        with self._lock:
            while True:
                if self._open_error is not None:
                    raise self._open_failed()
                if intake is None or intake.all_ready or name in intake.ready:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                intake.cv.wait(left)

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

    def _load_snapshot(self, recovery: str):
        """(LSN, source offsets, problems) of the newest snapshot that loads.

        A snapshot that fails a check is renamed ``<lsn>.broken``, dropped
        from the MANIFEST and reported, and the next older one is tried; with
        none, the whole log is replayed (the log is kept whole, so nothing is
        lost). ``recovery="strict"`` refuses instead. An I/O error other than
        a missing file changes nothing and fails the open (StorageIOError).
        """
        listed = self._manifest.get("snapshots") or []  # (LSNs: manifest.decode checks them)
        problems = []
        floor = _snapshot.migration_floor(self._manifest)
        for lsn in sorted(listed, reverse=True):
            if lsn < floor:
                break  # from before a migration: the log after it is another version's
            spath = os.path.join(self.path, _snapshot.SNAPSHOTS_DIR, _snapshot.snapshot_name(lsn))
            try:
                meta, tables = _snapshot.load(spath, self._registry.snapshot_table)
                if meta["lsn"] != lsn:
                    raise CorruptionError(f"snapshot META says LSN {meta['lsn']}", path=spath,
                                          reason="bad_snapshot")
            except (CorruptionError, OSError) as e:
                if isinstance(e, OSError) and not isinstance(e, _MISSING):
                    # An I/O error (EIO, EACCES, ENOMEM, ...) says nothing of the
                    # snapshot's bytes: dropping it could leave a trimmed log no
                    # base. Keep it, fail this open; the next one can load it.
                    raise StorageIOError.wrap(e, spath) from e
                if recovery == "strict":
                    if isinstance(e, OSError):
                        raise CorruptionError(f"snapshot unreadable: {e}", path=spath, lsn=lsn,
                                              reason="bad_snapshot") from e
                    raise
                problems.append(Problem("bad_snapshot", spath, None, lsn, str(e),
                                        action="skipped"))
                self._drop_snapshot(lsn, spath)
                continue
            versions = {e["name"]: _snapshot.entry_version(e, spath) for e in meta["tables"]}
            for name, tid, kind, table in tables:
                table = self._read_at_version(name, kind, table, versions[name], spath, lsn)
                self._registry.add_loaded(name, tid, kind, table)
            return lsn, dict(meta["offsets"]), problems
        return 0, {}, problems

    def _read_at_version(self, name, kind, table, version, spath, lsn):
        """A loaded snapshot table at this table's current version: as it is,
        or with every value through the upcasters (a new table). An
        upcaster that raises fails the open (MigrationError): the snapshot
        is sound, the code is not."""
        from .migrations import upcast_table

        fns = self._versions.reader(name, version)  # ConfigError: ahead, or a gap
        if fns is None:
            return table
        if kind not in (F.KIND_KV, F.KIND_DICT):
            raise ConfigError(f"table {name!r} is at version {version} in snapshot {lsn}; "
                              "upcasters are for kv and dict tables", reason="upcaster_kind")
        try:
            return upcast_table(table, name, fns, self._core,
                                lambda: self._registry._make(name, kind, hinted=False))
        except InvalidOperationError as e:
            raise MigrationError(f"{e.detail} (snapshot at LSN {lsn})", path=spath, lsn=lsn,
                                 reason="upcaster_error") from e.__cause__

    def _drop_snapshot(self, lsn: int, spath: str) -> None:
        """Take a failed snapshot out of use, keeping its files as evidence."""
        if os.path.isdir(spath):
            _fileio.rename(spath, spath + ".broken" if not os.path.exists(spath + ".broken")
                           else f"{spath}.broken.{time.time_ns()}")
            _fileio.fsync_dir(os.path.dirname(spath))
        self._manifest["snapshots"] = [x for x in self._manifest.get("snapshots", []) if x != lsn]
        _manifest.write(self.path, self._manifest)

    def _auto_checkpoint(self) -> None:
        """Checkpoint every ``checkpoint_every_s`` seconds and/or after
        ``checkpoint_every_bytes`` of log, on this thread. A failed checkpoint
        does not fail the store (the log has everything): it is logged, kept
        in ``auto_checkpoint_error``, and tried again at the next trigger."""
        import logging

        last = time.monotonic()
        while not self._stop.is_set():
            timeout = None if not self._auto_s else max(0.0, last + self._auto_s - time.monotonic())
            self._cp_wake.wait(timeout)
            self._cp_wake.clear()
            if self._stop.is_set():
                return
            due = ((self._auto_s and time.monotonic() - last >= self._auto_s)
                   or (self._auto_bytes and self._bytes_since_checkpoint >= self._auto_bytes))
            if not due:
                continue
            last = time.monotonic()
            try:
                self.checkpoint()
                self.auto_checkpoint_error = None
            except StoreClosedError:
                return
            except Exception as e:  # noqa: BLE001 - reported, the store goes on
                self.auto_checkpoint_error = e
                logging.getLogger("rehydrate").warning("automatic checkpoint failed: %r", e)

    def checkpoint(self) -> dict:
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

    def _checkpoint_locked(self, commit=None) -> dict:
        """A checkpoint (``_checkpoint_lock`` held). ``commit(manifest)``, if
        given, changes the MANIFEST that publishes the snapshot (a
        migration's ledger entry goes in with it, in the same write)."""
        from .digest import format_digest, table_digest

        t0 = time.perf_counter()
        # Before the lock: memory for the native tables' copies, faulted
        # in now, so that under the lock a copy is one memcpy.
        prepared = {name: info.table._copy_prepare()
                    for name, info in list(self._registry.by_name.items())
                    if hasattr(info.table, "_copy_prepare")}
        t_lock = time.perf_counter()
        with self._lock:
            self._writable()
            lsn = self.lsn
            captured, digests = [], {}
            for name in self._registry.names():
                info = self._registry.by_name[name]
                if info.kind == F.KIND_CUSTOM:
                    payload = info.table.snapshot()
                elif info.kind == F.KIND_NUMERIC:
                    payload = (info.table.schema(),
                               [a.copy() for a in info.table._live()])  # memcpys
                    digests[name] = format_digest(info.table._digest())
                elif hasattr(info.table, "_copy"):
                    payload = info.table._copy(prepared.pop(name, None))
                else:  # a DictTable (small by intent): its pairs, now
                    payload = info.table._items_raw()
                    digests[name] = format_digest(table_digest(info.table))
                captured.append((name, info.tid, info.kind, payload))
            versions = {name: self._registry.version(name) for name in self._registry.names()}
            offsets = dict(self._offsets)
            self._bytes_since_checkpoint = 0
        pause_s = time.perf_counter() - t_lock
        del prepared
        # Outside the lock: the copies' digests (their columns are made
        # as the files are written).
        for name, _tid, kind, payload in captured:
            if name not in digests and kind != F.KIND_CUSTOM:
                digests[name] = format_digest(payload._digest())
        sdir = os.path.join(self.path, _snapshot.SNAPSHOTS_DIR)
        spath = os.path.join(sdir, _snapshot.snapshot_name(lsn))
        if lsn in (self._manifest.get("snapshots") or []) and commit is None:
            # Nothing written since the last snapshot: that one stands.
            return {"lsn": lsn, "bytes": 0, "duration_s": 0.0, "pause_s": pause_s,
                    "path": spath, "digest": _snapshot.read_meta(spath).get("digest"),
                    "existing": True}
        self._make_durable(lsn)  # the log holds everything the snapshot does
        if os.path.isdir(spath) and lsn not in (self._manifest.get("snapshots") or []):
            _fileio.remove_tree(spath)  # written, never published (a crash before the MANIFEST)
        info = _snapshot.write(self.path, _snapshot.Capture(lsn, offsets, captured, versions),
                               digests)
        man = dict(self._manifest)
        if commit is None:
            _migrations.count_checkpoint(man)
        else:
            commit(man)
        pinned = _migrations.pinned_snapshots(man)
        kept = sorted(set(man.get("snapshots") or []) | {lsn},
                      reverse=True)[:self._keep_snapshots]
        man["snapshots"] = sorted(set(kept) | (pinned & set(man.get("snapshots") or [])),
                                  reverse=True)
        _manifest.write(self.path, man)
        self._manifest = man
        kept = man["snapshots"]
        # Only now, with the MANIFEST that drops them durable, go the old ones.
        for old in _snapshot.list_snapshots(self.path):
            if old not in kept:
                _fileio.remove_tree(os.path.join(sdir, _snapshot.snapshot_name(old)))
        _fileio.fsync_dir(sdir)
        self._trim_log(min(kept))
        duration = time.perf_counter() - t0
        self.checkpoint_stats = {"count": self.checkpoint_stats["count"] + 1,
                                 "last_duration_s": duration, "last_pause_s": pause_s,
                                 "last_lsn": lsn}
        return {"lsn": lsn, "bytes": info.bytes, "duration_s": duration,
                "pause_s": pause_s, "path": info.path, "digest": info.digest}

    @property
    def ledger(self) -> list:
        """The migrations applied to this store, oldest first: the MANIFEST's
        ledger entries (docs/migrations.md), as dicts."""
        import copy

        return copy.deepcopy(self._manifest.get("ledger") or [])

    def _trim_log(self, oldest_snapshot_lsn: int) -> None:
        """Delete the segments every kept snapshot has made unneeded.

        A segment goes when its last record is at or below the oldest kept
        snapshot's LSN (so even a fallback to that snapshot has its whole
        tail). The MANIFEST's ``log_start`` moves first, durably; only then
        are the files unlinked, so a crash between the two leaves segments an
        open recognises as below ``log_start`` and finishes removing.
        """
        with self._io_lock:  # no roll meanwhile; the newest segment never goes
            segs = list_segments(os.path.join(self.path, WAL_DIR))[0]
            cut, start = [], self._log_start
            for seg, nxt in zip(segs, segs[1:]):
                if nxt.first_lsn - 1 > oldest_snapshot_lsn or seg.path == self._wal.path:
                    break
                cut.append(seg)
                start = nxt.first_lsn
            if not cut:
                return
            self._manifest["log_start"] = self._log_start = start
            _manifest.write(self.path, self._manifest)
            for seg in cut:
                _fileio.unlink(seg.path)
            _fileio.fsync_dir(os.path.join(self.path, WAL_DIR))

    @staticmethod
    def _size_hints(path: str) -> dict:
        found = _hints.read(path)
        if not found:
            return {}
        wal_bytes = sum(s.size for s in list_segments(os.path.join(path, WAL_DIR))[0])
        return {name: _hints.capped(h, wal_bytes) for name, h in found.items()}

    # ---------------------------------------------------------------- writes
    def _writable(self) -> None:
        if self._forked:
            raise self._forked_error()
        if self._open_error is not None:
            raise self._open_failed() from self._open_error
        if self._failed is not None:
            raise StoreFailedError(f"store failed and refuses writes: {self._failed}",
                                   path=self.path, lsn=self._durable_lsn) from self._failed
        if self._closed:
            raise StoreClosedError("store is closed", path=self.path)

    # The write path. ``_targets`` maps a table name to (table, id) while the
    # store is writable; it is emptied when the store closes or fails, so the
    # fast path needs no other check and everything unusual (a new table, a
    # closed or failed store) goes through ``_write_locked``.
    def _write_locked(self, method, table, args) -> int:
        """One write with ``_lock`` held: check, create the table, apply, log."""
        self._writable()
        if self._warming:
            return self._write_warming(method, table, args)
        return self._write_plain(method, table, args)

    def _write_plain(self, method, table, args) -> int:
        info = self._registry.by_name.get(table)
        new = info is None
        if new:
            info = self._registry.create(table)
        try:
            lsn = method(info.table, info.tid, *args)
        except BaseException:
            if new:
                self._registry.drop_if_new(info)
            raise
        self._targets[table] = (info.table, info.tid)
        return lsn

    def _write_warming(self, method, table, args) -> int:
        """A write during a background open (``_lock`` held): applied now to a
        ready table, kept for one that is not, or waited with (intake.py)."""
        intake = self._intake
        wait = _intake.Deadline(intake, self.path)
        while True:
            self._writable()
            if not self._warming:
                return self._write_plain(self._rebound(method), table, args)
            if not intake.open:
                wait.wait("the open has not yet found the log's end")
                continue
            info = self._registry.by_name.get(table)
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

    def _rebound(self, method):
        """``method`` of the log buffer writes go to now (see ``_buf``)."""
        owner = getattr(method, "__self__", None)
        if owner is self or owner is self._buf:
            return method
        return getattr(self._buf, method.__name__)

    def _after_write(self, lsn: int) -> None:
        if self._sync_always:
            self._make_durable(lsn)
        elif self._buf.pending_bytes >= _FRAME_TARGET:
            self._flush_out(fsync=False)

    def _write(self, method, table, *args) -> int:
        with self._lock:
            lsn = self._write_locked(method, table, args)
        self._after_write(lsn)
        return lsn

    def put(self, table: str, key, value) -> int:
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

    def delete(self, table: str, key) -> int:
        """Remove ``key`` (absent keys are fine: the delete is still logged)."""
        return self._write(self._buf.delete, table, key)

    def incr(self, table: str, key, delta=1, column=None) -> int:
        """Add ``delta`` to a number (an absent key counts as 0); for a
        NumericTable, ``key`` is the row and ``column`` names the cell.

        InvalidOperationError, before anything is written, when the value is
        not a number, the delta is not an int or float, or an int result
        leaves int64.
        """
        if column is not None:
            return self._write(self._incr_column, table, key, delta, column)
        return self._write(self._buf.incr, table, key, delta)

    def _incr_column(self, t, tid, row, delta, column) -> int:
        # Logged as a put of the cell's new value (computed here, under the
        # lock): replay then only sets cells, and every record is idempotent.
        if getattr(t, "_pending", False):
            raise _intake.NotReady()  # the new value needs the cell's state
        if not isinstance(t, NumericTable):
            raise ConfigError(f"column= is for NumericTable tables, not {type(t).__name__}")
        return self._buf.put(t, tid, row, {column: t._added(row, column, delta)})

    def write(self, table: str, op: str, key=None, value=None) -> int:
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

    def batch(self, offsets=None) -> "Batch":
        """A context manager collecting writes applied all together at exit.

        After a crash, a batch is either wholly there or wholly absent.
        ``offsets`` ({source: int64}) are the upstream positions the batch
        consumed; they become durable atomically with its records and come
        back in ``store.offsets`` after a restart. ConfigError for bad offsets.
        """
        return Batch(self, _offsets.check_offsets(offsets) if offsets else None)

    def consume(self, source: str, offset: int) -> Optional["Batch"]:
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
        return Batch(self, offsets, consume=True)

    def _already_consumed(self, offsets) -> bool:
        return all(s in self._offsets and off <= self._offsets[s] for s, off in offsets.items())

    @property
    def offsets(self) -> dict:
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
        wait = _intake.Deadline(intake, self.path)
        while self._warming:
            if self._open_error is not None:
                raise self._open_failed() from self._open_error
            if raise_timeout:
                wait.wait("source offsets are known once the replay is over")
            else:
                intake.cv.wait()

    def _commit(self, staging, offsets=None, consume=False):
        """(last LSN or None, skipped): apply and log a batch."""
        with self._lock:
            lsn, skipped = self._commit_locked(staging, offsets, consume)
        if lsn is not None:
            self._after_write(lsn)
        return lsn, skipped

    def _commit_locked(self, staging, offsets, consume):
        self._writable()
        if offsets:
            self._wait_offsets_locked()
        if self._warming:
            return self._commit_warming(staging)
        if consume and self._already_consumed(offsets):
            return None, True
        if offsets and not len(staging):
            # Offsets alone still take an LSN (a no-op record), so they are
            # logged, made durable and waited for like any write.
            lsn = self._buf.noop()
        else:
            created = []
            infos = []
            for name in staging.names:
                info = self._registry.by_name.get(name)
                if info is None:
                    info = self._registry.create(name)
                    created.append(info)
                infos.append(info)
            try:
                lsn = self._buf.commit(staging, [i.table for i in infos], [i.tid for i in infos])
            except BaseException:
                for info in reversed(created):
                    self._registry.drop_if_new(info)
                raise
            for info in infos:
                self._targets[info.name] = (info.table, info.tid)
        if offsets and lsn is not None:
            self._pending_offsets.update(offsets)
            self._offsets.update(offsets)
        return lsn, False

    def _commit_warming(self, staging):
        """A batch (without offsets) during a background open, ``_lock``
        held: its tables not yet ready get their ops kept (PendingSink); a
        batch that needs a table's state waits for it. All or nothing."""
        intake = self._intake
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
            created, tables, tids, sinks = [], [], [], []
            for name in staging.names:
                info = self._registry.by_name.get(name)
                if info is None:
                    info = self._registry.create(name)
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
                    self._registry.drop_if_new(info)
                if isinstance(e, _intake.NotReady):
                    wait.wait("this batch needs the state of a table not ready yet")
                    continue
                raise
            for info in created:
                intake.ready.add(info.name)
                self._targets[info.name] = (info.table, info.tid)
            return lsn, False

    # ------------------------------------------------------------ durability
    def _flush_locked_io(self, fsync: bool) -> None:
        """Frame and write what is pending (caller holds ``_io_lock``)."""
        # (Also after a fork that ran no at-fork hooks, say a raw fork() from
        # C: the parent's buffered records are never written twice.)
        self._check_owner()
        if self._failed is not None:
            raise StoreFailedError(f"store failed: {self._failed}", path=self.path,
                                   lsn=self._durable_lsn) from self._failed
        with self._lock:
            used = self._buf.used_tids()
            first, count, records = self._buf.take()
            offsets, self._pending_offsets = self._pending_offsets, {}
        try:
            if count:
                n = self._wal.write_frame(first, count, records, self._registry.decls(used),
                                          offsets)
                self._written_lsn = first + count - 1
                self._bytes_since_checkpoint += n
                if self._auto_bytes and self._bytes_since_checkpoint >= self._auto_bytes:
                    self._cp_wake.set()
            if fsync and self._written_lsn > self._durable_lsn:
                self._wal.fsync()
                self._durable_lsn = self._written_lsn
        except BaseException as e:
            # Fail-stop: after a failed write or fsync the file's state is
            # unknown; retrying could report success for lost data.
            self._failed = e
            with self._lock:
                self._targets.clear()
            raise StoreFailedError(f"write-ahead log I/O failed: {e!r}", path=self._wal.path,
                                   lsn=self._durable_lsn) from e

    def _flush_out(self, fsync: bool) -> None:
        with self._io_lock:
            self._flush_locked_io(fsync)

    def _make_durable(self, lsn: int) -> None:
        with self._io_lock:
            if self._durable_lsn < lsn:
                self._flush_locked_io(fsync=True)

    def sync(self) -> int:
        """Make every earlier write durable; returns the durable LSN."""
        with self._lock:
            self._writable()
            if self._wal is None:
                return self._durable_lsn  # nothing taken yet
            lsn = self._buf.next_lsn - 1
        self._make_durable(lsn)
        return self._durable_lsn

    def _background_flush(self) -> None:
        fsync = self._sync_mode == "interval"
        while not self._stop.wait(self._interval_s):
            try:
                self._flush_out(fsync)
            except StoreFailedError:
                return  # writers see the failure on their next call

    # ------------------------------------------------------------- reads
    def table(self, name: str):
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
                    return _intake.TableView(self, name)
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
    def readiness(self) -> dict:
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

    def metrics(self, registry=None):
        """A prometheus_client registry with this store's metrics (read at
        scrape time; docs/warmup.md). Pass ``registry`` to add them to yours
        (one store per registry: the metric names are the store's)."""
        from . import observe

        if self._metrics_registry is None or registry is not None:
            self._metrics_registry = observe.register(self, registry)
        return self._metrics_registry

    def serve_http(self, port: int = 0, host: str = "127.0.0.1", registry=None):
        """Serve ``/readyz``, ``/livez`` and ``/metrics`` from a thread; returns
        a server with ``.port`` and ``.close()``. ConfigError when the port
        cannot be had (in use, not allowed)."""
        from . import observe

        if type(port) is not int or not 0 <= port <= 65535:
            raise ConfigError(f"port must be an int in 0..65535, not {port!r}")
        return observe.ReadinessServer(self, host, port, self.metrics(registry))

    def tables(self) -> list:
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
        return self._durable_lsn

    @property
    def sync_mode(self) -> str:
        return self._sync_mode

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> bool:
        return self._failed is not None

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
        with self._lock:
            if self._closed:
                return
            # From here no write is accepted, so the flush below is the last.
            self._closed = True
            self._targets.clear()
            if self._intake is not None:
                self._intake.cv.notify_all()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
        self._stop.set()
        self._cp_wake.set()
        for thread in (self._thread, self._cp_thread):
            if thread is not None:
                thread.join()
        try:
            if self._failed is None and self._wal is not None:
                self._flush_out(fsync=True)
                _hints.write(self.path, [(n, self._registry.by_name[n].table)
                                         for n in self._registry.names()])
                self._record_clean_end()
        finally:
            self._release()

    def _record_clean_end(self) -> None:
        """Write down, durably, where this clean close leaves the log: the
        next open then holds the log to it, so a cut or a damaged length at
        the end is damage, never a torn tail (no crash can have made it)."""
        wal = self._wal
        segments = list_segments(os.path.join(self.path, WAL_DIR))[0]
        newest = segments[-1] if segments else None
        if wal.path is None or newest is None or (newest.path, newest.size) != (wal.path,
                                                                                wal.size):
            # The log is not where this writer thinks it is (a roll that
            # failed half way, say): claim no clean end; the next open then
            # judges the log by the crash rules.
            return
        self._manifest["clean_end"] = {
            "lsn": self.lsn,
            "segment": os.path.basename(wal.path),
            "offset": wal.size,
        }
        try:
            _manifest.write(self.path, self._manifest)
        except OSError as e:
            raise StorageIOError.wrap(e, self.path) from e

    def _release(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)
        try:
            if self._wal is not None:
                self._wal.close()
        except OSError as e:  # (everything was fsynced: nothing is lost)
            raise StorageIOError.wrap(e, self.path) from e
        finally:
            # Always: a lock left held would refuse every later open here.
            if self._dirlock is not None:
                self._dirlock.release()
                self._dirlock = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "failed" if self._failed else "closed" if self._closed else "open"
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
        self._io_lock = threading.Lock()
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
        if self._wal is not None:
            self._wal.forget()
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


class Batch:
    """Writes collected by ``store.batch()``, applied and logged at exit as one frame.

    Key, value and delta type errors raise at the call; an ``incr`` that does
    not apply raises at exit, and then nothing of the batch is applied.
    An exception inside the ``with`` block discards the batch. ``lsn`` is the
    batch's last LSN after the block (None if nothing was written);
    ``skipped`` is True for a ``store.consume`` batch whose offset another
    batch recorded first.
    """

    __slots__ = ("_store", "_staging", "_offsets", "_consume", "lsn", "skipped", "_done",
                 "put", "delete", "incr", "clear")

    def __init__(self, store: Store, offsets=None, consume: bool = False) -> None:
        self._store = store
        self._staging = store._core.Staging()
        self._offsets = offsets
        self._consume = consume
        self.lsn: Optional[int] = None
        self.skipped = False
        self._done = False
        # Bound straight to the core's staging methods: no Python frame per op.
        self.put = self._staging.put
        self.delete = self._staging.delete
        self.incr = self._staging.incr
        self.clear = self._staging.clear

    def __len__(self) -> int:
        return len(self._staging)

    def __enter__(self) -> "Batch":
        if self._done:
            raise StoreClosedError("a batch can be used once")
        self._store._writable()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._done = True
        # Writes after the block would never be committed: refuse them loudly.
        self.put = self.delete = self.incr = self.clear = _batch_is_over
        if exc_type is None:
            self.lsn, self.skipped = self._store._commit(self._staging, self._offsets,
                                                         self._consume)


def _close_at_exit(ref) -> None:
    store = ref()
    if store is not None:
        try:
            store.close()
        except RehydrateError:
            pass  # a failed store has nothing more it may write


def _batch_is_over(*args, **kwargs):
    raise StoreClosedError("this batch has ended; start a new store.batch()")


def _before_fork() -> None:
    # Every live store's _lock, so the child's copy holds no write half-applied.
    _LIVE_LOCK.acquire()
    for store in list(_LIVE):
        store._held_for_fork = store._lock.acquire(timeout=_FORK_LOCK_WAIT_S)


def _after_fork_in_parent() -> None:
    for store in list(_LIVE):
        if store._held_for_fork:
            store._held_for_fork = False
            store._lock.release()
    _LIVE_LOCK.release()


def _after_fork_in_child() -> None:
    # (The views stay in _LIVE: a grandchild's fork takes their locks too.)
    for store in list(_LIVE):
        store._inherited_across_fork()
    _LIVE_LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
