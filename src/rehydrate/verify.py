"""Standalone checks of a state directory: ``verify`` and ``inspect``.

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
from .recovery import Problem, RecoveryReport, _Walker, check_mode, clean_end_of, walk
from .snapshot import load_base, migration_floor, no_base_error
from .tables import KIND_NAMES, TableRegistry


def _check_store_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise NotAStoreError("no such directory", path=path)
    if not os.path.isfile(os.path.join(path, _manifest.MANIFEST_NAME)):
        raise NotAStoreError("no MANIFEST: not a rehydrate store", path=path)


@typed_io_errors
def verify(path, *, recovery: str = "tolerate-tail", deep: bool = False,
           progress: Optional[Callable[[int, int], None]] = None,
           classes: Optional[dict] = None) -> RecoveryReport:
    """Check every segment's header, frames, checksums and LSN order.

    Reads past damage (as skip-corrupted would) so the report lists every
    problem, then judges by ``recovery``: ``report.ok`` is False when damage
    was found, or, under ``strict``, a torn tail. With ``deep`` it also
    replays the state in memory (finding ops that cannot apply), decodes
    every stored key and value (finding checksummed bytes msgpack refuses),
    and sets ``report.digest`` / ``report.table_digests``: the digest of the
    state an open in mode ``recovery`` would make, None when such an open
    would stop at an op that cannot apply or a table has no digest (a custom
    table: its entry in ``table_digests`` is None). ``classes`` (name ->
    StateType subclass) lets a deep replay run custom tables' own classes.
    Raises NotAStoreError, UnsupportedFormatError, ConfigError for an unknown
    mode; never changes a byte.
    """
    check_mode(recovery)
    path = os.fspath(path)
    _check_store_dir(path)
    man = _manifest.read(path)
    start = _manifest.log_start(man, path)
    registry = TableRegistry(_core(), materialize=deep, classes=classes)
    base_lsn, base_offsets = 0, {}
    floor = migration_floor(man)
    if deep and (start > 1 or floor):  # the log alone no longer makes the state
        base_lsn, base_offsets = load_base(path, man, registry)
        if base_lsn + 1 < start or base_lsn < floor:
            raise no_base_error(path, max(start, floor + 1))
    walker = _Walker(_core(), path, "skip-corrupted", registry, deep, start, base_lsn, None,
                     progress)
    walker.offsets.update(base_offsets)
    walker.clean_end = clean_end_of(man, path)
    try:
        report = walker.run().report
    except CorruptionError as e:
        # Only a deep replay stops here (an op that cannot apply): report it
        # with everything read so far; the state is not whole, so no digest.
        if e.reason != "apply_error":
            raise
        report = walker.report
        deep = False
    if deep:
        _decode_everything(path, registry, report)
        if recovery != "skip-corrupted" and any(p.kind == "apply_error"
                                                for p in report.problems):
            # The walk left out records that cannot apply (as skip-corrupted
            # does); an open in this mode would stop there: no whole state.
            report.digest = report.table_digests = None
        if report.digest is not None:
            _check_snapshots(path, report)
    report.mode = recovery
    for p in report.problems:
        if p.is_damage or (recovery == "strict" and p.kind == "torn_tail"):
            p.action = "error"
    return report


def replay_readonly(path: str, man: dict, mode: str, registry, progress=None):
    """The state a reader sees, built in ``registry`` without changing a byte:
    the log replayed from its start, on top of the newest valid snapshot when
    the log no longer starts at LSN 1."""
    start = _manifest.log_start(man, path)
    base_lsn, base_offsets = 0, {}
    floor = migration_floor(man)
    if start > 1 or floor:
        base_lsn, base_offsets = load_base(path, man, registry)
        if base_lsn + 1 < start or base_lsn < floor:
            raise no_base_error(path, max(start, floor + 1))
    # Every segment from the log's start is read and checked (a reader reports
    # what is there), though records the snapshot holds are not applied.
    return walk(_core(), path, mode=mode, registry=registry, apply=True, progress=progress,
                start_lsn=start, applied_lsn=base_lsn, offsets=base_offsets,
                clean_end=clean_end_of(man, path))


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


def _check_snapshots(path: str, report: RecoveryReport) -> None:
    """Each snapshot + the log after it must give the state the whole log gives.

    (The log is kept whole, so the full replay is the reference.) A snapshot
    that does not load is ``bad_snapshot``; one whose state disagrees is
    ``snapshot_mismatch``; both are damage. Snapshots of custom tables cannot
    be loaded without their classes and are left out (said in the report).
    """
    from .digest import _combine, format_digest, table_digest
    from .errors import ConfigError
    from .snapshot import SNAPSHOTS_DIR, check_images, list_snapshots, load, snapshot_name

    man = _manifest.read(path)
    start = _manifest.log_start(man, path)
    floor = migration_floor(man)
    _check_ledger_digests(path, man, report)
    for lsn in list_snapshots(path):
        spath = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
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
            got = format_digest(_combine({n: table_digest(i.table)
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
    from .digest import _combine, format_digest, table_digest
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
        report.digest = format_digest(_combine(digests))


@typed_io_errors
def inspect(path, *, progress=None, classes: Optional[dict] = None) -> dict:
    """Segments, LSN ranges, tables (keys, bytes) of a directory, replayed in
    memory. A table's ``keys`` is None where a reader cannot know it (a
    custom table restored from a snapshot without its class: ``classes``,
    name -> StateType subclass, gives it)."""
    path = os.fspath(path)
    _check_store_dir(path)
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
