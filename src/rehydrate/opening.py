"""The open pipeline: plan, snapshot, replay, resume (docs/recovery.md).

Free functions that take a directory and the open's options and return
what they found, so the pipeline reads top to bottom:

- ``prepare_directory``: a store here (created if allowed), or refuse;
- ``plan_open``: read and check the MANIFEST, finish a rollback, predict
  the open's cost and refuse one that cannot fit (``Planned``);
- ``load_and_replay``: the newest snapshot that loads, then the log after
  it, with the recovery mode's decisions applied (``Opened``).

The store keeps what they return and opens its log writer at the end. A
background open passes ``take_writes``: a checking pass over the log
(``index_log``) then finds the log's end first, so the store can take
writes while the replay runs.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import _fileio
from . import _format as F
from . import hints as _hints
from . import manifest as _manifest
from . import plan as _plan
from . import snapshot as _snapshot
from .errors import (
    ConfigError, CorruptionError, InvalidOperationError, MigrationError, NotAStoreError,
)
from .migrations import Migrations, Versions, upcast_table, warn_drift
from .options import Options
from .recovery import CancelledError, Problem, RecoveryReport, apply_actions, clean_end_of, walk
from .migration_rollback import check_ledger, finish_rollback
from .tables import TableRegistry
from .wal import WAL_DIR, list_segments

def prepare_directory(path: str, create: bool) -> None:
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


def migrations_pending(manifest: dict[str, Any], migrations: Optional[Migrations]) -> bool:
    """Registered migrations not in the ledger (the migrate phase runs them;
    a background open takes writes only once they have)."""
    if migrations is None:
        return False
    done = {e.get("id") for e in manifest.get("ledger") or []}
    return any(m.id not in done for m in migrations.migrations)


def size_hints(path: str) -> dict[str, tuple[int, int]]:
    """Each table's presizing hint from the last close, capped by the log's size."""
    found = _hints.read(path)
    if not found:
        return {}
    wal_bytes = sum(s.size for s in list_segments(os.path.join(path, WAL_DIR))[0])
    return {name: _hints.capped(h, wal_bytes) for name, h in found.items()}


@dataclass
class Planned:
    """What the plan phase found: the MANIFEST, the tables' versions, the
    cost prediction, the (empty) table registry, and the log's first LSN."""

    manifest: dict[str, Any]
    versions: Versions
    plan: dict[str, Any]
    registry: TableRegistry
    log_start: int
    started: float  # perf_counter() at the open's start
    ended: float  # and at the plan's end: the phases are consecutive spans


def plan_open(path: str, options: Options, core: Any, run: Any, owner: Any,
              started: float) -> Planned:
    """The plan phase (``run`` is the open's WarmupRun, ``owner`` the store
    its listeners are told of, ``started`` the open's perf_counter() start).
    MemoryBudgetError when the open cannot fit; a MANIFEST that fails its
    checks is a CorruptionError."""
    run.start("plan")
    manifest = _manifest.read(path)
    if manifest.get("log_end") is not None:
        manifest = finish_rollback(path, manifest)
    check_ledger(manifest, path)
    versions = Versions(manifest, options.migrations)
    if options.migrations is not None:
        warn_drift(copy.deepcopy(manifest.get("ledger") or []), options.migrations,
                   options.strict_migrations, path)
    plan = _plan.make_plan(path, manifest)
    run.expect(plan)
    _plan.preflight(plan, options.max_memory_bytes)
    ended = time.perf_counter()
    waldir = os.path.join(path, WAL_DIR)
    for name in list_segments(waldir)[2]:  # tmp files of an interrupted create
        _fileio.unlink(os.path.join(waldir, name))
    registry = TableRegistry(core, size_hints=size_hints(path), kinds=options.kinds,
                             versions=versions)
    log_start = _manifest.log_start(manifest, path)
    run.end(owner, bytes=plan["bytes"], predicted_s=plan["predicted_s"],
            predicted_peak_bytes=plan["predicted_peak_bytes"])
    return Planned(manifest, versions, plan, registry, log_start, started, ended)


def _drop_snapshot(path: str, manifest: dict[str, Any], lsn: int, spath: str) -> None:
    """Take a failed snapshot out of use, keeping its files as evidence
    (``manifest`` is updated in place and written)."""
    if os.path.isdir(spath):
        _fileio.rename(spath, spath + ".broken" if not os.path.exists(spath + ".broken")
                       else f"{spath}.broken.{time.time_ns()}")
        _fileio.fsync_dir(os.path.dirname(spath))
    manifest["snapshots"] = [x for x in manifest.get("snapshots", []) if x != lsn]
    _manifest.write(path, manifest)


