"""Standalone checks of a state directory: ``verify`` (the log, the
snapshots, how their LSNs meet; or one snapshot folder alone) and ``inspect``.

Both read without the LOCK and never change a byte, so they are safe on a
live store (a tail being written shows up as a torn tail) and on a copy from
an untrusted source.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from . import _format as F
from . import manifest as _manifest
from ._backend import core as _core
from .errors import CorruptionError, NotAStoreError, typed_io_errors
from .recovery import Problem, RecoveryReport, check_mode, walk
from .replay import reader_walker, replay_readonly
from .snapshot import META_NAME, migration_floor
from .tables import KIND_NAMES, TableRegistry
from .wal import WAL_DIR


def is_snapshot_dir(path) -> bool:
    """Is ``path`` one snapshot folder on its own (a META, no MANIFEST), as
    ``verify`` checks it?"""
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.exists(os.path.join(path, META_NAME)) and \
        not os.path.exists(os.path.join(path, _manifest.MANIFEST_NAME))


@typed_io_errors
def verify(path, *, recovery: str = "tolerate-tail", deep: bool = False,
           progress: Optional[Callable[[int, int], None]] = None,
           classes: Optional[dict] = None) -> RecoveryReport:
    """Check a store: every segment's header, frames, checksums and LSN
    order, and every snapshot the MANIFEST lists, file by file, and how
    their LSNs meet the log's (docs/recovery.md, "Verify").

    ``path`` may also be one snapshot folder on its own (a META, no
    MANIFEST), as shipped from elsewhere: its files are checked alone.

    Reads past damage (as skip-corrupted would) so the report lists every
    problem, then judges by ``recovery``: ``report.ok`` is False when damage
    was found, or, under ``strict``, a torn tail. ``report.snapshots`` lists
    the snapshots checked. With ``deep`` it also replays the state in
    memory (finding ops that cannot apply), decodes every stored key and
    value (finding checksummed bytes msgpack refuses), and sets
    ``report.digest`` / ``report.table_digests``: the digest of the state
    an open in mode ``recovery`` would make, None when such an open would
    stop at an op that cannot apply or has no snapshot to start from, or
    when a table has no digest (a custom table: its entry in
    ``table_digests`` is None). ``classes`` (name -> StateType subclass)
    lets a deep replay run custom tables' own classes.
    Raises NotAStoreError (neither a store nor a snapshot),
    UnsupportedFormatError, ConfigError for an unknown mode,
    StorageIOError when a file cannot be read; never changes a byte.
    """
    check_mode(recovery)
    path = os.fspath(path)
    if is_snapshot_dir(path):
        return _finish(_verify_snapshot_dir(path, recovery, deep), recovery)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, _manifest.MANIFEST_NAME)):
        raise NotAStoreError("no MANIFEST and no META: neither a rehydrate store nor a "
                             "snapshot", path=path)
    _manifest.check_store_dir(path)
    man = _manifest.read(path)
    from concurrent.futures import ThreadPoolExecutor

    # The snapshots are checked on a second thread while this one walks the
    # log: both spend their time in native code (CRC32C, the digest sums,
    # the scan) without the GIL, so on two cores the snapshots cost little
    # wall time.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rehydrate-verify") as pool:
        checking = pool.submit(_check_listed, path, man)
        registry = TableRegistry(_core(), materialize=deep, classes=classes)
        # Read past damage, as skip-corrupted would, so every problem is
        # listed. Without a base (no_base, reported below) no state is
        # built; the log is still checked.
        walker = reader_walker(
            path, man, "skip-corrupted", registry, apply=deep, progress=progress,
            no_base="check",
            fresh_registry=lambda: TableRegistry(_core(), materialize=False, classes=classes))
        deep, registry = walker.apply, walker.registry
        try:
            report = walker.run().report
        except CorruptionError as e:
            # Only a deep replay stops here (an op that cannot apply): report it
            # with everything read so far; the state is not whole, so no digest.
            if e.reason != "apply_error":
                raise
            report = walker.report
            deep = False
        checked = checking.result()
    report.problems.extend(_snapshot_problems(path, man, checked))
    report.problems.extend(_lsn_problems(path, man, checked, report))
    report.snapshots = [_summary(c, lsn) for lsn, c in checked]
    if deep:
        _decode_everything(path, registry, report)
        if recovery != "skip-corrupted" and any(p.kind == "apply_error"
                                                for p in report.problems):
            # The walk left out records that cannot apply (as skip-corrupted
            # does); an open in this mode would stop there: no whole state.
            report.digest = report.table_digests = None
        if report.digest is not None:
            _check_snapshots(path, report, {c.path for _, c in checked if not c.ok})
    return _finish(report, recovery)


def _finish(report: RecoveryReport, recovery: str) -> RecoveryReport:
    report.mode = recovery
    for p in report.problems:
        if p.is_damage or (recovery == "strict" and p.kind == "torn_tail"):
            p.action = "error"
    return report


def _check_listed(path: str, man: dict) -> list:
    """[(LSN, SnapshotCheck)] of every snapshot the MANIFEST lists, newest first."""
    from .snapshot import SNAPSHOTS_DIR, SnapshotCheck, check, snapshot_name

    out = []
    for lsn in sorted(set(man.get("snapshots") or []), reverse=True):
        spath = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
        if os.path.isdir(spath):
            out.append((lsn, check(spath, lsn)))
        else:
            out.append((lsn, SnapshotCheck(spath, None, [CorruptionError(
                "missing: the MANIFEST lists this snapshot", path=spath, lsn=lsn,
                reason="bad_snapshot")])))
    if any(not c.ok for _, c in out):
        # On a live store a checkpoint may have retired a snapshot (MANIFEST
        # first, then the folder) while it was read: what the MANIFEST no
        # longer lists is not judged.
        still = set(_manifest.read(path).get("snapshots") or [])
        out = [(lsn, c) for lsn, c in out if c.ok or lsn in still]
    return out


def _summary(c, lsn: Optional[int]) -> dict:
    """A snapshot checked, for the report: its LSN (the MANIFEST's or the
    folder's when META is unusable), path, bytes checked, tables, verdict."""
    meta = c.meta or {}
    return {"lsn": meta.get("lsn", lsn), "path": c.path, "bytes": c.bytes,
            "tables": [t["name"] for t in meta.get("tables", [])], "ok": c.ok}


def _snapshot_problems(path: str, man: dict, checked: list) -> list:
    """Each damaged file of a listed snapshot (``bad_snapshot``), files META
    does not name and snapshot folders the MANIFEST does not list (warnings)."""
    from .snapshot import SNAPSHOTS_DIR, list_snapshots, snapshot_name

    out = []
    for lsn, c in checked:
        out.extend(Problem("bad_snapshot", e.path, e.offset, lsn, e.detail) for e in c.damage)
        out.extend(Problem("foreign_file", f, None, lsn, "not a file of this snapshot (META "
                           "does not name it); left alone", action="ignored") for f in c.stray)
    listed = {lsn for lsn, _ in checked}
    for lsn in list_snapshots(path):
        if lsn not in listed:
            out.append(Problem(
                "snapshot_unchecked", os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn)),
                None, lsn, "not listed in the MANIFEST (written by a checkpoint that stopped "
                "before publishing it): no open loads it; left alone", action="ignored"))
    return out


