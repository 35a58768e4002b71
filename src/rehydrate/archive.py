"""The archive's layout and format in object storage (docs/archive.md,
docs/FORMAT.md "The archive"): its manifest object, the names of its
objects, the time index after each segment's bytes, the checks a reader
applies to all of them, and the choice of what a restore needs.

Everything read from an archive is untrusted: the manifest's fields are
checked one by one before use, object names are made from checked numbers
(never taken from the manifest), and a segment's bytes are walked frame by
frame with their checksums before a restore writes them.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Optional, TypeGuard

from . import _format as F
from ._backend import core
from .errors import ArchiveError
from .objstore import ObjectStore

ARCHIVE_FORMAT = 1
MANIFEST_OBJECT = "MANIFEST"
MANIFEST_MAGIC = b"RHARCHV1"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
TRAILER_MAGIC = b"RHARTIM1"
# marks (lsn:u64 unix_ms:u64)*, then count:u32 segment_bytes:u64 crc32c:u32 magic:8
TRAILER_FOOTER = struct.Struct("<IQI8s")
MARK = struct.Struct("<QQ")
MAX_MARKS = 1 << 22
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
#: (LSN, unix time in ms): by that time everything up to that LSN was written.
Mark = tuple[int, int]


def part_object(first: int, offset: int, whole: bool) -> str:
    """The object of one part of the segment starting at LSN ``first``: the
    segment's bytes from ``offset`` (a frame boundary), then their time
    index. A sealed segment is one ``whole`` part; the segment being
    written goes up as parts (each interval's new frames)."""
    return f"wal/{first:020d}.wal" if whole else f"wal/{first:020d}.{offset:020d}.part"


def part_name(seg: dict[str, Any], part: dict[str, Any]) -> str:
    return part_object(seg["first"], part["offset"], part["whole"])


def is_snapshot_file_name(name: str) -> bool:
    """A name a snapshot file may have in an archive (no path, no tmp)."""
    return bool(_FILE_NAME.match(name)) and ".." not in name and not name.endswith(".tmp")


def snapshot_object(lsn: int, name: str) -> str:
    return f"snapshots/{lsn:020d}/{name}"


# ------------------------------------------------------------------ manifest
def encode_manifest(man: dict[str, Any]) -> bytes:
    payload = json.dumps(man, sort_keys=True, separators=(",", ":")).encode()
    return MANIFEST_MAGIC + struct.pack("<II", len(payload), core().crc32c(payload)) + payload


def _bad(uri: str, why: str) -> ArchiveError:
    return ArchiveError(f"the archive's manifest is unusable: {why}", uri=uri,
                        object=MANIFEST_OBJECT, reason="bad_manifest")


def _int(x: Any, lo: int = 0, hi: int = (1 << 63) - 1) -> TypeGuard[int]:
    return type(x) is int and lo <= x <= hi


def decode_manifest(data: bytes, uri: str) -> dict[str, Any]:
    """The archive manifest in ``data``, every field checked (ArchiveError
    ``bad_manifest`` naming the first that fails)."""
    if len(data) < 16 or data[:8] != MANIFEST_MAGIC:
        raise _bad(uri, "bad magic (not a rehydrate archive manifest)")
    n, crc = struct.unpack_from("<II", data, 8)
    if n != len(data) - 16:
        raise _bad(uri, f"length {n} does not match the object's {len(data) - 16} bytes")
    payload = data[16:]
    if core().crc32c(payload) != crc:
        raise _bad(uri, "checksum mismatch")
    try:
        man = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(uri, f"not JSON: {e}") from None
    if not isinstance(man, dict):
        raise _bad(uri, "not a JSON object")
    fmt: Any = man.get("format")
    if not _int(fmt, 1):
        raise _bad(uri, "no format")
    if fmt > ARCHIVE_FORMAT:
        raise ArchiveError(f"archive format {fmt} is newer than this rehydrate reads "
                           f"({ARCHIVE_FORMAT})", uri=uri, object=MANIFEST_OBJECT,
                           reason="unsupported_format")
    sid = man.get("store_id")
    if not (isinstance(sid, str) and _HEX32.match(sid)):
        raise _bad(uri, "store_id is not 32 hex digits")
    for field in ("epoch",):
        if not _int(man.get(field), 1):
            raise _bad(uri, f"{field} is not a positive int")
    for field in ("archived_lsn", "updated_ms"):
        if not _int(man.get(field)):
            raise _bad(uri, f"{field} is not a non-negative int")
    segs = man.get("segments")
    if not isinstance(segs, list):
        raise _bad(uri, "segments is not a list")
    prev_last: Optional[int] = None
    for i, seg in enumerate(segs):
        _check_segment(seg, i, uri)
        if prev_last is not None and seg["first"] != prev_last + 1:
            raise _bad(uri, f"segment {i} starts at LSN {seg['first']}, not after "
                            f"{prev_last}: the log has a gap")
        if not seg["sealed"] and i != len(segs) - 1:
            raise _bad(uri, f"segment {i}: only the newest segment may be unsealed")
        prev_last = seg["last"]
    snaps = man.get("snapshots")
    if not isinstance(snaps, list):
        raise _bad(uri, "snapshots is not a list")
    seen = set()
    for i, snap in enumerate(snaps):
        if not isinstance(snap, dict) or not _int(snap.get("lsn"), 1) or \
                not _int(snap.get("time_ms")):
            raise _bad(uri, f"snapshot {i}: no LSN or time")
        if snap["lsn"] in seen or snap["lsn"] > man["archived_lsn"]:
            raise _bad(uri, f"snapshot {i}: LSN {snap['lsn']} twice or past the log")
        seen.add(snap["lsn"])
        files = snap.get("files")
        if not isinstance(files, list) or not files:
            raise _bad(uri, f"snapshot {i}: no files")
        names = set()
        for f in files:
            if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                    and is_snapshot_file_name(f["name"])
                    and _int(f.get("bytes")) and _int(f.get("crc32c"), 0, (1 << 32) - 1)):
                raise _bad(uri, f"snapshot {i}: a file entry is malformed")
            if f["name"] in names:
                raise _bad(uri, f"snapshot {i}: file {f['name']} twice")
            names.add(f["name"])
        if "META" not in names:
            raise _bad(uri, f"snapshot {i}: no META file")
    newest = max([s["lsn"] for s in snaps] + [0])
    if man["archived_lsn"] != (segs[-1]["last"] if segs else newest):
        raise _bad(uri, "archived_lsn is not where the archived log ends")
    for field in ("versions",):
        v = man.get(field, {})
        if not isinstance(v, dict) or not all(isinstance(k, str) and _int(x, 1)
                                              for k, x in v.items()):
            raise _bad(uri, f"{field} is malformed")
    if not isinstance(man.get("ledger", []), list):
        raise _bad(uri, "ledger is not a list")
    return man


