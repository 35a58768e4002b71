"""Following a log another process writes: apply each frame once it is
whole and checked (docs/replication.md, "Lag and reads on a standby").

A ``LogFollower`` is a replay that never ends: it reads a store's segments
from where it stopped, hands the whole frames to the core's ``scan_frames``
(the same checks and the same apply as an open's replay; records at or
below the applied LSN are checked, not applied) and keeps the bytes of a
frame still being written for the next ``poll``. The standby's follow
thread, a readonly store's ``refresh()`` and a promote's last catch-up all
go through ``poll``.

A segment is done when the log goes on in the next one: the writer names a
new segment by its first LSN, so the follower, at the end of a segment's
whole frames, looks for exactly ``segment_name(next_lsn)``. The writer
finishes a segment before it creates the next, so the bytes read after
seeing the next segment are the segment's last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from . import _fileio
from . import _format as F
from .errors import CorruptionError
from .wal import (
    WAL_DIR, list_segments, parse_segment_name, segment_header_problem, segment_name,
    segment_version,
)

__all__ = ["LogFollower", "FellBehindError", "start_segment"]

# Read at most this much of a segment per step: memory stays bounded while
# a follower far behind catches up.
READ_CHUNK_BYTES = 8 << 20


class FellBehindError(CorruptionError):
    """The segment the follower needs next was trimmed by a checkpoint: the
    state must start again from a newer snapshot (reason ``trimmed``)."""

    default_reason = "trimmed"


@dataclass
class Position:
    """Where a follower is: the segment it reads and the offset of the
    first byte it has not applied."""

    segment: int  # the segment's first LSN
    path: str
    offset: int


def start_segment(directory: str, next_lsn: int, log_start: int) -> Optional[tuple[int, str]]:
    """(first LSN, path) of the segment holding ``next_lsn`` (the newest
    whose first LSN is at or below it, and not below the log's start), or
    None when the log has no such segment yet (an empty log)."""
    segments = list_segments(os.path.join(directory, WAL_DIR))[0]
    best = None
    for seg in segments:
        if seg.first_lsn <= next_lsn:
            best = seg
        else:
            break
    if best is None:
        return None
    # Older segments a trim has not yet unlinked are not the log any more.
    later = [s for s in segments if s.first_lsn > best.first_lsn]
    if best.first_lsn < log_start and later and later[0].first_lsn <= log_start:
        best = later[0]
    return best.first_lsn, best.path


class LogFollower:
    """Applies ``directory``'s log into ``registry``, frame by frame, as it
    grows. ``applied_lsn``: records up to it are in the state already (a
    snapshot's): checked, not applied; ``next_lsn`` is the first LSN the
    follower has not applied. ``offsets``:
    the source offsets in the state, merged as frames are applied.

    Not thread-safe: the caller holds its store's lock around ``poll``.
    """

    def __init__(self, core: Any, directory: str, registry: Any, offsets: dict[str, int],
                 applied_lsn: int, log_start: int) -> None:
        self.core = core
        self.directory = directory
        self.waldir = os.path.join(directory, WAL_DIR)
        self.registry = registry
        self.offsets = offsets
        self.next_lsn = max(applied_lsn + 1, log_start)
        self.applied_lsn = applied_lsn
        self.log_start = log_start
        self.position: Optional[Position] = None
        self._fd = -1
        self._ctx: Any = None
        self._version = F.FORMAT_VERSION
        self._carry = b""  # bytes of a frame not yet whole, from position.offset
        self.applied = 0  # records applied by this follower
        # Bytes at the end of the newest segment that do not make a whole,
        # checked frame: a frame being written (or, if the writer is gone,
        # a torn tail). Their count, for the lag.
        self.pending_bytes = 0
        self.waiting_detail = ""

    @property
    def lsn(self) -> int:
        """The last LSN in the state (applied, or the base snapshot's)."""
        return max(self.next_lsn - 1, self.applied_lsn)

    # ---------------------------------------------------------------- reading
    def _open(self, first: int, path: str) -> bool:
        """Start reading segment ``first``; False when it is not there."""
        try:
            fd = _fileio.open_read(path)
        except FileNotFoundError:
            return False
        self._close_fd()
        self._fd = fd
        self.position = Position(first, path, 0)
        self._ctx = self.core.SegmentContext(self.registry, self.offsets)
        self._carry = b""
        return True

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self._close_fd()

    def _find_start(self) -> bool:
        found = start_segment(self.directory, self.next_lsn, self.log_start)
        if found is None:
            return False
        first, path = found
        if first > self.next_lsn:
            raise FellBehindError(
                f"the log now starts at LSN {first}; this follower needs LSN {self.next_lsn}",
                path=self.waldir, lsn=self.next_lsn)
        if not self._open(first, path):
            return False
        # The segment is read from its header: its records up to
        # applied_lsn are checked, not applied.
        self.next_lsn = first
        return True

    def poll(self) -> int:
        """Apply every whole frame written since the last poll; returns the
        records applied. CorruptionError (the follower cannot go on) for a
        frame that fails its checks where the log goes on after it;
        FellBehindError when the next segment was trimmed away."""
        before = self.applied
        if self.position is None and not self._find_start():
            return 0
        while True:
            pos = self.position
            assert pos is not None
            self._read_segment(pos)
            nxt = os.path.join(self.waldir, segment_name(self.next_lsn))
            if pos.segment == self.next_lsn or not os.path.exists(nxt):
                return self.applied - before  # the newest segment: wait for more
            # The log goes on in the next segment: whatever this one holds
            # now is all it will hold.
            self._read_segment(pos)
            if self.pending_bytes:
                raise self._damage(pos, "the segment ends inside a frame, and the log goes "
                                        "on in the next one")
            if not self._open(self.next_lsn, nxt):
                raise FellBehindError(f"segment {nxt} was removed before it was read",
                                      path=nxt, lsn=self.next_lsn)

    def _read_segment(self, pos: Position) -> None:
        """Read and apply what segment ``pos`` holds past ``pos.offset``."""
        while True:
            size = os.fstat(self._fd).st_size
            start = pos.offset + len(self._carry)
            if size < start:
                # The file shrank: a recovering writer cut a torn tail we had
                # not applied (only whole frames are applied). Read again.
                self._carry = b""
                start = pos.offset
                if size < pos.offset:
                    raise self._damage(pos, f"the segment shrank to {size} bytes, below "
                                            "frames already applied")
            if size == start:
                self.pending_bytes = len(self._carry)
                return
            data = os.pread(self._fd, min(size - start, READ_CHUNK_BYTES), start)
            if not data:
                self.pending_bytes = len(self._carry)
                return
            buf = self._carry + data if self._carry else data
            base = pos.offset
            used = self._apply(pos, buf, base)
            pos.offset = base + used
            self._carry = buf[used:]
            if len(data) < READ_CHUNK_BYTES and start + len(data) >= size:
                self.pending_bytes = len(self._carry)
                return

    def _apply(self, pos: Position, buf: bytes, base: int) -> int:
        """Scan ``buf`` (the segment's bytes from ``base``); returns the bytes
        used: whole, checked frames, applied."""
        off = 0
        if base == 0:
            if len(buf) < F.SEGMENT_HEADER_BYTES:
                return 0
            why = segment_header_problem(buf, pos.path, pos.segment)
            if why is not None:
                raise CorruptionError(f"segment header: {why}", path=pos.path, offset=0,
                                      lsn=self.next_lsn, reason="bad_segment_header")
            self._version = segment_version(buf)
            off = F.SEGMENT_HEADER_BYTES
        r = self.core.scan_frames(buf, off, self.next_lsn, self.applied_lsn, self._ctx, True,
                                  None, None, version=self._version)
        self.next_lsn = r.next_lsn
        self.applied += r.applied
        used: int = r.offset
        if r.status in (F.SCAN_OK, F.SCAN_TRUNCATED):
            self.waiting_detail = "" if r.status == F.SCAN_OK else r.detail
            return used
        if r.status == F.SCAN_BAD_CRC and r.frame_end == len(buf):
            # The last bytes read end a frame whose checksum fails: a writer
            # can be mid-write (the size grows before every byte lands).
            # Wait for it; more bytes after it make it damage (next poll).
            self.waiting_detail = r.detail
            return used
        name = F.SCAN_STATUS_NAMES.get(r.status, "bad_frame")
        raise CorruptionError(f"{r.detail} (following the log)", path=pos.path,
                              offset=base + r.offset, lsn=r.next_lsn, reason=name)

    def _damage(self, pos: Position, detail: str) -> CorruptionError:
        return CorruptionError(detail, path=pos.path, offset=pos.offset, lsn=self.next_lsn,
                               reason="bad_frame")

    def at_end(self) -> tuple[str, int]:
        """(path, size) of where the applied log ends: the writer of a
        promoted standby appends there."""
        pos = self.position
        if pos is None:
            raise RuntimeError("internal error: the follower has read no segment")
        return pos.path, pos.offset

    def segment_first_lsn(self) -> Optional[int]:
        pos = self.position
        return None if pos is None else parse_segment_name(os.path.basename(pos.path))
