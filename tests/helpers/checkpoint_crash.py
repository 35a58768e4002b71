"""``checkpoint_crash.py DIR prepare|digest|N``.

prepare: write a store and print its digest. digest: open, print the digest.
N: open the store, then checkpoint with every _fileio call counted; the Nth
call kills the process with SIGKILL (exit 0 if the checkpoint finished).
"""

import os
import signal
import sys

from rehydrate import Store, _fileio
from rehydrate.digest import format_digest


def main() -> int:
    path, what = sys.argv[1], sys.argv[2]
    if what == "prepare":
        with Store.open(path, sync="always", segment_bytes=4096) as s:
            for i in range(300):
                s.put("t", i % 40, {"i": i})
                s.incr("n", i % 3, 1)
            s.checkpoint()
            for i in range(30):
                s.put("t", i, "newer")
            print(format_digest(s.digest()))
        return 0
    if what == "digest":
        with Store.open(path) as s:
            print(format_digest(s.digest()))
        return 0
    if what == "after":  # the state the N runs write before their checkpoint
        with Store.open(path, sync="always", segment_bytes=4096) as s:
            for i in range(200):
                s.put("t", i % 40, {"j": i})
            print(format_digest(s.digest()))
        return 0
    limit = int(what)
    s = Store.open(path, sync="always", segment_bytes=4096)
    for i in range(200):  # more log, so this checkpoint also trims segments
        s.put("t", i % 40, {"j": i})
    s.sync()  # acknowledged and durable before any kill
    calls = [0]
    for name in ("create_exclusive", "write_all", "fsync", "fsync_dir", "close", "rename",
                 "unlink", "makedirs", "write_file_atomic"):
        real = getattr(_fileio, name)

        def wrapped(*a, _real=real, **kw):
            calls[0] += 1
            if calls[0] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*a, **kw)

        setattr(_fileio, name, wrapped)
    s.checkpoint()
    return 0


if __name__ == "__main__":
    sys.exit(main())
