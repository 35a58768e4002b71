"""Online migrations: a per-record migration run while the store serves
(docs/migrations.md, "Online migrations").

An ``OnlineRun`` is one run's life. At its start, under the store's
write lock, it takes a consistent view of table T (per_record.py), makes
an empty shadow table and becomes T's write target (``Mirror``): from then
on every write to T also maps the key's new value through the migration's
function into the shadow, under the same lock and LSN, and the key is
"covered". A build thread walks the view a slice at a time: the function
runs outside the lock; under it, only keys not covered are put into the
shadow. So each key's shadow value comes from exactly one place: the view
(never written since the start) or its last write (mirrored), and none is
migrated twice or missed.

Reads go through routing.py's Routing (a stable-hash fraction from the
shadow) once the shadow caught up; a revert (auto or abort) routes back
at once and the run's thread then drops the shadow. ``complete`` commits
the shadow as an offline migration commits (migrate_phase.commit) while
writers are held off.

The store gives a run an ``OnlineHost``: what it may do with the store,
nothing of its fields.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

from . import _format as F
from ._hashing import format_digest
from . import per_record as _per_record
from . import tracing as _tracing
from .errors import (ConfigError, MigrationError, RehydrateError, StorageIOError,
                     StoreFailedError)
from .migrate_phase import MigrationHost, check_invariants, commit_migration
from .migrations import Migration, Migrations
from .options import DEFAULT_MIGRATION_MAX_DUTY, DEFAULT_MIGRATION_SLICE_MS

__all__ = ["OnlineHost", "OnlineRun", "Runs", "RUNS_FILE", "KEEP_RUNS", "ON_RESTART",
           "STATES"]

log = logging.getLogger("rehydrate")

#: The live runs' status, for ``rehydrate migrate status`` in another process.
RUNS_FILE = "migration-runs.json"
#: Run records the MANIFEST keeps (``migration_runs``), newest last.
KEEP_RUNS = 50
ON_RESTART = ("rebuild", "abandon")
STATES = ("building", "caught_up", "reverted", "completed")
_STATUS_EVERY_S = 0.5
_PROGRESS_EVERY_S = 1.0
# Records decoded and mapped per lock hold of the build; a slice runs
# batches until slice_ms is spent.
_BUILD_ROWS = 256


def _routing() -> Any:
    """routing.py (stable hash, paths, compare, auto revert), imported when
    a run starts: it is not needed by ``import rehydrate``."""
    return importlib.import_module(f"{__package__}.routing")


@dataclass(frozen=True)
class OnlineHost:
    """What an online run may do with its store."""

    path: str
    core: Any
    registry: Any  # tables.TableRegistry
    lock: threading.Lock  # the store's write lock
    migrations: Migrations
    manifest: Callable[[], dict[str, Any]]  # the MANIFEST as the store holds it (read only)
    # change(man) applied to a copy of the MANIFEST, written durably, then kept.
    update_manifest: Callable[[Callable[[dict[str, Any]], None]], None]
    # (name, table or None), ``lock`` held: writes of ``name`` go to ``table``
    # (a Mirror), or again to the registry's table.
    set_write_target: Callable[[str, Optional[Any]], None]
    # Refuses (raises) unless the store is open, warm and a writable primary.
    check_serving: Callable[[], None]
    # A context in which no write lands (writers wait), for the cutover.
    hold_writes: Callable[[], ContextManager[Any]]
    migration_host: Callable[[], MigrationHost]
    tell: Callable[..., None]  # (event, status): the warmup's listeners
    store: Any  # what listeners get as their first argument
    # (migration id): the routed fraction changed (route, revert, the end),
    # so ``migration_at`` gates are evaluated again; called without ``lock``.
    routed: Callable[[str], None] = lambda _id: None
    # (error): stop taking writes for good, as after a failed log write: a
    # cutover that failed once the state had changed.
    fail_stop: Callable[[BaseException], None] = lambda _e: None


class Mirror:
    """T's write target during a run: each raw write goes to the real
    table first, then the key's new value is mapped into the shadow (the
    LogBuffer and a batch's undo call these for any table that is not a
    native KVTable)."""

    def __init__(self, run: "OnlineRun") -> None:
        self._run = run
        self._table = run.old

    def _put_raw(self, kb: bytes, vb: bytes) -> None:
        self._table._put_raw(kb, vb)
        self._run._mirror_key(kb)

    def _delete_raw(self, kb: bytes) -> bool:
        out: bool = self._table._delete_raw(kb)
        self._run._mirror_key(kb)
        return out

    def _incr_raw(self, kb: bytes, delta: Any) -> Any:
        out = self._table._incr_raw(kb, delta)  # raises before anything changed
        self._run._mirror_key(kb)
        return out

    def _clear(self) -> None:
        self._table._clear()
        self._run._mirror_clear()

    def _get_raw(self, kb: bytes) -> Any:
        return self._table._get_raw(kb)

    def _items_raw(self) -> list[Any]:
        items: list[Any] = self._table._items_raw()
        return items


def _number(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    v = float(value)
    if not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise ConfigError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], "
                          f"not {value!r}")
    return v


@dataclass(frozen=True)
class Settings:
    """A run's recorded settings (compare is code: not recorded)."""

    sample: float
    auto_revert: Optional[dict[str, Any]]
    on_restart: str
    slice_ms: float
    max_duty: float

    def as_dict(self) -> dict[str, Any]:
        return {"sample": self.sample, "auto_revert": self.auto_revert,
                "on_restart": self.on_restart, "slice_ms": self.slice_ms,
                "max_duty": self.max_duty}


