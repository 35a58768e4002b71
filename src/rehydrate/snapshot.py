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
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

from . import _fileio
from . import _format as F
from ._backend import core as _core
from ._hashing import finish_digest
from .errors import CorruptionError, StorageIOError
from .recovery import Problem

SNAPSHOTS_DIR = "snapshots"
META_NAME = "META"
META_MAGIC = b"RHSNAPM1"
SNAPSHOT_FORMAT = 1
_META_HEADER = struct.Struct("<8sII")
# Pairs per Arrow record batch: one batch unless a column's data passes
# 2 GiB (int32 offsets), so a table loads in one bulk pass.
BATCH_ROWS = (1 << 31) - 1
MAX_META_BYTES = 64 * 1024 * 1024
# OS errors that mean a snapshot's file or folder is not there: damage.
MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def snapshot_name(lsn: int) -> str:
    return f"{lsn:0{F.SEGMENT_NAME_DIGITS}d}"


@dataclass
class Capture:
    """What a checkpoint copies under the store's lock: a consistent state."""

    lsn: int
    offsets: dict
    # (name, tid, kind, payload): payload = a table copy (``_copy()``), a
    # list of (key, value) bytes, or a custom table's snapshot() data
    tables: list
    # name -> schema version (docs/migrations.md); absent: 1
    versions: dict = field(default_factory=dict)


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


class _ChecksummedFile:
    """A write-only file for pyarrow: the bytes go straight to ``fd``
    (through _fileio), their CRC32C and count kept on the way, so a table's
    file is never held whole in memory."""

    closed = False

    def __init__(self, fd: int):
        self._fd, self.crc32c, self.size = fd, 0, 0

    def write(self, data) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        _fileio.write_all(self._fd, view)
        self.crc32c = _core().crc32c(view, self.crc32c)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _write_durable_arrow(path: str, schema, write) -> tuple:
    """Create ``path``, let ``write(sink, schema)`` fill it as Arrow IPC, fsync.
    Returns (bytes, CRC32C)."""
    import pyarrow as pa

    fd = _fileio.create_exclusive(path)
    try:
        out = _ChecksummedFile(fd)
        write(pa.PythonFile(out, mode="w"), schema)
        _fileio.fsync(fd)
    finally:
        _fileio.close(fd)
    return out.size, out.crc32c


def _write_numeric(path: str, schema: dict, arrays) -> tuple:
    """A numeric table's file: one record batch, one Arrow column per table
    column, so each loads as one contiguous (mappable) buffer."""
    import pyarrow as pa

    fields = pa.schema([(name, getattr(pa, dtype)()) for name, dtype in schema["columns"]])

    def write(sink, fields):
        with pa.ipc.new_file(sink, fields) as writer:
            writer.write_batch(pa.RecordBatch.from_arrays([pa.array(a) for a in arrays],
                                                          schema=fields))
    return _write_durable_arrow(path, fields, write)


class _ImageWriter:
    """Builds a table copy's image and writes it durably, on its own thread
    (both run without the GIL); ``result()`` waits and returns its META entry
    or raises what the thread raised."""

    def __init__(self, path: str, copy):
        import threading

        self._path, self._copy, self._entry, self._error = path, copy, None, None
        self._thread = threading.Thread(target=self._run, name="rehydrate-image-writer",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            image = self._copy._image()
            _write_durable(self._path, image)
            self._entry = {"file": os.path.basename(self._path), "bytes": len(image),
                           "crc32c": _core().crc32c(image)}
        except BaseException as e:  # noqa: BLE001 - handed to the checkpoint's thread
            self._error = e

    def result(self) -> dict:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._entry


def _write_arrow(path: str, payload) -> tuple:
    """Write a table's snapshot file, Arrow IPC, durably: from a table
    copy's columns (``_columns()``), or from a list of (key, value) pairs.
    Returns (bytes, CRC32C)."""
    import pyarrow as pa

    schema = pa.schema([("key", pa.binary()), ("value", pa.binary())])
    return _write_durable_arrow(path, schema,
                                lambda sink, schema: _arrow_into(sink, schema, payload))


def _arrow_into(sink, schema, payload) -> None:
    import pyarrow as pa

    with pa.ipc.new_file(sink, schema) as writer:
        if isinstance(payload, list):
            if payload:
                writer.write_table(pa.table({"key": pa.array([k for k, _ in payload], pa.binary()),
                                             "value": pa.array([v for _, v in payload],
                                                               pa.binary())}),
                                   max_chunksize=BATCH_ROWS)
        else:
            for n, koff, kdata, voff, vdata in payload._columns(BATCH_ROWS):
                columns = [pa.Array.from_buffers(pa.binary(), n,
                                                 [None, pa.py_buffer(o), pa.py_buffer(d)])
                           for o, d in ((koff, kdata), (voff, vdata))]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))


