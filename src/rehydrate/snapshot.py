"""Snapshots: the state at one LSN, so an open replays only the log after it.

Layout (docs/snapshots.md):

    snapshots/<LSN, 20 digits>/META       magic, length, CRC32C, JSON
    snapshots/<LSN, 20 digits>/<id>.arrow  KV and dict tables: Arrow IPC, columns key, value
    snapshots/<LSN, 20 digits>/<id>.msgpack custom tables: msgpack of snapshot()

A snapshot is written into ``<LSN>.tmp/``, every file fsynced, the folder
renamed and ``snapshots/`` fsynced; only then does the MANIFEST list it.
Loading checks META's checksum, each file's size and CRC32C, and each
loaded table's digest against META: a snapshot that fails any check is
never used. ``pyarrow`` is imported here only, when a snapshot is written or
read, never by ``import rehydrate``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from dataclasses import dataclass

from . import _fileio
from . import _format as F
from ._backend import core as _core
from .errors import CorruptionError

SNAPSHOTS_DIR = "snapshots"
META_NAME = "META"
META_MAGIC = b"RHSNAPM1"
SNAPSHOT_FORMAT = 1
_META_HEADER = struct.Struct("<8sII")
MAX_META_BYTES = 64 * 1024 * 1024


def snapshot_name(lsn: int) -> str:
    return f"{lsn:0{F.SEGMENT_NAME_DIGITS}d}"


@dataclass
class Capture:
    """What a checkpoint copies under the store's lock: a consistent state."""

    lsn: int
    offsets: dict
    tables: list  # (name, tid, kind, payload): payload = list of (key, value) bytes, or custom data


@dataclass
class SnapshotInfo:
    lsn: int
    path: str
    bytes: int
    duration_s: float
    digest: str


def _write_durable(path: str, data: bytes) -> None:
    fd = _fileio.create_exclusive(path)
    try:
        _fileio.write_all(fd, data)
        _fileio.fsync(fd)
    finally:
        _fileio.close(fd)


def _arrow_bytes(pairs) -> bytes:
    import pyarrow as pa

    keys = pa.array([k for k, _ in pairs], type=pa.binary())
    values = pa.array([v for _, v in pairs], type=pa.binary())
    table = pa.table({"key": keys, "value": values})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)
    return sink.getvalue().to_pybytes()


def write(directory: str, capture: Capture, digests: dict) -> SnapshotInfo:
    """Write ``capture`` as ``snapshots/<lsn>/`` durably; returns what it wrote.

    ``digests`` maps each table name to its digest (hex), recorded in META.
    """
    from .digest import _combine

    t0 = time.perf_counter()
    sdir = os.path.join(directory, SNAPSHOTS_DIR)
    _fileio.makedirs(sdir)
    final = os.path.join(sdir, snapshot_name(capture.lsn))
    tmp = final + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)  # left by a checkpoint that crashed: never published
    _fileio.makedirs(tmp)
    entries, total = [], 0
    for name, tid, kind, payload in capture.tables:
        if kind == F.KIND_CUSTOM:
            import msgpack

            fname, data, keys = f"{tid}.msgpack", msgpack.packb(payload, use_bin_type=True), None
        else:
            fname, data, keys = f"{tid}.arrow", _arrow_bytes(payload), len(payload)
        _write_durable(os.path.join(tmp, fname), data)
        total += len(data)
        entries.append({"name": name, "id": tid, "kind": kind, "file": fname,
                        "bytes": len(data), "crc32c": _core().crc32c(data), "keys": keys,
                        "digest": digests.get(name)})
    known = {e["name"]: int(e["digest"], 16) for e in entries if e["digest"] is not None}
    meta = {"format": SNAPSHOT_FORMAT, "lsn": capture.lsn, "offsets": capture.offsets,
            "tables": entries,
            "digest": (f"{_combine(known):016x}" if len(known) == len(entries) else None)}
    payload = json.dumps(meta, sort_keys=True).encode("utf-8")
    _write_durable(os.path.join(tmp, META_NAME),
                   _META_HEADER.pack(META_MAGIC, len(payload), _core().crc32c(payload)) + payload)
    _fileio.fsync_dir(tmp)
    if os.path.exists(final):
        raise FileExistsError(17, "snapshot already exists", final)
    _fileio.rename(tmp, final)
    _fileio.fsync_dir(sdir)
    return SnapshotInfo(capture.lsn, final, total + len(payload),
                        time.perf_counter() - t0, meta["digest"])


def read_meta(path: str) -> dict:
    """META of the snapshot folder ``path``; CorruptionError if unusable."""
    mpath = os.path.join(path, META_NAME)
    raw = _fileio.read_file(mpath)
    if len(raw) < _META_HEADER.size:
        raise CorruptionError("snapshot META shorter than its header", path=mpath,
                              reason="bad_snapshot")
    magic, length, crc = _META_HEADER.unpack_from(raw)
    payload = raw[_META_HEADER.size:]
    if magic != META_MAGIC or length != len(payload) or length > MAX_META_BYTES \
            or _core().crc32c(payload) != crc:
        raise CorruptionError("snapshot META fails its magic, length or checksum", path=mpath,
                              offset=0, reason="bad_snapshot")
    try:
        meta = json.loads(payload)
    except ValueError as e:
        raise CorruptionError(f"snapshot META is not JSON: {e}", path=mpath,
                              reason="bad_snapshot") from None
    if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT \
            or type(meta.get("lsn")) is not int or not isinstance(meta.get("tables"), list) \
            or not isinstance(meta.get("offsets"), dict) or meta["lsn"] < 0 \
            or not all(type(k) is str and type(v) is int for k, v in meta["offsets"].items()):
        raise CorruptionError("snapshot META lacks its fields", path=mpath, reason="bad_snapshot")
    return meta


