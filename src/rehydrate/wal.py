"""WAL segments on disk: names, headers, listing, and the appending writer.

A segment is ``wal/<first LSN, 20 digits>.wal``: a 32-byte header then frames
(see docs/FORMAT.md). The writer appends frames to the newest segment and
rolls to a new one at ``segment_bytes``; every new segment is created as
tmp -> header -> fsync -> rename -> fsync directory, so a crash never leaves a
half-made segment under a real name.
"""

from __future__ import annotations

from typing import Any, Optional

import os
import stat
import struct
from dataclasses import dataclass

from . import _fileio
from . import _format as F
from ._backend import core
from .errors import UnsupportedFormatError

WAL_DIR = "wal"
SEGMENT_HEADER = struct.Struct("<8sHHIQII")
assert SEGMENT_HEADER.size == F.SEGMENT_HEADER_BYTES


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:0{F.SEGMENT_NAME_DIGITS}d}{F.SEGMENT_SUFFIX}"


def parse_segment_name(name: str):
    """The first LSN a segment file name states, or None if not a segment name."""
    stem, dot, suffix = name.partition(".")
    if (dot + suffix != F.SEGMENT_SUFFIX or len(stem) != F.SEGMENT_NAME_DIGITS
            or not stem.isascii() or not stem.isdigit()):
        return None
    return int(stem)


def encode_segment_header(first_lsn: int) -> bytes:
    head = SEGMENT_HEADER.pack(F.SEGMENT_MAGIC, F.FORMAT_VERSION, 0,
                               F.SEGMENT_HEADER_BYTES, first_lsn, 0, 0)[:28]
    return head + struct.pack("<I", core().crc32c(head))


def segment_header_problem(buf, path: str, expected_first_lsn: int):
    """Why a segment's header is unusable (a string), or None when it is fine.

    A newer format version is not damage but an upgrade to make: it raises
    UnsupportedFormatError.
    """
    if len(buf) < F.SEGMENT_HEADER_BYTES:
        return "segment shorter than its header"
    magic, version, flags, header_bytes, first_lsn, reserved, crc = SEGMENT_HEADER.unpack_from(buf)
    if magic != F.SEGMENT_MAGIC:
        return "bad segment magic"
    if core().crc32c(bytes(buf[:28])) != crc:
        return "segment header checksum mismatch"
    if version > F.FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"segment format {version} is newer than this rehydrate reads "
            f"({F.FORMAT_VERSION})", path=path, offset=8)
    if (version < F.MIN_FORMAT_VERSION or flags != 0 or reserved != 0
            or header_bytes != F.SEGMENT_HEADER_BYTES):
        return "unknown segment header fields"
    if first_lsn != expected_first_lsn:
        return f"header says first LSN {first_lsn}, the file name {expected_first_lsn}"
    return None


def segment_version(buf: bytes) -> int:
    """The format version a segment header states (its frames' layout):
    what a reader passes to the core's frame functions. A header too short
    or damaged to say is read as the current format."""
    if len(buf) >= 10:
        version = struct.unpack_from("<H", buf, 8)[0]
        if F.MIN_FORMAT_VERSION <= version <= F.FORMAT_VERSION:
            return version
    return F.FORMAT_VERSION


def read_segment_version(path: str) -> int:
    with open(path, "rb") as f:
        return segment_version(f.read(F.SEGMENT_HEADER_BYTES))


@dataclass
class SegmentFile:
    first_lsn: int
    path: str
    size: int


def list_segments(waldir: str):
    """(segments sorted by first LSN, names of foreign files, names of tmp files)."""
    segments: list[Any] = []
    foreign: list[Any] = []
    tmp: list[Any] = []
    try:
        names = os.listdir(waldir)
    except FileNotFoundError:
        return segments, foreign, tmp
    for name in names:
        path = os.path.join(waldir, name)
        first = parse_segment_name(name)
        # Only a regular file is a segment (lstat: rehydrate makes no links,
        # and one is never followed out of the directory, nor to a FIFO).
        try:
            st = os.lstat(path) if first is not None else None
        except FileNotFoundError:
            continue  # unlinked since the listing (a live store's trim)
        if st is not None and stat.S_ISREG(st.st_mode):
            segments.append(SegmentFile(first, path, st.st_size))
        elif name.endswith(".tmp"):
            tmp.append(name)
        else:
            foreign.append(name)
    segments.sort(key=lambda s: s.first_lsn)
    return segments, sorted(foreign), sorted(tmp)


class WalWriter:
    """Appends frames to the newest segment, rolling at ``segment_bytes``.

    Not thread-safe: the store calls it under its I/O lock. Every frame
    declares the tables its records use, so any frame (and so any segment)
    decodes alone, and losing one frame never hides another's table.
    """

    def __init__(self, waldir: str, segment_bytes: int) -> None:
        self.waldir = waldir
        self.segment_bytes = segment_bytes
        self._fd = -1
        self.path: Optional[str] = None
        self.size = 0

    def open_existing(self, seg: SegmentFile, size: int) -> None:
        """Append to ``seg`` from ``size``: only a segment of this format
        (a store of an older one goes on in a new segment; see ``can_append``)."""
        self._fd = _fileio.open_append(seg.path)
        self.path, self.size = seg.path, size

    @staticmethod
    def can_append(path: str) -> bool:
        """Can frames of the format this code writes go into this segment?"""
        return read_segment_version(path) == F.FORMAT_VERSION

    def create(self, first_lsn: int) -> None:
        """A new segment starting at ``first_lsn``; durable before it is used."""
        path = os.path.join(self.waldir, segment_name(first_lsn))
        tmp = path + ".tmp"
        try:
            _fileio.unlink(tmp)
        except FileNotFoundError:
            pass
        if os.path.exists(path):
            # rename() would silently replace it, and a segment is never
            # replaced: recovery moves a file aside before reusing its name.
            raise FileExistsError(17, "segment already exists", path)
        fd = _fileio.create_exclusive(tmp)
        try:
            _fileio.write_all(fd, encode_segment_header(first_lsn))
            _fileio.fsync(fd)
            _fileio.rename(tmp, path)
            _fileio.fsync_dir(self.waldir)
        except BaseException:
            _fileio.close(fd)
            raise
        self._fd, self.path, self.size = fd, path, F.SEGMENT_HEADER_BYTES

    def write_frame(self, first_lsn: int, count: int, records: bytes, decls,
                    offsets=None) -> int:
        """Frame and append ``count`` records; returns the frame's byte size.

        ``decls``: (tid, kind, name bytes[, schema[, version]]) of every table
        the records use (encode_frame's form);
        ``offsets``: source offsets that become durable with these records.
        """
        frame = core().encode_frame(first_lsn, count, decls, records, offsets)
        if self.size > F.SEGMENT_HEADER_BYTES and self.size + len(frame) > self.segment_bytes:
            self.roll(first_lsn)
        _fileio.write_all(self._fd, frame)
        self.size += len(frame)
        return len(frame)

    def roll(self, first_lsn: int) -> None:
        """Finish the current segment (fsync) and start the next at ``first_lsn``."""
        _fileio.fsync(self._fd)
        old = self._fd
        self._fd = -1
        _fileio.close(old)
        self.create(first_lsn)

    def fsync(self) -> None:
        _fileio.fsync(self._fd)

    def forget(self) -> None:
        """Drop the descriptor without writing or syncing anything: a
        forked child's copy of it (closing a copy flushes nothing; the
        parent's descriptor and file stay as they are)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                _fileio.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _fileio.close(fd)