def write(directory: str, capture: Capture, digests: dict) -> SnapshotInfo:
    """Write ``capture`` as ``snapshots/<lsn>/`` durably; returns what it wrote.

    ``digests`` maps each table name to its digest (hex), recorded in META.
    """
    from ._hashing import combine_digests

    t0 = time.perf_counter()
    sdir = os.path.join(directory, SNAPSHOTS_DIR)
    _fileio.makedirs(sdir)
    final = os.path.join(sdir, snapshot_name(capture.lsn))
    tmp = final + ".tmp"
    if os.path.exists(tmp):
        _fileio.remove_tree(tmp)  # left by a checkpoint that crashed: never published
    _fileio.makedirs(tmp)
    entries, total = [], 0
    for name, tid, kind, payload in capture.tables:
        image_entry = None
        if kind == F.KIND_CUSTOM:
            import msgpack

            fname, keys = f"{tid}.msgpack", None
            data = msgpack.packb(payload, use_bin_type=True)
            _write_durable(os.path.join(tmp, fname), data)
            size, crc = len(data), _core().crc32c(data)
        elif kind == F.KIND_NUMERIC:
            schema, arrays = payload
            fname, keys = f"{tid}.arrow", None
            size, crc = _write_numeric(os.path.join(tmp, fname), schema, arrays)
        else:
            fname, keys = f"{tid}.arrow", len(payload)
            # The native table's image beside the Arrow file is what a
            # native open maps (the Arrow file stays the portable copy);
            # built and written on a second thread meanwhile.
            image = _ImageWriter(os.path.join(tmp, f"{tid}.kvimg"), payload) \
                if hasattr(payload, "_image") else None
            try:
                size, crc = _write_arrow(os.path.join(tmp, fname), payload)
            finally:
                if image is not None:
                    image_entry = image.result()
            if image_entry is not None:
                total += image_entry["bytes"]
        total += size
        entries.append({"name": name, "id": tid, "kind": kind, "file": fname,
                        "bytes": size, "crc32c": crc, "keys": keys,
                        "digest": digests.get(name), "version": capture.versions.get(name, 1)})
        if kind == F.KIND_NUMERIC:
            entries[-1]["schema"] = payload[0]
        if image_entry is not None:
            entries[-1]["image"] = image_entry
    known = {e["name"]: int(e["digest"], 16) for e in entries if e["digest"] is not None}
    meta = {"format": SNAPSHOT_FORMAT, "lsn": capture.lsn, "offsets": capture.offsets,
            "tables": entries,
            "digest": (f"{combine_digests(known):016x}" if len(known) == len(entries) else None)}
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
    return decode_meta(_fileio.read_file(mpath), mpath)


def decode_meta(raw: bytes, mpath: str) -> dict:
    """META's fields from its bytes; CorruptionError naming ``mpath`` if unusable."""
    if len(raw) < _META_HEADER.size:
        raise CorruptionError(f"snapshot META is {len(raw)} bytes, shorter than its header",
                              path=mpath, offset=0, reason="bad_snapshot")
    magic, length, crc = _META_HEADER.unpack_from(raw)
    payload = raw[_META_HEADER.size:]
    # The offset names the header field that fails (magic 0, length 8,
    # CRC32C 12): what a reader of the report opens the file at.
    if magic != META_MAGIC:
        raise CorruptionError("snapshot META has a bad magic", path=mpath, offset=0,
                              reason="bad_snapshot")
    if length != len(payload) or length > MAX_META_BYTES:
        raise CorruptionError(f"snapshot META records a {length}-byte payload, the file holds "
                              f"{len(payload)}", path=mpath, offset=8, reason="bad_snapshot")
    if _core().crc32c(payload) != crc:
        raise CorruptionError("snapshot META payload fails its CRC32C", path=mpath, offset=12,
                              reason="bad_snapshot")
    try:
        meta = json.loads(payload)
    except ValueError as e:
        raise CorruptionError(f"snapshot META is not JSON: {e}", path=mpath,
                              offset=_META_HEADER.size, reason="bad_snapshot") from None
    if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT \
            or type(meta.get("lsn")) is not int or not isinstance(meta.get("tables"), list) \
            or not isinstance(meta.get("offsets"), dict) or meta["lsn"] < 0 \
            or not all(type(k) is str and type(v) is int for k, v in meta["offsets"].items()):
        raise CorruptionError("snapshot META lacks its fields", path=mpath,
                              offset=_META_HEADER.size, reason="bad_snapshot")
    return meta