def check_settings(compare: object, sample: object, auto_revert: object, on_restart: object,
                   slice_ms: object, max_duty: object) -> Settings:
    """ConfigError for a bad argument of ``start_migration``."""
    if compare is not None and not callable(compare):
        raise ConfigError(f"compare must be a callable (old, new) -> bool or None, not "
                          f"{compare!r}")
    if on_restart not in ON_RESTART:
        raise ConfigError(f"on_restart must be one of {ON_RESTART}, not {on_restart!r}")
    checked = None if auto_revert is None else dict(_routing().check_auto_revert(auto_revert))
    return Settings(_number("sample", sample, 0.0, 1.0), checked, str(on_restart),
                    _number("slice_ms", slice_ms, 0.0, 60_000.0, lo_open=True),
                    _number("max_duty", max_duty, 0.0, 1.0, lo_open=True))


def _unknown(mid: object, path: str, why: str) -> ConfigError:
    return ConfigError(f"migration {mid!r}: {why}", path=path, reason="unknown_migration")


def find_online(host: OnlineHost, mid: object) -> Migration:
    """The registered, online, pending migration ``mid``; ConfigError
    (reason unknown_migration) otherwise."""
    m = next((m for m in host.migrations.migrations if m.id == mid), None)
    if m is None:
        raise _unknown(mid, host.path, "no such migration is registered")
    if not m.online:
        raise _unknown(mid, host.path, "not an online migration (online=True)")
    if any(e.get("id") == mid for e in host.manifest().get("ledger") or []):
        raise _unknown(mid, host.path, "already applied (in the ledger)")
    return m