def _lsn_problems(path: str, man: dict, checked: list, report: RecoveryReport) -> list:
    """How the snapshots' LSNs meet the log's (docs/recovery.md, "Verify"):

    - ``snapshot_log_gap``: a snapshot at or after the newest migration
      (one an open may start from) whose next LSN the log no longer holds
      (``log_start`` > LSN + 1): an open falling back to it would miss
      records. Rollback points (before the migration) need no log after them.
    - ``no_base``: the log does not start at LSN 1, or a migration reshaped
      the state, and no snapshot that passes its checks is at or after
      ``log_start - 1`` and the migration: no open can make the state.
    - ``log_behind_snapshot``: the log ends before the newest good
      snapshot's LSN; a checkpoint publishes a snapshot only once the log
      holds its LSN, so records the log had are gone.

    A log that starts after ``log_start`` (records missing at its start) is
    the walk's ``missing_segment``.
    """
    start = _manifest.log_start(man, path)
    floor = migration_floor(man)
    waldir = os.path.join(path, WAL_DIR)
    good = [lsn for lsn, c in checked if c.ok]
    out = []
    for lsn, c in checked:
        if c.ok and lsn >= floor and lsn + 1 < start:
            out.append(Problem(
                "snapshot_log_gap", c.path, None, lsn + 1,
                f"the log starts at LSN {start} (MANIFEST log_start): LSN {lsn + 1}..{start - 1}"
                " after this snapshot are in no file, so an open cannot start from it",
                lsn_end=start - 1))
    need = max(start - 1, floor)
    if need > 0 and not any(lsn >= need for lsn in good):
        why = (f"the log starts at LSN {start} (MANIFEST log_start)" if start - 1 >= floor
               else f"a migration at LSN {floor} reshaped the state")
        out.append(Problem(
            "no_base", waldir, None, need + 1,
            f"{why} and no snapshot at or after LSN {need} passes its checks: no open can "
            "make the state"))
    if good and max(good) > report.last_lsn:
        out.append(Problem(
            "log_behind_snapshot", waldir, None, report.last_lsn + 1,
            f"the log ends at LSN {report.last_lsn}, before snapshot LSN {max(good)}: a "
            "snapshot is published only once the log holds its LSN, so records are gone "
            "from the log", lsn_end=max(good)))
    return out