def _kv_columns(data, fpath: str) -> list:
    """The (n, key offsets, key data, value offsets, value data) batches of
    a kv or dict table's Arrow file (structure checked, offsets not yet)."""
    from ._arrow_ipc import read_file

    # Offsets are checked in order by the table loader itself, natively.
    arrow = read_file(data, fpath, check_offsets=False)
    if [name for name, _ in arrow.fields] != ["key", "value"] or any(
            kind != "binary" for _, kind in arrow.fields):
        raise CorruptionError("snapshot table file has the wrong schema", path=fpath,
                              reason="bad_snapshot")
    out = []
    for batch in arrow.batches:
        keys, values = batch.columns
        if keys.null_count or values.null_count:
            raise CorruptionError("snapshot column holds nulls", path=fpath, reason="bad_snapshot")
        out.append((batch.num_rows, keys.offsets, keys.data, values.offsets, values.data))
    return out


class _Checks:
    """The CRC32C of a table file (unless ``crc`` is False) and the
    entry-hash sum of what it holds (``summer(data)``, None when malformed),
    then ``also()``, on a second thread while the first one loads the table
    (both run without the GIL: on two cores the checks cost no wall time)."""

    def __init__(self, data, summer, also=None, crc=True):
        import threading

        self.crc32c = self.total = None
        self.also_error = None
        self._thread = threading.Thread(target=self._run, args=(data, summer, also, crc),
                                        name="rehydrate-snapshot-check", daemon=True)
        self._thread.start()

    def _run(self, data, summer, also, crc) -> None:
        if crc:
            self.crc32c = _core().crc32c(data)
        self.total = summer(data)
        if also is not None:
            try:
                also()
            except (CorruptionError, OSError) as e:
                self.also_error = e

    def join(self) -> None:
        self._thread.join()


def _batches_sum(batches):
    def summer(_data):
        total = 0
        for _, koff, kdata, voff, vdata in batches:
            part = _core().pairs_digest_sum(koff, kdata, voff, vdata)
            if part is None:
                return None  # bad offsets: the loader refuses them too
            total += part
        return total
    return summer


def _load_kv(table, e: dict, data, fpath: str) -> int:
    """Fill ``table`` from its Arrow file ``data``, checking size, CRC32C,
    the key count and the digest against META entry ``e``; returns the
    table digest."""
    keys = e.get("keys")
    if type(keys) is not int or keys < 0:
        raise CorruptionError("snapshot META has no key count for a table", path=fpath,
                              reason="bad_snapshot")
    if len(data) != e.get("bytes"):
        raise _bad_file(fpath)
    batches = _kv_columns(data, fpath)
    checks = _Checks(data, _batches_sum(batches))
    try:
        if keys <= len(data):
            # Slots for every key at once (no rehash while loading); the
            # count is bounded by the file it came with (untrusted). The
            # loader sizes the arena itself, exactly.
            table._reserve(keys, 0, bulk=True)
        for _, koff, kdata, voff, vdata in batches:
            table._load_pairs(koff, kdata, voff, vdata, summed=False)
        table._loaded()
    finally:
        checks.join()
    if checks.crc32c != e.get("crc32c"):
        raise _bad_file(fpath)
    rows = sum(b[0] for b in batches)
    if len(table) != rows or keys != rows or checks.total is None:
        # The same key twice in a snapshot, or not the count META recorded.
        raise CorruptionError(f"snapshot holds {rows} pairs, {len(table)} distinct keys, "
                              f"META says {keys}", path=fpath, reason="bad_snapshot")
    return finish_digest(checks.total, rows)


def _bad_file(fpath: str) -> CorruptionError:
    return CorruptionError("snapshot table file fails its size or checksum", path=fpath,
                           reason="bad_snapshot")


def _check_bytes(data, size, crc, fpath: str) -> None:
    """``data`` (a file's bytes) against META's size and CRC32C."""
    if len(data) != size or _core().crc32c(data) != crc:
        raise _bad_file(fpath)


def _check_file(fpath: str, size, crc) -> None:
    """A snapshot file's size and CRC32C against META's; CorruptionError if not."""
    data = _fileio.map_file(fpath)
    try:
        _check_bytes(data, size, crc, fpath)
    finally:
        _release(data)


def check_images(path: str, meta: dict) -> None:
    """Every image a snapshot's META lists against its size and CRC32C: what
    ``verify --deep`` adds to a load, which checks every other file's
    checksum but an image by its structure and digest."""
    for e in meta["tables"]:
        if e.get("image") is not None:
            img = e["image"]
            _check_file(_check_image_entry(e, path), img.get("bytes"), img.get("crc32c"))


