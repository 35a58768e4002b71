"""``online_kill.py DIR SEED SCENARIO ON_RESTART``: a writer with an online
migration's run going on, to be killed at any moment.

Writes ``ops(SEED)`` (sync="always"), printing "ack LSN" after each write
returns (a printed LSN is acknowledged and durable). After PREFILL ops it
starts the run of MID (on_restart ON_RESTART) and keeps writing; once the
run caught up it routes 0.5, then per SCENARIO: "complete" routes 1.0 and
completes, "revert" aborts. Each step prints "event NAME" after it
returned. Exits 0 after all the ops ("done").
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))

import rehydrate as rh  # noqa: E402
from rehydrate import Store  # noqa: E402
from rehydrate.per_record import DELETE  # noqa: E402
from rehydrate.testing.model import apply_to_store  # noqa: E402

MID = "reshape"
PREFILL = 150
OPS = 450
SEGMENT_BYTES = 8192


def fn(k, v):
    if isinstance(v, int) and v < 0:
        return DELETE
    return {"v": v, "twice": v * 2}


def migrate_rows(rows: dict) -> None:
    """The migration as the model applies it (Model.migrate)."""
    for k, v in list(rows.items()):
        out = fn(k, v)
        if out is DELETE:
            del rows[k]
        else:
            rows[k] = out


def migrations() -> rh.Migrations:
    mig = rh.Migrations()
    mig.migration(MID, table="t", to_version=2, per_record=True, online=True)(fn)
    return mig


def ops(seed: int) -> list:
    """The writer's ops (model op tuples): puts and deletes of t, puts of
    another table, now and then a small batch."""
    rng = random.Random(seed)
    out: list = []
    for _ in range(OPS):
        r = rng.random()
        if r < 0.7:
            out.append(("put", "t", rng.randrange(120), rng.randint(-5, 60)))
        elif r < 0.82:
            out.append(("delete", "t", rng.randrange(120)))
        elif r < 0.95:
            out.append(("put", "other", rng.randrange(20), rng.random()))
        else:
            out.append(("batch", [("put", "t", rng.randrange(120), rng.randint(0, 9)),
                                  ("put", "other", "b", rng.randrange(100))]))
    return out


def main() -> int:
    path, seed, scenario, on_restart = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    s = Store.open(path, sync="always", segment_bytes=SEGMENT_BYTES, migrations=migrations())
    print("ready", s.lsn, flush=True)
    step = "start"
    for i, op in enumerate(ops(seed)):
        lsn = apply_to_store(s, op)
        print("ack", lsn, flush=True)
        if i + 1 < PREFILL:
            continue
        if step == "start":
            s.start_migration(MID, on_restart=on_restart, slice_ms=0.2, max_duty=0.5)
            print("event started", flush=True)
            step = "wait"
        elif step == "wait" and s.migration_status(MID)["state"] == "caught_up":
            s.route(MID, 0.5)
            print("event routed", flush=True)
            step = scenario
        elif step == "complete":
            s.route(MID, 1.0)
            print("event routed_all", flush=True)
            entry = s.complete_migration(MID)
            print("event completed", entry["lsn"], flush=True)
            step = "after"
        elif step == "revert":
            s.abort_migration(MID, reason="operator")
            print("event reverted", flush=True)
            step = "after"
    s.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