def _verify_snapshot_dir(path: str, recovery: str, deep: bool) -> RecoveryReport:
    """One snapshot folder on its own: every file checked; with ``deep``
    it is loaded and every key and value decoded, and the digest given."""
    from .errors import ConfigError
    from .snapshot import check, load

    name = os.path.basename(os.path.normpath(path))
    # A folder named for an LSN (as in a store) must hold that LSN; a copy
    # under another name is taken at META's word.
    lsn = int(name) if len(name) == F.SEGMENT_NAME_DIGITS and name.isascii() \
        and name.isdigit() else None
    c = check(path, lsn)
    report = RecoveryReport(mode=recovery)
    report.problems.extend(Problem("bad_snapshot", e.path, e.offset, e.lsn, e.detail)
                           for e in c.damage)
    report.problems.extend(Problem("foreign_file", f, None, None, "not a file of this "
                                   "snapshot (META does not name it); left alone",
                                   action="ignored") for f in c.stray)
    report.snapshots = [_summary(c, lsn)]
    if c.meta is not None:
        report.last_lsn = c.meta["lsn"]
    if deep and c.ok:
        registry = TableRegistry(_core(), materialize=True)
        try:
            _meta, tables = load(path, registry.snapshot_table)
            for tname, tid, kind, table in tables:
                registry.add_loaded(tname, tid, kind, table)
        except ConfigError:
            report.problems.append(Problem(
                "snapshot_unchecked", path, None, c.meta["lsn"],
                "has custom tables, which need their classes to load: checked by its files "
                "only, no digest", action="ignored"))
        except CorruptionError as e:
            report.problems.append(Problem("bad_snapshot", e.path or path, e.offset,
                                           c.meta["lsn"], e.detail))
        else:
            _decode_everything(path, registry, report)
    return report


def _check_ledger_digests(path: str, man: dict, report: RecoveryReport) -> None:
    """Each ledger entry's digests against the snapshots it names (those
    still there): ``ledger_mismatch`` (damage) when they differ."""
    from .snapshot import SNAPSHOTS_DIR, read_meta, snapshot_name

    for e in man.get("ledger") or []:
        for lsn, want, what in ((e.get("snapshot_before"), e.get("digest_before"), "before"),
                                (e.get("lsn"), e.get("digest_after"), "after")):
            spath = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
            if type(lsn) is not int or not os.path.isdir(spath):
                continue
            try:
                got = read_meta(spath).get("digest")
            except (CorruptionError, OSError):
                continue  # reported as bad_snapshot by the load
            if got != want:
                report.problems.append(Problem(
                    "ledger_mismatch", spath, None, lsn,
                    f"migration {e.get('id')!r} recorded digest {want} {what} it; the "
                    f"snapshot holds {got}"))


def _check_snapshots(path: str, report: RecoveryReport, bad: set) -> None:
    """Each snapshot + the log after it must give the state the whole log gives.

    (The log is kept whole, so the full replay is the reference.) A snapshot
    that does not load is ``bad_snapshot``; one whose state disagrees is
    ``snapshot_mismatch``; both are damage. Snapshots of custom tables cannot
    be loaded without their classes and are left out (said in the report).
    Those in ``bad`` (paths), already reported by their files, are not loaded.
    """
    from ._hashing import combine_digests, format_digest, table_digest
    from .errors import ConfigError
    from .snapshot import SNAPSHOTS_DIR, check_images, list_snapshots, load, snapshot_name

    man = _manifest.read(path)
    start = _manifest.log_start(man, path)
    floor = migration_floor(man)
    _check_ledger_digests(path, man, report)
    for lsn in list_snapshots(path):
        spath = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
        if spath in bad:
            continue
        if lsn < floor:
            report.problems.append(Problem(
                "snapshot_unchecked", spath, None, lsn,
                "from before the newest migration: a rollback point, checked by the "
                "ledger's digest", action="ignored"))
            continue
        registry = TableRegistry(_core())
        try:
            meta, tables = load(spath, registry.snapshot_table)
            check_images(spath, meta)
            for name, tid, kind, table in tables:
                registry.add_loaded(name, tid, kind, table)
            tail = walk(_core(), path, mode="skip-corrupted", registry=registry, apply=True,
                        applied_lsn=lsn, offsets=meta["offsets"], skip_covered=True,
                        start_lsn=start)
            got = format_digest(combine_digests({n: table_digest(i.table)
                                          for n, i in registry.by_name.items()}))
        except ConfigError:
            report.problems.append(Problem(
                "snapshot_unchecked", spath, None, lsn,
                "has custom tables, which need their classes to load", action="ignored"))
            continue
        except (CorruptionError, OSError) as e:
            report.problems.append(Problem("bad_snapshot", spath, None, lsn, str(e)))
            continue
        if got != report.digest:
            report.problems.append(Problem(
                "snapshot_mismatch", spath, None, lsn,
                f"snapshot + log after it give digest {got}, the whole log {report.digest}"))
        del tail