def _plain_name(name) -> bool:
    """Is META's file name one of the snapshot folder's own files? Never a
    path out of it (a separator, "." or ".."), nor a name the OS refuses
    (empty, a NUL byte), which would fail a check by raising instead of
    saying so."""
    return isinstance(name, str) and name != "" and os.sep not in name \
        and "\x00" not in name and not name.startswith(".")


def _check_image_entry(e: dict, spath: str) -> str:
    """The image file's path from META entry ``e`` (checked)."""
    img = e["image"]
    if not isinstance(img, dict) or not _plain_name(img.get("file")) or \
            type(img.get("bytes")) is not int or type(img.get("crc32c")) is not int:
        raise CorruptionError("snapshot META has a malformed image entry", path=spath,
                              reason="bad_snapshot")
    return os.path.join(spath, img["file"])


def _load_image(table, e: dict, spath: str) -> int:
    """Map a kv table's image (``e["image"]``) as ``table``: size, every
    byte's structure and the digest checked against META, and the table's
    Arrow file's size and CRC32C too (a snapshot is good only when all its
    files are); returns the digest."""
    img = e["image"]
    ipath = _check_image_entry(e, spath)
    apath = os.path.join(spath, e["file"])
    fd = _fileio.open_read(ipath)
    try:
        size = os.fstat(fd).st_size
        if size != img["bytes"] or size < 4096:
            raise CorruptionError("snapshot image fails its size", path=ipath,
                                  reason="bad_snapshot")
        header = os.pread(fd, 4096, 0)
        data = _fileio.map_file(ipath)
        # No CRC32C of the image here: the load checks every byte of it
        # (header fields and zeros, entry fields, keys, padding) and the
        # digest covers every key and value, so it would find nothing more
        # (verify --deep still checks it: check_images).
        checks = _Checks(data, _core().image_digest_sum, crc=False,
                         also=lambda: _check_file(apath, e.get("bytes"), e.get("crc32c")))
        try:
            table._load_image(fd, size, header)
        except CorruptionError as err:
            raise CorruptionError(str(err), path=ipath, reason="bad_snapshot") from None
        finally:
            checks.join()
            _release(data)
    finally:
        _fileio.close(fd)
    if checks.also_error is not None:
        raise checks.also_error
    if checks.total is None or len(table) != e.get("keys"):
        raise CorruptionError("snapshot image fails its checks or key count", path=ipath,
                              reason="bad_snapshot")
    return finish_digest(checks.total, len(table))


def _release(data) -> None:
    """Unmap a file's mapping; one still referenced (a traceback's views)
    is left to the garbage collector."""
    close = getattr(data, "close", None)
    if close is not None:
        try:
            close()
        except BufferError:
            pass


def entry_version(e: dict, path: str) -> int:
    """A META table entry's schema version (1 when absent); CorruptionError
    when it is not one."""
    v = e.get("version", 1)
    if type(v) is not int or not 1 <= v <= F.MAX_TABLE_VERSION:
        raise CorruptionError(f"snapshot META has a bad version {v!r} for table "
                              f"{e.get('name')!r}", path=path, reason="bad_snapshot")
    return v


def load(path: str, make_table) -> tuple:
    """(meta, [(name, tid, kind, table)]) of the snapshot folder ``path``.

    ``make_table(name, tid, kind)`` returns an empty table to fill (or, for a
    custom kind, the class to ``restore`` from). Every file's size, CRC32C
    and each table's digest must match META; CorruptionError if not.

    A native kv table loads from its image (``<id>.kvimg``) when it has one,
    the pure twin from the Arrow file; either way every file of the table is
    checked, so both cores call the same snapshots bad.
    """
    meta = read_meta(path)
    out = []
    for e in meta["tables"]:
        if not isinstance(e, dict) or type(e.get("id")) is not int or \
                not isinstance(e.get("name"), str) or type(e.get("kind")) is not int or \
                not _plain_name(e.get("file")):
            raise CorruptionError("snapshot META has a malformed table entry", path=path,
                                  reason="bad_snapshot")
        fpath = os.path.join(path, e["file"])
        if e["kind"] == F.KIND_NUMERIC:
            table = _load_numeric(e, fpath, make_table)
        else:
            table = None
            if e.get("image") is not None and e["kind"] == F.KIND_KV:
                table = _try_image(path, e, make_table)
            if table is None:
                data = _fileio.map_file(fpath)
                try:
                    table = _load_table(e, data, fpath, make_table)
                finally:
                    _release(data)
                if e.get("image") is not None:
                    img = e["image"]
                    _check_file(_check_image_entry(e, path), img.get("bytes"),
                                img.get("crc32c"))
        out.append((e["name"], e["id"], e["kind"], table))
    return meta, out


