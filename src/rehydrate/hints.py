"""HINTS: sizes remembered from the last clean close, to presize tables.

Not authoritative and never needed: a missing, stale or damaged HINTS file
only makes the next open slower, never wrong. Because it is read from disk it
is untrusted all the same: every number is capped by what the log could
possibly hold before any memory is reserved with it.
"""

from __future__ import annotations

from typing import Any

import json
import os

from . import _fileio

HINTS_NAME = "HINTS"
HINTS_FORMAT = 1
MAX_HINTS_BYTES = 1 << 20
# The smallest put record on disk (op, table id, key length, 1-byte key,
# value length, 1-byte value): a log of N bytes holds at most N / 6 keys.
MIN_STORED_RECORD_BYTES = 6


def read(directory: str) -> dict:
    """{table name: {"keys": n, "arena_bytes": n}} from HINTS, or {} if unusable."""
    path = os.path.join(directory, HINTS_NAME)
    try:
        if os.path.getsize(path) > MAX_HINTS_BYTES:
            return {}
        data = json.loads(_fileio.read_file(path))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != HINTS_FORMAT:
        return {}
    tables = data.get("tables")
    if not isinstance(tables, dict):
        return {}
    out = {}
    for name, t in tables.items():
        if isinstance(t, dict) and all(type(t.get(k)) is int and t[k] >= 0
                                       for k in ("keys", "arena_bytes")):
            out[name] = {"keys": t["keys"], "arena_bytes": t["arena_bytes"]}
    return out


def capped(hint: dict, wal_bytes: int) -> tuple[int, int]:
    """(keys, arena bytes) to reserve: the hint, bounded by what ``wal_bytes``
    of log can hold (an arena entry is at most ~16 bytes of overhead more
    than the record it came from)."""
    max_keys = wal_bytes // MIN_STORED_RECORD_BYTES
    keys = min(hint["keys"], max_keys)
    arena = min(hint["arena_bytes"], wal_bytes + 16 * keys)
    return keys, arena


def write(directory: str, tables) -> None:
    """Record each table's size; best effort (a failure is ignored)."""
    data: dict[str, Any] = {"format": HINTS_FORMAT, "tables": {}}
    for name, table in tables:
        stats = getattr(table, "_stats", None)
        arena = stats()["arena_len"] if stats is not None else 0
        data["tables"][name] = {"keys": len(table), "arena_bytes": arena}
    path = os.path.join(directory, HINTS_NAME)
    tmp = path + ".tmp"
    try:
        # Atomic but not fsynced: after a power loss a missing or empty file
        # is as good as a stale one.
        with open(tmp, "w", opener=_fileio.private) as f:
            json.dump(data, f)
        _fileio.rename(tmp, path)
    except OSError:
        pass