def upcast_loaded(versions: Versions, registry: TableRegistry, core: Any, name: str,
                  kind: int, table: Any, version: int, spath: str, lsn: int) -> Any:
    """A loaded snapshot table at this table's current version: as it is,
    or with every value through the upcasters (a new table). An upcaster
    that raises fails the open (MigrationError): the snapshot is sound,
    the code is not. (``load_base``'s ``adapt``, for an open and a standby.)"""
    fns = versions.reader(name, version)  # ConfigError: ahead, or a gap
    if fns is None:
        return table
    if kind not in (F.KIND_KV, F.KIND_DICT):
        raise ConfigError(f"table {name!r} is at version {version} in snapshot {lsn}; "
                          "upcasters are for kv and dict tables", reason="upcaster_kind")
    try:
        return upcast_table(table, name, fns, core, lambda: registry.new_table(name, kind))
    except InvalidOperationError as e:
        raise MigrationError(f"{e.detail} (snapshot at LSN {lsn})", path=spath, lsn=lsn,
                             reason="upcaster_error") from e.__cause__


@dataclass
class Following:
    """The state a standby or a reader starts from (``load_for_following``):
    the MANIFEST it read, the registry holding the base snapshot's tables,
    and the base."""

    manifest: dict[str, Any]
    registry: TableRegistry
    base: _snapshot.Base
    log_start: int


def load_for_following(path: str, options: Options, core: Any) -> Following:
    """The newest snapshot that loads (upcast to this code's versions),
    without the LOCK and without changing a byte: where a standby or a
    readonly store starts before it follows the log. NotAStoreError,
    CorruptionError (reason ``no_base``) when no snapshot can start the
    state, ConfigError for tables or versions this code cannot hold."""
    _manifest.check_store_dir(path)
    manifest = _manifest.read(path)
    versions = Versions(manifest, options.migrations)
    registry = TableRegistry(core, size_hints=size_hints(path), kinds=options.kinds,
                             versions=versions)
    base = _snapshot.load_base(
        path, manifest, registry,
        adapt=lambda *args: upcast_loaded(versions, registry, core, *args))
    log_start = _manifest.log_start(manifest, path)
    _snapshot.check_base(path, manifest, base.lsn, log_start)
    return Following(manifest, registry, base, log_start)


@dataclass
class LogIndex:
    """What a background open's checking pass found in a clean log: where
    it ends, and by which LSN each table's records are all in."""

    next_lsn: int
    resume_path: Optional[str]
    resume_size: int
    last_lsn: dict[str, int]  # table name -> LSN by which its records are all in
    started: float  # perf_counter() when the pass began

    @property
    def end(self) -> tuple[int, dict[str, int]]:
        """(last LSN, {newest segment: size}): where the replay stops."""
        sizes = {self.resume_path: self.resume_size} if self.resume_path else {}
        return self.next_lsn - 1, sizes


def index_log(core: Any, path: str, walk_args: dict[str, Any], run: Any,
              registry: TableRegistry) -> Optional[LogIndex]:
    """The checking pass of a background open over the log after the
    snapshot: when it is clean, every table it names is declared in
    ``registry`` and its end returned. None (writes wait for the replay's
    end) when the log has anything a recovery mode must decide on."""
    t0 = time.perf_counter()
    reader = TableRegistry(core, materialize=False)
    last_lsn: dict[int, int] = {}  # table id -> LSN by which its records are all in
    in_segment: set[int] = set()
    declare = reader.declare

    def declare_noting(tid: int, kind: int, name_bytes: bytes, schema: bytes = b"",
                       version: int = 1) -> Any:
        in_segment.add(tid)
        return declare(tid, kind, name_bytes, schema, version)

    def on_chunk(_path: str, next_lsn: Optional[int]) -> None:
        # Segment-grained: a table declared in a segment is taken to have
        # records up to that segment's end.
        if next_lsn is None:
            in_segment.clear()
            return
        for tid in in_segment:
            last_lsn[tid] = next_lsn - 1

    # (An instance attribute over the class's method: mypy has no way to say so.)
    reader.declare = declare_noting  # type: ignore[method-assign]
    # (Progress is the replay's to report; this pass only tells the stall
    # watchdog it is alive.)
    args = dict(walk_args, registry=reader, apply=False, mode="skip-corrupted",
                on_chunk=on_chunk, progress=lambda done, total: run.tick(n=0))
    result = walk(core, path, **args)
    clean = (not result.actions and result.next_lsn > walk_args["applied_lsn"]
             and all(p.kind == "foreign_file" for p in result.report.problems))
    if not clean:
        return None
    for tid in sorted(reader.by_id):
        info = reader.by_id[tid]
        registry.declare(tid, info.kind, info.name.encode("utf-8"), info.schema)
    return LogIndex(result.next_lsn, result.resume_path, result.resume_size,
                    {reader.by_id[tid].name: lsn for tid, lsn in last_lsn.items()}, t0)


@dataclass
class Opened:
    """The state an open rebuilt: the recovery report, the source offsets,
    where the log goes on, and each phase's duration."""

    report: RecoveryReport
    offsets: dict[str, int]
    next_lsn: int
    resume_path: Optional[str]
    resume_size: int
    writes_taken: bool  # a background open's writer is open already
    phases: list[dict[str, Any]] = field(default_factory=list)
    ended: float = 0.0  # perf_counter() at the replay's end