def _try_image(spath: str, e: dict, make_table):
    """The table loaded from its image, or None when the core has no image
    loader (the pure twin reads the Arrow file)."""
    from ._hashing import format_digest

    table = make_table(e["name"], e["id"], e["kind"])
    if not hasattr(table, "_load_image"):
        return None
    digest = _load_image(table, e, spath)
    if e.get("digest") is not None and format_digest(digest) != e["digest"]:
        raise CorruptionError(f"image of table {e['name']!r} does not match its digest",
                              path=os.path.join(spath, e["image"]["file"]),
                              reason="bad_snapshot")
    return table


def _load_table(e: dict, data, fpath: str, make_table):
    """One table of a snapshot from its file's bytes ``data``, every check done."""
    from ._hashing import format_digest

    made = make_table(e["name"], e["id"], e["kind"])
    if e["kind"] == F.KIND_CUSTOM:
        import msgpack

        _check_bytes(data, e.get("bytes"), e.get("crc32c"), fpath)
        try:
            return made.restore(msgpack.unpackb(data, raw=False, strict_map_key=False))
        except Exception as err:
            raise CorruptionError(f"restore() of table {e['name']!r} failed: {err!r}",
                                  path=fpath, reason="bad_snapshot") from err
    digest = _load_kv(made, e, data, fpath)
    if e.get("digest") is not None and format_digest(digest) != e["digest"]:
        raise CorruptionError(f"table {e['name']!r} does not match its digest",
                              path=fpath, reason="bad_snapshot")
    return made


def _numeric_arrays(spec, data, fpath: str) -> list:
    """A numeric table file's columns (views of ``data``), its Arrow
    structure checked against the table's declaration ``spec``."""
    import numpy as np

    from ._arrow_ipc import read_file

    arrow = read_file(data, fpath)
    want = [(name, dtype) for name, dtype in spec.columns.items()]
    if arrow.fields != want or len(arrow.batches) != 1 or \
            arrow.batches[0].num_rows != spec.rows or \
            any(c.null_count for c in arrow.batches[0].columns):
        raise CorruptionError("numeric snapshot file does not match its schema",
                              path=fpath, reason="bad_snapshot")
    return [np.frombuffer(c.data, dtype=np.dtype(d).newbyteorder("<"))
            for c, (_, d) in zip(arrow.batches[0].columns, want)]


def _load_numeric(e: dict, fpath: str, make_table):
    """A numeric table whose columns are views of the file's private
    mapping: nothing is copied; the first write to a page copies that page
    (copy-on-write), and the file never changes."""
    from .numeric import column_digest

    spec = make_table(e["name"], e["id"], e["kind"], e.get("schema"))
    data = _fileio.map_file(fpath, private=True)
    try:
        _check_bytes(data, e.get("bytes"), e.get("crc32c"), fpath)
        arrays = _numeric_arrays(spec, data, fpath)
    except CorruptionError:
        _release(data)
        raise
    if e.get("digest") is not None and \
            f"{column_digest(spec._schema_bytes(), arrays):016x}" != e["digest"]:
        del arrays
        _release(data)
        raise CorruptionError(f"table {e['name']!r} does not match its digest", path=fpath,
                              reason="bad_snapshot")
    return spec._fresh(e["name"], arrays)


# -- checking a snapshot without loading it (verify) -------------------------

@dataclass
class SnapshotCheck:
    """What ``check`` found in one snapshot folder.

    ``damage``: one CorruptionError (reason ``bad_snapshot``) per damaged
    file, naming it, with the offset where one is known; ``stray``: paths
    of files META does not name (left alone; not damage); ``bytes``: bytes
    of the files checked.
    """

    path: str
    meta: Optional[dict]
    damage: list = field(default_factory=list)
    stray: list = field(default_factory=list)
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.damage


_TABLE_KINDS = (F.KIND_KV, F.KIND_DICT, F.KIND_CUSTOM, F.KIND_NUMERIC)