def _check_segment(seg: Any, i: int, uri: str) -> None:
    if not isinstance(seg, dict):
        raise _bad(uri, f"segment {i} is not an object")
    for field in ("first", "last", "bytes", "version"):
        if not _int(seg.get(field)):
            raise _bad(uri, f"segment {i}: {field} is not a non-negative int")
    if type(seg.get("sealed")) is not bool:
        raise _bad(uri, f"segment {i}: sealed is not a bool")
    if seg["first"] < 1 or seg["last"] < seg["first"] - 1:
        raise _bad(uri, f"segment {i}: impossible LSN range")
    if not F.MIN_FORMAT_VERSION <= seg["version"] <= F.FORMAT_VERSION:
        raise _bad(uri, f"segment {i}: format {seg['version']} unknown")
    parts = seg.get("parts")
    if not isinstance(parts, list) or not parts or len(parts) > 1 << 20:
        raise _bad(uri, f"segment {i}: no parts")
    offset, last = 0, seg["first"] - 1
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise _bad(uri, f"segment {i} part {j} is not an object")
        for field in ("offset", "bytes", "last", "crc32c", "object_bytes", "t_first", "t_last"):
            if not _int(part.get(field)):
                raise _bad(uri, f"segment {i} part {j}: {field} is not a non-negative int")
        if type(part.get("whole")) is not bool or (part["whole"] and (len(parts) != 1
                                                                      or not seg["sealed"])):
            raise _bad(uri, f"segment {i} part {j}: whole is wrong")
        if part["offset"] != offset or part["bytes"] < 1 or part["crc32c"] >= 1 << 32 \
                or part["object_bytes"] < part["bytes"] + TRAILER_FOOTER.size \
                or part["last"] < last:
            raise _bad(uri, f"segment {i} part {j}: impossible offset, size or LSN")
        offset += part["bytes"]
        last = part["last"]
    if parts[0]["bytes"] < F.SEGMENT_HEADER_BYTES or offset != seg["bytes"] \
            or last != seg["last"]:
        raise _bad(uri, f"segment {i}: its parts do not add up to it")


