"""Standalone checks of a state directory: ``verify`` and ``inspect``.

Both read without the LOCK and never change a byte, so they are safe on a
live store (a tail being written shows up as a torn tail) and on a copy from
an untrusted source.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from . import manifest as _manifest
from ._backend import core as _core
from .errors import NotAStoreError, typed_io_errors
from .recovery import RecoveryReport, check_mode, walk
from .tables import KIND_NAMES, TableRegistry


def _check_store_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise NotAStoreError("no such directory", path=path)
    if not os.path.isfile(os.path.join(path, _manifest.MANIFEST_NAME)):
        raise NotAStoreError("no MANIFEST: not a rehydrate store", path=path)


@typed_io_errors
def verify(path, *, recovery: str = "tolerate-tail",
           progress: Optional[Callable[[int, int], None]] = None) -> RecoveryReport:
    """Check every segment's header, frames, checksums and LSN order.

    Reads past damage (as skip-corrupted would) so the report lists every
    problem, then judges by ``recovery``: ``report.ok`` is False when damage
    was found, or, under ``strict``, a torn tail. Raises NotAStoreError,
    UnsupportedFormatError, ConfigError for an unknown mode; never changes a byte.
    """
    check_mode(recovery)
    path = os.fspath(path)
    _check_store_dir(path)
    _manifest.read(path)
    registry = TableRegistry(_core(), materialize=False)
    report = walk(_core(), path, mode="skip-corrupted", registry=registry, apply=False,
                  progress=progress).report
    report.mode = recovery
    for p in report.problems:
        if p.is_damage or (recovery == "strict" and p.kind == "torn_tail"):
            p.action = "error"
    return report


@typed_io_errors
def inspect(path, *, progress=None) -> dict:
    """Segments, LSN ranges, tables (keys, bytes) of a directory, replayed in memory."""
    path = os.fspath(path)
    _check_store_dir(path)
    man = _manifest.read(path)
    registry = TableRegistry(_core())
    result = walk(_core(), path, mode="skip-corrupted", registry=registry, apply=True,
                  progress=progress)
    report = result.report
    tables = []
    for tid, kind, name in registry.order:
        info = registry.by_id[tid]
        tables.append({"name": info.name, "id": tid, "kind": KIND_NAMES.get(kind, str(kind)),
                       "keys": len(info.table), "memory_bytes": info.table.memory_bytes})
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
        "problems": [p.as_dict() for p in report.problems],
        "ok": report.ok,
    }