def _entry_problem(e, mpath: str) -> Optional[str]:
    """Why META table entry ``e`` cannot be checked against its files, or None."""
    from .numeric import NumericTable

    if not isinstance(e, dict) or type(e.get("id")) is not int or \
            not isinstance(e.get("name"), str) or type(e.get("kind")) is not int or \
            not _plain_name(e.get("file")):
        return "a malformed table entry"
    name, kind = e["name"], e["kind"]
    if kind not in _TABLE_KINDS or not 0 <= e["id"] <= F.MAX_TABLE_ID:
        return f"table {name!r} has kind {kind} and id {e['id']}, which no table has"
    if type(e.get("bytes")) is not int or e["bytes"] < 0 or type(e.get("crc32c")) is not int:
        return f"table {name!r} has no file size or CRC32C"
    if kind in (F.KIND_KV, F.KIND_DICT) and (type(e.get("keys")) is not int or e["keys"] < 0):
        return f"table {name!r} has no key count"
    digest = e.get("digest")
    # Every kind but custom records a digest (a custom table's state is
    # the class's own, not key/value pairs).
    if (digest is None) != (kind == F.KIND_CUSTOM) or digest is not None and not (
            isinstance(digest, str) and len(digest) == 16
            and all(c in "0123456789abcdef" for c in digest)):
        return f"table {name!r} has a bad digest {digest!r}"
    try:
        entry_version(e, mpath)
        if kind == F.KIND_NUMERIC:
            NumericTable._from_schema(e.get("schema"))
        if e.get("image") is not None:
            if kind != F.KIND_KV:
                return f"table {name!r} of kind {kind} has an image"
            _check_image_entry(e, os.path.dirname(mpath))
    except CorruptionError as err:
        return err.detail
    return None


def _meta_problem(meta: dict, mpath: str, lsn: Optional[int]) -> Optional[str]:
    """Why META, though it decodes, does not describe a snapshot: an entry
    that cannot be checked, a name, id or file twice, another LSN than
    the folder's."""
    if lsn is not None and meta["lsn"] != lsn:
        return f"records LSN {meta['lsn']}, its folder is named for LSN {lsn}"
    names, ids, files = set(), set(), {META_NAME}
    for e in meta["tables"]:
        why = _entry_problem(e, mpath)
        if why is not None:
            return why
        own = [e["file"]] + ([e["image"]["file"]] if e.get("image") is not None else [])
        if e["name"] in names or e["id"] in ids or files & set(own) or len(set(own)) < len(own):
            return f"table {e['name']!r}: its name, id or a file is another table's too"
        names.add(e["name"])
        ids.add(e["id"])
        files.update(own)
    return None


def _open_checked(fpath: str):
    """The mapped bytes of a file META lists (``b""`` when empty); a missing
    file, or one that is not a regular file, is CorruptionError."""
    import stat

    try:
        st = os.stat(fpath)
    except FileNotFoundError:
        raise CorruptionError("missing (META lists it)", path=fpath,
                              reason="bad_snapshot") from None
    if not stat.S_ISREG(st.st_mode):
        # Never opened: a FIFO would block the reader, a directory not map.
        raise CorruptionError("not a regular file", path=fpath, reason="bad_snapshot")
    return _fileio.map_file(fpath)


def _check_size(data, want: int, fpath: str) -> None:
    if len(data) != want:
        # Where the file and META part: the end of a truncated file, the
        # first byte past what META recorded.
        raise CorruptionError(f"is {len(data)} bytes, META records {want}", path=fpath,
                              offset=min(len(data), want), reason="bad_snapshot")


def _check_crc(data, want: int, fpath: str) -> None:
    if _core().crc32c(data) != want:
        raise CorruptionError("fails its CRC32C (META's)", path=fpath, reason="bad_snapshot")


def _check_digest(total: int, count: int, e: dict, fpath: str) -> None:
    from ._hashing import format_digest

    if format_digest(finish_digest(total, count)) != e["digest"]:
        raise CorruptionError(f"does not match table {e['name']!r}'s digest in META",
                              path=fpath, reason="bad_snapshot")


def _check_kv_file(e: dict, data, fpath: str) -> None:
    """A kv or dict table's Arrow file: size, structure (the strict reader,
    every offset), CRC32C, pair count and digest against META."""
    _check_size(data, e["bytes"], fpath)
    batches = _kv_columns(data, fpath)
    total = _batches_sum(batches)(data)
    if total is None:
        raise CorruptionError("a column's offsets are out of order or bounds", path=fpath,
                              reason="bad_snapshot")
    _check_crc(data, e["crc32c"], fpath)
    rows = sum(b[0] for b in batches)
    if rows != e["keys"]:
        raise CorruptionError(f"holds {rows} pairs, META records {e['keys']} keys", path=fpath,
                              reason="bad_snapshot")
    _check_digest(total, rows, e, fpath)


def _check_image_file(e: dict, data, fpath: str) -> None:
    """A kv table's image: size, structure (the image reader of either
    core: header, every entry's fields, key and padding, the count),
    CRC32C, key count and digest against META. The home-slot order and
    keys twice are what only a native load checks (``verify --deep``)."""
    img = e["image"]
    _check_size(data, img["bytes"], fpath)
    total = _core().image_digest_sum(data)
    if total is None:
        raise CorruptionError("fails its structure (the header or an entry)", path=fpath,
                              offset=0 if bytes(data[:8]) != b"RHKVIMG1" else None,
                              reason="bad_snapshot")
    _check_crc(data, img["crc32c"], fpath)
    count = struct.unpack_from("<Q", data, 16)[0]  # the header's, checked against the entries
    if count != e["keys"]:
        raise CorruptionError(f"holds {count} keys, META records {e['keys']}", path=fpath,
                              offset=16, reason="bad_snapshot")
    _check_digest(total, count, e, fpath)


