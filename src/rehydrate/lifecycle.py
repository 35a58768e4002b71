"""A store's life: how it is made, opened, warmed up, closed and carried
across fork() (docs/store.md).

``Lifecycle`` is the base class of ``Store`` (store.py, the surface a
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
import functools
import os
import secrets
import threading
import time
import weakref
from typing import Any, Callable, Optional, Self

from . import _format as F
from . import checkpointing as _checkpointing
from . import forking as _forking
from . import hints as _hints
from . import intake as _intake
from . import manifest as _manifest
from . import opening as _opening
from . import plan as _plan
from . import standby as _standby
from ._backend import core as _core
from ._types import StrPath
from .errors import (
    BackpressureError, ForkedStoreError, HandoffError, MovedError, ReadOnlyError,
    RehydrateError, StorageIOError, StoreClosedError, StoreFailedError,
)
from .follow import LogFollower
from .journal import Journal
from .lockfile import DirLock
from .options import OPTION_NAMES, Options, check_options
from .recovery import Action, RecoveryReport, apply_actions
from .warmup import WarmupRun
from .writes import Writes

# How long a fork waits for a store's _lock (held for microseconds by a
# write, for a memcpy by a checkpoint). Past it (the forking thread holds
# the lock itself, say from a custom table's apply) the fork goes on, and
# the child gets a fresh lock.
_FORK_LOCK_WAIT_S = 10.0


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
    _owner_pid: int
    _forked: bool  # set in a child that inherited this store
    _held_for_fork: bool  # _lock taken by the before-fork hook
    _dirlock: Optional[DirLock]
    _auto: Optional[_checkpointing.AutoCheckpoint]
    _opener: Optional[threading.Thread]  # a background open's thread
    _atexit: Optional[Callable[[], None]]
    _ready: threading.Event
    _manifest: dict[str, Any]
    _plan: Optional[dict[str, Any]]
    _metrics_registry: Any  # a prometheus_client registry, once asked for
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

    # (What the surface provides that the workings call.)
    def close(self) -> None:
        raise NotImplementedError

    def checkpoint(self) -> dict[str, Any]:
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
        self._owner_pid = os.getpid()
        self._forked = False  # set in a child that inherited this store
        self._held_for_fork = False  # _lock taken by the before-fork hook
        self._dirlock = None
        self._auto = None
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
        self._remote = None
        _forking.track(self, self._hold_for_fork, self._release_after_fork,
                       self._inherited_across_fork)
        return self

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
        self._opener = threading.Thread(target=self._run_open_in_background,
                                        name=f"rehydrate-open:{self.path}", daemon=True)
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)
        self._opener.start()

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
        applied: list[str] = []
        if self._options.migrations is not None:
            from .migrate_phase import MigrationHost, run_pending

            host = MigrationHost(self.path, self._core, self._open_registry, self._checkpoint_lock,
                                 lambda: self.lsn, lambda: self._manifest, self._state_digest,
                                 self._checkpoint_locked, self._replace_state,
                                 self._log_in_new_segment)
            applied = run_pending(host, self._options.migrations, run)
        self._all_ready()
        run.end(self, migrations=applied)
        for phase in ("populate", "prime"):
            run.run_hooks(phase, self)
        self.warmup_report = report = run.report()
        plan = self._plan
        assert plan is not None  # (the plan phase made it)
        report["predicted_s"] = plan["predicted_s"]
        report["plan"] = plan
        _plan.record_open(self.path, plan, report)

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
        if not self._stop_taking_writes():
            return
        self._stop_threads()
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
        finally:
            self._release()

    def _checkpoint_locked(self, commit: Optional[_checkpointing.Commit] = None
                           ) -> dict[str, Any]:
        """A checkpoint (``_checkpoint_lock`` held). ``commit(manifest)``
        changes the MANIFEST that publishes the snapshot (a migration's
        ledger entry goes in with it, in the same write)."""
        result = _checkpointing.checkpoint(
            self.path, self._manifest, self._open_registry, self._capture, self._journal,
            self._options.keep_snapshots, commit)
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

    def _writable(self) -> None:
        if self._forked:
            raise self._forked_error()
        if self._role != "primary":
            raise self._not_primary()
        if self._hold is not None:
            self._wait_out_hold()
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
        elif self._buf.pending_bytes >= F.FRAME_TARGET_BYTES:
            self._journal.flush(fsync=False)

    def _refuse_writes(self) -> None:
        """The journal failed a write: every later write goes the slow way
        (``_writable``), which refuses it."""
        with self._lock:
            self._targets.clear()

    def _note_written(self, nbytes: int) -> None:
        if self._auto is not None:
            self._auto.note_written(nbytes)

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

    # ------------------------------------------------------- replication
    # (docs/replication.md: roles, epochs, fencing, handoff.)
    def _not_primary(self) -> RehydrateError:
        if self._moved is not None:  # (moved, or a demoted primary: now a standby)
            moved = self._moved or {}
            to = moved.get("address")
            return MovedError(
                f"this store handed its writes over (epoch {moved.get('epoch')})"
                + (f" to {to}" if to else "") + "; write to the new primary",
                path=self.path, lsn=self.lsn, address=to, epoch=moved.get("epoch"))
        if self._role == "standby":
            return ReadOnlyError("a standby takes no writes (write to the primary, or "
                                 "promote() this standby)", path=self.path, lsn=self.lsn)
        return ReadOnlyError(f"a {self._role} store takes no writes", path=self.path,
                             lsn=self.lsn)

    def _wait_out_hold(self) -> None:
        """A write during a handoff's hold (``_lock`` held): wait until the
        handoff ends. It ended in a move: MovedError; it gave up: go on."""
        while self._hold is not None:
            left = self._hold["deadline"] + 1.0 - time.monotonic()
            if left <= 0:
                raise BackpressureError("a handoff holds writes and has not ended",
                                        path=self.path, lsn=self.lsn, reason="handoff_hold")
            self._hold_cv.wait(left)
        if self._role != "primary":
            raise self._not_primary()

    def _check_fence(self) -> None:
        """Before each write to the log: a directory whose MANIFEST now has a
        newer epoch than this writer's belongs to another writer; this one
        never appends again (MovedError). A stat, and a read only when the
        MANIFEST was replaced."""
        if self._role == "moved":
            raise self._not_primary()
        stamp = _manifest.stamp(self.path)
        if stamp == self._manifest_stamp:
            return
        try:
            man = _manifest.read(self.path)
        except (RehydrateError, OSError):
            return  # (a MANIFEST being replaced: the next write looks again)
        self._manifest_stamp = stamp
        epoch = _manifest.epoch(man, self.path)
        if epoch > self._epoch:
            record = man.get("handoff") or {}
            with self._lock:
                self._role = "moved"
                self._moved = {"epoch": epoch, "address": record.get("to"),
                               "final_lsn": record.get("final_lsn")}
                self._targets.clear()
                self._hold_cv.notify_all()
            raise self._not_primary()

    def _look_for_handoff(self) -> None:
        """On the flusher's tick: a standby of this directory asked for the
        writes (the HANDOFF file); hand over on a thread of its own (it
        stops the flusher)."""
        if self._role != "primary" or self._handing_over or self._closed \
                or not os.path.exists(os.path.join(self.path, _standby.HANDOFF_NAME)):
            return
        request = _standby.claim_request(self.path, self._store_id)
        if request is None:
            return
        self._handing_over = True
        thread = threading.Thread(target=self._hand_over_locally, args=(request,),
                                  name=f"rehydrate-handoff:{self.path}", daemon=True)
        self._handoff_thread = thread
        thread.start()

    def _hand_over_locally(self, request: dict[str, Any]) -> None:
        try:
            self._handoff_prepare(request["request"], float(request["hold_s"]),
                                  request.get("address"))
            self._handoff_commit(request["request"], local=True,
                                 demote=request.get("demote") is True)
        except RehydrateError:
            pass  # the standby times out; this store stays primary (or failed)
        finally:
            self._handing_over = False

    def _demote(self) -> _standby.Follow:
        """A store that handed its directory over stays on as a standby of
        it (``_lock`` held): its state is the log up to the handoff's LSN,
        and it follows the new primary's writes from there. The caller
        starts the returned follower once the log is the new primary's."""
        log_start = _manifest.log_start(self._manifest, self.path)
        follower = LogFollower(self._core, self.path, self._open_registry, self._offsets,
                               self.lsn, log_start)
        follow = _standby.Follow(follower, self._lock, self.path,
                                 [self.path, _standby.wal_dir(self.path)], self._refollow)
        self._follow = follow
        self._role = "standby"
        return follow

    def _handoff_prepare(self, request: str, hold_s: float,
                         address: Optional[str]) -> dict[str, Any]:
        """Hold new writes, make every write taken durable; returns
        {"final_lsn", "epoch"}. The hold ends with ``_handoff_commit`` (a
        move) or ``_handoff_abort`` (writes resume), by itself after
        ``hold_s``."""
        self.sync()  # most of the fsync before the hold: writers go on meanwhile
        with self._lock:
            self._writable()
            self._hold = {"request": request, "since": time.monotonic(),
                          "deadline": time.monotonic() + hold_s, "address": address}
            self._targets.clear()
            final = self.lsn
        try:
            self._journal.make_durable(final)
        except BaseException:
            self._handoff_abort(request)
            raise
        timer = threading.Timer(hold_s, self._handoff_abort, args=(request,))
        timer.daemon = True
        with self._lock:
            if self._hold is not None:
                self._hold["timer"] = timer
        timer.start()
        return {"final_lsn": final, "epoch": self._epoch}

    def _handoff_abort(self, request: str) -> bool:
        """End a hold without a move (writes resume); False if ``request``
        holds nothing (it ended already)."""
        with self._lock:
            hold = self._hold
            if hold is None or hold["request"] != request:
                return False
            self._hold = None
            self._hold_cv.notify_all()
        timer = hold.get("timer")
        if timer is not None:
            timer.cancel()
        return True

    def _handoff_commit(self, request: str, local: bool, demote: bool = False
                        ) -> dict[str, Any]:
        """The fence: epoch + 1 and the handoff record in the MANIFEST,
        durably; then this store is moved and the held writers get
        MovedError. Local: the log is closed and the LOCK released, for the
        standby to take. HandoffError when ``request`` holds nothing (it
        timed out: writes resumed)."""
        with self._lock:
            hold = self._hold
            if hold is None or hold["request"] != request:
                raise HandoffError("no hold for this request (it timed out, and writes "
                                   "resumed)", path=self.path, reason="expired")
            timer = hold.get("timer")
        if timer is not None:
            timer.cancel()
        final = self.lsn
        new_epoch = self._epoch + 1
        man = dict(self._manifest)
        man.pop("clean_end", None)
        man["epoch"] = new_epoch
        man["handoff"] = {"epoch": new_epoch, "final_lsn": final, "request": request,
                          "to": hold.get("address")}
        try:
            if hold["deadline"] < time.monotonic():
                raise HandoffError("the hold ran out before the fence", path=self.path,
                                   reason="expired")
            _manifest.write(self.path, man)
        except BaseException as e:
            self._handoff_abort(request)
            if isinstance(e, OSError) and not isinstance(e, RehydrateError):
                raise HandoffError(f"the fence could not be written: {e}", path=self.path,
                                   reason="failed") from e
            raise
        held_s = time.monotonic() - hold["since"]
        follow = None
        with self._lock:
            self._manifest = man
            self._manifest_stamp = _manifest.stamp(self.path)
            self._role = "moved"
            self._moved = {"epoch": new_epoch, "address": hold.get("address"),
                           "final_lsn": final, "request": request}
            if demote and local:
                follow = self._demote()
        if local:
            # The standby appends to this log from here: let go of it (the
            # held writers still wait, so none of them closes it meanwhile).
            # The LOCK first: the fence already stops this writer, and the
            # standby waits for the LOCK.
            with self._files_lock:
                if self._dirlock is not None:
                    self._dirlock.release()
                    self._dirlock = None
            self._journal.stop()
            if self._auto is not None:
                self._auto.stop()
            self._release_files()
        with self._lock:
            self._hold = None
            self._targets.clear()
            self._hold_cv.notify_all()
        if follow is not None:
            follow.start(f"rehydrate-follow:{self.path}")
        return {"epoch": new_epoch, "final_lsn": final, "held_s": held_s}

    @classmethod
    def _open_following(cls, path: StrPath, options: dict[str, Any], role: str,
                        max_lag_s: float) -> Self:
        """A standby or reader of ``path``: the newest snapshot, then the log
        as far as it goes (no LOCK, nothing written); a standby keeps
        following on a thread."""
        self = cls._new(path, options)
        self._role = role
        self._max_lag_s = max_lag_s
        following = _opening.load_for_following(self.path, self._options, self._core)
        self._manifest = following.manifest
        self._epoch = _manifest.epoch(following.manifest, self.path)
        self._store_id = _manifest.store_id(following.manifest, self.path)
        follower = self._follow_from(following)
        watch = [self.path, _standby.wal_dir(self.path)] if role == "standby" else None
        follow = _standby.Follow(follower, self._lock, self.path, watch, self._refollow)
        self._follow = follow
        try:
            follow.step()
        except BaseException:
            follow.stop()
            follower.close()
            _forking.untrack(self)
            raise
        self.warmup_report = {"phases": [], "total_s": 0.0}
        follow.start(f"rehydrate-follow:{self.path}")
        self._ready.set()
        return self

    def _follow_from(self, following: _opening.Following) -> LogFollower:
        """A follower of the log after ``following``'s snapshot, whose
        tables become this store's."""
        base = following.base
        follower = LogFollower(self._core, self.path, following.registry, dict(base.offsets),
                               base.lsn, following.log_start)
        self._registry = following.registry
        self._offsets = follower.offsets
        self._manifest = following.manifest
        return follower

    def _refollow(self) -> LogFollower:
        """The follower fell behind the log's start (a checkpoint trimmed
        what it had still to read): start again from the newest snapshot
        (``_lock`` held). Tables read before hold the old state."""
        following = _opening.load_for_following(self.path, self._options, self._core)
        follower = self._follow_from(following)
        self._targets.clear()
        return follower

    def _promote_here(self, timeout_s: float, hold_s: float, demote: bool = False,
                      address: Optional[str] = None) -> dict[str, Any]:
        """A standby of a local primary takes its directory over: asks for
        the handoff (or finds the primary gone), then appends to the same
        log at the new epoch. Returns the phases."""
        follow = self._follow
        if self._role != "standby" or follow is None:
            raise HandoffError(f"only a standby can be promoted (this store is a {self._role})",
                               path=self.path, reason="not_standby")
        if follow.error is not None:
            raise HandoffError(f"this standby stopped following: {follow.error}",
                               path=self.path, reason="failed") from follow.error
        if self._remote is not None:
            return self._promote_remote(timeout_s, hold_s, address)
        t0 = time.perf_counter()
        start = time.monotonic()
        current = _manifest.read(self.path)
        epoch = _manifest.epoch(current, self.path)
        request = secrets.token_hex(8)

        def gone() -> bool:
            return _standby.lock_is_free(self.path)

        fence: Optional[dict[str, Any]] = None
        if not gone():
            _standby.request_handoff(self.path, {
                "request": request, "store_id": _manifest.store_id(current, self.path),
                "pid": os.getpid(), "hold_s": hold_s, "address": address,
                "demote": demote})
            try:
                fence = _standby.wait_for_fence(self.path, request, epoch, start + timeout_s,
                                                gone)
            except HandoffError as e:
                if _standby.withdraw_request(self.path, request) or e.reason != "timeout":
                    raise
                # The primary took the request as the time ran out: it is
                # handing over, and either fences or gives up within hold_s.
                fence = _standby.wait_for_fence(self.path, request, epoch,
                                                time.monotonic() + hold_s + 1.0, gone)
        t_fenced = time.perf_counter()
        follow.stop(wait=False)
        lock = self._take_lock(time.monotonic() + max(1.0, hold_s))
        try:
            with self._lock:
                follow.follower.poll()
            follower = follow.follower
            if fence is not None:
                final = (fence.get("handoff") or {}).get("final_lsn")
                if follower.lsn != final:
                    raise HandoffError(
                        f"the primary handed over at LSN {final}, but this standby holds "
                        f"LSN {follower.lsn}", path=self.path, lsn=follower.lsn,
                        reason="behind")
                man = fence
            else:
                # The primary died before it claimed our request: take it
                # back, or this store, once primary, claims it on its own
                # flusher's tick and hands the directory over to nobody.
                _standby.withdraw_request(self.path, request)
                man = self._take_over_from_the_dead(follower, epoch)
        except BaseException:
            lock.release()
            raise
        t_caught_up = time.perf_counter()
        path, size = follower.at_end()
        self._dirlock = lock
        self._become_primary(man, follower.next_lsn, path, size)
        t_end = time.perf_counter()
        return {"role": "primary", "epoch": self._epoch, "lsn": self.lsn,
                "failover": fence is None,
                "phases": {"request_s": t_fenced - t0, "catch_up_s": t_caught_up - t_fenced,
                           "resume_s": t_end - t_caught_up},
                "total_s": t_end - t0}

    def _take_lock(self, deadline: float) -> DirLock:
        """The directory's LOCK, which the old primary releases right after
        its fence: tried until ``deadline``."""
        from .errors import LockedError

        while True:
            try:
                return DirLock(self.path)
            except LockedError:
                if time.monotonic() >= deadline:
                    raise HandoffError("the old primary still holds the LOCK after its "
                                       "fence", path=self.path, reason="locked") from None
                time.sleep(0.0002)

    def _take_over_from_the_dead(self, follower: LogFollower, epoch: int) -> dict[str, Any]:
        """The primary is gone (its LOCK is free): cut what it left of a
        frame at the log's end (a torn tail: the write never completed, so
        it was never acknowledged), keeping it as evidence, and fence the
        directory at ``epoch + 1``."""
        if follower.pending_bytes:
            path, offset = follower.at_end()
            size = os.path.getsize(path)
            detail = follower.waiting_detail or "partial frame at the log's end"
            apply_actions(self.path, [Action("evidence", path, offset, size, "torn_tail", detail),
                                      Action("truncate", path, offset)])
            follower.pending_bytes = 0
        man = _manifest.read(self.path)
        man.pop("clean_end", None)
        man["epoch"] = max(epoch, _manifest.epoch(man, self.path)) + 1
        man["handoff"] = {"epoch": man["epoch"], "final_lsn": follower.lsn, "request": None,
                          "to": None, "failover": True}
        _manifest.write(self.path, man)
        return man

    def _become_primary(self, man: dict[str, Any], next_lsn: int, resume_path: str,
                        resume_size: int) -> None:
        """A standby that holds the whole log, and the LOCK, starts writing."""
        follow = self._follow
        self._manifest = man
        self._epoch = _manifest.epoch(man, self.path)
        self._store_id = _manifest.store_id(man, self.path)
        self._manifest_stamp = _manifest.stamp(self.path)
        with self._lock:
            self._buf = self._core.LogBuffer(next_lsn)
            self._role = "primary"
            self._follow = None
            self._remote = None
        if follow is not None:
            follow.follower.close()
        self._journal.open(next_lsn, resume_path, resume_size)
        o = self._options
        if o.auto_checkpoint:
            self._auto = _checkpointing.AutoCheckpoint(
                self.checkpoint, o.checkpoint_every_bytes, o.checkpoint_every_s,
                name=f"rehydrate-checkpoint:{self.path}")
        if self._atexit is None:
            self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
            atexit.register(self._atexit)

    # ------------------------------------------------- replication: HTTP
    def _replication_hello(self) -> dict[str, Any]:
        """What the replication endpoints say of this store (``hello``)."""
        man = self._manifest
        out: dict[str, Any] = {
            "store_id": self._store_id, "epoch": self._epoch, "role": self._role,
            "lsn": self.lsn, "durable_lsn": self._journal.durable_lsn,
            "log_start": man.get("log_start", 1),
            "snapshots": list(man.get("snapshots") or []),
            "versions": dict(man.get("versions") or {}),
            "ledger": list(man.get("ledger") or [])}
        if self._follow is not None:
            out["lag"] = self._follow.lag()
        return out

    def _replication_wait(self, seen_lsn: int, timeout_s: float) -> int:
        if self._follow is not None:
            self._follow.wait_for_lsn(seen_lsn + 1, timeout_s)
            return self.lsn
        return self._journal.wait_for_log(seen_lsn, timeout_s)

    def _replication_handoff(self, body: dict[str, Any]) -> dict[str, Any]:
        """A handoff request from a standby (or, on a standby, a promote
        request): the phases of docs/replication.md. Refusals are
        HandoffError, whose reason the endpoint answers with."""
        phase = body.get("phase")
        request = body["request"]
        try:
            if phase == "promote":
                promote = getattr(self, "promote")
                result: dict[str, Any] = promote(
                    timeout_s=float(body.get("timeout_s") or 5.0),
                    hold_s=float(body.get("hold_s") or 2.0),
                    address=body.get("address"))
                return result
            if phase == "prepare":
                return self._handoff_prepare(request, float(body.get("hold_s") or 2.0),
                                             body.get("address"))
            if phase == "commit":
                moved = self._moved
                if moved is not None and moved.get("request") == request:
                    return {"epoch": moved["epoch"], "final_lsn": moved["final_lsn"]}
                answer = self._handoff_commit(request, local=False)
                self._journal.wake_readers()  # (streams send END "moved" now)
                return answer
            return {"aborted": self._handoff_abort(request)}
        except HandoffError:
            raise
        except RehydrateError as e:
            raise HandoffError(f"refused: {e}", path=self.path,
                               reason=e.reason) from e

    def replication_source(self) -> Any:
        """The ``replication.Source`` the replication endpoints of
        ``serve_http(replication=True)`` serve from (docs/replication.md)."""
        from .replication import Source

        return Source(self.path, self._replication_hello, self._replication_wait,
                      self._replication_handoff)

    @classmethod
    def _open_remote_standby(cls, path: StrPath, options: dict[str, Any], url: str,
                             token: Optional[str], ssl_context: Any,
                             max_lag_s: float) -> Self:
        """A standby of the primary at ``url``, in its own directory ``path``:
        bootstrapped from the primary's newest snapshot when the directory
        is new, then fed the log over HTTP into its copy (docs/replication.md)."""
        from .replication_client import Mirror, ReplicationClient, bootstrap

        client = ReplicationClient(url, token=token, ssl_context=ssl_context)
        hello = client.hello()
        directory = os.fspath(path)
        start = None
        if not os.path.exists(os.path.join(directory, _manifest.MANIFEST_NAME)):
            start = bootstrap(client, hello, directory)
        self = cls._new(directory, options)
        self._role = "standby"
        self._max_lag_s = max_lag_s
        self._source = client.peer
        try:
            self._dirlock = DirLock(self.path)
            following = _opening.load_for_following(self.path, self._options, self._core)
            local_id = _manifest.store_id(following.manifest, self.path)
            if local_id != hello.get("store_id"):
                from .errors import ReplicationError

                raise ReplicationError(
                    f"{self.path} is a copy of store {local_id}; {client.peer} serves store "
                    f"{hello.get('store_id')}", path=self.path, peer=client.peer,
                    reason="foreign_store")
            self._epoch = _manifest.epoch(following.manifest, self.path)
            self._store_id = local_id
            follower = self._follow_from(following)
            follow = _standby.Follow(follower, self._lock, client.peer, None, self._refollow)
            self._follow = follow
            follow.step()
        except BaseException:
            self._release()
            raise
        mirror = Mirror(self.path)
        self._remote = _standby.Receiver(client, mirror, local_id, follow, start,
                                         self._rebootstrap)
        self.warmup_report = {"phases": [], "total_s": 0.0}
        self._remote.start(f"rehydrate-receive:{self.path}")
        self._ready.set()
        return self

    def _rebootstrap(self) -> tuple[int, int]:
        """The primary trimmed the log this standby needs next: start again
        from its newest snapshot (the receiver's thread; returns where the
        stream starts)."""
        from .replication_client import bootstrap

        remote = self._remote
        assert remote is not None
        start = bootstrap(remote.client, remote.client.hello(), self.path, again=True)
        with self._lock:
            follow = self._follow
            assert follow is not None
            old, follow.follower = follow.follower, self._refollow()
            old.close()
        return start

    def _promote_remote(self, timeout_s: float, hold_s: float,
                        address: Optional[str]) -> dict[str, Any]:
        """Over HTTP: prepare (the primary holds its writes and says the
        final LSN), catch up to it, make the copy durable, commit (the
        primary fences itself), then take the new epoch here."""
        remote, follow = self._remote, self._follow
        assert remote is not None and follow is not None
        if follow.error is not None:
            raise HandoffError(f"this standby stopped following: {follow.error}",
                               path=self.path, reason="failed") from follow.error
        t0 = time.perf_counter()
        request = secrets.token_hex(8)
        body = {"store_id": self._store_id, "request": request, "hold_s": hold_s,
                "address": address}
        from .errors import ReplicationError

        try:
            prepared = remote.client.handoff(dict(body, phase="prepare"))
        except ReplicationError as e:
            raise HandoffError(f"the primary refused the handoff: {e.detail}", path=self.path,
                               peer=remote.client.peer, reason="primary_unreachable"
                               if e.reason in ("connection", "timeout") else e.reason) from e
        t_held = time.perf_counter()
        final = int(prepared["final_lsn"])
        try:
            if not follow.wait_for_lsn(final, timeout_s) or self.lsn != final:
                raise HandoffError(f"this standby did not reach LSN {final} in time "
                                   f"(it holds {self.lsn})", path=self.path, lsn=self.lsn,
                                   reason="timeout")
            remote.mirror.sync()
        except BaseException:
            try:
                remote.client.handoff(dict(body, phase="abort"))
            except ReplicationError:
                pass  # (the primary's hold runs out by itself)
            raise
        t_caught_up = time.perf_counter()
        try:
            committed = remote.client.handoff(dict(body, phase="commit"))
        except ReplicationError as e:
            raise HandoffError(f"the primary did not commit the handoff: {e.detail}",
                               path=self.path, peer=remote.client.peer,
                               reason=e.reason) from e
        t_fenced = time.perf_counter()
        remote.stop(wait=False)
        with self._lock:
            follow.follower.poll()
        follow.stop()  # (a late message from the receiver applies nothing now)
        man = dict(self._manifest)
        man.pop("clean_end", None)
        man["epoch"] = int(committed["epoch"])
        man["handoff"] = {"epoch": man["epoch"], "final_lsn": final, "request": request,
                          "to": address, "from": remote.client.peer}
        _manifest.write(self.path, man)
        path, size = follow.follower.at_end()
        self._become_primary(man, follow.follower.next_lsn, path, size)
        t_end = time.perf_counter()
        return {"role": "primary", "epoch": self._epoch, "lsn": self.lsn, "failover": False,
                "phases": {"prepare_s": t_held - t0, "catch_up_s": t_caught_up - t_held,
                           "commit_s": t_fenced - t_caught_up, "resume_s": t_end - t_fenced},
                "total_s": t_end - t0}


def open_options(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``Store.open`` among an open method's ``locals()``
    (the options ``check_options`` takes)."""
    return {k: args[k] for k in OPTION_NAMES}


def abandon(store: Lifecycle) -> None:
    """Let go of ``store`` as a killed process would: its threads stopped and
    its directory unlocked, without writing anything more (buffered writes
    are lost; what reached the OS stays). For crash tests (rehydrate.testing)."""
    store._stop_taking_writes()
    store._stop_threads()
    store._release()


def _close_at_exit(ref: weakref.ref[Lifecycle]) -> None:
    store = ref()
    if store is not None:
        try:
            store.close()
        except RehydrateError:
            pass  # a failed store has nothing more it may write
