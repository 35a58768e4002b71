"""Rolling migrations back, and the status of a store's versions
(docs/migrations.md, "Rollback").

A migration leaves behind what a rollback needs. The snapshot from just
before it stays pinned until the migration is confirmed. Its own record
starts a new log segment. So a rollback to before migration E:

- returns the MANIFEST to E's snapshot (``snapshot_before``), the ledger
  without E and the ones after it, and the versions from before;
- drops every log record after that snapshot. Those records are the
  migrations' own, plus any a service wrote since: the **rollback boundary**.
  A rollback refuses to drop a non-empty boundary without ``force``, and
  even then it moves the segments aside into ``quarantine/`` instead of
  deleting them.

The MANIFEST write that names the new end of the log (``log_end``) is the
commit. The segments and snapshots past that end are then moved aside, and
``log_end`` is cleared. If a crash comes in between, the next open or
rollback finishes the job (``finish_rollback``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from . import _fileio
from . import manifest as _manifest
from ._backend import core as _core
from ._types import StrPath
from .errors import ConfigError, MigrationError
from .lockfile import DirLock
from .recovery import QUARANTINE_DIR, walk
from .snapshot import SNAPSHOTS_DIR, list_snapshots, snapshot_name
from .tables import TableRegistry
from .wal import WAL_DIR, list_segments


def check_ledger(man: dict, path: str) -> list:
    """The MANIFEST's ledger, checked for shape (CorruptionError if not)."""
    from .errors import CorruptionError

    ledger = man.get("ledger") or []
    ok = isinstance(ledger, list) and all(
        isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("table"), str)
        and type(e.get("lsn")) is int and type(e.get("snapshot_before")) is int
        and type(e.get("from_version")) is int and type(e.get("to_version")) is int
        for e in ledger)
    if not ok:
        raise CorruptionError("MANIFEST ledger is malformed",
                              path=os.path.join(path, _manifest.MANIFEST_NAME),
                              reason="bad_manifest")
    return ledger


def log_end(path: str, man: dict) -> int:
    """The last LSN the log holds (a checking read of it, as verify does)."""
    registry = TableRegistry(_core(), materialize=False)
    result = walk(_core(), path, mode="skip-corrupted", registry=registry, apply=False,
                  start_lsn=_manifest.log_start(man, path))
    return result.next_lsn - 1


def _ranges(lsns: list) -> list:
    """Sorted ints as [[first, last], ...] runs."""
    out: list = []
    for x in lsns:
        if out and out[-1][1] == x - 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return out


def plan_rollback(path: str, steps: Optional[int] = None, to: Optional[str] = None) -> dict:
    """What a rollback would do, changing nothing; MigrationError when it
    cannot be done."""
    if steps is not None and to is not None:
        raise ConfigError("give steps or to, not both")
    if steps is not None and (type(steps) is not int or steps < 1):
        raise ConfigError(f"steps must be an int >= 1, not {steps!r}")
    man = _manifest.read(path)
    ledger = check_ledger(man, path)
    if not ledger:
        raise MigrationError("no migration in the ledger: nothing to roll back", path=path,
                             reason="no_ledger")
    if to is not None:
        ids = [e["id"] for e in ledger]
        if to not in ids:
            raise MigrationError(f"no migration {to!r} in the ledger (it has "
                                 f"{', '.join(ids)})", path=path, migration=to,
                                 reason="no_ledger")
        first = ids.index(to)
    else:
        n = 1 if steps is None else steps
        if n > len(ledger):
            raise MigrationError(f"the ledger holds {len(ledger)} migration(s), not {n}",
                                 path=path, reason="no_ledger")
        first = len(ledger) - n
    targets = ledger[first:]
    base = targets[0]["snapshot_before"]
    confirmed = [e["id"] for e in targets if e.get("confirmed")]
    sdir = os.path.join(path, SNAPSHOTS_DIR)
    if confirmed or base not in (man.get("snapshots") or []) or \
            not os.path.isdir(os.path.join(sdir, snapshot_name(base))):
        raise MigrationError(
            f"cannot roll back {', '.join(e['id'] for e in targets)}: "
            + (f"{', '.join(confirmed)} confirmed, so " if confirmed else "")
            + f"the snapshot from before it (LSN {base}) is gone", path=path,
            migration=targets[0]["id"], reason="rollback_unavailable")
    end = log_end(path, man)
    markers = {e["lsn"] for e in targets}
    boundary = _ranges([x for x in range(base + 1, end + 1) if x not in markers]) \
        if end - base <= 10_000_000 else [[base + 1, end]]
    segments = [s for s in list_segments(os.path.join(path, WAL_DIR))[0]
                if s.first_lsn > base]
    if end > base and (not segments or segments[0].first_lsn != base + 1):
        raise MigrationError(f"the log has no segment starting at LSN {base + 1}; records "
                             "after the migration's snapshot share a segment with older "
                             "ones, so they cannot be set aside whole", path=path,
                             reason="rollback_unavailable")
    versions = dict(man.get("versions") or {})
    for e in reversed(targets):
        versions[e["table"]] = e["from_version"]
    return {"to_lsn": base, "migrations": [e["id"] for e in targets],
            "boundary": boundary, "dropped_records": sum(b - a + 1 for a, b in boundary),
            "log_end": end,
            "segments": [os.path.basename(s.path) for s in segments],
            "snapshots": [x for x in list_snapshots(path) if x > base],
            "versions": {k: v for k, v in versions.items() if v != 1},
            "digest": targets[0].get("digest_before")}