class OnlineRun:
    """One run of an online migration (module docstring)."""

    def __init__(self, host: OnlineHost, m: Migration, settings: Settings,
                 compare: Optional[Callable[[Any, Any], bool]], run: int, restarts: int) -> None:
        self.host, self.m, self.settings, self.compare = host, m, settings, compare
        self.run, self.restarts = run, restarts
        self.state = "building"
        self.reason: Optional[str] = None
        self.started_at = time.time()
        self.ended_at: Optional[float] = None
        self.built = self.total = self.mirrored = self.build_errors = 0
        self.build_s = 0.0  # seconds of build work (for build_rate)
        # Keys written since the start, decoded (the build compares its own
        # decoded keys with them: no encoding per record built).
        self.covered: set[Any] = set()
        self.all_covered = False  # T was cleared: no key of the view is still T's
        self.failed: set[bytes] = set()  # keys whose fn raised or did not encode
        self.adoptable = False  # restarted by the open: start_migration adopts it
        self._stop = threading.Event()  # the build and the thread end
        self._wake = threading.Event()  # a revert was asked (routing's on_revert)
        self._revert_reason: Optional[str] = None
        self._end_lock = threading.Lock()  # one end: revert or complete
        self._thread: Optional[threading.Thread] = None
        self._batches: Optional[Iterator[tuple[list[Any], list[Any]]]] = None
        self.old: Any = None
        self.shadow: Any = None
        self.routing: Any = None
        self.kind = F.KIND_KV
        self.runs: Optional[Runs] = None
        self.from_version = 1
        # The run's spans (tracing.py; a no-op without OpenTelemetry).
        self.trace: _tracing.MigrationTrace = _tracing.NO_MIGRATION_TRACE

    # ------------------------------------------------------------ start
    def begin(self) -> None:
        """Take the view, make the shadow, mirror writes, route (fraction 0).
        The build thread is ``start_thread``'s (tests step it instead)."""
        host, m = self.host, self.m
        reg, core = host.registry, host.core
        # The view's memory is allocated and faulted in before the lock (a
        # KVTable's arena size): under it, the copy is one memcpy, which is
        # all the writers wait for.
        found = reg.by_name.get(m.table)
        prepared = _per_record.prepare_view(found.table, found.kind) if found else None
        # The shadow is sized for the table up front, before it is shared:
        # grown as the build fills it, each doubling of its slots would
        # rehash it under the store's lock (tens of ms at a million keys).
        shadow = None
        if found is not None and found.kind in (F.KIND_KV, F.KIND_DICT):
            shadow = reg.new_table(m.table, found.kind)
            shadow._reserve(len(found.table))
        with host.lock:
            host.check_serving()
            info = reg.by_name.get(m.table)
            if info is None:
                raise MigrationError(f"migration {m.id!r}: table {m.table!r} has no records "
                                     "yet; nothing to run online", migration=m.id,
                                     path=host.path, reason="no_table")
            if info.kind not in (F.KIND_KV, F.KIND_DICT):
                raise MigrationError(f"migration {m.id!r}: table {m.table!r} is not a kv or "
                                     "dict table", migration=m.id, path=host.path)
            self.from_version = reg.version(m.table)
            if m.to_version <= self.from_version:
                raise MigrationError(f"migration {m.id!r}: to_version {m.to_version} is not "
                                     f"above table {m.table!r}'s version {self.from_version}",
                                     migration=m.id, path=host.path, reason="migration_version")
            self.kind, self.old = info.kind, info.table
            view = _per_record.consistent_view(
                self.old, self.kind, core,
                prepared if found is not None and found.table is info.table else None)
            prepared = None
            self.total = view.count
            self.shadow = shadow if shadow is not None and found is not None \
                and found.table is info.table else reg.new_table(m.table, self.kind)
            shadow = None
            self._batches = view.batches(_BUILD_ROWS)
            self.routing = _routing().Routing(
                m.id, m.table, self.old, self.shadow, encode_key=core.encode_key,
                failed=self._key_failed, compare=self.compare, sample=self.settings.sample,
                auto_revert=self.settings.auto_revert, on_revert=self._on_revert)
            host.set_write_target(m.table, Mirror(self))
        if self.total == 0:
            self._caught_up_locked_free()

    def start_thread(self) -> None:
        t = threading.Thread(target=self._main, name=f"rehydrate-online-{self.m.id}",
                             daemon=True)
        self._thread = t
        t.start()

    # ------------------------------------------------------------ mirroring
    def _key_failed(self, key: Any) -> bool:
        try:
            return self.host.core.encode_key(key) in self.failed
        except Exception:  # noqa: BLE001 - a key no table can hold is in none
            return False

    def _fail(self, kb: bytes) -> None:
        self.shadow._delete_raw(kb)
        self.failed.add(kb)
        self.build_errors += 1

    def _mirror_key(self, kb: bytes) -> None:
        """(The store's lock held, a write to T just applied.) The shadow
        gets fn of the key's new value; the key is covered. Never raises:
        a fn that does not take the record marks the key failed."""
        core = self.host.core
        if not self.all_covered:
            self.covered.add(core.decode_key(kb))
        self.mirrored += 1
        vb = self.old._get_raw(kb)
        if vb is None:
            self.shadow._delete_raw(kb)
            self.failed.discard(kb)
            return
        try:
            out = self.m.fn(core.decode_key(kb), core.unpack_value(vb))
            if out is _per_record.DELETE:
                self.shadow._delete_raw(kb)
            else:
                self.shadow._put_raw(kb, core.pack_value(out))
        except Exception:  # noqa: BLE001 - the write stands; the key is failed
            self._fail(kb)
            return
        self.failed.discard(kb)

    def _mirror_clear(self) -> None:
        self.shadow._clear()
        self.failed.clear()
        self.all_covered = True  # nothing of the view is T's any more
        self.covered = set()
        self.mirrored += 1

    # ------------------------------------------------------------ build
    def step(self) -> bool:
        """One slice of the build: at most ``slice_ms`` of work (which also
        bounds each hold of the lock). True while there is more to build."""
        batches = self._batches
        if batches is None or self.state != "building":
            return False
        host, core = self.host, self.host.core
        t0 = time.perf_counter()
        deadline = t0 + self.settings.slice_ms / 1000.0
        try:
            while True:
                batch = next(batches, None)
                if batch is None:
                    self._batches = None
                    # (Counted before caught_up: its event and span carry the rate.)
                    now = time.perf_counter()
                    self.build_s += now - t0
                    t0 = now
                    self._caught_up_locked_free()
                    return False
                keys, values = batch
                puts, _deletes, errors = _per_record.apply_fn(self.m.fn, keys, values)
                encode = core.encode_key
                with host.lock:
                    if self.state != "building":
                        return False
                    if not self.all_covered:
                        covered = self.covered
                        fresh = [(k, v) for k, v in puts if k not in covered] if covered \
                            else puts
                        for k, _e in _per_record.put_many(self.shadow, self.kind, core, fresh):
                            self._fail(encode(k))
                        for k, _e in errors:
                            if k not in covered:
                                self._fail(encode(k))
                    self.built += len(keys)
                if time.perf_counter() >= deadline:
                    return True
        finally:
            self.build_s += time.perf_counter() - t0

    def _caught_up_locked_free(self) -> None:
        with self.host.lock:
            if self.state != "building":
                return
            self.state = "caught_up"
            self.built = self.total
        self._build_ended("caught_up")
        self._changed()

    def _build_ended(self, outcome: str) -> None:
        self.trace.build_ended(records=self.built, build_errors=self.build_errors,
                               rate=self.built / self.build_s if self.build_s > 0 else None,
                               outcome=outcome)

    def _main(self) -> None:
        """The run's thread: the build (sliced, at most max_duty of wall
        time), then the status file, progress events and a revert's end."""
        duty = self.settings.max_duty
        last_file = last_progress = 0.0
        try:
            while not self._stop.is_set():
                pause = _STATUS_EVERY_S
                if self.state == "building" and not self._wake.is_set():
                    t0 = time.perf_counter()
                    more = self.step()
                    work = time.perf_counter() - t0
                    pause = work * (1.0 - duty) / duty if more else 0.0
                if self._wake.is_set():
                    self.finish_revert(self._revert_reason or "reverted")
                    return
                now = time.monotonic()
                if now - last_file >= _STATUS_EVERY_S:
                    last_file = now
                    self._write_status_file()
                if now - last_progress >= _PROGRESS_EVERY_S:
                    last_progress = now
                    self.host.tell("on_migration_progress", self.status())
                if pause:
                    self._wake.wait(pause)
        except Exception as e:  # noqa: BLE001 - a fatal build error reverts the run
            log.exception("%s: online migration %r failed", self.host.path, self.m.id)
            self.finish_revert(f"build failed: {type(e).__name__}: {e}")

    # ------------------------------------------------------------ routing
    def route(self, fraction: object) -> None:
        f = _number("fraction", fraction, 0.0, 1.0)
        with self.trace.step("route", fraction=f, run=self.run):
            self._route(f)

    def _route(self, f: float) -> None:
        if self.state == "reverted":
            raise MigrationError(f"migration {self.m.id!r}: the run was reverted "
                                 f"({self.reason})", migration=self.m.id, path=self.host.path,
                                 reason="reverted")
        if f > 0 and self.state != "caught_up":
            raise MigrationError(f"migration {self.m.id!r}: the shadow has not caught up "
                                 f"({self.built}/{self.total} built)", migration=self.m.id,
                                 path=self.host.path, reason="not_caught_up")
        if self.state == "completed":
            raise MigrationError(f"migration {self.m.id!r}: completed", migration=self.m.id,
                                 path=self.host.path, reason="no_run")
        self.routing.set_fraction(f)
        self.host.routed(self.m.id)

    def _on_revert(self, reason: str) -> None:
        """Routing's callback (reads already go to the old table): the
        thread does the rest. Never blocks."""
        self._revert_reason = reason
        self._wake.set()

    # ------------------------------------------------------------ the end
    def finish_revert(self, reason: str, record: bool = True) -> bool:
        """Route back, stop the build, stop mirroring, drop the shadow,
        record (unless ``record`` is False: the store closes, and the
        MANIFEST keeps the run live for the next open's on_restart). False
        when the run had ended already."""
        with self._end_lock:
            if self.state in ("reverted", "completed"):
                return False
            routing = self.routing
            if routing is not None and routing.reverted is None:
                routing.revert(reason)  # (its on_revert only sets _wake)
            self._stop.set()
            with self.host.lock:
                self.state, self.reason = "reverted", reason
                self.ended_at = time.time()
                self.host.set_write_target(self.m.table, None)
                self._batches = None
            self.shadow = None
            self.covered, self.failed = set(), set()
        if record:
            log.warning("%s: online migration %r reverted: %s (run %d; the migration stays "
                        "pending)", self.host.path, self.m.id, reason, self.run)
        self._build_ended("reverted")
        revert_ms = routing.status().get("revert_ms") if routing is not None else None
        self.trace.reverted(reason, revert_ms=revert_ms, run=self.run)
        if record:
            self._record("reverted")
        self._changed()
        return True

    def complete(self) -> dict[str, Any]:
        """The cutover: commit the shadow as T at to_version, exactly as an
        offline migration commits; the ledger entry."""
        with self.trace.step("complete", run=self.run) as span:
            entry = self._complete()
            span.set(ledger_lsn=entry.get("lsn"), digest_before=entry.get("digest_before"),
                     digest_after=entry.get("digest_after"), to_version=entry.get("to_version"))
        return entry

    def _complete(self) -> dict[str, Any]:
        host, m = self.host, self.m
        with self._end_lock:
            self._check_completable()
            mhost = host.migration_host()
            invariants = host.migrations.invariants.get(m.table, [])
            with host.hold_writes():
                self._check_completable()  # (a revert may have come meanwhile)
                digest_before = format_digest(mhost.state_digest())
                # Invariants read the tables as they are: no write lands now.
                check_invariants(invariants, self.old, m, "before the migration", host.path)
                names = check_invariants(invariants, self.shadow, m, "after the migration",
                                         host.path)
                self.ended_at = time.time()
                record = self._record_dict("completed", "completed")

                def also(man: dict[str, Any]) -> None:
                    _put_record(man, record)

                with host.lock:
                    host.set_write_target(m.table, None)
                try:
                    entry = commit_migration(mhost, m, self.shadow, self.from_version,
                                             digest_before, names, also=also)
                except BaseException as e:
                    raise self._cutover_failed(e) from e
                with host.lock:
                    self.state = "completed"
                self._stop.set()
                self._wake.set()
                self.shadow = self.old = None
                self.covered, self.failed = set(), set()
        self._changed()
        return entry

    def _cutover_failed(self, e: BaseException) -> BaseException:
        """(Writers held off.) The commit raised ``e``; what to raise.

        Before the new table became T's state (the checkpoint that is the
        rollback point failed): nothing changed, T is as it was and still
        mirrored, the run stays caught up and the store goes on. After it
        (the marker record or the committing MANIFEST write failed): the
        MANIFEST on disk may hold either version (a rename may have landed
        and its fsync failed), so the store fails stop; the old table serves
        reads meanwhile and the next open finds old or new, never a mix
        (docs/migrations.md, "Crashes and I/O errors")."""
        host, m = self.host, self.m
        err: BaseException = e
        if isinstance(e, OSError) and not isinstance(e, RehydrateError):
            err = StorageIOError.wrap(e, host.path)
        replaced = getattr(host.registry.by_name.get(m.table), "table", None) is self.shadow
        self.ended_at = None
        if not replaced:
            with host.lock:  # not committed: T as it was, still mirrored
                host.set_write_target(m.table, Mirror(self))
            return err
        host.migration_host().replace_state(m.table, self.old, self.from_version)
        host.fail_stop(err)
        reason = f"cutover failed: {type(err).__name__}: {err}"
        if self.routing is not None and self.routing.reverted is None:
            self.routing.revert(reason)
        with host.lock:
            self.state, self.reason = "reverted", reason
            self.ended_at = time.time()
        self._stop.set()
        self._wake.set()
        self.shadow = None
        self.covered, self.failed = set(), set()
        log.error("%s: online migration %r: the cutover failed after the state changed "
                  "(%s); the store stopped (fail-stop): the next open has the old version "
                  "or the new one", host.path, m.id, err)
        if isinstance(err, RehydrateError):
            return err
        return StoreFailedError(f"online migration {m.id!r}: the cutover failed: {err!r}",
                                path=host.path)

    def _check_completable(self) -> None:
        m, path = self.m, self.host.path
        if self.state == "reverted":
            raise MigrationError(f"migration {m.id!r}: the run was reverted ({self.reason})",
                                 migration=m.id, path=path, reason="reverted")
        if self.state != "caught_up":
            raise MigrationError(f"migration {m.id!r}: the shadow has not caught up",
                                 migration=m.id, path=path, reason="not_caught_up")
        if self.routing.fraction < 1.0:
            raise MigrationError(f"migration {m.id!r}: route it to 1.0 before completing "
                                 f"(at {self.routing.fraction})", migration=m.id, path=path,
                                 reason="not_full")

    def quiet_stop(self) -> None:
        """Stop a run without an end of its own (a start that failed, or one
        that a later start adopts): no record, no event."""
        self._stop.set()
        self._wake.set()
        with self.host.lock:
            self.host.set_write_target(self.m.table, None)
            self.state, self.reason = "reverted", "replaced"
        if self.routing is not None and self.routing.reverted is None:
            self.routing.revert("replaced")
        self._build_ended("replaced")
        self.join(5.0)
        self.shadow = None

    def join(self, timeout: Optional[float] = None) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """The run's status dict (JSON-safe; design in docs/migrations.md)."""
        r: dict[str, Any] = {}
        if self.routing is not None:
            r = self.routing.status()
        total = self.total
        progress = 1.0 if self.state in ("caught_up", "completed") or total == 0 \
            else min(1.0, self.built / total)
        return {"id": self.m.id, "table": self.m.table, "from_version": self.from_version,
                "to_version": self.m.to_version, "state": self.state, "progress": progress,
                "built": self.built, "total": total, "mirrored": self.mirrored,
                "build_errors": self.build_errors,
                "fraction": 0.0 if self.state == "reverted" else r.get("fraction", 0.0),
                "paths": r.get("paths", {}), "compared": r.get("compared", 0),
                "divergences": r.get("divergences", 0),
                "compare_errors": r.get("compare_errors", 0),
                "divergence_rate": r.get("divergence_rate", 0.0), "reason": self.reason,
                "revert_ms": r.get("revert_ms"), "started_at": self.started_at,
                "ended_at": self.ended_at, "run": self.run, "restarts": self.restarts,
                "on_restart": self.settings.on_restart,
                "build_rate": self.built / self.build_s if self.build_s > 0 else None}

    def _record_dict(self, state: str, outcome: Optional[str]) -> dict[str, Any]:
        return {"id": self.m.id, "table": self.m.table, "run": self.run, "state": state,
                "reason": self.reason, "started_at": self.started_at,
                "ended_at": self.ended_at, "outcome": outcome, "restarts": self.restarts,
                "from_version": self.from_version, "to_version": self.m.to_version,
                **self.settings.as_dict()}

    def record_start(self) -> None:
        record = self._record_dict("building", None)
        self.host.update_manifest(lambda man: _put_record(man, record))

    def _record(self, outcome: str) -> None:
        record = self._record_dict(self.state, outcome)
        try:
            self.host.update_manifest(lambda man: _put_record(man, record))
        except Exception:  # noqa: BLE001 - the run ended either way; the open sees it live
            log.exception("%s: could not record the end of online migration %r",
                          self.host.path, self.m.id)

    def _changed(self) -> None:
        self._write_status_file()
        self.host.routed(self.m.id)
        self.host.tell("on_migration_state", self.status())

    def _write_status_file(self) -> None:
        runs = self.runs
        statuses = runs.statuses() if runs is not None else [self.status()]
        write_status_file(self.host.path, statuses)


