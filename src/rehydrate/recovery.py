"""Reading a whole WAL back under a recovery mode, and reporting every problem.

``walk`` reads the segments in LSN order through the core's scanner, decides
for each problem whether it is a torn tail (what a crash leaves) or damage,
and applies the recovery mode (docs/recovery.md). It changes nothing on disk:
what recovery would do there (truncate a torn tail, keep evidence, move
unapplied segments aside) comes back as a list of actions, which
``Store.open`` carries out with ``apply_actions`` and ``verify`` only reports.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from . import _fileio
from . import _format as F
from .errors import ConfigError, CorruptionError, RehydrateError, TornTailError
from .manifest import MANIFEST_NAME
from .wal import WAL_DIR, list_segments, segment_header_problem, segment_version

MODES = ("strict", "tolerate-tail", "point-in-time", "skip-corrupted")
QUARANTINE_DIR = "quarantine"
SECTOR_BYTES = 512

# Problems that are not damage: reported, but a clean verify still exits 0.
WARNING_KINDS = frozenset({"torn_tail", "foreign_file", "snapshot_unchecked"})


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown recovery mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


@dataclass
class Problem:
    """One thing found wrong, as data (STYLE: damage is reported, not logged).

    ``lsn``..``lsn_end`` is the LSN range affected when known; ``bytes`` how
    many bytes of the file it covers; ``action`` what recovery did about it:
    "dropped" (torn tail cut), "skipped" (into quarantine), "stopped"
    (point-in-time ends here), "not_applied", "ignored", or "error".
    """

    kind: str
    path: str
    offset: Optional[int]
    lsn: Optional[int]
    detail: str
    bytes: int = 0
    lsn_end: Optional[int] = None
    action: str = "error"

    @property
    def is_damage(self) -> bool:
        return self.kind not in WARNING_KINDS

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SegmentSummary:
    path: str
    first_lsn: int
    last_lsn: Optional[int]
    frames: int
    records: int
    bytes: int
    good_bytes: int
    good_ranges: list = field(default_factory=list)  # [start, end) of checked frames

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("good_ranges")
        return d


@dataclass
class RecoveryReport:
    mode: str
    problems: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    first_lsn: Optional[int] = None
    last_lsn: int = 0
    frames: int = 0
    records: int = 0
    applied: int = 0
    bytes_read: int = 0
    duration_s: float = 0.0
    # Set by a deep verify: the state's digest and each table's (hex).
    digest: Optional[str] = None
    table_digests: Optional[dict] = None
    # Set by verify: each snapshot checked ({"lsn", "path", "bytes", "tables", "ok"}).
    snapshots: Optional[list] = None

    @property
    def ok(self) -> bool:
        """No damage found. A torn tail is a warning, except under strict."""
        return not any(p.is_damage or (self.mode == "strict" and p.kind == "torn_tail")
                       for p in self.problems)

    @property
    def bytes_dropped(self) -> int:
        return sum(p.bytes for p in self.problems if p.action != "ignored")

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "first_lsn": self.first_lsn,
            "last_lsn": self.last_lsn,
            "frames": self.frames,
            "records": self.records,
            "applied": self.applied,
            "bytes_read": self.bytes_read,
            "bytes_dropped": self.bytes_dropped,
            "duration_s": round(self.duration_s, 6),
            "segments": [s.as_dict() for s in self.segments],
            "problems": [p.as_dict() for p in self.problems],
            **({"digest": self.digest, "table_digests": self.table_digests}
               if self.table_digests is not None else {}),
            **({"snapshots": self.snapshots} if self.snapshots is not None else {}),
        }


@dataclass
class Action:
    """A change to the directory that recovery needs before writing resumes."""

    op: str  # "evidence" | "record" | "truncate" | "remove" | "move_aside"
    path: str
    start: int = 0  # a "record": the LSN of the first record left out
    end: int = 0
    kind: str = ""
    detail: str = ""
    data: bytes = b""  # a "record": the records left out (msgpack)


@dataclass
class WalkResult:
    report: RecoveryReport
    actions: list
    next_lsn: int
    # The newest segment that stays, and how many of its bytes are good:
    # the writer appends there (None: start a new segment).
    resume_path: Optional[str] = None
    resume_size: int = 0
    # Latest upstream offset per source, as of the last applied frame.
    offsets: dict = field(default_factory=dict)


STREAM_CHUNK_BYTES = 8 << 20


def _read_range(path: str, start: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(n)


class _ChunkReader:
    """Iterates a file's bytes from ``start`` to ``end`` in chunks, the next
    chunk read on a thread while the caller works on this one (the read's
    copy runs on the other core; the native scan releases the GIL)."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._pos, self._end = start, end
        self._pool = None

    def _read(self, pos: int):
        n = min(STREAM_CHUNK_BYTES, self._end - pos)
        data = os.pread(self._fd, n, pos)
        if len(data) != n:
            # The file shrank under us: hand back what is there; the caller
            # then treats the rest as missing.
            return data, True
        return data, False

    def __iter__(self):
        if self._pos >= self._end:
            return
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rehydrate-read")
        pending = self._pool.submit(self._read, self._pos)
        while True:
            data, short = pending.result()
            self._pos += len(data)
            if self._pos < self._end and not short:
                pending = self._pool.submit(self._read, self._pos)
            else:
                pending = None
            yield data
            if pending is None:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        os.close(self._fd)


