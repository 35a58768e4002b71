"""Records of a state directory, decoded, for ``rehydrate dump``.

Only frames that pass every check are decoded (the log read as ``verify``
reads it: ``replay.scan_log``); problems come out in the stream as
``{"problem": {...}}`` items.
"""

from __future__ import annotations

import os

from . import _format as F
from . import manifest as _manifest
from ._offsets import split_offsets
from ._backend import core as _core
from .catalog import snapshot_tables
from .errors import ConfigError, NotAStoreError
from .recovery import check_mode
from .replay import scan_log
from .tables import TableRegistry
from .wal import segment_version

OP_NAMES = {F.OP_PUT: "put", F.OP_DELETE: "delete", F.OP_INCR: "incr", F.OP_CLEAR: "clear",
            F.OP_NOOP: "noop", F.OP_CUSTOM: "custom"}


def _frames_in(core, buf, start, end):
    """(header, source offsets or None, payload after them) of checked frames."""
    version = segment_version(buf)
    off = start
    while off < end:
        h = core.parse_frame_header(buf, off, version)
        body = off + F.frame_header_bytes(version)
        payload = buf[body:body + h.stored_len]
        if h.codec == F.CODEC_LZ4:
            payload = core.lz4_decompress(payload, h.raw_len)
        offsets = None
        if h.flags & F.FLAG_OFFSETS:
            offsets, used = split_offsets(payload)
            payload = payload[used:]
        yield h, offsets, payload
        off = body + h.stored_len


def dump_records(path, *, table=None, from_lsn=None, to_lsn=None, recovery="tolerate-tail"):
    """Yield {"lsn", "table", "op", "key", "value"} per record, in LSN order.

    A frame's source offsets follow its records as one item with op
    "offsets", the frame's last LSN and the offsets dict as value.
    ConfigError (reason ``no_table``), before anything is yielded, when
    ``table`` is in neither the log nor a listed snapshot: it names the
    tables that are.
    """
    check_mode(recovery)
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, _manifest.MANIFEST_NAME)):
        raise NotAStoreError("no MANIFEST: not a rehydrate store", path=path)
    man = _manifest.read(path)
    core = _core()
    # From where the log starts (records before it live only in snapshots).
    registry = TableRegistry(core, materialize=False)
    report = scan_log(path, man, registry).report
    if table is not None and table not in registry.by_name:
        # A table whose records the trimmed log no longer holds is still a
        # table (its snapshot has it): an empty dump, not an error.
        known = set(registry.by_name) | set(snapshot_tables(path, man))
        if table not in known:
            raise ConfigError(f"no table {table!r}; the tables are: "
                              + (", ".join(sorted(known)) or "none"),
                              path=path, reason="no_table")
    for p in report.problems:
        if p.is_damage or (recovery == "strict" and p.kind == "torn_tail"):
            p.action = "error"
    problems = sorted(report.problems, key=lambda p: (p.path, p.offset or 0))
    for seg in report.segments:
        for p in problems:
            if p.path == seg.path:
                yield {"problem": p.as_dict()}
        with open(seg.path, "rb") as f:
            buf = f.read()
        names = {}
        for start, end in seg.good_ranges:
            for h, offsets, payload in _frames_in(core, buf, start, end):
                if to_lsn is not None and h.first_lsn > to_lsn:
                    return
                decls, records = core.decode_payload(payload, h.count, names.keys())
                for tid, _kind, name, _schema, _version in decls:
                    names[tid] = name.decode("utf-8")
                for i, (op, tid, kb, vb) in enumerate(records):
                    lsn = h.first_lsn + i
                    if (from_lsn is not None and lsn < from_lsn) or \
                            (to_lsn is not None and lsn > to_lsn):
                        continue
                    tname = names[tid] if op != F.OP_NOOP else None
                    if table is not None and tname != table:
                        continue
                    yield {
                        "lsn": lsn,
                        "table": tname,
                        "op": OP_NAMES[op],
                        "key": core.decode_key(kb) if kb else None,
                        "value": core.unpack_value(vb) if vb else None,
                    }
                last = h.first_lsn + h.count - 1
                if offsets and table is None and (from_lsn is None or last >= from_lsn):
                    yield {"lsn": last, "table": None, "op": "offsets", "key": None,
                           "value": offsets}
    for p in problems:
        if p.path not in {s.path for s in report.segments}:
            yield {"problem": p.as_dict()}
