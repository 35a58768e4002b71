"""``checkpoint_crash.py DIR prepare|after|digest|N``.

prepare: write a store and print its digest. after: write the log the N
runs write before their checkpoint, print the digest. digest: open, print
the digest. N: open the store, write that log, then checkpoint with every
_fileio call counted; the Nth call kills the process with SIGKILL (exit 0
if the checkpoint finished). ``prepare`` and ``more_log`` serve the
in-process tests too.
"""

import sys

from rehydrate import Store
from rehydrate.digest import format_digest


def prepare(path) -> str:
    with Store.open(path, sync="always", segment_bytes=4096) as s:
        for i in range(300):
            s.put("t", i % 40, {"i": i})
            s.incr("n", i % 3, 1)
        s.checkpoint()
        for i in range(30):
            s.put("t", i, "newer")
        return format_digest(s.digest())


def more_log(store) -> None:
    """More log, so that the next checkpoint also trims segments."""
    for i in range(200):
        store.put("t", i % 40, {"j": i})


def main() -> int:
    from fault_at_call import FaultAtCall  # (run as a script, beside it)

    path, what = sys.argv[1], sys.argv[2]
    if what == "prepare":
        print(prepare(path))
        return 0
    if what == "digest":
        with Store.open(path) as s:
            print(format_digest(s.digest()))
        return 0
    if what == "after":
        with Store.open(path, sync="always", segment_bytes=4096) as s:
            more_log(s)
            print(format_digest(s.digest()))
        return 0
    s = Store.open(path, sync="always", segment_bytes=4096)
    more_log(s)
    s.sync()  # acknowledged and durable before any kill
    with FaultAtCall(int(what)):
        s.checkpoint()
    return 0


if __name__ == "__main__":
    sys.exit(main())