def _check_numeric_file(e: dict, data, fpath: str) -> None:
    """A numeric table's Arrow file: size, structure against META's schema,
    CRC32C and the columns' digest."""
    from ._hashing import format_digest
    from .numeric import NumericTable, column_digest

    _check_size(data, e["bytes"], fpath)
    spec = NumericTable._from_schema(e["schema"])
    arrays = _numeric_arrays(spec, data, fpath)
    try:
        _check_crc(data, e["crc32c"], fpath)
        if format_digest(column_digest(spec._schema_bytes(), arrays)) != e["digest"]:
            raise CorruptionError(f"does not match table {e['name']!r}'s digest in META",
                                  path=fpath, reason="bad_snapshot")
    finally:
        del arrays  # views of the mapping, which is closed next


def _check_custom_file(e: dict, data, fpath: str) -> None:
    """A custom table's msgpack file: size, CRC32C, and that it decodes
    (what ``restore()`` makes of it needs the class: ``verify --deep``)."""
    import msgpack

    _check_size(data, e["bytes"], fpath)
    _check_crc(data, e["crc32c"], fpath)
    try:
        msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as err:  # noqa: BLE001 - msgpack raises several types for bad input
        raise CorruptionError(f"is not msgpack: {err}", path=fpath,
                              reason="bad_snapshot") from None


def _file_damage(check, e: dict, fpath: str, lsn) -> tuple:
    """(bytes, CorruptionError or None) of ``check(e, data, fpath)`` on one file."""
    data = b""
    try:
        data = _open_checked(fpath)
        check(e, data, fpath)
        return len(data), None
    except CorruptionError as err:
        return len(data), CorruptionError(err.detail, path=fpath, offset=err.offset, lsn=lsn,
                                          reason="bad_snapshot")
    finally:
        _release(data)


def check(path: str, lsn: Optional[int] = None) -> SnapshotCheck:
    """Check the snapshot folder ``path`` file by file, without loading it.

    META: magic, length, CRC32C, its fields, and (``lsn`` given) the LSN
    its folder is named for. Each file META lists: its size and CRC32C,
    its structure (the Arrow reader, the image reader, msgpack) and what
    it holds against META's key count and digest. Every file is checked
    whatever the others hold, so ``damage`` has one error per damaged file
    (only META's when META is unusable: it is what names the others).
    Files META does not name are listed in ``stray``. Never changes a
    byte; an I/O error other than a missing file raises OSError.
    """
    mpath = os.path.join(path, META_NAME)
    result = SnapshotCheck(path, None)
    try:
        raw = _fileio.read_file(mpath) if os.path.isfile(mpath) else None
        if raw is None:
            raise CorruptionError("missing, or not a regular file", path=mpath,
                                  reason="bad_snapshot")
        result.bytes += len(raw)
        meta = decode_meta(raw, mpath)
        why = _meta_problem(meta, mpath, lsn)
        if why is not None:
            raise CorruptionError(why, path=mpath, offset=_META_HEADER.size,
                                  reason="bad_snapshot")
    except CorruptionError as err:
        result.damage.append(CorruptionError(err.detail, path=mpath, offset=err.offset,
                                             lsn=lsn, reason="bad_snapshot"))
        return result
    result.meta = meta
    checks = {F.KIND_KV: _check_kv_file, F.KIND_DICT: _check_kv_file,
              F.KIND_NUMERIC: _check_numeric_file, F.KIND_CUSTOM: _check_custom_file}
    named = {META_NAME}
    for e in meta["tables"]:
        files = [(checks[e["kind"]], e["file"])]
        if e.get("image") is not None:
            files.append((_check_image_file, e["image"]["file"]))
        for fn, name in files:
            named.add(name)
            size, err = _file_damage(fn, e, os.path.join(path, name), meta["lsn"])
            result.bytes += size
            if err is not None:
                result.damage.append(err)
    try:
        names = os.listdir(path)
    except FileNotFoundError:  # removed meanwhile (a live store's checkpoint retired it)
        names = []
    result.stray = [os.path.join(path, n) for n in sorted(names) if n not in named]
    return result


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


def migration_floor(manifest: dict) -> int:
    """The LSN of the newest migration in the ledger (0 without one). The
    log before it no longer makes the state (the migration reshaped it
    whole), so an open or a reader starts from a snapshot at or after it."""
    ledger = manifest.get("ledger") or []
    return max((e["lsn"] for e in ledger if isinstance(e, dict) and type(e.get("lsn")) is int),
               default=0)


