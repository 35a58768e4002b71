"""MANIFEST: the file that marks a directory as a rehydrate store.

Layout (docs/FORMAT.md): magic ``RHMANIF1``, payload length (u32), CRC32C of
the payload (u32), then a UTF-8 JSON object. Replaced atomically (tmp, fsync,
rename, fsync directory), so a reader sees the old or the new one, whole.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from typing import Optional

from . import _fileio
from . import _format as F
from ._backend import core
from .errors import CorruptionError, NotAStoreError, UnsupportedFormatError

MANIFEST_NAME = "MANIFEST"
_HEADER = struct.Struct("<8sII")


def encode(data: dict) -> bytes:
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(F.MANIFEST_MAGIC, len(payload), core().crc32c(payload)) + payload


def decode(raw: bytes, path: str) -> dict:
    """The manifest's fields; CorruptionError or UnsupportedFormatError if not readable."""
    if len(raw) < F.MANIFEST_HEADER_BYTES:
        raise CorruptionError("manifest shorter than its header", path=path, offset=0,
                              reason="bad_manifest")
    magic, length, crc = _HEADER.unpack_from(raw, 0)
    if magic != F.MANIFEST_MAGIC:
        raise CorruptionError("not a rehydrate manifest (bad magic)", path=path, offset=0,
                              reason="bad_manifest")
    if length > F.MAX_MANIFEST_BYTES or length != len(raw) - F.MANIFEST_HEADER_BYTES:
        raise CorruptionError(f"manifest length {length} does not match the file",
                              path=path, offset=8, reason="bad_manifest")
    payload = raw[F.MANIFEST_HEADER_BYTES:]
    if core().crc32c(payload) != crc:
        raise CorruptionError("manifest checksum mismatch", path=path, offset=12,
                              reason="bad_manifest")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptionError(f"manifest payload is not JSON: {e}", path=path,
                              offset=F.MANIFEST_HEADER_BYTES, reason="bad_manifest") from None
    if not isinstance(data, dict) or not isinstance(data.get("format"), int):
        raise CorruptionError("manifest lacks a format version", path=path,
                              offset=F.MANIFEST_HEADER_BYTES, reason="bad_manifest")
    if data["format"] > F.FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"store format {data['format']} is newer than this rehydrate reads "
            f"({F.FORMAT_VERSION}); upgrade rehydrate", path=path)
    listed = data.get("snapshots") or []
    # Checked here, for every reader: each becomes a folder name (snapshot_name).
    if not isinstance(listed, list) or not all(type(x) is int and x >= 0 for x in listed):
        raise CorruptionError("MANIFEST lists snapshots it cannot name", path=path,
                              offset=F.MANIFEST_HEADER_BYTES, reason="bad_manifest")
    return data


def check_store_dir(path: str) -> None:
    """NotAStoreError unless ``path`` is a directory holding a MANIFEST."""
    if not os.path.isdir(path):
        raise NotAStoreError("no such directory", path=path)
    if not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        raise NotAStoreError("no MANIFEST: not a rehydrate store", path=path)


def read(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST_NAME)
    return decode(_fileio.read_file(path), path)


def write(directory: str, data: dict, sync_dir: bool = True) -> None:
    """Replace the MANIFEST, durably. It is stamped with this code's format:
    a store written by it may hold format-2 segments, which older code
    must not read. ``sync_dir`` False: the caller fsyncs the directory
    (a handoff's fence, which must be seen at once and durable soon)."""
    data["format"] = F.FORMAT_VERSION
    if not isinstance(data.get("store_id"), str):
        # A store from before identities gets one at its next write.
        data["store_id"] = new_store_id()
    _fileio.write_file_atomic(os.path.join(directory, MANIFEST_NAME), encode(data), sync_dir)


def log_start(data: dict, directory: str) -> int:
    """The first LSN the log must hold (older ones are in snapshots); 1 if unset."""
    value = data.get("log_start", 1)
    if type(value) is not int or value < 1:
        raise CorruptionError(f"MANIFEST log_start {value!r} is not an LSN",
                              path=os.path.join(directory, MANIFEST_NAME), reason="bad_manifest")
    return value


def initial() -> dict:
    return {"format": F.FORMAT_VERSION, "snapshots": [], "store_id": new_store_id(), "epoch": 1}


def new_store_id() -> str:
    """A store's identity: 128 random bits, as 32 hex digits."""
    return secrets.token_hex(16)


def store_id(data: dict, directory: str) -> Optional[str]:
    """The store's identity, or None for a store from before identities."""
    value = data.get("store_id")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 32 or not all(
            c in "0123456789abcdef" for c in value):
        raise CorruptionError(f"MANIFEST store_id {value!r} is not 32 hex digits",
                              path=os.path.join(directory, MANIFEST_NAME), reason="bad_manifest")
    return value


def epoch(data: dict, directory: str) -> int:
    """The generation of the directory's writer (docs/replication.md); 1 if unset."""
    value = data.get("epoch", 1)
    if type(value) is not int or value < 1:
        raise CorruptionError(f"MANIFEST epoch {value!r} is not a positive integer",
                              path=os.path.join(directory, MANIFEST_NAME), reason="bad_manifest")
    return value


def stamp(directory: str) -> Optional[tuple[int, int, int]]:
    """What changes whenever the MANIFEST is replaced (inode, mtime, size):
    a cheap way to tell that it was, without reading it. None if absent."""
    try:
        st = os.stat(os.path.join(directory, MANIFEST_NAME))
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
