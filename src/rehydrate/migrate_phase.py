"""The migrate phase: run each registered migration not yet in the ledger,
checked, and commit it atomically (docs/migrations.md).

For one migration of table T from version V to M:

1. Its function reshapes the migration's own copy of T: a dict of keys and
   values decoded afresh from their stored bytes, which shares no object
   with the live table (so it can change values in place). T's invariants
   are checked on a read-only view of that copy before the function runs
   and of its result after. The result is encoded into a new table as it
   is checked; T itself is never written. Any failure is a MigrationError,
   and nothing has changed: not the state, not the directory.
2. A checkpoint at the current LSN L (unless a snapshot at L is already
   published): the snapshot a rollback returns to. It is kept until the
   migration is confirmed.
3. The new table becomes T's state at version M. The log rolls to a new
   segment that starts with a no-op record at L+1, the migration's LSN, so
   that the migrated state has an LSN of its own and everything after it is
   in segments of its own.
4. A snapshot at L+1 is published by one MANIFEST write, together with the
   ledger entry and T's version: that write is the commit. A crash before
   it leaves the old state with the migration still pending, and a crash
   after it leaves the new state.

No deep copy is made: the decoded dict is the only copy, the one the
function needs anyway, and it is dropped before the checkpoints.

A per-record migration (``per_record=True``) replaces step 1: its
``fn(key, value)`` runs over a view of T a batch at a time into the new
table (per_record.py), so T is never decoded whole; the invariants read T
itself before and the new table after (both read-only Mappings). The first
record whose function raises or whose result does not encode is a
MigrationError naming it (``key``), and nothing has changed. Steps 2-4 are
the same.
"""

from __future__ import annotations

import threading
import time
from types import MappingProxyType
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

from . import _format as F
from ._hashing import format_digest
from .crashloop import Step
from .errors import MigrationError
from .migrations import Migration, Migrations
from .per_record import apply_fn, consistent_view, put_many
from .tables import TableRegistry


def _name(fn: object) -> str:
    name: str = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return name


@dataclass(frozen=True)
class MigrationHost:
    """What the migrate phase may do with the store it runs in: the store
    gives it this, and nothing of its own fields."""

    path: str
    core: Any
    registry: TableRegistry
    checkpoint_lock: threading.Lock
    lsn: Callable[[], int]  # the last LSN logged
    manifest: Callable[[], dict[str, Any]]  # the MANIFEST as the store holds it (read only)
    state_digest: Callable[[], int]
    # A checkpoint (``checkpoint_lock`` held); ``commit`` changes the
    # MANIFEST that publishes it.
    checkpoint_locked: Callable[..., dict[str, Any]]
    # (name, table, version): make ``table`` the table's state at
    # ``version``, under the store's lock (writers see the old or the new).
    replace_state: Callable[[str, Any, int], None]
    # (lsn) -> LSN got: log a no-op as the first record of a new segment,
    # durably (``lsn`` when nothing else wrote meanwhile).
    log_in_new_segment: Callable[[int], int]


def run_pending(store: MigrationHost, migrations: Migrations, run: Any) -> list[str]:
    """Apply the pending migrations in registration order; their ids.

    In safe mode (crashloop.py) ``run.skip`` names the migrations that
    failed too many opens: each is left pending, and so is every later
    migration of its table (each builds on the version before). ``run.step``
    is the migration running (what a failure is blamed on); ``run.skipped``
    gets those left pending.

    An ``online`` migration is left pending too (it runs while the store
    serves), and so are the later migrations of its table."""
    done = {e.get("id") for e in store.manifest().get("ledger") or []}
    applied: list[str] = []
    held: set[str] = set()  # tables whose next migration is skipped or online
    skipped_tables: set[str] = set()  # those held by safe mode
    for m in migrations.migrations:
        if m.id in done:
            continue
        step = Step("migration", "migrate", m.id, m.code_hash)
        if m.online or (m.table in held and m.table not in skipped_tables):
            # An online migration waits for store.start_migration (online.py),
            # and each later one of its table waits for it (not skipped: pending).
            held.add(m.table)
            continue
        if step in run.skip or m.table in held:
            held.add(m.table)
            skipped_tables.add(m.table)
            run.skipped.append(step)
            continue
        run.tick()
        run.step = step
        apply_one(store, migrations, m)
        run.step = None
        applied.append(m.id)
        run.tick()
    return applied


