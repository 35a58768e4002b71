"""Content digests of tables and of a whole state (docs/FORMAT.md, "Digest").

A digest depends only on what a table holds, never on how it got there
(insert order, deletes, overwrites, compaction, growth) or on which core
holds it, so two processes, a snapshot and a replay, or the native core and
the pure twin, can compare states by one 64-bit number.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import manifest as _manifest
from ._backend import core as _core
from ._hashing import combine_digests, format_digest, table_digest
from .errors import ConfigError, typed_io_errors
from .recovery import check_mode
from .replay import replay_readonly
from .tables import TableRegistry

__all__ = ["digest_dir", "format_digest", "parse_digest", "state_digest", "table_digest"]


def state_digest(tables: Mapping) -> int:
    """The digest of a set of tables, a mapping of name -> table.

    Depends on the names and each table's digest, not on the mapping's order.
    Pass every table, empty ones included: an empty table is part of a state
    (it was created) and changes the digest. As for ``table_digest``, no
    thread may write to these tables meanwhile: on a live Store, digest from
    the thread that writes, or while no write is in flight.
    """
    return combine_digests({name: table_digest(t) for name, t in tables.items()})


def parse_digest(text: str) -> int:
    """The int of a digest written as 16 hex digits (``format_digest``'s
    inverse: what the CLI, META and the ledger show); ValueError otherwise."""
    if not isinstance(text, str) or len(text) != 16 or \
            any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"a digest is written as 16 hex digits, not {text!r}")
    return int(text, 16)


@typed_io_errors
def digest_dir(path, *, recovery: str = "tolerate-tail", classes=None) -> dict:
    """Replay a state directory in memory and digest the state it holds.

    Reads like ``verify``/``inspect``: no LOCK, no byte written (what recovery
    would cut or move aside is only reported), so it is safe on a live store
    and on a copy. Returns ``{"digest": hex, "tables": {name: hex},
    "unavailable": {name: why}, "last_lsn": n, "ok": bool, "problems": [...]}``;
    ``ok`` is False when the mode went past damage (point-in-time,
    skip-corrupted), and the digest is then that of the state such an open
    would produce. A table that has no digest (a custom table:
    docs/tables.md) is None in ``tables`` with the reason in
    ``unavailable``, and the state digest is then None: a state digest
    covers every table or is not given. ``classes`` (name -> StateType
    subclass) lets custom tables replay through their own class.

    Raises NotAStoreError, UnsupportedFormatError, ConfigError (unknown mode),
    CorruptionError / TornTailError where the mode does not go on, and
    StorageIOError for an OS error.
    """
    check_mode(recovery)
    path = os.fspath(path)
    _manifest.check_store_dir(path)
    man = _manifest.read(path)
    registry = TableRegistry(_core(), classes=classes)
    report = replay_readonly(path, man, recovery, registry).report
    # Each table is digested once; the state digest is combined from those.
    digests, unavailable = {}, {}
    for name, info in sorted(registry.by_name.items()):
        try:
            digests[name] = table_digest(info.table)
        except ConfigError as e:
            unavailable[name] = e.detail
    return {
        "digest": None if unavailable else format_digest(combine_digests(digests)),
        "tables": {name: (format_digest(digests[name]) if name in digests else None)
                   for name in sorted(registry.by_name)},
        "unavailable": unavailable,
        "last_lsn": report.last_lsn,
        "ok": report.ok,
        "problems": [p.as_dict() for p in report.problems],
    }