def _zeros_to(path: str, start: int, end: int) -> bool:
    """Is every byte of the file from ``start`` to ``end`` zero? Read a chunk
    at a time, holes skipped (SEEK_DATA): a sparse file of any size is quick."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while start < end:
            try:
                start = os.lseek(fd, start, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # a hole to the end of the file
                    return True
                raise
            if start >= end:
                return True
            data = os.pread(fd, min(STREAM_CHUNK_BYTES, end - start), start)
            if not data or data.count(0) != len(data):
                return False
            start += len(data)
        return True
    finally:
        os.close(fd)


def _all_zero(buf, start: int, end: int) -> bool:
    return buf[start:end].count(0) == end - start


def _has_zero_sector(buf, start: int, end: int) -> bool:
    s = -(-start // SECTOR_BYTES) * SECTOR_BYTES
    while s < end:
        if _all_zero(buf, s, min(s + SECTOR_BYTES, end)):
            return True
        s += SECTOR_BYTES
    return False


def is_torn(buf, status: int, offset: int, frame_end: int,
            header_bytes: int = F.FRAME_HEADER_BYTES) -> bool:
    """Does a problem at ``offset`` of the newest segment look like a crash's tail?

    A partial frame, zeros to the end of file, or a frame that fails its CRC,
    has only zeros after it and has a zeroed sector (a write the disk only
    partly made, as etcd's isTornEntry reasons); or a header that does not
    read because a sector it lies in is zeros (the same write, its header's
    sector one of those not made). Anything else is damage. A frame runs
    past the end only behind a header that passed its own checksum (format
    2), so a damaged length is never taken for a torn write; after a
    recorded clean close the caller does not ask (nothing there is torn).
    """
    end = len(buf)
    if status == F.SCAN_TRUNCATED:
        return True
    if status in (F.SCAN_BAD_MAGIC, F.SCAN_BAD_HEADER, F.SCAN_BAD_CRC):
        if _all_zero(buf, offset, end):
            return True
        if status != F.SCAN_BAD_CRC:
            # The header lies in one sector or two: one of them not made (zeros
            # from the frame's start, or the whole next sector) is a torn write.
            boundary = min((offset // SECTOR_BYTES + 1) * SECTOR_BYTES, end)
            if _all_zero(buf, offset, boundary) or (
                    boundary < offset + header_bytes
                    and _all_zero(buf, boundary, min(boundary + SECTOR_BYTES, end))):
                return True
        # (zeros after the frame: the write's last sectors, not made, held
        # the end of this frame and all of the next)
        if (status == F.SCAN_BAD_CRC and (frame_end >= end or _all_zero(buf, frame_end, end))
                and _has_zero_sector(buf, offset, min(frame_end, end))):
            return True
    return False


def find_next_frame(core, buf, start: int, min_lsn: int, version: int = F.FORMAT_VERSION):
    """(offset, header) of the next whole, checksummed frame at or after ``start``
    whose first LSN is >= ``min_lsn``; None when there is none. Used only by
    skip-corrupted, where a bad frame's length field cannot be trusted."""
    end = len(buf)
    magic = struct.pack("<I", F.frame_magic(version))
    pos = buf.find(magic, start)
    while pos != -1:
        h = core.parse_frame_header(buf, pos, version)
        if h is None:
            return None
        body = pos + F.frame_header_bytes(version)
        if (core.header_problem(h) is None and body + h.stored_len <= end
                and h.first_lsn >= min_lsn
                and core.crc32c(buf[body:body + h.stored_len],
                                core.crc32c(buf[pos + 8:body])) == h.crc):
            return pos, h
        pos = buf.find(magic, pos + 1)
    return None


class Walker:
    """One read of a log directory under a recovery mode; ``walk`` sets one
    up and runs it. Built directly by a caller that needs ``report`` (the
    problems found so far) after ``run()`` raised, as ``verify`` does.
    The parameters are ``walk``'s."""

    def __init__(self, core, directory, mode, registry, apply, start_lsn, applied_lsn,
                 cancel, progress) -> None:
        self.core = core
        self.directory = directory
        self.mode = check_mode(mode)
        self.registry = registry
        self.apply = apply
        self.applied_lsn = applied_lsn
        self.cancel = cancel
        self.progress = progress
        self.report = RecoveryReport(mode=mode)
        self.actions: list = []
        self.next_lsn = self.start_lsn = start_lsn
        self.stopped = False
        self.resume_path = None
        self.resume_size = 0
        self.bytes_before = 0  # bytes of segments already done, for progress
        self.offsets: dict = {}  # source -> offset, merged frame by frame
        self.skip_covered = False
        # A background open's replay reads the log only up to where it ended
        # when the open began: (last LSN, {segment path: size then}); what
        # writers appended since is theirs to apply (docs/warmup.md).
        self.end: Optional[tuple] = None
        # on_chunk(segment path, next LSN): every record below it is applied.
        self.on_chunk = None
        # Where the last clean close left the log (MANIFEST clean_end), or
        # None: with it, nothing at the end is a torn tail (no crash made it).
        self.clean_end: Optional[dict] = None
        self.version = F.FORMAT_VERSION  # the format of the segment being read

    # -- problem handling ------------------------------------------------
    def _problem(self, kind, path, offset, detail, nbytes=0, lsn=None, lsn_end=None,
                 action="error") -> Problem:
        p = Problem(kind, path, offset, lsn, detail, nbytes, lsn_end, action)
        self.report.problems.append(p)
        return p

    def _fatal(self, p: Problem):
        cls = TornTailError if p.kind == "torn_tail" else CorruptionError
        raise cls(p.detail, path=p.path, offset=p.offset, lsn=p.lsn, reason=p.kind)

    def _damage(self, p: Problem) -> str:
        """What the mode does with damage: raise, "stop" or "skip"."""
        if self.mode in ("strict", "tolerate-tail"):
            self._fatal(p)
        return "stop" if self.mode == "point-in-time" else "skip"

    def _not_applied_rest(self, seg_path, offset, size):
        if size > offset:
            self._problem("not_applied", seg_path, offset,
                          "after the point-in-time stop", size - offset, action="not_applied")

    # -- the walk --------------------------------------------------------
    def run(self) -> WalkResult:
        t0 = time.perf_counter()
        waldir = os.path.join(self.directory, WAL_DIR)
        if not os.path.isdir(waldir):
            # A store always has wal/ (it is made before the MANIFEST); its
            # absence means the log was lost, not that the state is empty.
            p = self._problem("missing_wal", waldir, None, "the wal/ directory is missing")
            self._fatal(p)
        segments, foreign, _tmp = list_segments(waldir)
        if self.end is not None:
            end_lsn, sizes = self.end
            segments = [replace(s, size=sizes.get(s.path, s.size)) for s in segments
                        if s.first_lsn <= end_lsn]
        for name in foreign:
            self._problem("foreign_file", os.path.join(waldir, name), None,
                          "not a segment; left alone", action="ignored")
        self.total_bytes = sum(s.size for s in segments)
        for i, seg in enumerate(segments):
            if i + 1 < len(segments) and segments[i + 1].first_lsn <= self.start_lsn:
                # Wholly below the log's start (MANIFEST log_start): a segment
                # a checkpoint's trim had not yet unlinked when it stopped.
                self.actions.append(Action("remove", seg.path, kind="below_log_start"))
                self.bytes_before += seg.size
                continue
            if self.stopped:
                self._problem("not_applied", seg.path, 0, "after the point-in-time stop",
                              seg.size, lsn=seg.first_lsn, action="not_applied")
                self.actions.append(Action("move_aside", seg.path, kind="not_applied"))
                continue
            if (self.skip_covered and i + 1 < len(segments)
                    and self.next_lsn <= segments[i + 1].first_lsn - 1 <= self.applied_lsn):
                # Every record here is in the snapshot the state came from:
                # an open need not read it (verify still checks it).
                self.next_lsn = segments[i + 1].first_lsn
                self.bytes_before += seg.size
                continue
            self._segment(seg, newest=(i == len(segments) - 1))
            self.bytes_before += seg.size
        if self.clean_end is not None and not self.stopped:
            self._check_clean_end(segments)
        r = self.report
        r.last_lsn = self.next_lsn - 1
        r.duration_s = time.perf_counter() - t0
        return WalkResult(r, self.actions, self.next_lsn, self.resume_path, self.resume_size,
                          self.offsets)

    def _check_clean_end(self, segments) -> None:
        """The log must end exactly where its last clean close left it: a
        shorter log lost acknowledged records (a cut, a lost segment, a
        truncated copy), a longer or different one is not the log that was
        closed. Either is damage, whatever the frames say."""
        want = self.clean_end
        assert want is not None  # only called with a clean end
        last = segments[-1] if segments else None
        name = os.path.basename(last.path) if last is not None else None
        size = last.size if last is not None else None
        if self.end is None and last is not None:
            size = os.path.getsize(last.path)
        if self.next_lsn - 1 == want["lsn"] and (name, size) == (want["segment"],
                                                              want["offset"]):
            return
        where = last.path if last is not None else os.path.join(self.directory, WAL_DIR)
        short = self.next_lsn - 1 < want["lsn"]
        p = self._problem(
            "clean_end_mismatch", where, size,
            f"the log ends at LSN {self.next_lsn - 1} ({name}, {size} bytes); its last "
            f"clean close recorded LSN {want['lsn']} ({want['segment']}, "
            f"{want['offset']} bytes)", lsn=self.next_lsn,
            lsn_end=want["lsn"] if short else None)
        p.action = "stopped" if self._damage(p) == "stop" else "skipped"

    def _segment(self, seg, newest: bool) -> None:
        core = self.core
        size = seg.size if self.end is not None else os.path.getsize(seg.path)
        # The header (and, for a tiny torn segment, the whole file) first; the
        # frames stream in chunks, and the whole file is read only to handle a
        # problem.
        buf = _read_range(seg.path, 0, min(size, 4096))
        self.report.bytes_read += size
        summary = SegmentSummary(seg.path, seg.first_lsn, None, 0, 0, size, 0)
        self.report.segments.append(summary)
        if self.report.first_lsn is None:
            self.report.first_lsn = seg.first_lsn
        if seg.first_lsn != self.next_lsn:
            gap = seg.first_lsn > self.next_lsn
            p = self._problem(
                "missing_segment" if gap else "segment_overlap", seg.path, 0,
                f"segment starts at LSN {seg.first_lsn}, expected {self.next_lsn}",
                lsn=self.next_lsn, lsn_end=seg.first_lsn - 1 if gap else None)
            if self._damage(p) == "stop":
                p.action = "stopped"
                self._stop_in(seg.path, 0, size, rest_from=0, whole=True)
                return
            p.action = "skipped"
            if gap:
                self.next_lsn = seg.first_lsn
        why = segment_header_problem(buf, seg.path, seg.first_lsn)
        self.version = segment_version(buf)
        if why is not None:
            if newest and self.clean_end is None and (
                    size < F.SEGMENT_HEADER_BYTES or _all_zero(buf, 0, size)) and size < 4096:
                p = self._problem("torn_tail", seg.path, 0, f"torn segment: {why}",
                                  size, lsn=self.next_lsn, action="dropped")
                if self.mode == "strict":
                    self._fatal(p)
                self.actions.append(Action("evidence", seg.path, 0, size, "torn_tail", why))
                self.actions.append(Action("remove", seg.path))
                return
            p = self._problem("bad_segment_header", seg.path, 0, why,
                              min(size, F.SEGMENT_HEADER_BYTES), lsn=self.next_lsn)
            if self._damage(p) == "stop":
                p.action = "stopped"
                self._stop_in(seg.path, 0, size, rest_from=p.bytes, whole=True)
                return
            p.action = "skipped"
            self._quarantine(seg.path, 0, p.bytes, "bad_segment_header", why)
        header_ok = why is None
        if self.on_chunk is not None:
            self.on_chunk(seg.path, None)  # a new segment starts
        ctx = core.SegmentContext(self.registry, self.offsets)
        if self.mode == "skip-corrupted" and self.apply:
            ctx.on_apply_error = self._record_skipper(seg.path)
        base, total = self.bytes_before, self.total_bytes
        user_progress = self.progress
        start = F.SEGMENT_HEADER_BYTES
        if self.skip_covered and header_ok:
            start = self._hop_covered(seg.path, size, start)
        offset = self._stream(seg, ctx, summary, size, start)
        if offset < size:
            # Something is wrong at ``offset``: take the whole file and let
            # the problem handling see it as it is. When nothing but zeros
            # follow (a preallocated or sparse tail, of any size), the bytes
            # before ``offset`` and a header's worth of zeros stand for the
            # file: no frame can be in zeros, and memory stays bounded.
            if size - offset > STREAM_CHUNK_BYTES and _zeros_to(seg.path, offset, size):
                buf, end = _read_range(seg.path, 0, offset) + bytes(F.FRAME_HEADER_BYTES), size
            else:
                buf = _fileio.read_file(seg.path)
                end = len(buf)
            range_start = offset
            progress = None
            if user_progress is not None:
                progress = lambda off: user_progress(base + off, total)  # noqa: E731
            while True:
                r = core.scan_frames(buf, offset, self.next_lsn, self.applied_lsn, ctx,
                                     self.apply, self.cancel, progress, version=self.version)
                self._count(summary, r, range_start, offset)
                if r.status == F.SCAN_OK:
                    break
                offset = self._frame_problem(seg, buf, r, newest, end)
                if offset is None:
                    break
                if self.mode == "skip-corrupted":
                    # The skipped bytes may have held this segment's declarations;
                    # tables known from earlier in the log still decode the rest.
                    for tid, info in self.registry.by_id.items():
                        ctx.adopt(tid, info.table)
                range_start = offset
        if not self.stopped and newest and header_ok:
            if self.resume_path is None:
                self.resume_path, self.resume_size = seg.path, size
        elif newest and not header_ok and summary.frames == 0 and not self.stopped:
            # A segment with a damaged header is never appended to: the
            # writer starts a fresh one, named by the next LSN. With no good
            # frame in it, that is this file's own name; moving it aside
            # loses nothing (its bytes are already in quarantine/).
            self.actions.append(Action("move_aside", seg.path, kind="bad_segment_header"))
        if self.on_chunk is not None:
            self.on_chunk(seg.path, self.next_lsn)
        if user_progress is not None:
            user_progress(base + size, total)

    def _count(self, summary, r, range_start, offset, shift=0) -> None:
        """Add a scan's counters; its good bytes are [range_start, r.offset) (+shift)."""
        summary.frames += r.frames
        summary.records += r.records
        self.report.frames += r.frames
        self.report.records += r.records
        self.report.applied += r.applied
        if r.frames:
            summary.last_lsn = r.next_lsn - 1
        self.next_lsn = r.next_lsn
        if r.offset > range_start:
            summary.good_ranges.append((range_start + shift, r.offset + shift))
        summary.good_bytes += r.offset - offset

    def _hop_covered(self, path: str, size: int, offset: int) -> int:
        """Step over whole frames the snapshot already holds, by their headers.

        Only an open from a snapshot does this (``skip_covered``): frames at or
        below ``applied_lsn`` are neither checksummed nor decoded, as whole
        segments below it are not read (``verify`` still checks them). Each
        frame declares its own tables and its offsets are in the snapshot, so
        nothing read later depends on a frame stepped over. Stops at the first
        header that is not plainly a covered frame; the scan goes on from there.
        """
        core = self.core
        hb = F.frame_header_bytes(self.version)
        with open(path, "rb") as f:
            while offset + hb <= size and self.next_lsn <= self.applied_lsn:
                raw = os.pread(f.fileno(), hb, offset)
                h = core.parse_frame_header(raw, 0, self.version)
                if h is None or core.header_problem(h) is not None \
                        or h.first_lsn != self.next_lsn:
                    break
                end = offset + hb + h.stored_len
                if h.first_lsn + h.count - 1 > self.applied_lsn or end > size:
                    break
                self.next_lsn = h.first_lsn + h.count
                offset = end
        return offset

    def _stream(self, seg, ctx, summary, size, start=F.SEGMENT_HEADER_BYTES) -> int:
        """Scan the segment's frames chunk by chunk, reading ahead on a thread.

        Returns the file offset where scanning stopped: ``size`` when every
        frame was good, else the start of the first frame that needs the
        whole file to judge (a bad frame, or a partial one at the end).
        """
        core = self.core
        pos = start  # file offset of carry[0] (or of the next byte to scan)
        carry = b""
        user_progress = self.progress

        def scan(data, off: int, base: int):
            """Scan ``data`` (file offset ``base``) from ``off``."""
            r = core.scan_frames(data, off, self.next_lsn, self.applied_lsn, ctx,
                                 self.apply, self.cancel, None, version=self.version)
            self._count(summary, r, off, off, shift=base)
            if r.status == F.SCAN_CANCELLED:
                raise CancelledError("replay cancelled", path=seg.path,
                                     offset=base + r.offset, lsn=r.next_lsn)
            return r

        with _ChunkReader(seg.path, pos, size) as chunks:
            for chunk in chunks:
                data, off, base = chunk, 0, pos
                need = self._rest_of_frame(carry) if carry else None
                if need is not None and need <= len(chunk):
                    # The frame cut by the last chunk's end, finished with the
                    # head of this one: a copy of one frame, not of the chunk.
                    head = carry + chunk[:need]
                    r = scan(head, 0, pos)
                    if r.status != F.SCAN_OK or r.offset != len(head):
                        return pos + r.offset
                    base, off = pos + len(carry), need
                elif carry:
                    data = carry + chunk  # a header cut in two, or a frame beyond a chunk
                r = scan(data, off, base)
                if r.status not in (F.SCAN_OK, F.SCAN_TRUNCATED):
                    return base + r.offset
                # A frame cut by the chunk's end waits for the next chunk.
                carry = data[r.offset:] if r.status == F.SCAN_TRUNCATED else b""
                pos = base + r.offset
                if self.on_chunk is not None:
                    self.on_chunk(seg.path, self.next_lsn)
                if user_progress is not None:
                    user_progress(self.bytes_before + pos, self.total_bytes)
        return pos

    def _rest_of_frame(self, carry: bytes):
        """How many more bytes finish the frame that ``carry`` starts, or
        None when its header is not whole or not plausible (the scan of the
        joined bytes then judges it)."""
        hb = F.frame_header_bytes(self.version)
        if len(carry) < hb:
            return None
        h = self.core.parse_frame_header(carry, 0, self.version)
        if h is None or self.core.header_problem(h) is not None:
            return None
        need = hb + h.stored_len - len(carry)
        return need if need > 0 else None

    def _frame_problem(self, seg, buf, r, newest: bool, end: int):
        """Handle a scan stop; the offset to resume scanning at, or None.
        ``end``: the file's size (``buf`` may stand for its zero tail)."""
        status_name = F.SCAN_STATUS_NAMES[r.status]
        if r.status == F.SCAN_CANCELLED:
            raise CancelledError("replay cancelled", path=seg.path, offset=r.offset,
                                 lsn=r.next_lsn)
        if r.status == F.SCAN_APPLY_ERROR:
            # A checksummed frame whose op cannot apply was written by a
            # buggy or hostile writer; the state is mid-frame, so no mode can go on.
            p = self._problem("apply_error", seg.path, r.offset, r.detail,
                              r.frame_end - r.offset, lsn=r.next_lsn)
            self._fatal(p)
        if (newest and self.clean_end is None
                and is_torn(buf, r.status, r.offset, r.frame_end,
                            F.frame_header_bytes(self.version))
                and find_next_frame(self.core, buf, r.offset + 1, 0, self.version) is None):
            # (a whole, checksummed frame further on means the bad bytes are
            # not where a crash stopped writing: e.g. a flipped length field)
            p = self._problem("torn_tail", seg.path, r.offset, r.detail, end - r.offset,
                              lsn=r.next_lsn, action="dropped")
            if self.mode == "strict":
                self._fatal(p)
            self._cut(seg.path, r.offset, end, "torn_tail", r.detail)
            return None
        if r.status == F.SCAN_TRUNCATED:
            # Not the end of a crash's write: a length that runs past the end
            # of the file with good data after it (or in an older segment, or
            # after a recorded clean close).
            status_name = "bad_length"
        crc_ok = r.status in (F.SCAN_LSN_GAP, F.SCAN_LSN_OVERLAP, F.SCAN_BAD_PAYLOAD)
        p = self._problem(status_name, seg.path, r.offset, r.detail,
                          (r.frame_end if crc_ok else end) - r.offset, lsn=r.next_lsn)
        if self._damage(p) == "stop":
            p.action = "stopped"
            self._stop_in(seg.path, r.offset, end, rest_from=r.offset + p.bytes)
            return None
        p.action = "skipped"
        if r.status == F.SCAN_LSN_GAP:
            # The frame itself is whole; the LSNs before it are lost. Accept
            # the gap and replay the frame.
            h = self.core.parse_frame_header(buf, r.offset, self.version)
            p.lsn_end = h.first_lsn - 1
            p.bytes = 0
            self.next_lsn = h.first_lsn
            return r.offset
        if crc_ok:
            if r.status == F.SCAN_BAD_PAYLOAD:
                # The checksum vouches for the header: these LSNs are the ones lost.
                h = self.core.parse_frame_header(buf, r.offset, self.version)
                p.lsn, p.lsn_end = h.first_lsn, h.first_lsn + h.count - 1
                self.next_lsn = h.first_lsn + h.count
            self._quarantine(seg.path, r.offset, r.frame_end, status_name, r.detail)
            return r.frame_end
        found = find_next_frame(self.core, buf, r.offset + 1, self.next_lsn, self.version)
        if found is None:
            p.bytes = end - r.offset
            if newest:
                self._cut(seg.path, r.offset, end, status_name, r.detail)
            else:
                self._quarantine(seg.path, r.offset, end, status_name, r.detail)
            return None
        pos, h = found
        p.bytes = pos - r.offset
        if h.first_lsn > self.next_lsn:
            p.lsn_end = h.first_lsn - 1
        self._quarantine(seg.path, r.offset, pos, status_name, r.detail)
        self.next_lsn = h.first_lsn
        return pos

    def _record_skipper(self, path):
        """skip-corrupted: what replay calls for records whose apply raised
        (a custom table's apply, or a record no writer of ours makes): they
        are left out, reported, and kept with the traceback in quarantine/."""
        import traceback

        import msgpack

        def skip(lsn, tid, raws, exc) -> None:
            info = self.registry.by_id.get(tid)
            name = info.name if info is not None else f"id {tid}"
            last = lsn + len(raws) - 1
            detail = (f"table {name!r}: {exc} (LSN {lsn}" + (f"..{last}" if last > lsn else "")
                      + " left out)")
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            tb = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
            self._problem("apply_error", path, None, detail, 0, lsn=lsn,
                          lsn_end=last if last > lsn else None, action="skipped")
            data = msgpack.packb([{"lsn": lsn + k, "table": name, "op": op, "key": kb,
                                   "value": vb} for k, (op, kb, vb) in enumerate(raws)],
                                 use_bin_type=True)
            self.actions.append(Action("record", path, lsn, 0, "apply_error",
                                       detail + "\n" + tb, data))
        return skip

    def _quarantine(self, path, start, end, kind, detail) -> None:
        self.actions.append(Action("evidence", path, start, end, kind, detail))

    def _cut(self, path, start, end, kind, detail) -> None:
        """Drop [start, end) of the newest segment: keep evidence, truncate."""
        self.actions.append(Action("evidence", path, start, end, kind, detail))
        self.actions.append(Action("truncate", path, start))
        self.resume_path, self.resume_size = path, start

    def _stop_in(self, path, offset, size, rest_from, whole=False) -> None:
        """Point-in-time: nothing from ``offset`` of this segment on is applied.

        The problem that stopped the walk already counts its own bytes; what
        follows it (``rest_from`` on) is reported as not applied.
        """
        self.stopped = True
        self._not_applied_rest(path, rest_from, size)
        if whole:
            self.actions.append(Action("move_aside", path, kind="not_applied"))
            return
        self._cut(path, offset, size, "not_applied", "after the point-in-time stop")


class CancelledError(RehydrateError):
    default_reason = "cancelled"


def walk(core, directory, *, mode="tolerate-tail", registry, apply=True, start_lsn=1,
         applied_lsn=0, cancel=None, progress=None, offsets=None,
         skip_covered=False, end=None, on_chunk=None, clean_end=None) -> WalkResult:
    """Read every segment of ``directory`` under ``mode``; see the module docstring.

    ``applied_lsn``: the state already holds every record up to it (a
    snapshot); those are checked, not applied, and with ``skip_covered`` a
    segment wholly below it is not read at all. ``offsets``: the source
    offsets the state starts from. ``end`` = (last LSN, {path: size}) reads
    the log only as it was then (segments past that LSN are not read, the
    named ones only up to their size). ``on_chunk(path, next_lsn)`` is called
    as the walk goes, whenever every record below ``next_lsn`` is in, and
    with ``next_lsn`` None as each segment's frames start. ``clean_end``:
    the MANIFEST's record of the last clean close (``clean_end_of``); the
    log must then end exactly there, and nothing at its end is a torn
    tail. Raises CorruptionError (TornTailError for a
    torn tail under strict) where the mode does not allow going on;
    UnsupportedFormatError for a newer format.
    """
    w = Walker(core, directory, mode, registry, apply, start_lsn, applied_lsn, cancel, progress)
    w.offsets.update(offsets or {})
    w.skip_covered = skip_covered
    w.end, w.on_chunk = end, on_chunk
    w.clean_end = clean_end
    return w.run()


def clean_end_of(manifest: dict, directory: str) -> Optional[dict]:
    """The MANIFEST's record of where the last clean close left the log
    ({"lsn", "segment", "offset"}), checked; None when the last run did not
    close cleanly (or the store was written since)."""
    value = manifest.get("clean_end")
    if value is None:
        return None
    if not (isinstance(value, dict) and type(value.get("lsn")) is int and value["lsn"] >= 0
            and (value.get("segment") is None or isinstance(value.get("segment"), str))
            and (value.get("offset") is None or type(value.get("offset")) is int)):
        raise CorruptionError(f"MANIFEST clean_end {value!r} is not a log position",
                              path=os.path.join(directory, MANIFEST_NAME), reason="bad_manifest")
    return {"lsn": value["lsn"], "segment": value.get("segment"), "offset": value.get("offset")}


def evidence_name(path: str, start: int, kind: str) -> str:
    return f"{os.path.basename(path)}@{start:012d}.{kind}"


def apply_actions(directory: str, actions) -> None:
    """Carry out a walk's actions: evidence first, then truncations and moves.

    Evidence (the dropped bytes and a JSON note) goes to quarantine/ and is
    fsynced before anything is cut, so no byte is ever lost without a copy.
    """
    if not actions:
        return
    qdir = os.path.join(directory, QUARANTINE_DIR)
    _fileio.makedir_durable(qdir)
    for a in actions:
        if a.op == "evidence":
            with open(a.path, "rb") as f:
                f.seek(a.start)
                data = f.read(a.end - a.start)
            base = os.path.join(qdir, evidence_name(a.path, a.start, a.kind))
            note = {"source": os.path.relpath(a.path, directory), "offset": a.start,
                    "bytes": len(data), "kind": a.kind, "detail": a.detail}
            _fileio.write_file_atomic(base + ".bin", data)
            _fileio.write_file_atomic(base + ".json", json.dumps(note, indent=1).encode())
        elif a.op == "record":
            # Records left out by skip-corrupted: the log keeps them in place;
            # here are a copy (msgpack list of {lsn, table, op, key, value})
            # and the error with its traceback.
            base = os.path.join(qdir, evidence_name(a.path, a.start, a.kind))
            note = {"source": os.path.relpath(a.path, directory), "lsn": a.start,
                    "kind": a.kind, "detail": a.detail}
            _fileio.write_file_atomic(base + ".bin", a.data)
            _fileio.write_file_atomic(base + ".json", json.dumps(note, indent=1).encode())
    for a in actions:
        if a.op == "truncate":
            fd = os.open(a.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _fileio.truncate(fd, a.start)
                _fileio.fsync(fd)
            finally:
                _fileio.close(fd)
        elif a.op == "remove":
            _fileio.unlink(a.path)
            _fileio.fsync_dir(os.path.dirname(a.path))
        elif a.op == "move_aside":
            suffix = ".not-applied" if a.kind == "not_applied" else f".{a.kind}"
            dst = os.path.join(qdir, os.path.basename(a.path) + suffix)
            _fileio.rename(a.path, dst)
            # quarantine/ first: a power cut between the two leaves the file
            # in both directories, never in neither
            _fileio.fsync_dir(qdir)
            _fileio.fsync_dir(os.path.dirname(a.path))
