"""Migrations: upcasters, checked state migrations, the ledger (docs/migrations.md).

A table's *schema version* is 1 until code says otherwise. Every frame
stamps each table it declares with the version its records were written at
(docs/FORMAT.md, "Table declarations"), and every snapshot each table's.

- An **upcaster** ``fn(value) -> value`` turns a stored value of version N
  into version N+1. They chain: a value of version 1 under upcasters 1->2
  and 2->3 is read as version 3. Replay and snapshot loads apply them; a
  table with no upcaster, or whose records are at its current version, keeps
  the native path untouched.
- A **migration** ``fn(table)`` reshapes a whole table once, in the open's
  ``migrate`` phase, on a copy (a plain dict of keys and values decoded
  afresh, its own to change in place); its table's **invariants**
  ``fn(table) -> bool`` are checked on read-only views of the copy before
  and of the result after. Only then is the result, encoded into a new
  table, made the table's state, written as a snapshot at the new version
  and committed, with its **ledger** entry, in one MANIFEST write.

This module holds the registry users fill (``Migrations``) and what the
store needs from it; the migrate phase runs in ``migrate_phase.py``,
``rollback`` in ``migration_rollback.py``.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Optional, TypeAlias, TypeVar

from . import _format as F
from .errors import ConfigError, InvalidOperationError, MigrationError

#: An upcaster: a value stored at one version -> the value at the next.
Upcaster: TypeAlias = Callable[[Any], Any]
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


class MigrationDriftWarning(UserWarning):
    """A migration in the ledger whose code has changed since it ran, or a
    ledger entry whose migration is no longer registered."""


def code_hash(fn: Callable[..., Any]) -> str:
    """SHA-256 of ``fn``'s source (of its bytecode and constants when the
    source is not available), as the ledger records it."""
    try:
        text = inspect.getsource(fn).encode("utf-8")
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr((code.co_code, code.co_consts)).encode() if code is not None \
            else repr(fn).encode()
    return "sha256:" + hashlib.sha256(text).hexdigest()


@dataclass
class Migration:
    id: str
    table: str
    to_version: int
    fn: Callable[..., Any]
    code_hash: str = ""
    # ``fn(key, value) -> value`` (or ``rehydrate.DELETE``) per record,
    # rather than ``fn(table)`` once (per_record.py).
    per_record: bool = False
    # Left pending by the open, run only by ``store.start_migration`` (online.py).
    online: bool = False


@dataclass
class Migrations:
    """What a store's code knows about its tables' versions.

    ``mig = rehydrate.Migrations()``, then decorate functions with
    ``@mig.upcaster(table, from_version=N)``, ``@mig.migration(id,
    table=..., to_version=M)`` and ``@mig.invariant(table)``; pass
    ``Store.open(path, migrations=mig)``. ConfigError for a bad or repeated
    registration.
    """

    upcasters: dict[str, dict[int, Upcaster]] = field(default_factory=dict)    # table -> {from_version: fn}
    migrations: list[Migration] = field(default_factory=list)   # Migration, in registration order
    invariants: dict[str, list[Callable[..., Any]]] = field(default_factory=dict)   # table -> [fn]

    def upcaster(self, table: str, *, from_version: int) -> Callable[[_Fn], _Fn]:
        _check_table(table)
        _check_version("from_version", from_version, 1)

        def register(fn: _Fn) -> _Fn:
            _check_callable(fn, "an upcaster")
            steps = self.upcasters.setdefault(table, {})
            if from_version in steps:
                raise ConfigError(f"table {table!r} has two upcasters from version "
                                  f"{from_version}")
            steps[from_version] = fn
            return fn
        return register

    def migration(self, id: str, *, table: str, to_version: int, per_record: bool = False,
                  online: bool = False) -> Callable[[_Fn], _Fn]:
        """Register a migration of ``table`` to ``to_version``: ``fn(table)``
        run once on a copy of the whole table, or with ``per_record``
        ``fn(key, value) -> value`` (or ``rehydrate.DELETE``) per record.
        ``online`` (per-record only): the open leaves it pending; it runs
        while the store serves, started by ``store.start_migration(id)``."""
        if type(id) is not str or not id or len(id) > 200:
            raise ConfigError(f"a migration id is a non-empty string, not {id!r}")
        _check_table(table)
        _check_version("to_version", to_version, 2)
        if type(per_record) is not bool or type(online) is not bool:
            raise ConfigError("per_record and online are bools")
        if online and not per_record:
            raise ConfigError(f"migration {id!r}: online=True needs per_record=True (an "
                              "online run maps each record, and each write, through fn)")

        def register(fn: _Fn) -> _Fn:
            _check_callable(fn, "a migration")
            if any(m.id == id for m in self.migrations):
                raise ConfigError(f"two migrations have the id {id!r}")
            self.migrations.append(Migration(id, table, to_version, fn, code_hash(fn),
                                             per_record, online))
            return fn
        return register

    def invariant(self, table: str) -> Callable[[_Fn], _Fn]:
        _check_table(table)

        def register(fn: _Fn) -> _Fn:
            _check_callable(fn, "an invariant")
            self.invariants.setdefault(table, []).append(fn)
            return fn
        return register

    # -- what the store asks -------------------------------------------------
    def check(self) -> None:
        """Refuse upcaster chains with a gap (1->2 and 3->4, no 2->3)."""
        for table, steps in self.upcasters.items():
            have = sorted(steps)
            missing = [v for v in range(have[0], have[-1]) if v not in steps]
            if missing:
                raise ConfigError(
                    f"table {table!r}: upcasters from versions {have} leave a gap: no "
                    f"upcaster from version {missing[0]} to {missing[0] + 1}",
                    reason="upcaster_gap")

    def code_version(self, table: str) -> int:
        """The version this code's upcasters bring ``table`` to (1 without any)."""
        steps = self.upcasters.get(table)
        return max(steps) + 1 if steps else 1

    def chain(self, table: str, from_version: int,
              to_version: int) -> Optional[list[Upcaster]]:
        """The upcasters taking ``from_version`` to ``to_version``, or None
        when one is missing."""
        steps = self.upcasters.get(table, {})
        fns = [steps.get(v) for v in range(from_version, to_version)]
        return None if any(f is None for f in fns) else [f for f in fns if f is not None]