def load_and_replay(path: str, options: Options, core: Any, run: Any, cancel: bytearray,
                    planned: Planned, owner: Any,
                    take_writes: Optional[Callable[[LogIndex], None]] = None,
                    on_replayed: Optional[Callable[[str, Optional[int]], None]] = None
                    ) -> Opened:
    """The snapshot and replay phases, on ``planned.registry``.

    ``take_writes`` (a background open): once a checking pass finds the
    log clean, it is called with the log's end so the store takes writes
    while the replay, stopping there, runs; ``on_replayed(path, next_lsn)``
    is then told of each chunk replayed. Writes wait for the replay's end
    instead under ``point-in-time`` or with migrations pending.
    """
    recovery, manifest = options.recovery, planned.manifest
    t0 = planned.ended
    run.start("snapshot", snapshots=list(manifest.get("snapshots") or []))
    # The newest snapshot that loads: one that fails a check is renamed
    # <lsn>.broken, dropped from the MANIFEST and reported, and the next
    # older one is tried; with none, the whole log is replayed (the log is
    # kept whole, so nothing is lost). "strict" refuses instead.
    snap_lsn, snap_offsets, snap_problems = _snapshot.load_base(
        path, manifest, planned.registry, strict=recovery == "strict",
        on_bad=lambda lsn, spath: _drop_snapshot(path, manifest, lsn, spath),
        adapt=lambda *args: upcast_loaded(planned.versions, planned.registry, core, *args))
    _snapshot.check_base(path, manifest, snap_lsn, planned.log_start)
    for p in snap_problems:
        run.corruption(p)
    run.end(owner, lsn=snap_lsn)
    t_snapshot = time.perf_counter()
    run.start("replay", from_lsn=snap_lsn + 1)
    progress = options.progress

    def replay_progress(done: int, total: int) -> None:
        run.tick(done, total)
        if progress is not None:
            progress(done, total)
    walk_args: dict[str, Any] = dict(mode=recovery, registry=planned.registry, apply=True,
                     progress=replay_progress, applied_lsn=snap_lsn, offsets=snap_offsets,
                     skip_covered=True, start_lsn=planned.log_start, cancel=cancel,
                     clean_end=clean_end_of(manifest, path))
    watch = run.watch(cancel)
    index: Optional[LogIndex] = None
    taken_after_s: Optional[float] = None
    try:
        if (take_writes is not None and recovery != "point-in-time"
                and not migrations_pending(manifest, options.migrations)):
            index = index_log(core, path, walk_args, run, planned.registry)
            if index is not None:
                take_writes(index)
                taken_after_s = time.perf_counter() - index.started
                # Writers go on from the log's end while the replay reads the
                # log as it was (docs/warmup.md, "Background open").
                walk_args["end"] = index.end
                walk_args["on_chunk"] = on_replayed
                # The checking pass held the whole log to its clean end; the
                # replay reads only up to the index's end, which (for an empty
                # log) may leave out the header-only segment the end names.
                walk_args["clean_end"] = None
        result = walk(core, path, **walk_args)
    except CancelledError:
        if watch.error is None:
            raise
        raise watch.error from None
    finally:
        watch.close()
    if result.next_lsn <= snap_lsn:
        # The snapshot was published only once the log held its LSN: the
        # log lost records since (a cut, a deleted tail). The snapshot's
        # state is checked whole; keep it, write on after it.
        p = Problem("log_behind_snapshot", os.path.join(path, WAL_DIR), None,
                    result.next_lsn, f"the log ends before snapshot LSN {snap_lsn}",
                    lsn_end=snap_lsn, action="skipped")
        if recovery == "strict":
            raise CorruptionError(p.detail, path=p.path, lsn=p.lsn, reason=p.kind)
        result.report.problems.append(p)
        result.next_lsn, result.resume_path = snap_lsn + 1, None
    for p in result.report.problems:
        run.corruption(p)
    result.report.problems[:0] = snap_problems
    taken = {} if take_writes is None else {"writes_taken_after_s": taken_after_s}
    run.end(owner, records=result.report.applied, bytes=result.report.bytes_read,
            rate=(result.report.applied / max(time.perf_counter() - t_snapshot, 1e-9)),
            **taken)
    t_replay = time.perf_counter()
    if index is not None:
        if result.actions or result.next_lsn != index.next_lsn:
            # The checking pass found this log clean up to there.
            raise CorruptionError("the log changed while the store was opening",
                                  path=os.path.join(path, WAL_DIR), lsn=result.next_lsn,
                                  reason="log_changed")
    else:
        apply_actions(path, result.actions)
    phases = [
        {"name": "plan", "duration_s": planned.ended - planned.started},
        {"name": "snapshot", "duration_s": t_snapshot - t0, "lsn": snap_lsn},
        {"name": "replay", "duration_s": t_replay - t_snapshot,
         "records": result.report.applied, "bytes": result.report.bytes_read},
    ]
    return Opened(result.report, dict(result.offsets), result.next_lsn, result.resume_path,
                  result.resume_size, index is not None, phases, t_replay)
