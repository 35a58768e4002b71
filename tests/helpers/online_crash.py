"""``online_crash.py DIR abandon|rebuild``: fill a store, start an online
migration (slow build), then write, printing "ack KEY VALUE" after each
write returns (sync=always: durable), until killed."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import rehydrate as rh  # noqa: E402
from rehydrate import Store  # noqa: E402
from rehydrate.per_record import DELETE  # noqa: E402


def fn(k, v):
    if v == 13:
        raise ValueError("thirteen")
    if isinstance(v, int) and v < 0:
        return DELETE
    return {"v": v, "twice": v * 2} if isinstance(v, int) else {"v": v}


def main() -> int:
    path, on_restart = sys.argv[1], sys.argv[2]
    mig = rh.Migrations()
    mig.migration("reshape", table="t", to_version=2, per_record=True, online=True)(fn)
    s = Store.open(path, sync="always", migrations=mig)
    for i in range(2000):
        s.put("t", i, i % 50)
    s.start_migration("reshape", on_restart=on_restart, slice_ms=0.05, max_duty=0.05)
    i = 0
    while True:
        s.put("t", i % 3000, i)
        print("ack", i % 3000, i, flush=True)
        i += 1


if __name__ == "__main__":
    sys.exit(main())