def _check_table(table: object) -> None:
    if type(table) is not str or not table:
        raise ConfigError(f"a table name is a non-empty string, not {table!r}")


def _check_version(what: str, v: object, least: int) -> None:
    if not isinstance(v, int) or type(v) is not int or not least <= v <= F.MAX_TABLE_VERSION:
        raise ConfigError(f"{what} must be an int in {least}..{F.MAX_TABLE_VERSION}, not {v!r}")


def _check_callable(fn: object, what: str) -> None:
    if not callable(fn):
        raise ConfigError(f"{what} must be callable, not {fn!r}")


class Versions:
    """The version each table is at now, for one open: the MANIFEST's
    (what migrations brought it to), raised to what the code's upcasters
    read it as."""

    def __init__(self, manifest: dict[str, Any], migrations: Optional[Migrations]) -> None:
        stored = manifest.get("versions") or {}
        if not isinstance(stored, dict) or not all(
                isinstance(k, str) and type(v) is int and 1 <= v <= F.MAX_TABLE_VERSION
                for k, v in stored.items()):
            raise ConfigError("MANIFEST versions are malformed", reason="bad_manifest")
        self.stored: dict[str, int] = dict(stored)
        self.migrations = migrations

    def current(self, table: str) -> int:
        code = self.migrations.code_version(table) if self.migrations is not None else 1
        return max(self.stored.get(table, 1), code)

    def reader(self, table: str, version: int) -> Optional[list[Upcaster]]:
        """None when values at ``version`` are read as they are; else the
        upcaster chain to this table's current version. ConfigError when
        no chain reaches it, or the value is newer than this code."""
        now = self.current(table)
        if version == now:
            return None
        if version > now:
            raise ConfigError(
                f"table {table!r} holds version {version} data, newer than this code "
                f"knows (version {now}); run the code that wrote it, or roll the "
                "migration back (rehydrate migrate rollback)", reason="version_ahead")
        fns = self.migrations.chain(table, version, now) if self.migrations else None
        if fns is None:
            raise ConfigError(
                f"table {table!r} has version {version} data and is at version {now}, but "
                f"no upcaster chain leads from {version} to {now}", reason="upcaster_gap")
        return fns