def _snapshots(path: str, man: dict) -> list:
    """The snapshot folders with what their META says (never loaded here)."""
    from .snapshot import SNAPSHOTS_DIR, list_snapshots, read_meta, snapshot_name

    out = []
    listed = set(man.get("snapshots") or [])
    for lsn in list_snapshots(path):
        spath = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
        try:
            meta = read_meta(spath)
            tables = [t.get("name") for t in meta["tables"] if isinstance(t, dict)]
            size = sum(os.path.getsize(os.path.join(spath, n)) for n in os.listdir(spath))
            out.append({"lsn": lsn, "path": spath, "bytes": size, "tables": tables,
                        "digest": meta.get("digest"), "listed": lsn in listed, "ok": True})
        except (CorruptionError, OSError) as e:
            out.append({"lsn": lsn, "path": spath, "bytes": 0, "tables": [], "digest": None,
                        "listed": lsn in listed, "ok": False, "detail": str(e)})
    return out


def _decode_everything(path: str, registry, report: RecoveryReport) -> None:
    """Decode every key and value of the replayed tables; digest them."""
    from ._hashing import combine_digests, format_digest, table_digest
    from .errors import ConfigError

    core = _core()
    digests = {}
    for name, info in sorted(registry.by_name.items()):
        raw = getattr(info.table, "_items_raw", None)
        if info.kind == F.KIND_KV and raw is not None:
            for kb, vb in raw():
                for what, decode, data in (("bad_key", core.decode_key, kb),
                                           ("bad_value", core.unpack_value, vb)):
                    try:
                        decode(data)
                    except CorruptionError as e:
                        report.problems.append(Problem(
                            what, path, None, None,
                            f"table {name!r}, key bytes {bytes(kb)[:32]!r}: {e.detail}"))
        try:
            digests[name] = table_digest(info.table)
        except ConfigError:
            pass  # a custom table: no digest to give (None below says so)
    report.table_digests = {n: (format_digest(digests[n]) if n in digests else None)
                            for n in sorted(registry.by_name)}
    if len(digests) == len(registry.by_name):
        report.digest = format_digest(combine_digests(digests))


@typed_io_errors
def inspect(path, *, progress=None, classes: Optional[dict] = None) -> dict:
    """Segments, LSN ranges, tables (keys, bytes) of a directory, replayed in
    memory. A table's ``keys`` is None where a reader cannot know it (a
    custom table restored from a snapshot without its class: ``classes``,
    name -> StateType subclass, gives it)."""
    path = os.fspath(path)
    _manifest.check_store_dir(path)
    man = _manifest.read(path)
    registry = TableRegistry(_core(), classes=classes)
    result = replay_readonly(path, man, "skip-corrupted", registry, progress)
    report = result.report
    tables = []
    for tid, kind, name in registry.order:
        info = registry.by_id[tid]
        tables.append({"name": info.name, "id": tid, "kind": KIND_NAMES.get(kind, str(kind)),
                       "keys": len(info.table) if getattr(info.table, "keys_known", True)
                       else None,
                       "memory_bytes": getattr(info.table, "memory_bytes", None)})
    return {
        "path": path,
        "format": man.get("format"),
        "first_lsn": report.first_lsn,
        "last_lsn": report.last_lsn,
        "records": report.records,
        "wal_bytes": report.bytes_read,
        "segments": [s.as_dict() for s in report.segments],
        "tables": tables,
        "offsets": result.offsets,
        "snapshots": _snapshots(path, man),
        "problems": [p.as_dict() for p in report.problems],
        "ok": report.ok,
    }
