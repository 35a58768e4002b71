"""Restore a state directory from an archive, to its end, an LSN or a
time (docs/archive.md); archive_verify.py checks an archive in place.

A restore reads the archive's manifest (one GET), picks the newest
snapshot at or before the target, downloads it and the segments after it
with parallel range requests (each checked against the CRC32C the archive
lists), checks the snapshot as ``verify`` does and every frame of the log,
cuts the log at the last frame at or before the target, and writes a
MANIFEST: the result opens as a normal store exactly there. It is built
in ``<path>.restoring`` and renamed into place only when whole, so a
restore that fails half-way leaves nothing that looks like a store (and
the next try reuses the files already checked).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from . import _fileio
from . import _format as F
from . import archive as A
from . import manifest as _manifest
from . import tracing as _tracing
from ._backend import core
from .errors import ArchiveError, ConfigError
from .objstore import CHUNK_BYTES, ArchiveTarget, ObjectStore, open_object_store, redact
from .snapshot import SNAPSHOTS_DIR, check as check_snapshot, snapshot_name
from .wal import WAL_DIR, segment_name

DEFAULT_PARALLEL = 8
STAGING_SUFFIX = ".restoring"
TimeTarget = Union[_dt.datetime, int, float, str]


# --------------------------------------------------------------- CRC32C
def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


#: _ZEROS[k]: the GF(2) operator that runs a CRC32C over 2**k zero bytes
#: (built once, on first use, instead of for each combine).
_ZEROS: list[list[int]] = []
_ZEROS_LOCK = threading.Lock()


def _zeros_operator(k: int) -> list[int]:
    if len(_ZEROS) <= k:
        with _ZEROS_LOCK:
            if not _ZEROS:
                odd = [0x82F63B78] + [1 << n for n in range(31)]  # one zero bit
                even = _gf2_square(odd)  # two
                odd = _gf2_square(even)  # four
                _ZEROS.append(_gf2_square(odd))  # eight: one byte
            while len(_ZEROS) <= k:
                _ZEROS.append(_gf2_square(_ZEROS[-1]))
    return _ZEROS[k]


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C of A + B from CRC32C(A), CRC32C(B) and len(B) (zlib's
    method over GF(2), with the Castagnoli polynomial): chunks fetched in
    parallel are checked as one object without reading them again. The
    operators for 1, 2, 4, ... zero bytes are kept, so a combine costs a
    few matrix-vector products."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_zeros_operator(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


# ------------------------------------------------------------- download
@dataclass
class Piece:
    """``length`` bytes of object ``name`` from ``offset``, to land in the
    local file ``dest`` at ``dest_offset``; CRC32C ``crc32c`` expected."""

    name: str
    offset: int
    length: int
    dest: str
    dest_offset: int
    crc32c: int


def download(store: ObjectStore, pieces: list[Piece], parallel: int,
             progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Fetch every piece with range requests on ``parallel`` threads,
    writing each chunk where it belongs, and check each piece's CRC32C
    (combined from its chunks'). Returns the bytes fetched."""
    c = core()
    fds: dict[str, int] = {}
    for p in pieces:
        if p.dest not in fds:
            fds[p.dest] = os.open(p.dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    jobs: list[tuple[int, int, int]] = []  # (piece index, offset in piece, n)
    # With at least as many objects as threads, each object is one GET,
    # streamed (the threads work on different objects); with fewer, each
    # is cut into about ``parallel`` / objects ranges of at least 8 MiB.
    # Fewer, bigger requests cost less per byte on every S3 we measured.
    split = max(1, -(-parallel // max(1, len(pieces))))
    for i, p in enumerate(pieces):
        if split == 1 or p.length <= CHUNK_BYTES:
            jobs.append((i, 0, p.length))
            continue
        size = max(CHUNK_BYTES, -(-p.length // split))
        at = 0
        while at < p.length:
            n = min(size, p.length - at)
            jobs.append((i, at, n))
            at += n
    total = sum(p.length for p in pieces)
    done = 0
    # Each object is opened once (on S3, one HEAD) and read by range from
    # any thread, not opened again for each chunk.
    handles: dict[str, Any] = {}
    opening = {p.name: threading.Lock() for p in pieces}

    def handle(name: str) -> Any:
        h = handles.get(name)
        if h is None:
            with opening[name]:
                h = handles.get(name)
                if h is None:
                    h = handles[name] = store.open_ranged(name)
        return h

    def write(fd: int, data: bytes, off: int) -> None:
        view = memoryview(data)
        while view:
            w = os.pwrite(fd, view, off)
            view, off = view[w:], off + w

    def fetch(job: tuple[int, int, int]) -> tuple[int, int, int, int]:
        i, at, n = job
        p = pieces[i]
        fd = fds[p.dest]
        if at == 0 and n == p.length and p.offset == 0:
            crc = store.stream_to(p.name, n,
                                  lambda off, chunk: write(fd, chunk, p.dest_offset + off))
            return i, at, n, crc
        crc, got = 0, 0
        while got < n:  # (a range read a sub-range at a time: memory stays bounded)
            k = min(4 * CHUNK_BYTES, n - got)
            data = store.get_range(p.name, p.offset + at + got, k, handle=handle(p.name))
            write(fd, data, p.dest_offset + at + got)
            crc = crc32c_combine(crc, c.crc32c(data), k) if got else c.crc32c(data)
            got += k
        return i, at, n, crc

    crcs: dict[int, dict[int, tuple[int, int]]] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel),
                                thread_name_prefix="rehydrate-restore") as pool:
            for i, at, n, crc in pool.map(fetch, jobs):
                crcs.setdefault(i, {})[at] = (n, crc)
                done += n
                if progress is not None:
                    progress(done, total)
        for i, p in enumerate(pieces):
            whole = 0
            for at in sorted(crcs.get(i, {})):
                n, crc = crcs[i][at]
                whole = crc32c_combine(whole, crc, n) if at else crc
            if p.length and whole != p.crc32c:
                raise ArchiveError(f"checksum mismatch: the archive lists CRC32C {p.crc32c:#010x},"
                                   f" the object's bytes give {whole:#010x}", uri=store.uri,
                                   object=p.name, offset=p.offset, reason="bad_object")
        for fd in fds.values():
            _fileio.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
        for h in handles.values():
            h.close()
    return total


# --------------------------------------------------------------- target
def to_unix_ms(when: TimeTarget) -> int:
    """A restore time as unix milliseconds: a datetime (naive: UTC), unix
    seconds, or an ISO 8601 string."""
    if isinstance(when, str):
        try:
            when = _dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError as e:
            raise ConfigError(f"to_time {when!r} is not an ISO 8601 time: {e}") from None
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        return int(when.timestamp() * 1000)
    if type(when) in (int, float) and when >= 0:
        return int(when * 1000)
    raise ConfigError(f"to_time must be a datetime, unix seconds or an ISO 8601 string, not "
                      f"{when!r}")


def lsn_at_time(store: ObjectStore, man: dict[str, Any], t_ms: int) -> int:
    """The newest LSN the archive's time index says was written by
    ``t_ms`` (ArchiveError ``no_target`` before its first record)."""
    best: Optional[tuple[dict[str, Any], dict[str, Any]]] = None
    for seg in man["segments"]:
        for part in seg["parts"]:
            if part["t_first"] <= t_ms:
                best = (seg, part)
    snaps = [s for s in man["snapshots"] if s["time_ms"] <= t_ms]
    floor: int = max((s["lsn"] for s in snaps), default=0)
    if best is None:
        if snaps:
            return int(floor)
        raise ArchiveError(f"the archive holds nothing written by {_iso(t_ms)}", uri=store.uri,
                           reason="no_target")
    seg, part = best
    if part["t_last"] <= t_ms:
        return int(max(part["last"], floor))
    name = A.part_name(seg, part)
    trailer = store.get_range(name, part["bytes"], part["object_bytes"] - part["bytes"])
    marks = A.parse_trailer(trailer, part["bytes"], store.uri, name)
    before = [lsn for lsn, ms in marks if ms <= t_ms]
    if not before:
        return int(max(floor, _part_start_lsn(seg, part) - 1))
    return int(max(floor, max(before)))


def _part_start_lsn(seg: dict[str, Any], part: dict[str, Any]) -> int:
    prev = int(seg["first"]) - 1
    for p in seg["parts"]:
        if p is part:
            return prev + 1
        prev = int(p["last"])
    return prev + 1


def _iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat()


# -------------------------------------------------------------- restore
def restore(uri: ArchiveTarget, path: Any, to_lsn: Optional[int] = None,
            to_time: Optional[TimeTarget] = None, *, parallel: int = DEFAULT_PARALLEL,
            progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Make ``path`` (absent or empty) a store holding the archive's state
    at its end, at ``to_lsn`` or at ``to_time`` (docs/archive.md).

    The log is cut at the last frame ending at or before the target (a
    frame is the log's unit of atomicity: a batch is never split); the
    result's ``lsn`` says where the store opens. Returns {"lsn",
    "target_lsn", "snapshot_lsn", "segments", "bytes", "duration_s",
    "requests", "path"}. Raises ArchiveError (``no_archive``,
    ``no_target``, ``no_base``, ``missing_object``, ``bad_object``,
    ``corrupt``, ``not_empty``, ``unreachable``), ConfigError.
    """
    with _tracing.span("rehydrate.archive.restore",
                       uri=redact(uri) if isinstance(uri, str) else None,
                       to_lsn=to_lsn, to_time=None if to_time is None else str(to_time),
                       parallel=parallel) as span:
        result = _restore(uri, path, to_lsn, to_time, parallel, progress)
        span.set(path=result["path"], lsn=result["lsn"], target_lsn=result["target_lsn"],
                 snapshot_lsn=result["snapshot_lsn"], segments=result["segments"],
                 bytes=result["bytes"], duration_s=result["duration_s"])
        return result


def _restore(uri: ArchiveTarget, path: Any, to_lsn: Optional[int],
             to_time: Optional[TimeTarget], parallel: int,
             progress: Optional[Callable[[int, int], None]]) -> dict[str, Any]:
    """``restore``'s work (its span around it)."""
    t0 = time.perf_counter()
    if to_lsn is not None and to_time is not None:
        raise ConfigError("give to_lsn or to_time, not both")
    if to_lsn is not None and (type(to_lsn) is not int or to_lsn < 0):
        raise ConfigError(f"to_lsn must be a non-negative int, not {to_lsn!r}")
    if type(parallel) is not int or not 1 <= parallel <= 256:
        raise ConfigError("parallel must be an int from 1 to 256")
    t_ms = None if to_time is None else to_unix_ms(to_time)
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ArchiveError(f"{path} exists and is not empty: a restore makes a new directory",
                           path=path, reason="not_empty")
    store = open_object_store(uri, attempts=6, base_s=0.2, cap_s=5.0, create=False)
    man = A.read_manifest(store)
    if man is None:
        raise ArchiveError("no archive here (no manifest object)", uri=store.uri,
                           object=A.MANIFEST_OBJECT, reason="no_archive")
    staging = path + STAGING_SUFFIX
    for moved in range(MOVED_ON_RETRIES + 1):
        try:
            got = _fetch(store, man, staging, to_lsn, t_ms, parallel, progress)
            break
        except ArchiveError as e:
            if e.reason != "missing_object" or moved == MOVED_ON_RETRIES:
                raise
            # A listed object is gone. When the archive moved on meanwhile
            # (a live store sealed the segment whose parts were listed, or
            # retention dropped what the manifest read listed), go on from
            # its new manifest; else it is missing.
            newer = A.read_manifest(store)
            if newer is None or newer["updated_ms"] == man["updated_ms"] \
                    or newer["store_id"] != man["store_id"]:
                raise
            man = newer
    target, plan, snap_lsn, meta_versions, reached, fetched, fetched_segs = got
    log_start = plan.segments[0]["first"] if plan.segments else snap_lsn + 1
    local = {"format": F.FORMAT_VERSION, "store_id": man["store_id"], "epoch": man["epoch"],
             "snapshots": [snap_lsn] if snap_lsn else [], "log_start": log_start,
             "versions": meta_versions,
             "ledger": [e for e in man.get("ledger") or []
                        if isinstance(e, dict) and type(e.get("lsn")) is int
                        and e["lsn"] <= reached],
             "restored": {"from": store.uri, "lsn": reached, "target_lsn": target,
                          "at": _iso(int(time.time() * 1000))}}
    _manifest.write(staging, local)
    os.unlink(os.path.join(staging, _MARKER))
    if os.path.isdir(path):
        os.rmdir(path)
    os.rename(staging, path)
    _fileio.fsync_dir(os.path.dirname(path) or ".")
    return {"lsn": reached, "target_lsn": target, "snapshot_lsn": snap_lsn,
            "segments": fetched_segs, "bytes": fetched, "path": path,
            "duration_s": time.perf_counter() - t0, "requests": store.stats()["requests"],
            "archive_updated_ms": man["updated_ms"]}


_MARKER = "RESTORING"
#: Times a restore starts over from a newer manifest when an object it
#: lists went while the restore ran (the archive's store moved on).
MOVED_ON_RETRIES = 3


def _fetch(store: ObjectStore, man: dict[str, Any], staging: str, to_lsn: Optional[int],
           t_ms: Optional[int], parallel: int,
           progress: Optional[Callable[[int, int], None]]
           ) -> tuple[int, A.Plan, int, dict[str, int], int, int, int]:
    """Resolve the target in ``man``, fetch and check what it needs into
    ``staging``, cut the log there: (target, plan, snapshot LSN, the
    snapshot's table versions, the LSN reached, bytes fetched, segments)."""
    if t_ms is not None:
        target = lsn_at_time(store, man, t_ms)
    else:
        target = man["archived_lsn"] if to_lsn is None else to_lsn
    plan = A.plan_restore(man, store.uri, target)
    _prepare_staging(staging, man["store_id"])
    fetched = 0
    snap_lsn = 0
    meta_versions: dict[str, int] = {}
    if plan.snapshot is not None:
        snap_lsn = plan.snapshot["lsn"]
        fetched += _fetch_snapshot(store, plan.snapshot, staging, parallel, progress)
        meta_versions = _snapshot_versions(staging, snap_lsn)
    # (A snapshot an earlier try fetched for another base is not this one's.)
    sdir = os.path.join(staging, SNAPSHOTS_DIR)
    for name in os.listdir(sdir):
        if not snap_lsn or name != snapshot_name(snap_lsn):
            shutil.rmtree(os.path.join(sdir, name), ignore_errors=True)
    reached = snap_lsn
    fetched_segs = 0
    if plan.segments:
        fetched += _fetch_segments(store, plan.segments, staging, parallel, progress)
        reached = max(reached, _check_and_cut(store, plan.segments, staging, target))
        fetched_segs = len(plan.segments)
    return target, plan, snap_lsn, meta_versions, reached, fetched, fetched_segs


def _prepare_staging(staging: str, store_id: str) -> None:
    """A staging directory for this archive: one left by an earlier try of
    the same store is reused (its files are checked again as they are
    used); anything else there is refused."""
    marker = os.path.join(staging, _MARKER)
    if os.path.exists(staging):
        try:
            with open(marker) as f:
                same = json.load(f).get("store_id") == store_id
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            raise ArchiveError(f"{staging} exists and is not an earlier restore of this store",
                               path=staging, reason="not_empty")
        shutil.rmtree(os.path.join(staging, WAL_DIR), ignore_errors=True)
    else:
        os.makedirs(staging)
        with open(marker, "w") as f:
            json.dump({"store_id": store_id}, f)
    for sub in (WAL_DIR, SNAPSHOTS_DIR):
        os.makedirs(os.path.join(staging, sub), exist_ok=True)


def _fetch_snapshot(store: ObjectStore, snap: dict[str, Any], staging: str, parallel: int,
                    progress: Optional[Callable[[int, int], None]]) -> int:
    lsn = snap["lsn"]
    sdir = os.path.join(staging, SNAPSHOTS_DIR, snapshot_name(lsn))
    os.makedirs(sdir, exist_ok=True)
    pieces = []
    for f in snap["files"]:
        dest = os.path.join(sdir, f["name"])
        if os.path.exists(dest) and os.path.getsize(dest) == f["bytes"] and \
                _file_crc(dest) == f["crc32c"]:
            continue  # (an earlier try fetched and checked it)
        with open(dest, "wb"):
            pass
        pieces.append(Piece(A.snapshot_object(lsn, f["name"]), 0, f["bytes"], dest, 0,
                            f["crc32c"]))
    fetched = download(store, pieces, parallel, progress)
    checked = check_snapshot(sdir, lsn)
    if checked.damage:
        err = checked.damage[0]
        raise ArchiveError(f"snapshot {lsn} fails its checks: {err.detail}", uri=store.uri,
                           object=A.snapshot_object(lsn, os.path.basename(err.path or "META")),
                           offset=err.offset, lsn=lsn, reason="corrupt")
    return fetched


def _file_crc(path: str) -> int:
    crc, c = 0, core()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            crc = c.crc32c(chunk, crc)
    return crc


def _snapshot_versions(staging: str, lsn: int) -> dict[str, int]:
    from .snapshot import read_meta

    meta = read_meta(os.path.join(staging, SNAPSHOTS_DIR, snapshot_name(lsn)))
    out = {}
    for t in meta.get("tables") or []:
        v = t.get("version", 1)
        if type(v) is int and v >= 2:
            out[t["name"]] = v
    return out


def _fetch_segments(store: ObjectStore, segs: list[dict[str, Any]], staging: str,
                    parallel: int, progress: Optional[Callable[[int, int], None]]) -> int:
    pieces = []
    for seg in segs:
        dest = os.path.join(staging, WAL_DIR, segment_name(seg["first"]))
        with open(dest, "wb"):
            pass
        for part in seg["parts"]:
            pieces.append(Piece(A.part_name(seg, part), 0, part["bytes"], dest, part["offset"],
                                part["crc32c"]))
    return download(store, pieces, parallel, progress)


def _in_part(seg: dict[str, Any], offset: int) -> tuple[str, int]:
    """The object holding byte ``offset`` of segment ``seg`` (one of its
    parts), and the offset in that object."""
    for part in seg["parts"]:
        if offset < part["offset"] + part["bytes"]:
            return A.part_name(seg, part), offset - int(part["offset"])
    part = seg["parts"][-1]
    return A.part_name(seg, part), offset - int(part["offset"])


def _check_and_cut(store: ObjectStore, segs: list[dict[str, Any]], staging: str,
                   target: int) -> int:
    """Walk every fetched segment's frames; cut the last at the target.
    Returns the last LSN kept. A failure names the object (the part)
    holding the bad bytes, and the offset in it."""
    last = 0
    for i, seg in enumerate(segs):
        dest = os.path.join(staging, WAL_DIR, segment_name(seg["first"]))
        with open(dest, "rb") as f:
            buf = f.read()
        final = i == len(segs) - 1
        try:
            walked = A.walk_segment(buf, seg["first"], seg["version"], uri=store.uri,
                                    obj=A.part_name(seg, seg["parts"][0]),
                                    upto_lsn=target if final else None)
        except ArchiveError as e:
            name, offset = _in_part(seg, e.offset or 0)
            raise ArchiveError(e.detail, uri=store.uri, object=name, offset=offset, lsn=e.lsn,
                               reason=e.reason) from None
        if not final and walked.end != len(buf):
            name, offset = _in_part(seg, walked.end)
            raise ArchiveError("the segment's frames end before its bytes do", uri=store.uri,
                               object=name, offset=offset, lsn=walked.last_lsn + 1,
                               reason="corrupt")
        if not final and walked.last_lsn != seg["last"]:
            raise ArchiveError(f"the segment ends at LSN {walked.last_lsn}, the manifest says "
                               f"{seg['last']}", uri=store.uri,
                               object=A.part_name(seg, seg["parts"][-1]), lsn=walked.last_lsn,
                               reason="corrupt")
        if final and walked.end != len(buf):
            fd = os.open(dest, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, walked.end)
                _fileio.fsync(fd)
            finally:
                os.close(fd)
        last = walked.last_lsn
    _fileio.fsync_dir(os.path.join(staging, WAL_DIR))
    return last