#: Reads of a manifest whose bytes do not match their own length or CRC32C
#: before it is called bad: see ``read_manifest``.
MANIFEST_READS = 3


def _torn(data: bytes) -> bool:
    """A manifest object's bytes that start right but do not match their
    own length or checksum."""
    if len(data) < 16 or data[:8] != MANIFEST_MAGIC:
        return False
    n, crc = struct.unpack_from("<II", data, 8)
    return bool(n != len(data) - 16 or core().crc32c(data[16:]) != crc)


def read_manifest(store: ObjectStore, attempts: Optional[int] = None) -> Optional[dict[str, Any]]:
    """The archive's manifest, checked; None when there is no archive
    (no manifest object). ArchiveError when it cannot be read or checked.

    The manifest is the one object replaced in place, and an S3 read is a
    HEAD (the size) then ranged GETs: a store writing a new manifest in
    between gives the first bytes of the new object cut at the old one's
    size. Such a read, which fails its own length or CRC32C, is read again
    (up to MANIFEST_READS times in all) before the manifest is bad."""
    for n in range(1, MANIFEST_READS + 1):
        data = store.get_bytes(MANIFEST_OBJECT, attempts=attempts, max_bytes=MAX_MANIFEST_BYTES)
        if data is None:
            return None
        if n < MANIFEST_READS and _torn(data):
            continue
        return decode_manifest(data, store.uri)
    raise AssertionError("unreachable")  # pragma: no cover


def new_manifest(store_id: str, epoch: int) -> dict[str, Any]:
    return {"format": ARCHIVE_FORMAT, "store_id": store_id, "epoch": epoch, "archived_lsn": 0,
            "updated_ms": 0, "segments": [], "snapshots": [], "versions": {}, "ledger": []}


# ------------------------------------------------------------- time index
def encode_trailer(marks: list[Mark], segment_bytes: int) -> bytes:
    body = b"".join(MARK.pack(lsn, ms) for lsn, ms in marks)
    head = body + struct.pack("<IQ", len(marks), segment_bytes)
    return body + TRAILER_FOOTER.pack(len(marks), segment_bytes, core().crc32c(head),
                                      TRAILER_MAGIC)


def parse_trailer(data: bytes, segment_bytes: int, uri: str, obj: str) -> list[Mark]:
    """The marks of a segment object's time index (``data``: the bytes
    after the segment's), checked."""
    def bad(why: str) -> ArchiveError:
        return ArchiveError(f"the time index is unusable: {why}", uri=uri, object=obj,
                            offset=segment_bytes, reason="bad_object")
    if len(data) < TRAILER_FOOTER.size:
        raise bad("shorter than its footer")
    count, seg_bytes, crc, magic = TRAILER_FOOTER.unpack_from(data, len(data) - TRAILER_FOOTER.size)
    if magic != TRAILER_MAGIC:
        raise bad("bad magic")
    if count > MAX_MARKS or len(data) != count * MARK.size + TRAILER_FOOTER.size:
        raise bad(f"{count} marks do not fill {len(data)} bytes")
    if seg_bytes != segment_bytes:
        raise bad(f"says the segment has {seg_bytes} bytes, the manifest {segment_bytes}")
    if core().crc32c(data[:count * MARK.size] + struct.pack("<IQ", count, seg_bytes)) != crc:
        raise bad("checksum mismatch")
    return [MARK.unpack_from(data, i * MARK.size) for i in range(count)]


# ---------------------------------------------------------- segment bytes
@dataclass
class Walked:
    end: int  # offset after the last frame taken
    last_lsn: int  # the last LSN of the last frame taken
    frames: int