def _load_kv(table, data: bytes, fpath: str) -> None:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_file(pa.py_buffer(data))
        if reader.schema.names != ["key", "value"] or any(
                f.type != pa.binary() for f in reader.schema):
            raise CorruptionError("snapshot table file has the wrong schema", path=fpath,
                                  reason="bad_snapshot")
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            keys, values = batch.column(0), batch.column(1)
            if keys.null_count or values.null_count:
                raise CorruptionError("snapshot column holds nulls", path=fpath,
                                      reason="bad_snapshot")
            kb, vb = keys.buffers(), values.buffers()
            koff = memoryview(kb[1]).cast("B").cast("i")[keys.offset:keys.offset + len(keys) + 1]
            voff = memoryview(vb[1]).cast("B").cast("i")[values.offset:
                                                           values.offset + len(values) + 1]
            table._load_pairs(koff, kb[2] if kb[2] is not None else b"",
                              voff, vb[2] if vb[2] is not None else b"")
    except (CorruptionError, MemoryError):
        raise
    except Exception as e:  # pyarrow raises ArrowException, OSError, ValueError...
        raise CorruptionError(f"snapshot table file does not read: {type(e).__name__}: {e}",
                              path=fpath, reason="bad_snapshot") from None


def load(path: str, make_table) -> tuple:
    """(meta, [(name, tid, kind, table)]) of the snapshot folder ``path``.

    ``make_table(name, tid, kind)`` returns an empty table to fill (or, for a
    custom kind, the class to ``restore`` from). Every file's size, CRC32C
    and each table's digest must match META; CorruptionError if not.
    """
    from .digest import format_digest, table_digest

    meta = read_meta(path)
    out = []
    for e in meta["tables"]:
        if not isinstance(e, dict) or type(e.get("id")) is not int or \
                not isinstance(e.get("name"), str) or type(e.get("kind")) is not int or \
                not isinstance(e.get("file"), str) or os.sep in e["file"] or \
                e["file"].startswith("."):
            raise CorruptionError("snapshot META has a malformed table entry", path=path,
                                  reason="bad_snapshot")
        fpath = os.path.join(path, e["file"])
        data = _fileio.read_file(fpath)
        if len(data) != e.get("bytes") or _core().crc32c(data) != e.get("crc32c"):
            raise CorruptionError("snapshot table file fails its size or checksum", path=fpath,
                                  reason="bad_snapshot")
        made = make_table(e["name"], e["id"], e["kind"])
        if e["kind"] == F.KIND_CUSTOM:
            import msgpack

            try:
                table = made.restore(msgpack.unpackb(data, raw=False, strict_map_key=False))
            except Exception as err:
                raise CorruptionError(f"restore() of table {e['name']!r} failed: {err!r}",
                                      path=fpath, reason="bad_snapshot") from err
        else:
            table = made
            keys = e.get("keys")
            if type(keys) is int and 0 <= keys <= len(data):
                # Room for every key at once (no rehash while loading); the
                # count is bounded by the file it came with (untrusted).
                table._reserve(keys, len(data) + 24 * keys)
            _load_kv(table, data, fpath)
        if e.get("digest") is not None and e["kind"] != F.KIND_CUSTOM and \
                format_digest(table_digest(table)) != e["digest"]:
            raise CorruptionError(f"table {e['name']!r} does not match its digest",
                                  path=fpath, reason="bad_snapshot")
        out.append((e["name"], e["id"], e["kind"], table))
    return meta, out


def list_snapshots(directory: str) -> list:
    """LSNs of the published snapshot folders, newest first."""
    sdir = os.path.join(directory, SNAPSHOTS_DIR)
    try:
        names = os.listdir(sdir)
    except FileNotFoundError:
        return []
    out = [int(n) for n in names
           if len(n) == F.SEGMENT_NAME_DIGITS and n.isascii() and n.isdigit()
           and os.path.isdir(os.path.join(sdir, n))]
    return sorted(out, reverse=True)


def load_base(directory: str, manifest: dict, registry) -> tuple:
    """For a reader (verify, inspect, digest): load the newest snapshot that
    passes its checks into ``registry``, changing nothing on disk.

    Returns (LSN, source offsets), or (0, {}) when none loads. A reader needs
    this only when the log no longer starts at LSN 1 (MANIFEST ``log_start``).
    """
    for lsn in sorted(manifest.get("snapshots") or [], reverse=True):
        path = os.path.join(directory, SNAPSHOTS_DIR, snapshot_name(lsn))
        try:
            meta, tables = load(path, registry.snapshot_table)
        except (CorruptionError, OSError):
            continue
        if meta["lsn"] != lsn:
            continue
        for name, tid, kind, table in tables:
            registry.add_loaded(name, tid, kind, table)
        return lsn, dict(meta["offsets"])
    return 0, {}


def no_base_error(directory: str, log_start: int) -> CorruptionError:
    return CorruptionError(
        f"the log starts at LSN {log_start} and no snapshot at or after LSN "
        f"{log_start - 1} loads: the state before it is gone",
        path=os.path.join(directory, "wal"), lsn=log_start, reason="no_base")