def _put_record(man: dict[str, Any], record: dict[str, Any]) -> None:
    """Put (or replace: same id and run) a run's record; keep the last
    KEEP_RUNS."""
    runs = [r for r in man.get("migration_runs") or []
            if not (r.get("id") == record["id"] and r.get("run") == record["run"])]
    runs.append(record)
    man["migration_runs"] = runs[-KEEP_RUNS:]


_STATUS_FILE_LOCK = threading.Lock()


def write_status_file(path: str, statuses: list[dict[str, Any]]) -> None:
    """``migration-runs.json``: written whole by rename, no fsync (it only
    informs; the MANIFEST's records are what an open trusts). A failure is
    logged, never raised."""
    target = os.path.join(path, RUNS_FILE)
    tmp = f"{target}.tmp"
    try:
        # One writer at a time (a run's thread and the caller of route or
        # abort both write it): they share the temporary name.
        with _STATUS_FILE_LOCK:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"written_at": time.time(), "runs": statuses}, f)
            os.replace(tmp, target)
    except (OSError, TypeError, ValueError) as e:
        log.warning("%s: could not write %s: %s", path, RUNS_FILE, e)


def read_status_file(path: str) -> list[dict[str, Any]]:
    """The runs ``migration-runs.json`` lists ([] without one)."""
    try:
        with open(os.path.join(path, RUNS_FILE), encoding="utf-8") as f:
            runs: list[dict[str, Any]] = json.load(f).get("runs") or []
    except (OSError, ValueError, AttributeError):
        return []
    return runs