def walk_segment(buf: bytes | bytearray, first_lsn: int, version: int, *, uri: str, obj: str,
                 upto_lsn: Optional[int] = None) -> Walked:
    """Check a segment's header and every frame (header checksum, bounds,
    CRC32C, LSN order). With ``upto_lsn``, stop before the first frame
    that goes past it (frames are the log's unit of atomicity: a restore
    never splits one). ArchiveError ``corrupt`` at the first failure."""
    from .wal import segment_header_problem

    c = core()
    why = segment_header_problem(buf, obj, first_lsn)
    if why is not None:
        raise ArchiveError(f"segment header: {why}", uri=uri, object=obj, offset=0,
                           lsn=first_lsn, reason="corrupt")
    hb = F.frame_header_bytes(version)
    pos, nxt, frames = F.SEGMENT_HEADER_BYTES, first_lsn, 0
    while pos < len(buf):
        h = c.parse_frame_header(buf, pos, version)
        problem = "partial frame header" if h is None else c.header_problem(h)
        if problem is None and pos + hb + h.stored_len > len(buf):
            problem = "frame runs past the end of the object"
        if problem is None and c.crc32c(buf[pos + hb:pos + hb + h.stored_len],
                                        c.crc32c(buf[pos + 8:pos + hb])) != h.crc:
            problem = "frame checksum mismatch"
        if problem is None and h.first_lsn != nxt:
            problem = f"frame starts at LSN {h.first_lsn}, expected {nxt}"
        if problem is not None:
            raise ArchiveError(problem, uri=uri, object=obj, offset=pos, lsn=nxt,
                               reason="corrupt")
        last = h.first_lsn + h.count - 1
        if upto_lsn is not None and last > upto_lsn:
            break
        pos += hb + h.stored_len
        nxt = last + 1
        frames += 1
    return Walked(pos, nxt - 1, frames)


# ------------------------------------------------------------------ choice
@dataclass
class Plan:
    """What a restore reads: the base snapshot (None: the log from LSN 1),
    the segments after it, and the LSN asked for (a frame end at or below
    it is where the restore stops)."""

    target_lsn: int
    snapshot: Optional[dict[str, Any]]
    segments: list[dict[str, Any]]


def ledger_floor(man: dict[str, Any], lsn: int) -> int:
    """The newest migration at or below ``lsn``: a snapshot older than it
    is a rollback point, never a base."""
    floor = 0
    for entry in man.get("ledger") or []:
        at: Any = entry.get("lsn") if isinstance(entry, dict) else None
        if _int(at) and at <= lsn:
            floor = max(floor, at)
    return floor


def plan_restore(man: dict[str, Any], uri: str, target_lsn: int) -> Plan:
    """The base snapshot and segments a restore to ``target_lsn`` needs
    (ArchiveError ``no_target`` past the archive's end, ``no_base`` when
    nothing older can start it)."""
    end = man["archived_lsn"]
    if target_lsn > end:
        raise ArchiveError(f"LSN {target_lsn} is past the archive's end (LSN {end})", uri=uri,
                           lsn=target_lsn, reason="no_target")
    segs = man["segments"]
    log_start = segs[0]["first"] if segs else end + 1
    floor = ledger_floor(man, target_lsn)
    bases = [s for s in man["snapshots"]
             if s["lsn"] <= target_lsn and s["lsn"] >= floor and s["lsn"] + 1 >= log_start]
    snap = max(bases, key=lambda s: s["lsn"]) if bases else None
    from_lsn = snap["lsn"] + 1 if snap else 1
    if snap is None and log_start > 1:
        raise ArchiveError(f"no snapshot at or before LSN {target_lsn}, and the archived log "
                           f"starts at LSN {log_start}: nothing to start from", uri=uri,
                           lsn=target_lsn, reason="no_base")
    need = [s for s in segs if s["last"] >= from_lsn and s["first"] <= target_lsn]
    if target_lsn >= from_lsn and (not need or need[0]["first"] > from_lsn):
        raise ArchiveError(f"the archived log does not hold LSN {from_lsn}", uri=uri,
                           lsn=from_lsn, reason="no_base")
    return Plan(target_lsn, snap, need)


def describe(man: dict[str, Any]) -> dict[str, Any]:
    """What ``rehydrate archive ls`` shows."""
    segs = man["segments"]
    return {"format": man["format"], "store_id": man["store_id"], "epoch": man["epoch"],
            "archived_lsn": man["archived_lsn"], "updated_ms": man["updated_ms"],
            "log_start": segs[0]["first"] if segs else None,
            "snapshots": [{"lsn": s["lsn"], "time_ms": s["time_ms"],
                           "bytes": sum(f["bytes"] for f in s["files"]),
                           "files": len(s["files"])} for s in man["snapshots"]],
            "segments": [{"first_lsn": s["first"], "last_lsn": s["last"], "bytes": s["bytes"],
                          "sealed": s["sealed"], "parts": len(s["parts"]),
                          "objects": [part_name(s, p) for p in s["parts"]],
                          "t_first_ms": s["parts"][0]["t_first"],
                          "t_last_ms": s["parts"][-1]["t_last"]}
                         for s in segs]}