def rollback(path: StrPath, *, steps: Optional[int] = None, to: Optional[str] = None,
             dry_run: bool = False, force: bool = False) -> dict[str, Any]:
    """Return ``path`` to the state before the last ``steps`` migrations
    (default 1) or before migration ``to`` and all after it. Returns the
    plan (see ``plan_rollback``) with ``"done"``. MigrationError when the
    boundary is not empty and ``force`` is not given, or when it cannot be
    done; LockedError while a store has the directory open."""
    path = os.fspath(path)
    with DirLock(path):
        plan = plan_rollback(path, steps, to)
        plan["done"] = False
        if dry_run:
            return plan
        if plan["boundary"] and not force:
            spans = ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in plan["boundary"])
            raise MigrationError(
                f"rolling back {', '.join(plan['migrations'])} would drop {plan['dropped_records']} "
                f"record(s) written after the migration (LSN {spans}); use force to drop them "
                "(their segments are kept in quarantine/)", path=path,
                migration=plan["migrations"][0], reason="rollback_boundary")
        man = _manifest.read(path)
        ledger = check_ledger(man, path)
        base = plan["to_lsn"]
        man["ledger"] = ledger[:len(ledger) - len(plan["migrations"])]
        man["snapshots"] = [x for x in (man.get("snapshots") or []) if x <= base]
        man["versions"] = plan["versions"]
        man["log_end"] = base
        man.pop("clean_end", None)  # the log will end elsewhere than the last close left it
        _manifest.write(path, man)  # the commit: from here the log ends at base
        finish_rollback(path, man)
        plan["done"] = True
        return plan


def finish_rollback(path: str, man: dict) -> dict:
    """Move aside what a committed rollback dropped (segments and snapshots
    past ``log_end``), then clear ``log_end``; returns the MANIFEST."""
    end = man["log_end"]
    if type(end) is not int or end < 0:
        from .errors import CorruptionError

        raise CorruptionError(f"MANIFEST log_end {end!r} is not an LSN",
                              path=os.path.join(path, _manifest.MANIFEST_NAME),
                              reason="bad_manifest")
    qdir = os.path.join(path, QUARANTINE_DIR)
    _fileio.makedir_durable(qdir)
    stamp = time.time_ns()
    waldir = os.path.join(path, WAL_DIR)
    moved = False
    for seg in list_segments(waldir)[0]:
        if seg.first_lsn > end:
            _fileio.rename(seg.path, os.path.join(
                qdir, f"{os.path.basename(seg.path)}.rolled-back.{stamp}"))
            moved = True
    sdir = os.path.join(path, SNAPSHOTS_DIR)
    for lsn in list_snapshots(path):
        if lsn > end:
            _fileio.rename(os.path.join(sdir, snapshot_name(lsn)),
                           os.path.join(qdir, f"snapshot-{snapshot_name(lsn)}.rolled-back."
                                              f"{stamp}"))
            moved = True
    if moved:
        _fileio.fsync_dir(qdir)  # first: a power cut then leaves both copies, not neither
        _fileio.fsync_dir(waldir)
        if os.path.isdir(sdir):
            _fileio.fsync_dir(sdir)
    man = dict(man)
    del man["log_end"]
    _manifest.write(path, man)
    return man


def confirm(path) -> list:
    """Confirm every migration in the ledger (their rollback snapshots
    become ordinary ones, kept or dropped by the next checkpoint); the ids
    newly confirmed."""
    path = os.fspath(path)
    with DirLock(path):
        man = _manifest.read(path)
        ledger = check_ledger(man, path)
        newly = [e["id"] for e in ledger if not e.get("confirmed")]
        if newly:
            man["ledger"] = [dict(e, confirmed=True) for e in ledger]
            _manifest.write(path, man)
        return newly


def status(path) -> dict:
    """Each table's version (the MANIFEST's, as migrations left it), the
    version its newest snapshot holds, the versions its records in the log
    were written at, and the ledger. Reads the directory, changes nothing."""
    from .snapshot import read_meta

    path = os.fspath(path)
    man = _manifest.read(path)
    ledger = check_ledger(man, path)
    seen: dict = {}  # table -> versions declared in the log

    class Noting(TableRegistry):
        def declare(self, tid, kind, name_bytes, schema=b"", version=1):
            seen.setdefault(bytes(name_bytes).decode("utf-8", "replace"), set()).add(version)
            return super().declare(tid, kind, name_bytes, schema, version)

    snaps: dict = {}
    for lsn in sorted(man.get("snapshots") or [], reverse=True):
        try:
            meta = read_meta(os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn)))
        except (OSError, ValueError):
            continue
        snaps = {e["name"]: e.get("version", 1) for e in meta["tables"] if isinstance(e, dict)}
        break
    result = walk(_core(), path, mode="skip-corrupted", registry=Noting(_core(),
                  materialize=False), apply=False, start_lsn=_manifest.log_start(man, path))
    stored = man.get("versions") or {}
    tables = sorted(set(stored) | set(snaps) | set(seen))
    return {"tables": {t: {"version": stored.get(t, 1), "snapshot_version": snaps.get(t),
                           "log_versions": sorted(seen.get(t, ()))} for t in tables},
            "ledger": ledger, "last_lsn": result.next_lsn - 1}