class Base(NamedTuple):
    """The snapshot a state starts from (``load_base``): its LSN and source
    offsets (0 and {} when none loads), and a ``bad_snapshot`` Problem
    (action "skipped") for each newer one that failed."""

    lsn: int
    offsets: dict
    problems: list


def load_base(directory: str, manifest: dict, registry, *, strict: bool = False,
              on_bad: Optional[Callable[[int, str], None]] = None,
              adapt: Optional[Callable[..., object]] = None) -> Base:
    """Load the newest listed snapshot that passes its checks into
    ``registry``: the one loader of a state's base, for an open and for the
    readers (verify, inspect, digest). Snapshots from before the newest
    migration (``migration_floor``) are never used.

    A snapshot that fails a check (or whose META names another LSN) is
    reported in ``problems`` and the next older one is tried; with none,
    the LSN is 0 (the whole log makes the state). ``on_bad(lsn, path)`` is
    called for each that failed (an open takes it out of use there);
    ``strict`` raises instead (CorruptionError, reason ``bad_snapshot``).
    ``adapt(name, kind, table, version, path, lsn)`` returns the table to
    add in place of each loaded one (an open's upcasters), ``version`` being
    the table's in META.

    An OS error other than a missing file says nothing of the snapshot's
    bytes, so it is never called a failed check: a caller that acts on one
    (``strict`` or ``on_bad``) gets StorageIOError and nothing is dropped;
    with the defaults (a reader, which changes nothing on disk) the snapshot
    is passed over like a failed one (docs/snapshots.md, "Fallback").
    """
    floor = migration_floor(manifest)
    problems: list = []
    for lsn in sorted(manifest.get("snapshots") or [], reverse=True):
        if lsn < floor:
            break  # from before a migration: the log after it is another version's
        spath = os.path.join(directory, SNAPSHOTS_DIR, snapshot_name(lsn))
        try:
            meta, tables = load(spath, registry.snapshot_table)
            if meta["lsn"] != lsn:
                raise CorruptionError(f"snapshot META says LSN {meta['lsn']}", path=spath,
                                      reason="bad_snapshot")
        except (CorruptionError, OSError) as e:
            if isinstance(e, OSError) and not isinstance(e, MISSING) and \
                    (strict or on_bad is not None):
                # An I/O error (EIO, EACCES, ENOMEM, ...): dropping the
                # snapshot could leave a trimmed log no base. Keep it, fail
                # this open; the next one can load it.
                raise StorageIOError.wrap(e, spath) from e
            if strict:
                if isinstance(e, OSError):
                    raise CorruptionError(f"snapshot unreadable: {e}", path=spath, lsn=lsn,
                                          reason="bad_snapshot") from e
                raise
            problems.append(Problem("bad_snapshot", spath, None, lsn, str(e),
                                    action="skipped"))
            if on_bad is not None:
                on_bad(lsn, spath)
            continue
        if adapt is not None:
            versions = {e["name"]: entry_version(e, spath) for e in meta["tables"]}
        for name, tid, kind, table in tables:
            if adapt is not None:
                table = adapt(name, kind, table, versions[name], spath, lsn)
            registry.add_loaded(name, tid, kind, table)
        return Base(lsn, dict(meta["offsets"]), problems)
    return Base(0, {}, problems)


def check_base(directory: str, manifest: dict, base_lsn: int, log_start: int) -> None:
    """Raise ``no_base_error`` when a state starting from the snapshot at
    ``base_lsn`` (0: none) cannot be made: the log, which starts at
    ``log_start``, no longer holds the records after it, or a migration
    after it reshaped the state (only a snapshot from the migration on
    will do). The error names LSN ``max(log_start, floor + 1)``, as verify's
    ``no_base`` problem does."""
    if not has_base(manifest, base_lsn, log_start):
        raise no_base_error(directory, max(log_start, migration_floor(manifest) + 1))


def has_base(manifest: dict, base_lsn: int, log_start: int) -> bool:
    """Can a state start from the snapshot at ``base_lsn`` (0: none), the
    log starting at ``log_start``? (``check_base`` raises where not.)"""
    return base_lsn + 1 >= log_start and base_lsn >= migration_floor(manifest)


def no_base_error(directory: str, log_start: int) -> CorruptionError:
    return CorruptionError(
        f"the log starts at LSN {log_start} and no snapshot at or after LSN "
        f"{log_start - 1} loads: the state before it is gone",
        path=os.path.join(directory, "wal"), lsn=log_start, reason="no_base")
