"""``migration_crash.py DIR prepare|digest|N``.

prepare: write a v1 store; print its digest. digest: open with no
migrations (so nothing runs), print the digest and the ledger's length.
N: open with the migration, every _fileio call counted; the Nth kills the
process with SIGKILL (exit 0 if the open, migration and all, finished).
``prepare`` and ``migrations`` serve the in-process tests too.
"""

import sys

import rehydrate as rh
from rehydrate import Store
from rehydrate.digest import format_digest


def migrations():
    mig = rh.Migrations()

    @mig.migration("double", table="t", to_version=2)
    def double(t):
        for k in list(t):
            t[k] = t[k] * 2

    return mig


def prepare(path) -> str:
    with Store.open(path, sync="always", segment_bytes=4096) as s:
        for i in range(300):
            s.put("t", i % 40, i)
        s.checkpoint()
        for i in range(30):
            s.put("t", i, -i)
        return format_digest(s.digest())


def main() -> int:
    from fault_at_call import FaultAtCall  # (run as a script, beside it)

    path, what = sys.argv[1], sys.argv[2]
    if what == "prepare":
        print(prepare(path))
        return 0
    if what == "digest":
        with Store.open(path) as s:
            print(format_digest(s.digest()), len(s.ledger))
        return 0
    with FaultAtCall(int(what)):
        Store.open(path, sync="always", segment_bytes=4096, migrations=migrations()).close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
