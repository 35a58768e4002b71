"""Byte-level editing of a state directory, for corruption tests.

Every function edits files in place; ``FrameInfo`` lists come from walking
frame headers with the core's own ``parse_frame_header``, so tests know
exactly where each frame and record is.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from rehydrate import _backend
from rehydrate import _format as F
from rehydrate import manifest
from rehydrate.wal import segment_version

SECTOR = 512


@dataclass(frozen=True)
class FrameInfo:
    segment: str  # path
    index: int  # index of the frame within its segment
    offset: int
    end: int
    first_lsn: int
    count: int
    codec: int

    @property
    def lsns(self) -> range:
        return range(self.first_lsn, self.first_lsn + self.count)

    @property
    def size(self) -> int:
        return self.end - self.offset


def segment_paths(directory) -> list:
    waldir = os.path.join(directory, "wal")
    return [os.path.join(waldir, n) for n in sorted(os.listdir(waldir)) if n.endswith(".wal")]


def frames_of(segment_path) -> list:
    """Every frame of an undamaged segment, by walking its headers."""
    core = _backend.core()
    buf = open(segment_path, "rb").read()
    version = segment_version(buf)
    off = F.SEGMENT_HEADER_BYTES
    out = []
    while off < len(buf):
        h = core.parse_frame_header(buf, off, version)
        assert h is not None and h.magic == F.frame_magic(version), (segment_path, off)
        end = off + F.frame_header_bytes(version) + h.stored_len
        assert end <= len(buf)
        out.append(FrameInfo(segment_path, len(out), off, end, h.first_lsn, h.count, h.codec))
        off = end
    return out


def all_frames(directory) -> list:
    return [f for p in segment_paths(directory) for f in frames_of(p)]


def tree_hashes(directory) -> dict:
    """{relative path: sha256} of every file under ``directory``."""
    out = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


# -- editors -------------------------------------------------------------
def read(path) -> bytearray:
    with open(path, "rb") as f:
        return bytearray(f.read())


def write(path, data) -> None:
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(0)
        f.write(data)
        f.truncate(len(data))


def truncate(path, size: int) -> None:
    os.truncate(path, size)


def flip_bit(path, offset: int, bit: int) -> None:
    buf = read(path)
    buf[offset] ^= 1 << bit
    write(path, buf)


def zero_range(path, start: int, end: int) -> None:
    buf = read(path)
    buf[start:end] = bytes(end - start)
    write(path, buf)


def zero_sector(path, sector_start: int) -> None:
    assert sector_start % SECTOR == 0
    zero_range(path, sector_start, sector_start + SECTOR)


def overwrite(path, offset: int, data: bytes) -> None:
    buf = read(path)
    buf[offset:offset + len(data)] = data
    write(path, buf)


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def set_frame_field(path, frame_offset: int, field: str, value: int) -> None:
    """Set one header field (little-endian) of the frame at ``frame_offset``."""
    layout = {"magic": (0, "<I"), "crc": (4, "<I"), "first_lsn": (8, "<Q"),
              "count": (16, "<I"), "stored_len": (20, "<I"), "raw_len": (24, "<I"),
              "codec": (28, "<B"), "flags": (29, "<B"), "reserved": (30, "<H"),
              "header_crc": (32, "<I")}
    rel, fmt = layout[field]
    overwrite(path, frame_offset + rel, struct.pack(fmt, value))


def fix_frame_crc(path, frame_offset: int) -> None:
    """Recompute the checksums of the frame at ``frame_offset`` (after an
    edit): its header's own (format 2), then the frame's, so the damage is
    seen by the checks after them."""
    core = _backend.core()
    buf = read(path)
    version = segment_version(buf)
    if version >= 2:
        overwrite(path, frame_offset + 32,
                  struct.pack("<I", core.crc32c(bytes(buf[frame_offset + 8:frame_offset + 32]))))
        buf = read(path)
    h = core.parse_frame_header(buf, frame_offset, version)
    body = frame_offset + F.frame_header_bytes(version)
    payload = bytes(buf[body:body + h.stored_len])
    crc = core.crc32c(payload, core.crc32c(bytes(buf[frame_offset + 8:body])))
    overwrite(path, frame_offset + 4, struct.pack("<I", crc))


def set_segment_version(path, version: int) -> None:
    """Rewrite a segment header's format version, with a valid header CRC."""
    core = _backend.core()
    buf = read(path)
    buf[8:10] = struct.pack("<H", version)
    buf[28:32] = struct.pack("<I", core.crc32c(bytes(buf[:28])))
    write(path, buf)


def as_crashed(directory) -> None:
    """Make ``directory`` look as a crash leaves it: no clean close recorded
    (MANIFEST ``clean_end``). A torn tail can only come from a crash, so a
    test that makes one by cutting a cleanly closed log starts here."""
    data = manifest.read(directory)
    if data.pop("clean_end", None) is not None:
        manifest.write(directory, data)
