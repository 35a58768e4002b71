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
"""

from __future__ import annotations

import os
import time
from types import MappingProxyType

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


def _decoded_copy(table, kind: int, core) -> dict:
    """The migration's working dict: every key and value of ``table``
    decoded afresh from its stored bytes, so it shares no object with the
    live table (a DictTable's values are live objects; they are copied
    through their encoding, which is also what a reopen would give)."""
    if table is None:
        return {}
    if kind == F.KIND_KV:
        return table.to_dict()  # the core decodes into new objects
    decode_key, unpack = core.decode_key, core.unpack_value
    return {decode_key(kb): unpack(vb) for kb, vb in table._items_raw()}


def _fill(new_table, kind: int, work: dict, core) -> None:
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
    core = store._core
    digest_before = format_digest(store._state_digest())
    work = _decoded_copy(info.table if info is not None else None, kind, core)
    invariants = migrations.invariants.get(m.table, [])
    # Invariants get read-only views, never copies: the old state is not
    # theirs to change, and the copy is the migration's.
    _check_invariants(invariants, MappingProxyType(work), m, "before the migration", path)
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
    new_table = reg._make(m.table, kind, hinted=False)
    try:
        _fill(new_table, kind, work, core)
    except Exception as e:  # noqa: BLE001 - a key or value the store cannot hold
        raise MigrationError(f"migration {m.id!r} left a key or value the table cannot "
                             f"hold: {type(e).__name__}: {e}", migration=m.id,
                             path=path) from e
    names = _check_invariants(invariants, MappingProxyType(work), m, "after the migration",
                              path)
    del work  # before the checkpoints, which copy tables
    with store._checkpoint_lock:
        base = store.lsn
        if base not in (store._manifest.get("snapshots") or []):
            # The rollback point. (When the open loaded a snapshot at L and
            # nothing was logged after it, that snapshot already is one.)
            base = store._checkpoint_locked()["lsn"]
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
