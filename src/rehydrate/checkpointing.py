"""Checkpoints: capture the state under the caller's lock, write it as a
snapshot, publish it in the MANIFEST, delete what it made unneeded
(docs/snapshots.md).

``checkpoint`` runs the steps, each a free function: ``prepare`` (before
the lock), ``capture`` (under it, a few memcpys), ``finish_digests`` and
``publish`` (after it), ``trim_log`` (under the log's I/O lock).
``AutoCheckpoint`` is the thread that calls a checkpoint by time or by
bytes of log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Optional

from . import _fileio
from . import _format as F
from . import manifest as _manifest
from . import migrations as _migrations
from . import snapshot as _snapshot
from ._hashing import format_digest, table_digest
from .errors import StoreClosedError
from .journal import Journal
from .tables import TableRegistry
from .wal import WAL_DIR, list_segments

#: (the capture, the digests known when it was taken: {table name: hex digest})
Captured = tuple[_snapshot.Capture, dict[str, str]]
#: ``commit(manifest)``: changes the MANIFEST that publishes a snapshot.
Commit = Callable[[dict[str, Any]], None]


def prepare(registry: TableRegistry) -> dict[str, Any]:
    """Before the lock: memory for the native tables' copies, faulted in
    now, so that under the lock a copy is one memcpy."""
    return {name: info.table._copy_prepare()
            for name, info in list(registry.by_name.items())
            if hasattr(info.table, "_copy_prepare")}


def capture(registry: TableRegistry, lsn: int, offsets: dict[str, int],
            prepared: dict[str, Any]) -> Captured:
    """(Capture, digests known now) of the state at ``lsn`` (the caller
    holds the lock that keeps writers out)."""
    captured: list[tuple[str, int, int, Any]] = []
    digests: dict[str, str] = {}
    for name in registry.names():
        info = registry.by_name[name]
        if info.kind == F.KIND_CUSTOM:
            payload = info.table.snapshot()
        elif info.kind == F.KIND_NUMERIC:
            payload = (info.table.schema(), [a.copy() for a in info.table._live()])  # memcpys
            digests[name] = format_digest(info.table._digest())
        elif hasattr(info.table, "_copy"):
            payload = info.table._copy(prepared.pop(name, None))
        else:  # a DictTable (small by intent): its pairs, now
            payload = info.table._items_raw()
            digests[name] = format_digest(table_digest(info.table))
        captured.append((name, info.tid, info.kind, payload))
    versions = {name: registry.version(name) for name in registry.names()}
    return _snapshot.Capture(lsn, dict(offsets), captured, versions), digests


def finish_digests(cap: _snapshot.Capture, digests: dict[str, str]) -> None:
    """Outside the lock: the copies' digests (their columns are made as
    the files are written)."""
    for name, _tid, kind, payload in cap.tables:
        if name not in digests and kind != F.KIND_CUSTOM:
            digests[name] = format_digest(payload._digest())


def publish(path: str, manifest: dict[str, Any], cap: _snapshot.Capture,
            digests: dict[str, str], *, keep_snapshots: int, make_durable: Callable[[int], None],
            commit: Optional[Commit] = None) -> dict[str, Any]:
    """Write ``cap`` as a snapshot and publish it in ``manifest`` (the
    caller's MANIFEST, updated in place once the new one is durable, so
    a failure after it leaves the caller with what is on disk).

    The log is made durable up to the snapshot's LSN first (the log holds
    everything the snapshot does); the MANIFEST that lists it is written
    only once its files are durable; snapshots beyond ``keep_snapshots``
    (not one a migration may still roll back to) go only after that.
    ``commit(manifest)`` changes the publishing MANIFEST (a migration's
    ledger entry goes in with it, in the same write). With nothing new
    since the last snapshot (and no ``commit``), that one stands.
    """
    lsn = cap.lsn
    sdir = os.path.join(path, _snapshot.SNAPSHOTS_DIR)
    spath = os.path.join(sdir, _snapshot.snapshot_name(lsn))
    listed = manifest.get("snapshots") or []
    if lsn in listed and commit is None:
        return {"lsn": lsn, "bytes": 0, "path": spath,
                "digest": _snapshot.read_meta(spath).get("digest"), "existing": True}
    make_durable(lsn)
    if os.path.isdir(spath) and lsn not in listed:
        _fileio.remove_tree(spath)  # written, never published (a crash before the MANIFEST)
    info = _snapshot.write(path, cap, digests)
    man = dict(manifest)
    if commit is None:
        _migrations.count_checkpoint(man)
    else:
        commit(man)
    pinned = _migrations.pinned_snapshots(man)
    kept = sorted(set(man.get("snapshots") or []) | {lsn}, reverse=True)[:keep_snapshots]
    man["snapshots"] = sorted(set(kept) | (pinned & set(man.get("snapshots") or [])),
                              reverse=True)
    _manifest.write(path, man)
    manifest.clear()
    manifest.update(man)
    # Only now, with the MANIFEST that drops them durable, go the old ones.
    for old in _snapshot.list_snapshots(path):
        if old not in man["snapshots"]:
            _fileio.remove_tree(os.path.join(sdir, _snapshot.snapshot_name(old)))
    _fileio.fsync_dir(sdir)
    return {"lsn": lsn, "bytes": info.bytes, "path": info.path, "digest": info.digest}


def checkpoint(path: str, manifest: dict[str, Any], registry: TableRegistry,
               capture_locked: Callable[[dict[str, Any]], Captured], journal: Journal,
               keep_snapshots: int, commit: Optional[Commit] = None,
               keep_after: Optional[Callable[[], int]] = None) -> dict[str, Any]:
    """One checkpoint, start to end, publishing in ``manifest`` (the
    caller's, updated in place as each new MANIFEST is durable).

    ``capture_locked(prepared)`` takes the caller's lock and returns
    ``capture(...)``'s pair; writers pause only for it (``pause_s``).
    The result: {"lsn", "bytes", "duration_s", "pause_s", "path",
    "digest"}, and "existing" when nothing was written since the last.
    ``keep_after()``: the last LSN held elsewhere (an archive); no segment
    with records past it is trimmed.
    """
    t0 = time.perf_counter()
    prepared = prepare(registry)
    t_lock = time.perf_counter()
    cap, digests = capture_locked(prepared)
    pause_s = time.perf_counter() - t_lock
    del prepared
    finish_digests(cap, digests)
    result = publish(path, manifest, cap, digests, keep_snapshots=keep_snapshots,
                     make_durable=journal.make_durable, commit=commit)
    result["pause_s"] = pause_s
    existing = bool(result.get("existing"))
    if existing and keep_after is None:
        result["duration_s"] = 0.0
        return result
    # (With an archive, also when nothing was written since: the log kept
    # while the archive was behind goes once the archive holds it.)
    with journal.io_lock:  # no roll meanwhile; the newest segment never goes
        trim_log(path, manifest, min(manifest["snapshots"]), journal.writer.path,
                 None if keep_after is None else keep_after())
    result["duration_s"] = 0.0 if existing else time.perf_counter() - t0
    return result


def trim_log(path: str, manifest: dict[str, Any], oldest_snapshot_lsn: int,
             active_segment: Optional[str], held_through: Optional[int] = None) -> None:
    """Delete the segments every kept snapshot has made unneeded (the
    caller holds the log's I/O lock: no roll meanwhile).

    A segment goes when its last record is at or below the oldest kept
    snapshot's LSN (so even a fallback to that snapshot has its whole
    tail); the active segment never goes. The MANIFEST's ``log_start``
    moves first, durably (``manifest`` is updated in place); only then are
    the files unlinked, so a crash between the two leaves segments an open
    recognises as below ``log_start`` and finishes removing. With
    ``held_through`` (what an archive holds), a segment with records past
    it stays.
    """
    segs = list_segments(os.path.join(path, WAL_DIR))[0]
    cut, start = [], _manifest.log_start(manifest, path)
    for seg, nxt in zip(segs, segs[1:]):
        if nxt.first_lsn - 1 > oldest_snapshot_lsn or seg.path == active_segment:
            break
        if held_through is not None and nxt.first_lsn - 1 > held_through:
            break  # (not archived yet: the archive needs it)
        cut.append(seg)
        start = nxt.first_lsn
    if not cut:
        return
    manifest["log_start"] = start
    _manifest.write(path, manifest)
    for seg in cut:
        _fileio.unlink(seg.path)
    _fileio.fsync_dir(os.path.join(path, WAL_DIR))


class AutoCheckpoint:
    """Calls ``checkpoint()`` every ``every_s`` seconds and/or after
    ``every_bytes`` of log, on its own thread. A failed checkpoint does not
    fail the store (the log has everything): it is logged, kept in
    ``error``, and tried again at the next trigger."""

    def __init__(self, checkpoint: Callable[[], dict[str, Any]], every_bytes: Optional[int],
                 every_s: Optional[float], name: str) -> None:
        self.every_bytes, self.every_s = every_bytes, every_s
        self.bytes_since = 0  # of log framed since the last capture
        self.error: Optional[BaseException] = None
        self._checkpoint = checkpoint
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def note_written(self, n: int) -> None:
        self.bytes_since += n
        if self.every_bytes and self.bytes_since >= self.every_bytes:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            timeout = None if not self.every_s else max(0.0, last + self.every_s
                                                        - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            due = ((self.every_s and time.monotonic() - last >= self.every_s)
                   or (self.every_bytes and self.bytes_since >= self.every_bytes))
            if not due:
                continue
            last = time.monotonic()
            try:
                self._checkpoint()
                self.error = None
            except StoreClosedError:
                return
            except Exception as e:  # noqa: BLE001 - reported, the store goes on
                self.error = e
                logging.getLogger("rehydrate").warning("automatic checkpoint failed: %r", e)