class Runs:
    """The runs a store knows: its live ones and those ended since its open
    (the store holds one; its methods are what Store's delegate to)."""

    def __init__(self) -> None:
        self.by_id: dict[str, OnlineRun] = {}
        self._lock = threading.Lock()  # start/adopt vs start

    def live(self, table: str) -> Optional[OnlineRun]:
        """The live run of ``table`` (lock-free: a read of a dict)."""
        for run in list(self.by_id.values()):
            if run.m.table == table and run.state in ("building", "caught_up"):
                return run
        return None

    def get(self, host: OnlineHost, mid: object) -> OnlineRun:
        run = self.by_id.get(mid) if isinstance(mid, str) else None
        if run is None:
            find_online(host, mid)
            raise MigrationError(f"migration {mid!r} has no run (start_migration first)",
                                 migration=str(mid), path=host.path, reason="no_run")
        return run

    def start(self, host: OnlineHost, mid: object, compare: Optional[Callable[[Any, Any], bool]],
              settings: Settings, restarts: int = 0, thread: bool = True) -> OnlineRun:
        with self._lock:
            m = find_online(host, mid)
            done = {e.get("id") for e in host.manifest().get("ledger") or []}
            pending = [x for x in host.migrations.migrations
                       if x.table == m.table and x.id not in done]
            if pending and pending[0] is not m:
                raise MigrationError(f"migration {m.id!r}: {pending[0].id!r} of table "
                                     f"{m.table!r} comes first", migration=m.id,
                                     path=host.path, reason="not_next")
            old = self.by_id.get(m.id)
            if old is not None and old.state in ("building", "caught_up"):
                if not old.adoptable:
                    raise MigrationError(f"migration {m.id!r} is running already (run "
                                         f"{old.run})", migration=m.id, path=host.path,
                                         reason="already_running")
                # Rebuilt by the open: this call's settings (and compare) take
                # over; the run starts again under the same number.
                old.adoptable = False
                old.quiet_stop()
                number, restarts = old.run, old.restarts
            else:
                number = 1 + max((r.get("run", 0) for r in host.manifest().get(
                    "migration_runs") or [] if r.get("id") == m.id), default=0)
            run = OnlineRun(host, m, settings, compare, number, restarts)
            run.runs = self
            run.trace = _tracing.start_migration(m.id, m.table)
            with run.trace.step("start", run=number, restarts=restarts) as span:
                run.trace.build_started()
                try:
                    run.begin()
                except BaseException:
                    run._build_ended("failed")
                    raise
                try:
                    run.record_start()
                except BaseException:
                    run.quiet_stop()
                    raise
                span.set(from_version=run.from_version, to_version=m.to_version,
                         records=run.total)
            self.by_id[m.id] = run
        if thread:
            run.start_thread()
        run._changed()
        return run

    def statuses(self) -> list[dict[str, Any]]:
        return [r.status() for r in list(self.by_id.values())]

    def close(self) -> None:
        """The store closes: each live run stops (its status says reverted,
        "store closed"), and its MANIFEST record stays live: a restart is
        one, and the next open rebuilds or abandons the run per its
        on_restart, as after a crash."""
        for run in list(self.by_id.values()):
            run.finish_revert("store closed", record=False)
            run.join(5.0)