class Upcasting:
    """What replay applies an older version's records of a kv or dict table
    to: each put's value goes through the upcasters, then to the table.
    Deletes, clears and incr deltas pass through unchanged (an incr's delta
    is not a stored value). An upcaster that raises, or returns a value
    that does not encode, makes that record fail to apply
    (InvalidOperationError naming the table and versions), which the
    recovery mode then handles like any record that does not apply.

    Records come one at a time (no ``apply_many``), so a record that fails
    is the only one a skip-corrupted open leaves out. The per-record path is
    one closure: this is the replay's hot loop for such tables.
    """

    def __init__(self, table: Any, name: str, version: int, fns: list[Upcaster],
                 core: Any) -> None:
        self._table, self._name, self._version = table, name, version
        self._delete_raw, self._incr_raw, self._clear = \
            table._delete_raw, table._incr_raw, table._clear
        self._put_raw = _upcasting_put(table._put_raw, core.unpack_value, core.pack_value,
                                       fns, self._failed)

    def _failed(self, e: Exception) -> InvalidOperationError:
        return InvalidOperationError(
            f"upcaster of table {self._name!r} from version {self._version} failed: "
            f"{type(e).__name__}: {e}", reason="apply_error")

    def __len__(self) -> int:
        return len(self._table)


def _upcasting_put(put: Callable[[bytes, bytes], None], unpack: Callable[[bytes], Any],
                   pack: Callable[[Any], bytes], fns: list[Upcaster],
                   failed: Callable[[Exception], Exception]) -> Callable[[bytes, bytes], None]:
    """``put_raw(kb, vb)`` that upcasts ``vb`` on the way (see Upcasting)."""
    if len(fns) == 1:
        fn = fns[0]

        def put_raw(kb: bytes, vb: bytes) -> None:
            try:
                out = pack(fn(unpack(vb)))
            except Exception as e:
                raise failed(e) from e
            put(kb, out)
    else:
        def put_raw(kb: bytes, vb: bytes) -> None:
            try:
                value = unpack(vb)
                for f in fns:
                    value = f(value)
                out = pack(value)
            except Exception as e:
                raise failed(e) from e
            put(kb, out)
    return put_raw


def upcast_table(table: Any, name: str, fns: list[Upcaster], core: Any,
                 make_table: Callable[[], Any]) -> Any:
    """A new table holding ``table``'s pairs with every value upcast (a
    snapshot at an older version); raises InvalidOperationError if an
    upcaster does."""
    out = make_table()
    up = Upcasting(out, name, 0, fns, core)
    for kb, vb in table._items_raw():
        up._put_raw(kb, vb)
    return out


def warn_drift(ledger: list[dict[str, Any]], migrations: Migrations, strict: bool, path: str) -> None:
    """Ledger entries whose code changed, or whose migration is gone:
    MigrationDriftWarning, or MigrationError with ``strict``."""
    registered: dict[object, Migration] = {m.id: m for m in migrations.migrations}
    for entry in ledger:
        m = registered.get(entry.get("id"))
        if m is None:
            msg = (f"ledger entry {entry.get('id')!r} (table {entry.get('table')!r}) has no "
                   "registered migration")
        elif m.code_hash != entry.get("code_hash"):
            msg = (f"migration {m.id!r} changed since it ran (code hash {m.code_hash}, "
                   f"ledger {entry.get('code_hash')}); it is not run again")
        else:
            continue
        if strict:
            raise MigrationError(msg, path=path, migration=entry.get("id"), reason="drift")
        warnings.warn(msg, MigrationDriftWarning, stacklevel=4)


# -- retention: the snapshot a migration may roll back to -----------------------
def pinned_snapshots(manifest: dict[str, Any]) -> set[int]:
    """LSNs of the snapshots unconfirmed migrations may roll back to: a
    checkpoint keeps them whatever ``keep_snapshots`` says."""
    return {e["snapshot_before"] for e in manifest.get("ledger") or []
            if isinstance(e, dict) and not e.get("confirmed")
            and type(e.get("snapshot_before")) is int}


CONFIRM_AFTER_CHECKPOINTS = 2


def count_checkpoint(manifest: dict[str, Any]) -> None:
    """A checkpoint after a migration: the next-but-one confirms it (its
    rollback snapshot is then an ordinary one)."""
    ledger = manifest.get("ledger")
    if not ledger:
        return
    out = []
    for e in ledger:
        e = dict(e)
        if not e.get("confirmed"):
            e["checkpoints_after"] = int(e.get("checkpoints_after") or 0) + 1
            if e["checkpoints_after"] >= CONFIRM_AFTER_CHECKPOINTS:
                e["confirmed"] = True
        out.append(e)
    manifest["ledger"] = out
