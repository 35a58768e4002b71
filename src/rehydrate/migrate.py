"""The migrate phase: run each registered migration not yet in the ledger,
checked, and commit it atomically (docs/migrations.md).

For one migration of table T from version V to M:

1. Its function reshapes a *copy* of T (a dict of decoded keys and values),
   and T's invariants are checked on the state before and on the copy
   after. Any failure is a MigrationError, and nothing has changed: not the
   state, not the directory.
2. A checkpoint at the current LSN L: the snapshot a rollback returns to.
   It is kept until the migration is confirmed.
3. The copy becomes T's state at version M. The log rolls to a new segment
   that starts with a no-op record at L+1, the migration's LSN, so that the
   migrated state has an LSN of its own and everything after it is in
   segments of its own.
4. A snapshot at L+1 is published by one MANIFEST write, together with the
   ledger entry and T's version: that write is the commit. A crash before
   it leaves the old state with the migration still pending, and a crash
   after it leaves the new state.
"""

from __future__ import annotations

import copy
import os
import time

from . import _format as F
from .errors import MigrationError
from .migrations import Migration, Migrations
from .wal import parse_segment_name


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def run_pending(store, migrations: Migrations, run) -> list:
    """Apply the pending migrations in registration order; their ids."""
    done = {e.get("id") for e in store._manifest.get("ledger") or []}
    applied = []
    for m in migrations.migrations:
        if m.id in done:
            continue
        run.tick()
        apply_one(store, migrations, m)
        applied.append(m.id)
        run.tick()
    return applied


def _check_invariants(fns, state: dict, m: Migration, when: str, path: str) -> list:
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


def apply_one(store, migrations: Migrations, m: Migration) -> dict:
    from .digest import format_digest

    reg, path = store._registry, store.path
    info = reg.by_name.get(m.table)
    kind = info.kind if info is not None else (reg._wanted(m.table)[0] or F.KIND_KV)
    if kind not in (F.KIND_KV, F.KIND_DICT):
        raise MigrationError(f"migration {m.id!r}: table {m.table!r} is not a kv or dict "
                             "table; migrations reshape those", migration=m.id, path=path)
    current = reg.version(m.table)
    if m.to_version <= current:
        raise MigrationError(f"migration {m.id!r}: to_version {m.to_version} is not above "
                             f"table {m.table!r}'s version {current}", migration=m.id,
                             path=path, reason="migration_version")
    table = info.table if info is not None else {}
    # Values are decoded afresh from a KVTable; a DictTable's are live objects.
    before = {k: table[k] for k in table} if kind == F.KIND_KV else copy.deepcopy(dict(table))
    invariants = migrations.invariants.get(m.table, [])
    _check_invariants(invariants, copy.deepcopy(before), m, "before the migration", path)
    work = before
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
    core = store._core
    try:
        pairs = [(core.encode_key(k), core.pack_value(v)) for k, v in work.items()]
    except Exception as e:  # noqa: BLE001 - a key or value the store cannot hold
        raise MigrationError(f"migration {m.id!r} left a key or value the table cannot "
                             f"hold: {e}", migration=m.id, path=path) from e
    names = _check_invariants(invariants, copy.deepcopy(work), m, "after the migration", path)
    digest_before = format_digest(store._state_digest())
    with store._checkpoint_lock:
        pre = store._checkpoint_locked()
        base = pre["lsn"]
        new_table = reg._make(m.table, kind, hinted=False)
        for kb, vb in pairs:
            new_table._put_raw(kb, vb)
        with store._lock:
            if info is None:
                info = reg.create(m.table)
            info.table = new_table
            reg._upcasting.clear()
            store._versions.stored[m.table] = m.to_version
            store._targets.pop(m.table, None)
        _mark_in_new_segment(store, base + 1)
        digest_after = format_digest(store._state_digest())
        entry = {"id": m.id, "table": m.table, "code_hash": m.code_hash,
                 "applied_at": time.time(), "lsn": base + 1, "from_version": current,
                 "to_version": m.to_version, "digest_before": digest_before,
                 "digest_after": digest_after, "invariants": names,
                 "snapshot_before": base, "confirmed": False, "checkpoints_after": 0}

        def commit(man: dict) -> None:
            man["ledger"] = list(man.get("ledger") or []) + [entry]
            man["versions"] = dict(man.get("versions") or {}, **{m.table: m.to_version})

        store._checkpoint_locked(commit=commit)
    return entry


def _mark_in_new_segment(store, lsn: int) -> None:
    """Log a no-op at ``lsn`` as the first record of a new segment."""
    with store._io_lock:
        wal = store._wal
        first = parse_segment_name(os.path.basename(wal.path))
        if not (first == lsn and wal.size == F.SEGMENT_HEADER_BYTES):
            wal.roll(lsn)
    with store._lock:
        got = store._buf.noop()
    if got != lsn:  # nothing else writes during the migrate phase
        raise MigrationError(f"the migration's record got LSN {got}, not {lsn}",
                             path=store.path, lsn=got)
    store._make_durable(lsn)
