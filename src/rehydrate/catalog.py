"""The tables a state directory holds, as its snapshots and log declare them.

A command that opens a directory as a writer (``rehydrate compact``,
``rehydrate replay``) must pass ``Store.open`` the kinds the tables were
created with, or the open refuses them (docs/tables.md, "Kinds must match
the log"). The kinds and numeric schemas are on disk; only a custom table's
class is not, and it comes from the user (the CLI's ``--tables PKG.MOD``).
"""

from __future__ import annotations

import os
from typing import Optional

from . import _format as F
from . import manifest as _manifest
from ._backend import core as _core
from .errors import ConfigError, CorruptionError
from .kinds import DictTable, StateType
from .numeric import NumericTable
from .recovery import walk
from .snapshot import SNAPSHOTS_DIR, read_meta, snapshot_name
from .tables import TableRegistry

__all__ = ["logged_tables", "open_tables", "snapshot_tables", "state_classes"]


def snapshot_tables(path: str, man: dict) -> dict:
    """{name: (kind code, schema)} of the tables the MANIFEST's listed
    snapshots hold, from their META (newest first; an unreadable META is
    passed over, as an open passes over its snapshot)."""
    out: dict = {}
    for lsn in sorted(man.get("snapshots") or [], reverse=True):
        if type(lsn) is not int:
            continue
        try:
            meta = read_meta(os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn)))
        except (CorruptionError, OSError):
            continue  # an open skips it too; the log and other snapshots still speak
        for e in meta["tables"]:
            if isinstance(e, dict) and isinstance(e.get("name"), str) and \
                    type(e.get("kind")) is int:
                out.setdefault(e["name"], (e["kind"], e.get("schema") or b""))
    return out


def logged_tables(path: str) -> dict:
    """{name: (kind code, schema)} of every table the directory's listed
    snapshots and its log declare. Reads the snapshots' META and checks the
    log's frames (as ``verify`` does); decodes no value."""
    path = os.fspath(path)
    man = _manifest.read(path)
    out = snapshot_tables(path, man)
    core = _core()
    registry = TableRegistry(core, materialize=False)
    walk(core, path, mode="skip-corrupted", registry=registry, apply=False,
         start_lsn=_manifest.log_start(man, path))
    for name, info in registry.by_name.items():
        out.setdefault(name, (info.kind, info.schema))
    return out


def state_classes(tables: Optional[dict]) -> dict:
    """The StateType classes of a ``tables=`` mapping (what a reader uses)."""
    return {name: kind for name, kind in (tables or {}).items()
            if isinstance(kind, type) and issubclass(kind, StateType)}


def open_tables(path: str, user: Optional[dict] = None, command: str = "this command") -> dict:
    """The ``tables=`` that opens ``path`` with the kinds it was written with:
    ``user``'s entries (a ``tables=`` mapping) first, then DictTable and
    NumericTable from the declarations. ConfigError (reason ``needs_class``)
    naming every custom table ``user`` gives no class for."""
    user = dict(user or {})
    out = dict(user)
    missing = []
    for name, (kind, schema) in sorted(logged_tables(path).items()):
        if name in out:
            continue  # the user's word; Store.open checks it against the log
        if kind == F.KIND_DICT:
            out[name] = DictTable
        elif kind == F.KIND_NUMERIC:
            out[name] = NumericTable._from_schema(schema)
        elif kind == F.KIND_CUSTOM:
            missing.append(name)
    if missing:
        names = ", ".join(repr(n) for n in missing)
        raise ConfigError(f"custom table(s) {names} need their StateType class, which "
                          f"{command} cannot have: pass --tables PKG.MOD (a module whose "
                          "'tables' maps each to its class), or call the store from the "
                          "service", path=path, reason="needs_class")
    return out