def check_invariants(fns: Iterable[Callable[..., Any]], state: Mapping[Any, Any], m: Migration,
                      when: str, path: str) -> list[str]:
    names = []
    for fn in fns:
        try:
            ok = fn(state)
        except Exception as e:
            raise MigrationError(f"migration {m.id!r}: invariant {_name(fn)} of table "
                                 f"{m.table!r} raised {type(e).__name__}: {e} ({when})",
                                 migration=m.id, invariant=_name(fn), path=path) from e
        if ok is not True:
            raise MigrationError(f"migration {m.id!r}: invariant {_name(fn)} of table "
                                 f"{m.table!r} returned {ok!r} ({when})",
                                 migration=m.id, invariant=_name(fn), path=path)
        names.append(_name(fn))
    return names


def _decoded_copy(table: Any, kind: int, core: Any) -> dict[Any, Any]:
    """The migration's working dict: every key and value of ``table``
    decoded afresh from its stored bytes, so it shares no object with the
    live table (a DictTable's values are live objects; they are copied
    through their encoding, which is also what a reopen would give)."""
    if table is None:
        return {}
    if kind == F.KIND_KV:
        decoded: dict[Any, Any] = table.to_dict()  # the core decodes into new objects
        return decoded
    decode_key, unpack = core.decode_key, core.unpack_value
    return {decode_key(kb): unpack(vb) for kb, vb in table._items_raw()}


def _fill(new_table: Any, kind: int, work: dict[Any, Any], core: Any) -> None:
    """Encode ``work`` into the empty ``new_table``; raises what the core
    raises for a key or value the table cannot hold."""
    if kind == F.KIND_KV:
        new_table._reserve(len(work))
        new_table._put_items(work.items())
        return
    encode_key, pack, put = core.encode_key, core.pack_value, new_table._put_raw
    for k, v in work.items():
        # Through the bytes: the table gets its own decoded objects, none
        # the migration's dict (which its function may still hold) shares.
        put(encode_key(k), pack(v))


def _build_whole(reg: TableRegistry, m: Migration, table: Any, kind: int, core: Any,
                 invariants: list[Callable[..., Any]], path: str) -> tuple[Any, list[str]]:
    """``fn(table)`` on the migration's decoded copy: the new table and the
    invariants checked."""
    work = _decoded_copy(table, kind, core)
    # Invariants get read-only views, never copies: the old state is not
    # theirs to change, and the copy is the migration's.
    check_invariants(invariants, MappingProxyType(work), m, "before the migration", path)
    try:
        returned = m.fn(work)
    except Exception as e:
        raise MigrationError(f"migration {m.id!r} raised {type(e).__name__}: {e}",
                             migration=m.id, path=path) from e
    if returned is not None:
        if not isinstance(returned, dict):
            raise MigrationError(f"migration {m.id!r} returned {type(returned).__name__}; "
                                 "return None (the table changed in place) or a dict",
                                 migration=m.id, path=path)
        work = returned
    del returned
    # Encoded before the invariants after run: what commits is exactly what
    # the function left, whatever an invariant does with its view.
    new_table = reg.new_table(m.table, kind)
    try:
        _fill(new_table, kind, work, core)
    except Exception as e:  # noqa: BLE001 - a key or value the store cannot hold
        raise MigrationError(f"migration {m.id!r} left a key or value the table cannot "
                             f"hold: {type(e).__name__}: {e}", migration=m.id,
                             path=path) from e
    names = check_invariants(invariants, MappingProxyType(work), m, "after the migration",
                              path)
    return new_table, names  # the copy goes here, before the checkpoints (which copy tables)


