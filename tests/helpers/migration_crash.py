"""``migration_crash.py DIR prepare|digest|N``.

prepare: write a v1 store; print its digest. digest: open with no
migrations (so nothing runs), print the digest and the ledger's length.
N: open with the migration, every _fileio call counted; the Nth kills the
process with SIGKILL (exit 0 if the open, migration and all, finished).
"""

import os
import signal
import sys

import rehydrate as rh
from rehydrate import Store, _fileio
from rehydrate.digest import format_digest


def migrations():
    mig = rh.Migrations()

    @mig.migration("double", table="t", to_version=2)
    def double(t):
        for k in list(t):
            t[k] = t[k] * 2

    return mig


def main() -> int:
    path, what = sys.argv[1], sys.argv[2]
    if what == "prepare":
        with Store.open(path, sync="always", segment_bytes=4096) as s:
            for i in range(300):
                s.put("t", i % 40, i)
            s.checkpoint()
            for i in range(30):
                s.put("t", i, -i)
            print(format_digest(s.digest()))
        return 0
    if what == "digest":
        with Store.open(path) as s:
            print(format_digest(s.digest()), len(s.ledger))
        return 0
    limit = int(what)
    calls = [0]
    for name in ("create_exclusive", "write_all", "fsync", "fsync_dir", "close", "rename",
                 "unlink", "makedirs", "write_file_atomic", "truncate"):
        real = getattr(_fileio, name)

        def wrapped(*a, _real=real, **kw):
            calls[0] += 1
            if calls[0] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*a, **kw)

        setattr(_fileio, name, wrapped)
    Store.open(path, sync="always", segment_bytes=4096, migrations=migrations()).close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
