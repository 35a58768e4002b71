"""Store: open a state directory, get the state back, keep writing the log.

This module is the surface a service uses. The work is done by the
modules it holds together (README, "Layout"): roles.py (primary, standby,
reader; following and handoff), lifecycle.py (how a store is made, opened,
closed and carried across fork()), writes.py (the write path), options.py, opening.py, journal.py, checkpointing.py, intake.py
(a background open) and migrate_phase.py.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ContextManager, Optional, Union

from . import _format as F
from . import intake as _intake
from . import tracing as _tracing
from ._types import ProgressFn, StrPath, TableKinds
from .crashloop import DEFAULT_MAX_FAILED_OPENS
from .errors import ConfigError, StoreClosedError
from .gates import Gate, Requirement
from .lifecycle import open_options, abandon
from .roles import Roles
from .migrations import Migrations
from .objstore import ArchiveTarget
from .options import (
    DEFAULT_ARCHIVE_EVERY_S, DEFAULT_ARCHIVE_RETENTION_S, DEFAULT_MIGRATION_MAX_DUTY,
    DEFAULT_MIGRATION_SLICE_MS,
    DEFAULT_KEEP_SNAPSHOTS, DEFAULT_SEGMENT_BYTES, DEFAULT_SYNC_INTERVAL_MS, MIN_SEGMENT_BYTES,
    OPTION_NAMES, SYNC_MODES,
)
from .warmup import Warmup

if TYPE_CHECKING:
    from . import observe

_DEFAULT_MAX_LAG_S = 1.0
# The kinds whose ``to_arrow()`` copies the table under the store's lock
# (a custom table has no export).
_EXPORTED_KINDS = (F.KIND_KV, F.KIND_DICT, F.KIND_NUMERIC)

__all__ = ["Store", "abandon", "SYNC_MODES", "DEFAULT_SEGMENT_BYTES",
           "DEFAULT_SYNC_INTERVAL_MS", "MIN_SEGMENT_BYTES"]


class Store(Roles):
    """A state directory opened for reading and writing. Use ``Store.open``."""

    def __init__(self) -> None:  # pragma: no cover - use Store.open
        raise TypeError("use Store.open(path, ...)")

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        path: StrPath,
        *,
        create: bool = True,
        sync: str = "interval",
        recovery: str = "tolerate-tail",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
        progress: Optional[ProgressFn] = None,
        tables: Optional[TableKinds] = None,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        checkpoint_every_bytes: Optional[int] = None,
        checkpoint_every_s: Optional[float] = None,
        warmup: Optional[Warmup] = None,
        max_memory_bytes: Optional[int] = None,
        migrations: Optional[Migrations] = None,
        strict_migrations: bool = False,
        archive: Optional[ArchiveTarget] = None,
        archive_every_s: float = DEFAULT_ARCHIVE_EVERY_S,
        archive_retention_s: float = DEFAULT_ARCHIVE_RETENTION_S,
        max_failed_opens: int = DEFAULT_MAX_FAILED_OPENS,
        degraded_readyz: int = 200,
        readonly: bool = False,
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
        ``archive``: ship the log and snapshots to object storage as they
        are written (docs/archive.md): a URI ``pyarrow.fs.FileSystem.from_uri``
        understands (``s3://bucket/prefix?endpoint_override=...``,
        ``gs://...``, ``file:///path``) or a (``pyarrow.fs.FileSystem``,
        prefix) pair; the segment being written goes up every
        ``archive_every_s`` seconds, and the archive keeps ``keep_snapshots``
        snapshots plus every one from the last ``archive_retention_s``
        seconds, with the log they need. Writes never wait for it.
        ``max_failed_opens``: the crash-loop guard (docs/warmup.md,
        "Crash-loop safe mode"): after this many failed opens at one
        migration or hook (0: never), the next open skips it and opens
        degraded (``store.degraded``); ``degraded_readyz``: what ``/readyz``
        answers then, 200 (default: serve from the safe state) or 503.
        ``readonly``: a reader of a store another process may be writing
        (docs/replication.md): no LOCK taken, nothing written; the state as
        of the open, and ``refresh()`` to catch up. Its writes raise
        ReadOnlyError.
        Raises ConfigError (bad argument, before touching anything),
        NotAStoreError, LockedError, CorruptionError / TornTailError (as the
        recovery mode decides), UnsupportedFormatError.
        """
        if readonly is not False:
            if readonly is not True:
                raise ConfigError(f"readonly must be a bool, not {readonly!r}")
            options = open_options(locals())
            options["create"] = False
            return cls._open_following(path, options, "reader", _DEFAULT_MAX_LAG_S)
        self = cls._new(path, open_options(locals()))
        self._run_open()
        return self

    @classmethod
    def open_standby(
        cls,
        path: StrPath,
        source: Optional[str] = None,
        *,
        token: Optional[str] = None,
        ssl_context: Any = None,
        max_lag_s: float = 1.0,
        tables: Optional[TableKinds] = None,
        migrations: Optional[Migrations] = None,
        sync: str = "interval",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        checkpoint_every_bytes: Optional[int] = None,
        checkpoint_every_s: Optional[float] = None,
        bootstrap: Optional[ArchiveTarget] = None,
        archive: Optional[ArchiveTarget] = None,
        archive_every_s: float = DEFAULT_ARCHIVE_EVERY_S,
        archive_retention_s: float = DEFAULT_ARCHIVE_RETENTION_S,
    ) -> Store:
        """A standby of the store at ``path`` (docs/replication.md): its state
        from the newest snapshot and the log, kept up to date as the primary
        writes, readable all along; writes raise ReadOnlyError until
        ``promote()`` makes it the primary.

        ``source=None``: follow the primary writing ``path`` itself (same
        host or shared volume; no LOCK taken). ``source="http://HOST:PORT"``
        (or https): a primary serving ``serve_http(replication=True)``;
        ``path`` is then the standby's own directory (bootstrapped from the
        primary's newest snapshot when new), ``token`` / ``ssl_context``
        what the primary asks for. ``max_lag_s``: ``/readyz``
        says ready while the standby is at most this far behind. ``tables``
        and ``migrations`` as for ``Store.open`` (a newer version's
        upcasters apply as records arrive); ``sync`` .. ``checkpoint_every_s``
        and ``archive`` .. ``archive_retention_s`` apply once promoted.
        ``bootstrap`` (with ``source=URL``): a new standby's copy is restored
        from this archive (docs/archive.md) instead of downloaded from the
        primary, which then streams only what the archive lacks.
        Raises ConfigError, NotAStoreError, CorruptionError.
        """
        if (isinstance(max_lag_s, bool) or not isinstance(max_lag_s, (int, float))
                or not max_lag_s > 0):
            raise ConfigError(f"max_lag_s must be a positive number, not {max_lag_s!r}")
        options = {k: v for k, v in locals().items() if k in OPTION_NAMES}
        options["create"] = False
        if source is None:
            if token is not None or ssl_context is not None:
                raise ConfigError("token and ssl_context are for source=URL")
            if bootstrap is not None:
                raise ConfigError("bootstrap is for source=URL (a standby in its own directory)")
            return cls._open_following(path, options, "standby", float(max_lag_s))
        if not isinstance(source, str) or not source.startswith(("http://", "https://")):
            raise ConfigError(f"source must be None or an http:// or https:// URL, not "
                              f"{source!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigError("token must be a non-empty str")
        if ssl_context is not None:
            import ssl

            if not isinstance(ssl_context, ssl.SSLContext):
                raise ConfigError("ssl_context must be an ssl.SSLContext")
        if bootstrap is not None:
            from .objstore import check_target

            check_target(bootstrap)
        return cls._open_remote_standby(path, options, source, token, ssl_context,
                                        float(max_lag_s), bootstrap)

    # ------------------------------------------------------------ replication
    @property
    def role(self) -> str:
        """"primary", "standby", "reader" or "moved" (docs/replication.md)."""
        return self._role

    @property
    def epoch(self) -> int:
        """The generation of the directory's writer this store knows."""
        return self._epoch

    @property
    def store_id(self) -> Optional[str]:
        """The store's identity (32 hex digits; None for a store from before
        identities that no primary has written since)."""
        return self._store_id

    @property
    def lag(self) -> dict[str, Any]:
        """How far a standby is behind: {"records", "bytes", "seconds",
        "lsn", "primary_lsn", "state"} (zeros on a primary)."""
        follow = self._follow
        if follow is None:
            return {"records": 0, "bytes": 0, "seconds": 0.0, "lsn": self.lsn,
                    "primary_lsn": self.lsn, "state": self._role}
        return follow.lag()

    @property
    def archived_lsn(self) -> Optional[int]:
        """The last LSN the archive holds (docs/archive.md); None without
        ``archive=``."""
        archiver = self._archiver
        return None if archiver is None else archiver.archived_lsn

    @property
    def archive_status(self) -> Optional[dict[str, Any]]:
        """The archive's state: {"state" ("starting", "ok", "retrying",
        "failed", "stopped"), "uri", "archived_lsn", "lag_records", "lag_seconds",
        "requests" and "failures" by kind, "bytes_up", "bytes_down",
        "error", ...}; None without ``archive=``."""
        archiver = self._archiver
        return None if archiver is None else archiver.stats()

    def wait_for_archive(self, lsn: Optional[int] = None,
                         timeout: Optional[float] = None) -> bool:
        """True once the archive holds every record up to ``lsn`` (default:
        the last written now), False at the timeout or when archiving
        stopped for good (``archive_status["error"]`` says why). Uploads
        what is pending at once rather than at the next interval."""
        archiver = self._archiver
        if archiver is None:
            raise ConfigError("this store has no archive (Store.open(..., archive=URI))")
        if lsn is None:
            lsn = self.lsn
        return archiver.wait_for(lsn, timeout)

    @property
    def follow_error(self) -> Optional[BaseException]:
        """What stopped a standby's following (a CorruptionError, ...); None
        while it follows."""
        follow = self._follow
        return None if follow is None else follow.error

    def wait_for_lsn(self, lsn: int, timeout: Optional[float] = None) -> bool:
        """True once this store holds every record up to ``lsn`` (on a
        primary: once it was logged), False at the timeout: a client that
        knows its write's LSN reads its own write on a standby. Raises the
        error that stopped a standby's following."""
        if type(lsn) is not int or lsn < 0:
            raise ConfigError(f"lsn must be a non-negative int, not {lsn!r}")
        follow = self._follow
        if follow is None:
            return self.lsn >= lsn
        return follow.wait_for_lsn(lsn, timeout)

    def refresh(self) -> int:
        """A reader (or standby): apply what the primary wrote since; returns
        the LSN now held."""
        follow = self._follow
        if follow is None:
            raise ConfigError(f"refresh() is for a reader or a standby; this store is a "
                              f"{self._role}")
        follow.step()
        return self.lsn

    def promote(self, timeout_s: float = 5.0, hold_s: float = 2.0, *,
                demote: bool = False, address: Optional[str] = None,
                force: bool = False) -> dict[str, Any]:
        """Make this standby the primary (docs/replication.md, "Handoff"): the
        primary holds its writes (at most ``hold_s``), makes them durable and
        fences itself at a new epoch; this store applies the log to that
        point and takes the writes. A primary that is gone (its LOCK free) is
        taken over without it. Returns {"role", "epoch", "lsn", "failover",
        "phases", "total_s"}. HandoffError when it did not happen (the
        primary stays primary). ``demote``: the old primary stays on as a
        standby of this one. ``address``: this store's, which the old
        primary gives its writers in MovedError. ``force`` (a standby of an
        HTTP primary): a primary that cannot be reached is taken over
        without it, which may lose what it acknowledged but had not sent
        (the result says ``"may_have_lost_writes": True``); without it that
        is HandoffError, reason ``primary_unreachable``."""
        for name, value in (("timeout_s", timeout_s), ("hold_s", hold_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value <= 3600:
                raise ConfigError(f"{name} must be a number of seconds in (0, 3600], "
                                  f"not {value!r}")
        if self._closed:
            raise StoreClosedError("store is closed", path=self.path)
        if type(demote) is not bool:
            raise ConfigError(f"demote must be a bool, not {demote!r}")
        if address is not None and not isinstance(address, str):
            raise ConfigError(f"address must be a str, not {address!r}")
        if type(force) is not bool:
            raise ConfigError(f"force must be a bool, not {force!r}")
        self._check_owner()
        with _tracing.span("rehydrate.handoff", path=self.path, from_epoch=self._epoch,
                           remote=self._remote is not None, demote=demote,
                           force=force) as span:
            result = self._promote_here(float(timeout_s), float(hold_s), demote, address,
                                        force)
            span.set(epoch=result.get("epoch"), lsn=result.get("lsn"),
                     failover=result.get("failover"), total_s=result.get("total_s"),
                     may_have_lost_writes=result.get("may_have_lost_writes"))
        return result

    @classmethod
    def open_background(
        cls,
        path: StrPath,
        *,
        max_pending_records: int = _intake.DEFAULT_MAX_PENDING_RECORDS,
        max_pending_bytes: int = _intake.DEFAULT_MAX_PENDING_BYTES,
        admission_timeout_s: float = _intake.DEFAULT_ADMISSION_TIMEOUT_S,
        create: bool = True,
        sync: str = "interval",
        recovery: str = "tolerate-tail",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
        progress: Optional[ProgressFn] = None,
        tables: Optional[TableKinds] = None,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        checkpoint_every_bytes: Optional[int] = None,
        checkpoint_every_s: Optional[float] = None,
        warmup: Optional[Warmup] = None,
        max_memory_bytes: Optional[int] = None,
        migrations: Optional[Migrations] = None,
        strict_migrations: bool = False,
        archive: Optional[ArchiveTarget] = None,
        archive_every_s: float = DEFAULT_ARCHIVE_EVERY_S,
        archive_retention_s: float = DEFAULT_ARCHIVE_RETENTION_S,
        max_failed_opens: int = DEFAULT_MAX_FAILED_OPENS,
        degraded_readyz: int = 200,
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
        self = cls._new(path, open_options(locals()))
        self._start_in_background(max_pending_records, max_pending_bytes, admission_timeout_s)
        return self

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
        return self._checkpoint_now()

    @property
    def auto_checkpoint_error(self) -> Optional[BaseException]:
        """What the last automatic checkpoint raised; None after one succeeds."""
        return self._auto.error if self._auto is not None else None

    @property
    def degraded(self) -> bool:
        """True when this store opened in safe mode: the crash-loop guard
        left out a migration or hook that failed ``max_failed_opens`` opens
        (docs/warmup.md, "Crash-loop safe mode"); ``readiness()`` says why."""
        return self._degraded is not None

    @property
    def ledger(self) -> list[dict[str, Any]]:
        """The migrations applied to this store, oldest first: the MANIFEST's
        ledger entries (docs/migrations.md), as dicts."""
        return copy.deepcopy(self._manifest.get("ledger") or [])

    # ---------------------------------------------------------------- writes
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
            assert intake is not None  # (a background open's)
            with self._lock:
                if not intake.open or (name in self._open_registry.by_name
                                       and name not in intake.ready):
                    return _intake.TableView(intake, name, lambda: self.table(name),
                                             self._failure, self.path)
        if self._open_error is not None:
            raise self._open_failed() from self._open_error
        info = self._open_registry.by_name.get(name)
        if info is None:
            raise KeyError(f"no table {name!r} in {self.path}")
        run = self._online.live(name)
        if run is not None:
            # An online migration's routed reads (docs/migrations.md).
            return run.routing.view()
        table = info.table
        if info.kind in _EXPORTED_KINDS and table._export_lock is None:
            # ``to_arrow()`` copies under the write lock: one consistent
            # state. The store is held weakly (no cycle through its tables),
            # and its lock looked up at each export (a fork replaces it).
            table._export_lock = functools.partial(_write_lock, weakref.ref(self))
        return table

    def table_keys(self, name: str) -> list[Any]:
        """The keys of ``name`` at one moment: listed under the write lock,
        so no write lands in the middle of the listing (iterating the live
        table while writers run gives no such promise). KeyError if never
        written. During a background open, waits for the table's state
        first, as a read of it does."""
        table = self.table(name)
        if not table.ready:
            table.wait_ready()
            table = self.table(name)
        with self._lock:
            return list(table)

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
            registry = self._open_registry
            return state_digest({n: registry.by_name[n].table for n in registry.names()})

    # --------------------------------------------------- online migrations
    def start_migration(self, id: str, *, compare: Optional[Callable[[Any, Any], bool]] = None,
                        sample: float = 0.01, auto_revert: Optional[dict[str, Any]] = None,
                        on_restart: str = "rebuild",
                        slice_ms: float = DEFAULT_MIGRATION_SLICE_MS,
                        max_duty: float = DEFAULT_MIGRATION_MAX_DUTY) -> dict[str, Any]:
        """Start an online migration (docs/migrations.md, "Online
        migrations"): a shadow of its table at the new version is built in
        the background while writes to the table are mirrored into it;
        returns the run's status. ``compare(old, new) -> bool`` is called on
        a ``sample`` (0..1) of the routed reads; ``auto_revert``
        ({"max_divergence_rate", "max_errors", "max_latency_ratio",
        "min_reads"}) reverts the run when crossed; ``on_restart``
        ("rebuild" or "abandon") is what the next open does with a run a
        crash cut; the build works ``slice_ms`` at a time and at most
        ``max_duty`` of the wall time.
        ConfigError (reason ``unknown_migration``) for an id that is not a
        registered, online, pending migration, and for bad arguments;
        MigrationError ``already_running``."""
        from . import online

        host = self._online_host()
        online.find_online(host, id)
        settings = online.check_settings(compare, sample, auto_revert, on_restart, slice_ms,
                                         max_duty)
        return self._online.start(host, id, compare, settings).status()

    def migration_status(self, id: str) -> dict[str, Any]:
        """The status of ``id``'s run (live or ended since the open):
        {"state", "progress", "fraction", "paths", ...; docs/migrations.md}.
        MigrationError ``no_run`` for an id this store ran no run of."""
        return self._online.get(self._online_host(), id).status()

    def migrations_status(self) -> list[dict[str, Any]]:
        """Every online run this store knows: its runs since the open (their
        status) and the MANIFEST's records of earlier ones."""
        live = self._online.statuses()
        seen = {(s["id"], s["run"]) for s in live}
        recorded = [dict(r) for r in self._manifest.get("migration_runs") or []
                    if (r.get("id"), r.get("run")) not in seen]
        return recorded + live

    def route(self, id: str, fraction: float) -> dict[str, Any]:
        """Serve ``fraction`` (0..1) of the migration's table's reads from the
        shadow (a stable hash of the key decides; a key never moves back as
        the fraction grows); the status. MigrationError ``not_caught_up``
        (above 0 before the shadow caught up), ``reverted``, ``no_run``."""
        run = self._online.get(self._online_host(), id)
        run.route(fraction)
        return run.status()

    def abort_migration(self, id: str, reason: str = "aborted") -> dict[str, Any]:
        """Revert the run: reads go back to the old table at once, the
        shadow is dropped, the migration stays pending; the status."""
        if not isinstance(reason, str) or not reason:
            raise ConfigError(f"reason must be a non-empty str, not {reason!r}")
        run = self._online.get(self._online_host(), id)
        run.finish_revert(reason)
        run.join(5.0)
        return run.status()

    def complete_migration(self, id: str) -> dict[str, Any]:
        """Commit the shadow as the table at the new version, exactly as an
        offline migration commits (writers wait meanwhile); the ledger
        entry. MigrationError ``not_caught_up``, ``not_full`` (fraction
        below 1.0), ``reverted``, ``no_run``, or an invariant's."""
        self._check_owner()
        return self._online.get(self._online_host(), id).complete()

    # ------------------------------------------------------ feature gates
    def gate(self, name: str,
             requires: Sequence[Union[Requirement, Callable[[Store], object]]]) -> Gate:
        """A feature gate (docs/warmup.md, "Feature gates"): open while every
        requirement is met. A requirement is ``rehydrate.table_ready(t)``,
        ``phase_done(p)``, ``migration_at(id, fraction)``,
        ``lag_below(seconds)`` or a callable ``fn(store)`` that returns True
        when met. ``bool(gate)`` is a read of one attribute;
        ``gate.wait(timeout)``, ``await gate.wait_async(timeout)`` and
        ``gate.why()``. Gates are in ``readiness()["gates"]``, in the
        metrics (``rehydrate_gate_open``) and told to the warmup's listeners
        (``on_gate_open(name)``, ``on_gate_close(name, why)``).

        ConfigError for a name that is empty, not a str or taken, no
        requirement or a bad one, a table or migration this store does not
        have (a background open that does not know the log's tables yet
        checks them once it does: see the docs). StoreClosedError on a
        closed store (StoreFailedError once its open failed).
        """
        self._raise_if_open_failed()
        if self._closed:
            raise StoreClosedError("store is closed", path=self.path)
        return self._gates.add(name, requires)

    # ------------------------------------------------------ observability
    def readiness(self) -> dict[str, Any]:
        """{"ready", "phase", "progress", "eta_s", "writes", "tables",
        "gates", ...}.

        ``phase`` is the warmup phase running, "ready", "failed" or
        "closed"; ``progress`` (0..1) and ``eta_s`` come from the replay's
        bytes and the plan's prediction; ``writes`` is "taken" or "waiting"
        (for the log's end); ``tables`` maps each known table to whether its
        state is in; ``gates`` maps each feature gate to {"open", "unmet"}
        (re-evaluated now; a closed gate does not make the store unready).
        A store from ``Store.open`` is ready as it is returned.
        In safe mode (``store.degraded``): ``"degraded": True``,
        ``"degraded_reason"``, ``"skipped_steps"`` and ``"degraded_readyz"``
        (the status ``/readyz`` answers while ready).
        """
        out = self._readiness()
        out["gates"] = self._gates.report()
        return out

    def _readiness(self) -> dict[str, Any]:
        if self._follow is not None:
            return self._follow_readiness()
        if self._role == "moved":
            # Handed over: it takes no write and its reads age from the
            # handoff on; a load balancer sends nothing here any more.
            moved = self._moved or {}
            return {"ready": False, "phase": "closed" if self._closed else "moved",
                    "progress": 1.0, "eta_s": None, "role": "moved",
                    "epoch": moved.get("epoch"), "moved_to": moved.get("address")}
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
        out: dict[str, Any] = {"ready": ready, "phase": phase, "progress": progress, "eta_s": eta}
        intake = self._intake
        if intake is not None:
            with self._lock:
                out["writes"] = "taken" if intake.open else "waiting"
                out["pending_records"], out["pending_bytes"] = intake.records, intake.nbytes
                names = self._registry.names() if self._registry is not None else []
                out["tables"] = {n: intake.all_ready or n in intake.ready for n in names}
        if self._open_error is not None:
            out["error"] = f"{type(self._open_error).__name__}: {self._open_error}"
        degraded = self._degraded
        if degraded is not None:
            out["degraded"] = True
            out["degraded_reason"] = degraded["reason"]
            out["skipped_steps"] = degraded["skipped"]
            out["degraded_readyz"] = self._options.degraded_readyz
        return out

    def _follow_readiness(self) -> dict[str, Any]:
        """A standby is ready while it follows within ``max_lag_s``."""
        lag = self.lag
        state = lag["state"]
        ready = (not self._closed and state in ("following", "catching_up")
                 and lag["seconds"] <= self._max_lag_s)
        out: dict[str, Any] = {"ready": ready, "phase": "closed" if self._closed else state,
                               "progress": 1.0, "eta_s": None, "role": self._role,
                               "lag": lag, "max_lag_s": self._max_lag_s}
        error = self.follow_error
        if error is not None:
            out["error"] = f"{type(error).__name__}: {error}"
        return out

    def _wait_whole(self) -> None:
        """What needs every table (digest, checkpoint) waits for a background
        open's replay; raises if the open failed."""
        if self._warming:
            intake = self._intake
            assert intake is not None  # (a background open's)
            with self._lock:
                while self._warming and self._open_error is None:
                    intake.cv.wait()
        if self._open_error is not None:
            raise self._open_failed() from self._open_error

    def metrics(self, registry: Any = None) -> Any:
        """A prometheus_client registry with this store's metrics (read at
        scrape time; docs/observability.md): without ``registry``, the
        store's own (the same one on every call); with one, this store is
        added to it (yours, or ``prometheus_client.REGISTRY``), which then
        is the store's. Several stores may share a registry: each sample is
        labelled with its store's directory; a store closed leaves it.
        Adding a store twice does nothing; ConfigError for another open
        store of the same directory."""
        from . import observe

        if self._metrics_registry is None or registry is not None:
            self._metrics_registry = observe.register(self, registry)
        return self._metrics_registry

    def asgi_app(self, registry: Any = None) -> observe.AsgiApp:
        """An ASGI3 app serving ``/readyz``, ``/livez`` and ``/metrics``
        as ``serve_http()`` does, to mount in your own server, e.g.
        ``app.mount("/rehydrate", store.asgi_app())`` (Starlette, FastAPI).
        ``registry`` as for ``metrics()`` (docs/observability.md)."""
        from . import observe

        return observe.AsgiApp((self,), self.metrics(registry))

    def wsgi_app(self, registry: Any = None) -> observe.WsgiApp:
        """The WSGI twin of ``asgi_app()`` (Flask, Django; mount it under a
        prefix with werkzeug's DispatcherMiddleware)."""
        from . import observe

        return observe.WsgiApp((self,), self.metrics(registry))

    def serve_http(self, port: int = 0, host: str = "127.0.0.1", registry: Any = None, *,
                   replication: bool = False, token: Optional[str] = None,
                   ssl_context: Any = None) -> Any:
        """Serve ``/readyz``, ``/livez`` and ``/metrics`` from a thread; returns
        a server with ``.port`` and ``.close()``. ConfigError when the port
        cannot be had (in use, not allowed).

        ``replication=True`` also serves the replication endpoints
        (docs/replication.md): it needs ``token`` (every request's bearer
        token) or an ``ssl_context`` (an ``ssl.SSLContext``, which serves
        HTTPS) whose ``verify_mode`` is ``CERT_REQUIRED``; ConfigError
        otherwise, before anything is bound."""
        from . import observe

        if type(port) is not int or not 0 <= port <= 65535:
            raise ConfigError(f"port must be an int in 0..65535, not {port!r}")
        if type(replication) is not bool:
            raise ConfigError(f"replication must be True or False, not {replication!r}")
        served = None
        if replication:
            from .replication import check_config

            check_config(token, ssl_context)
            served = (self.replication_source(), token)
        elif token is not None:
            raise ConfigError("a token is for replication=True")
        return observe.ReadinessServer(self, host, port, self.metrics(registry),
                                       replication=served, ssl_context=ssl_context)

    def tables(self) -> list[str]:
        """Table names, in order of creation (during a background open, those
        known so far)."""
        return self._registry.names() if self._registry is not None else []

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

        Closing twice is fine; a close while another thread's close is
        under way returns once that one is over. A failed store closes
        without writing. In a process that inherited the store across
        fork(), close touches nothing on disk: the parent's buffered writes,
        log and LOCK stay its own.
        Its feature gates close.
        """
        try:
            self._close()
        finally:
            if self._opener is not threading.current_thread():
                # (A failing background open closes its store itself; the
                # gates look once its error is set, and tell that.)
                self._reevaluate_gates()

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


def _write_lock(ref: weakref.ref[Store]) -> ContextManager[Any]:
    """The lock a table's ``to_arrow()`` copies under: the store's write
    lock, or none once the store is gone (nothing writes the table then)."""
    store = ref()
    return contextlib.nullcontext() if store is None else store._lock