def _build_per_record(reg: TableRegistry, m: Migration, table: Any, kind: int, core: Any,
                      invariants: list[Callable[..., Any]], path: str
                      ) -> tuple[Any, list[str]]:
    """``fn(key, value)`` over a view of the table, a batch at a time, into
    a new table (per_record.py): never the whole table decoded. The first
    record whose function raises, or whose result the table cannot hold,
    fails the migration (all or nothing, as any offline migration)."""
    old: Mapping[Any, Any] = table if table is not None else MappingProxyType({})
    # The tables are read-only Mappings already: the invariants read the
    # old state, then the new one, as they are (no dict is built).
    check_invariants(invariants, old, m, "before the migration", path)
    new_table = reg.new_table(m.table, kind)
    if table is not None:
        view = consistent_view(table, kind, core)  # nothing else writes in this phase
        new_table._reserve(view.count)
        for keys, values in view.batches():
            puts, _deletes, errors = apply_fn(m.fn, keys, values)
            if errors:
                key, e = errors[0]
                raise MigrationError(f"migration {m.id!r} raised {type(e).__name__} for key "
                                     f"{key!r}: {e}", migration=m.id, path=path,
                                     key=key, reason="record_raised") from e
            errors = put_many(new_table, kind, core, puts)
            if errors:
                key, e = errors[0]
                raise MigrationError(f"migration {m.id!r} returned for key {key!r} a value the "
                                     f"table cannot hold: {type(e).__name__}: {e}",
                                     migration=m.id, path=path, key=key,
                                     reason="record_unencodable") from e
        del view
    new_table._loaded()
    names = check_invariants(invariants, new_table, m, "after the migration", path)
    return new_table, names


def apply_one(store: MigrationHost, migrations: Migrations, m: Migration) -> dict[str, Any]:
    reg, path = store.registry, store.path
    info = reg.by_name.get(m.table)
    kind = reg.kind_for(m.table)
    if kind not in (F.KIND_KV, F.KIND_DICT):
        raise MigrationError(f"migration {m.id!r}: table {m.table!r} is not a kv or dict "
                             "table; migrations reshape those", migration=m.id, path=path)
    current = reg.version(m.table)
    if m.to_version <= current:
        raise MigrationError(f"migration {m.id!r}: to_version {m.to_version} is not above "
                             f"table {m.table!r}'s version {current}", migration=m.id,
                             path=path, reason="migration_version")
    core = store.core
    digest_before = format_digest(store.state_digest())
    table = info.table if info is not None else None
    invariants = migrations.invariants.get(m.table, [])
    build = _build_per_record if m.per_record else _build_whole
    new_table, names = build(reg, m, table, kind, core, invariants, path)
    return commit_migration(store, m, new_table, current, digest_before, names)


def commit_migration(store: MigrationHost, m: Migration, new_table: Any, current: int,
                     digest_before: str, names: list[str],
                     also: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Commit ``new_table`` as table ``m.table`` at ``m.to_version`` (steps
    2-4 above); the ledger entry. Nothing else may write meanwhile (the
    migrate phase runs before writes are taken; an online run holds
    writers off). ``also(manifest)``: more changes for the committing
    MANIFEST write (an online run's record)."""
    path = store.path
    with store.checkpoint_lock:
        base = store.lsn()
        if base not in (store.manifest().get("snapshots") or []):
            # The rollback point. (When the open loaded a snapshot at L and
            # nothing was logged after it, that snapshot already is one.)
            base = store.checkpoint_locked()["lsn"]
        store.replace_state(m.table, new_table, m.to_version)
        got = store.log_in_new_segment(base + 1)
        if got != base + 1:  # nothing else writes meanwhile
            raise MigrationError(f"the migration's record got LSN {got}, not {base + 1}",
                                 path=path, lsn=got)
        digest_after = format_digest(store.state_digest())
        entry: dict[str, Any] = {"id": m.id, "table": m.table, "code_hash": m.code_hash,
                 "applied_at": time.time(), "lsn": base + 1, "from_version": current,
                 "to_version": m.to_version, "digest_before": digest_before,
                 "digest_after": digest_after, "invariants": names,
                 "snapshot_before": base, "confirmed": False, "checkpoints_after": 0}

        def commit(man: dict[str, Any]) -> None:
            man["ledger"] = list(man.get("ledger") or []) + [entry]
            man["versions"] = dict(man.get("versions") or {}, **{m.table: m.to_version})
            if also is not None:
                also(man)

        store.checkpoint_locked(commit=commit)
    return entry
