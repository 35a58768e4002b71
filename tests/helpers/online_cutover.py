"""``online_cutover.py DIR prepare|judge|N [eio]``: an online migration's
cutover cut at one file operation.

prepare: write a v1 store; print its digest. judge: open with no
migrations (nothing runs), print the digest, the ledger's length and the
run records (JSON); then open with the migration and print whether it is
pending and the run records again. N: open with the migration, start a
run, wait until it caught up, route 1.0, then complete it and close with
every _fileio call counted: the Nth kills the process with SIGKILL (exit 0
if the cutover and close finished). With ``eio`` the Nth raises EIO
instead and the line printed says what complete_migration did.
``prepare``, ``migrations`` and ``cutover`` serve the in-process tests too.
"""

from __future__ import annotations

import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))

import rehydrate as rh  # noqa: E402
from rehydrate import RehydrateError, Store  # noqa: E402
from rehydrate.digest import format_digest  # noqa: E402
from rehydrate.per_record import DELETE  # noqa: E402

MID = "reshape"
SEGMENT_BYTES = 4096


def fn(k, v):
    if isinstance(v, int) and v < 0:
        return DELETE
    return {"v": v, "twice": v * 2}


def migrations() -> rh.Migrations:
    mig = rh.Migrations()
    mig.migration(MID, table="t", to_version=2, per_record=True, online=True)(fn)
    return mig


def prepare(path: str) -> str:
    with Store.open(path, sync="always", segment_bytes=SEGMENT_BYTES) as s:
        for i in range(300):
            s.put("t", i % 60, i - 20)
        s.checkpoint()
        for i in range(30):
            s.put("t", i, i)
        s.put("other", "x", 1)
        return format_digest(s.digest())


class _Listener:
    def __init__(self) -> None:
        self.changed = threading.Event()

    def on_migration_state(self, store, status) -> None:
        self.changed.set()


def open_caught_up(path: str) -> Store:
    """The store with a run of MID caught up and routed to 1.0."""
    listener = _Listener()
    s = Store.open(path, sync="always", segment_bytes=SEGMENT_BYTES, migrations=migrations(),
                   warmup=rh.Warmup(listeners=[listener]))
    s.start_migration(MID, slice_ms=5.0, max_duty=1.0)
    while s.migration_status(MID)["state"] == "building":
        listener.changed.wait(60.0)
        listener.changed.clear()
    assert s.migration_status(MID)["state"] == "caught_up"
    s.route(MID, 1.0)
    return s


def runs(path: str) -> list:
    return rh.manifest.read(path).get("migration_runs") or []


def main() -> int:
    from fault_at_call import FaultAtCall, eio, kill  # (beside this script)

    path, what = sys.argv[1], sys.argv[2]
    if what == "prepare":
        print(prepare(path))
        return 0
    if what == "judge":
        with Store.open(path) as s:
            out = {"digest": format_digest(s.digest()), "ledger": len(s.ledger),
                   "runs": runs(path)}
        with Store.open(path, migrations=migrations()) as s:
            out["pending"] = not any(e["id"] == MID for e in s.ledger)
            out["digest_again"] = format_digest(s.digest())
            out["ledger_again"] = [e["id"] for e in s.ledger]
        out["runs_after"] = runs(path)
        print(json.dumps(out))
        return 0
    fault = FaultAtCall(int(what), eio if sys.argv[3:] == ["eio"] else kill)
    s = open_caught_up(path)
    with fault:
        try:
            s.complete_migration(MID)
            print("completed", flush=True)
        except RehydrateError as e:
            print("error", type(e).__name__, s.migration_status(MID)["state"], flush=True)
        try:
            s.close()
        except RehydrateError as e:
            print("close-error", type(e).__name__, flush=True)
    print("hit", json.dumps(fault.hit and [fault.hit[0], [str(a) for a in fault.hit[1]]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
