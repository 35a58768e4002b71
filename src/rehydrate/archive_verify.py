"""Verify an archive in place (docs/archive.md): every object its manifest
lists is read from the store and checked, and nothing of the log is
copied to local disk.

The manifest first (its own checks), then one LIST of the prefix: it gives
each object's size (an object missing or of another size than the
manifest lists is a problem without reading it) and the objects the
manifest does not name (orphans). Then each snapshot: its files are
fetched into a temporary directory (one snapshot at a time, deleted
after: the snapshot checks read files), each file's size and CRC32C
against the manifest, then the snapshot's own checks (``snapshot.check``:
META, structure, key counts, digests). Then each segment, one at a time,
assembled in memory from its parts (range requests, ``parallel`` at a
time): each part's CRC32C against the manifest, its time index (the
trailer after its bytes), the segment's frames walked from its header
(checksums, LSN order from the LSN it starts at to the one the manifest
says it ends at), and every part ending at a frame boundary at the LSN
the manifest gives it. Last, that the archive can start a restore to its
end (a base: a snapshot, or the log from LSN 1).

The manifest's own checks (``archive.decode_manifest``) already refuse a
log with a gap between segments; the frames walked make sure the bytes
hold what the manifest says.

A damaged manifest is reported as the one problem (``bad_manifest``):
nothing else can be checked without it. A missing manifest (no archive
there), an unreachable store and an archive format newer than this
rehydrate reads raise ArchiveError (``no_archive``, ``unreachable``,
``unsupported_format``). When problems are found and the manifest has
changed meanwhile (a live store's archiver published, and may have
deleted what the older manifest listed), the archive is verified again
(at most ``MAX_PASSES`` times).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import _format as F
from . import archive as A
from ._backend import core
from .errors import ArchiveError, ConfigError, RehydrateError
from .objstore import CHUNK_BYTES, ArchiveTarget, ObjectStore, open_object_store
from .archive_restore import DEFAULT_PARALLEL, crc32c_combine
from .snapshot import check as check_snapshot, snapshot_name

__all__ = ["MAX_PASSES", "PROBLEM_KINDS", "verify_archive"]

#: What a problem's ``kind`` may be (ArchiveError reasons).
PROBLEM_KINDS = ("bad_manifest", "missing_object", "bad_object", "corrupt", "no_base",
                 "no_target")
#: Verifications of an archive that changes while it is read.
MAX_PASSES = 3
_ARCHIVE_NAME = re.compile(r"^(wal/[0-9]{20}(\.[0-9]{20}\.part|\.wal)"
                           r"|snapshots/[0-9]{20}/[A-Za-z0-9_][A-Za-z0-9._-]{0,199})$")
Progress = Optional[Callable[[int, int], None]]


@dataclass
class _Read:
    """``length`` bytes of object ``name`` from ``offset``; each chunk goes
    to ``sink(at, data)`` (``at``: its offset in this read). After the
    reads: ``crc32c`` of the bytes, or ``error`` (the first chunk's)."""

    name: str
    offset: int
    length: int
    sink: Callable[[int, bytes], None]
    crc32c: int = 0
    error: Optional[ArchiveError] = None


class _Pass:
    """One verification of the archive in ``store``."""

    def __init__(self, store: ObjectStore, pool: ThreadPoolExecutor,
                 progress: Progress) -> None:
        self.store = store
        self.pool = pool
        self.progress = progress
        self.problems: list[dict[str, Any]] = []
        self.listing: dict[str, int] = {}
        self.named: set[str] = {A.MANIFEST_OBJECT}
        self.bytes = 0
        self.total = 0

    def problem(self, kind: str, obj: Optional[str], detail: str, *,
                offset: Optional[int] = None, lsn: Optional[int] = None) -> None:
        self.problems.append({"kind": kind, "object": obj, "offset": offset, "lsn": lsn,
                              "detail": detail})

    def from_error(self, e: ArchiveError, obj: Optional[str] = None,
                   lsn: Optional[int] = None) -> None:
        self.problem(e.reason, e.object or obj, e.detail, offset=e.offset,
                     lsn=e.lsn if e.lsn is not None else lsn)

    # ------------------------------------------------------------ reading
    def sized(self, name: str, expected: int, lsn: Optional[int]) -> bool:
        """Whether object ``name`` is there with ``expected`` bytes (as the
        LIST saw it); a problem when not."""
        self.named.add(name)
        size = self.listing.get(name)
        if size is None:
            self.problem("missing_object", name, "the manifest lists it; the store does not "
                         "have it", lsn=lsn)
            return False
        if size != expected:
            self.problem("bad_object", name, f"the object has {size} bytes, the manifest "
                         f"lists {expected}", offset=min(size, expected), lsn=lsn)
            return False
        return True

    def read(self, reads: list[_Read]) -> None:
        """Every read, in chunks on the pool; a chunk that fails leaves its
        read's ``error`` (an unreachable store raises)."""
        c = core()
        jobs = [(r, at, min(CHUNK_BYTES, r.length - at))
                for r in reads for at in range(0, r.length, CHUNK_BYTES)]

        def fetch(job: tuple[_Read, int, int]) -> tuple[_Read, int, int, int,
                                                        Optional[ArchiveError]]:
            r, at, n = job
            try:
                data = self.store.get_range(r.name, r.offset + at, n)
            except ArchiveError as e:
                if e.reason == "unreachable":
                    raise
                return r, at, n, 0, e
            r.sink(at, data)
            return r, at, n, c.crc32c(data), None

        for r, at, n, crc, err in self.pool.map(fetch, jobs):
            if err is not None:
                r.error = r.error or err
            else:
                r.crc32c = crc32c_combine(r.crc32c, crc, n) if at else crc
            self.bytes += n
            if self.progress is not None:
                self.progress(self.bytes, self.total)

    def failed(self, r: _Read, expected_crc: Optional[int], lsn: Optional[int]) -> bool:
        """Whether read ``r`` failed or its bytes do not give ``expected_crc``
        (a problem when so)."""
        if r.error is not None:
            self.from_error(r.error, r.name, lsn)
            return True
        if expected_crc is not None and r.crc32c != expected_crc:
            self.problem("bad_object", r.name, f"checksum mismatch: the manifest lists CRC32C "
                         f"{expected_crc:#010x}, the object's bytes give {r.crc32c:#010x}",
                         offset=r.offset, lsn=lsn)
            return True
        return False

    # ---------------------------------------------------------- snapshots
    def snapshot(self, snap: dict[str, Any], tmp: str) -> None:
        lsn = snap["lsn"]
        sdir = os.path.join(tmp, snapshot_name(lsn))
        os.makedirs(sdir)
        bad: set[str] = set()
        fds: list[int] = []
        todo: list[tuple[dict[str, Any], _Read]] = []
        try:
            for f in snap["files"]:
                name = A.snapshot_object(lsn, f["name"])
                fd = os.open(os.path.join(sdir, f["name"]),
                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fds.append(fd)
                if not self.sized(name, f["bytes"], lsn):
                    bad.add(f["name"])
                    continue
                todo.append((f, _Read(name, 0, f["bytes"], _file_sink(fd))))
            self.read([r for _, r in todo])
        finally:
            for fd in fds:
                os.close(fd)
        for f, r in todo:
            if self.failed(r, f["crc32c"], lsn):
                bad.add(f["name"])
        checked = check_snapshot(sdir, lsn)
        for err in checked.damage:
            fname = os.path.basename(err.path or "META")
            if fname not in bad:
                self.problem("corrupt", A.snapshot_object(lsn, fname),
                             f"snapshot {lsn} fails its checks: {err.detail}",
                             offset=err.offset, lsn=lsn)
        shutil.rmtree(sdir)

    # ----------------------------------------------------------- segments
    def segment(self, seg: dict[str, Any]) -> None:
        buf = bytearray(seg["bytes"])
        parts = seg["parts"]
        starts = _part_starts(seg)
        whole = True
        todo: list[tuple[dict[str, Any], int, _Read, _Read, bytearray]] = []
        for part, start in zip(parts, starts):
            name = A.part_name(seg, part)
            if not self.sized(name, part["object_bytes"], start):
                whole = False
                continue
            trailer = bytearray(part["object_bytes"] - part["bytes"])
            todo.append((part, start,
                         _Read(name, 0, part["bytes"], _buf_sink(buf, part["offset"])),
                         _Read(name, part["bytes"], len(trailer), _buf_sink(trailer, 0)),
                         trailer))
        self.read([r for _, _, body, tr, _ in todo for r in (body, tr)])
        for part, start, body, tr, trailer in todo:
            if self.failed(body, part["crc32c"], start):
                whole = False
            if not self.failed(tr, None, start):
                self.time_index(seg, part, start, bytes(trailer))
        if whole:  # (else the bytes are not the archive's: walking them says nothing more)
            self.frames(seg, buf, starts)

    def time_index(self, seg: dict[str, Any], part: dict[str, Any], start: int,
                   data: bytes) -> None:
        name = A.part_name(seg, part)
        try:
            marks = A.parse_trailer(data, part["bytes"], self.store.uri, name)
        except ArchiveError as e:
            self.from_error(e, name, start)
            return
        lsns = [lsn for lsn, _ in marks]
        why = None
        if not marks:
            why = "no marks"
        elif any(b <= a for a, b in zip(lsns, lsns[1:])) or lsns[0] < start:
            why = f"its LSNs are out of order or before the part's first ({start})"
        elif lsns[-1] != part["last"]:
            why = f"its last mark is LSN {lsns[-1]}, the part ends at {part['last']}"
        elif (marks[0][1], marks[-1][1]) != (part["t_first"], part["t_last"]):
            why = (f"its times {marks[0][1]}..{marks[-1][1]} are not the manifest's "
                   f"{part['t_first']}..{part['t_last']}")
        if why is not None:
            self.problem("bad_object", name, f"the time index disagrees with the manifest: "
                         f"{why}", offset=part["bytes"], lsn=start)

    def frames(self, seg: dict[str, Any], buf: bytearray, starts: list[int]) -> None:
        """Walk the segment's frames; the parts must end at frame ends."""
        parts = seg["parts"]

        def where(offset: Optional[int]) -> tuple[str, Optional[int]]:
            """The part object holding segment offset ``offset``, and the offset in it."""
            if offset is None:
                return A.part_name(seg, parts[0]), None
            for part in reversed(parts):
                if part["offset"] <= offset:
                    return A.part_name(seg, part), offset - part["offset"]
            return A.part_name(seg, parts[0]), offset

        try:
            walked = A.walk_segment(buf, seg["first"], seg["version"],
                                    uri=self.store.uri, obj=A.part_name(seg, parts[0]))
        except RehydrateError as e:  # (ArchiveError corrupt; a header of a newer format)
            obj, off = where(e.offset)
            self.problem("corrupt", obj, e.detail, offset=off, lsn=e.lsn)
            return
        if walked.end != len(buf):
            obj, off = where(walked.end)
            self.problem("corrupt", obj, "the segment's frames end before its bytes do",
                         offset=off, lsn=walked.last_lsn + 1)
            return
        if walked.last_lsn != seg["last"]:
            obj, off = where(walked.end)
            self.problem("corrupt", obj, f"the segment's frames end at LSN {walked.last_lsn}, "
                         f"the manifest says {seg['last']}", offset=off, lsn=walked.last_lsn)
            return
        ends = _frame_ends(buf, seg["first"], seg["version"])
        for part, start in zip(parts, starts):
            end = part["offset"] + part["bytes"]
            if ends.get(end) != part["last"]:
                got = ("not at a frame's end" if end not in ends
                       else f"after LSN {ends[end]}")
                self.problem("corrupt", A.part_name(seg, part),
                             f"the part ends {got}; the manifest says after LSN {part['last']}",
                             offset=part["bytes"], lsn=start)


def _file_sink(fd: int) -> Callable[[int, bytes], None]:
    def sink(at: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            w = os.pwrite(fd, view, at)
            view, at = view[w:], at + w
    return sink


def _buf_sink(buf: bytearray, base: int) -> Callable[[int, bytes], None]:
    def sink(at: int, data: bytes) -> None:
        buf[base + at:base + at + len(data)] = data
    return sink


def _part_starts(seg: dict[str, Any]) -> list[int]:
    """The first LSN of each of a segment's parts."""
    out, prev = [], seg["first"] - 1
    for part in seg["parts"]:
        out.append(prev + 1)
        prev = part["last"]
    return out


def _frame_ends(buf: bytearray, first: int, version: int) -> dict[int, int]:
    """{offset after a frame: the frame's last LSN} of a segment whose
    frames were walked (the header's end: the LSN before the first)."""
    c = core()
    hb = F.frame_header_bytes(version)
    pos = F.SEGMENT_HEADER_BYTES
    ends = {pos: first - 1}
    while pos < len(buf):
        h = c.parse_frame_header(buf, pos, version)
        pos += hb + h.stored_len
        ends[pos] = h.first_lsn + h.count - 1
    return ends


def _orphan_kind(name: str) -> str:
    """``unlisted``: a name the archive gives its objects (an upload not
    yet published, or one a retention or a sealed segment left when its
    delete failed); ``unknown``: anything else."""
    return "unlisted" if _ARCHIVE_NAME.match(name) else "unknown"


def _verify_once(store: ObjectStore, pool: ThreadPoolExecutor,
                 progress: Progress) -> tuple[dict[str, Any], bytes]:
    raw = store.get_bytes(A.MANIFEST_OBJECT, max_bytes=A.MAX_MANIFEST_BYTES)
    if raw is None:
        raise ArchiveError("no archive here (no manifest object)", uri=store.uri,
                           object=A.MANIFEST_OBJECT, reason="no_archive")
    p = _Pass(store, pool, progress)
    report: dict[str, Any] = {"ok": False, "uri": store.uri, "problems": p.problems,
                              "orphans": [], "snapshots": 0, "segments": 0, "bytes": 0,
                              "archived_lsn": None}
    try:
        man = A.decode_manifest(raw, store.uri)
    except ArchiveError as e:
        if e.reason != "bad_manifest":
            raise
        p.from_error(e, A.MANIFEST_OBJECT)
        return report, raw
    p.listing = dict(store.list())
    p.total = (sum(f["bytes"] for s in man["snapshots"] for f in s["files"])
               + sum(part["object_bytes"] for s in man["segments"] for part in s["parts"]))
    with tempfile.TemporaryDirectory(prefix="rehydrate-verify-") as tmp:
        for snap in sorted(man["snapshots"], key=lambda s: s["lsn"]):
            p.snapshot(snap, tmp)
    for seg in man["segments"]:
        p.segment(seg)
    try:
        A.plan_restore(man, store.uri, man["archived_lsn"])
    except ArchiveError as e:
        p.from_error(e)
    report.update(ok=not p.problems, snapshots=len(man["snapshots"]),
                  segments=len(man["segments"]), bytes=p.bytes + len(raw),
                  archived_lsn=man["archived_lsn"],
                  orphans=[{"object": name, "bytes": size, "kind": _orphan_kind(name)}
                           for name, size in sorted(p.listing.items())
                           if name not in p.named])
    return report, raw


def verify_archive(uri: ArchiveTarget, *, parallel: int = DEFAULT_PARALLEL,
                   progress: Progress = None) -> dict[str, Any]:
    """Check the archive at ``uri`` in place, as the module doc says:
    snapshot files are fetched into a temporary directory, one snapshot at
    a time, and deleted after; the log is checked in memory, one segment at
    a time (memory: one segment's bytes, and ``parallel`` chunks of
    ``CHUNK_BYTES`` in flight). ``progress(done, total)`` in bytes.

    Returns {"ok", "uri", "problems": [{"kind", "object", "offset", "lsn",
    "detail"}], "orphans": [{"object", "bytes", "kind"}], "snapshots",
    "segments", "bytes", "archived_lsn", "requests", "passes",
    "duration_s"}. A problem's ``kind`` is one of ``PROBLEM_KINDS``
    (``missing_object``: listed, not there; ``bad_object``: another size or
    CRC32C than listed, or a time index that fails its checks;
    ``corrupt``: bytes as listed that fail the snapshot's or the log's own
    checks; ``no_base``: nothing to start a restore from); ``object`` is the
    name below the prefix, ``offset`` within that object. Orphans (objects
    under the prefix the manifest does not name: ``unlisted`` when they
    have an archive object's name, else ``unknown``) are not problems.
    Raises ArchiveError (``no_archive``, ``unreachable``,
    ``unsupported_format``), ConfigError for a bad URI or ``parallel``.
    """
    t0 = time.perf_counter()
    if type(parallel) is not int or not 1 <= parallel <= 256:
        raise ConfigError("parallel must be an int from 1 to 256")
    store = open_object_store(uri, attempts=6, base_s=0.2, cap_s=5.0, create=False)
    with ThreadPoolExecutor(max_workers=parallel,
                            thread_name_prefix="rehydrate-verify") as pool:
        for passes in range(1, MAX_PASSES + 1):
            report, raw = _verify_once(store, pool, progress)
            if report["ok"] or passes == MAX_PASSES:
                break
            if store.get_bytes(A.MANIFEST_OBJECT, max_bytes=A.MAX_MANIFEST_BYTES) == raw:
                break  # (the same archive: what was found is there)
    report["passes"] = passes
    report["requests"] = store.stats()["requests"]
    report["duration_s"] = time.perf_counter() - t0
    return report