def resume(host: OnlineHost, runs: Runs) -> None:
    """At the open (the store ready): each run the MANIFEST has as live is
    one a crash or kill cut: per its on_restart, "abandoned" (the migration
    stays pending) or "rebuilt" (it starts again with its recorded
    settings, fraction 0; ``start_migration`` adopts it)."""
    man = host.manifest()
    live = [r for r in man.get("migration_runs") or [] if r.get("outcome") is None]
    for record in live:
        mid = record.get("id")
        rebuild = record.get("on_restart") == "rebuild"
        try:
            find_online(host, mid)
        except ConfigError:
            rebuild = False  # applied since, or no longer registered
        ended = dict(record, outcome="rebuilt" if rebuild else "abandoned",
                     state="reverted", ended_at=time.time(),
                     reason=record.get("reason") or "interrupted (the store stopped)")
        host.update_manifest(functools.partial(_put_record, record=ended))
        log.warning("%s: online migration %r was live when the store stopped: %s",
                    host.path, mid, "rebuilding it" if rebuild else "abandoned (still pending)")
        if not rebuild:
            continue
        try:
            settings = check_settings(None, record.get("sample", 0.01),
                                      record.get("auto_revert"), record.get("on_restart"),
                                      record.get("slice_ms", DEFAULT_MIGRATION_SLICE_MS),
                                      record.get("max_duty", DEFAULT_MIGRATION_MAX_DUTY))
            run = runs.start(host, mid, None, settings, restarts=int(record.get("restarts", 0))
                             + 1)
            run.adoptable = True
        except Exception:  # noqa: BLE001 - an open never fails for a run it restarts
            log.exception("%s: online migration %r could not be rebuilt", host.path, mid)
