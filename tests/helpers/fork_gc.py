"""A fork while dropped stores wait for the cycle collector.

argv: a directory. Stores are opened there and dropped in reference
cycles with the collector off; then the collector is set to run at the
first allocation, so it runs inside the at-fork hooks (which allocate)
and the dropped stores' finalizers run there, on the forking thread.
Prints the child's exit code; the caller runs this under a timeout,
since the failure it guards against is a deadlock.
"""

import gc
import os
import sys

import rehydrate as rh


def main(root: str) -> None:
    live = rh.Store.open(os.path.join(root, "live"))
    live.put("t", 1, 1)
    gc.disable()
    for i in range(3):
        dropped = rh.Store.open(os.path.join(root, f"dropped{i}"))
        dropped.close()
        dropped.cycle = dropped  # freed only by the cycle collector
        del dropped
    gc.set_threshold(1)
    gc.enable()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if live.table("t").get(1) == 1 else 3)
    _, status = os.waitpid(pid, 0)
    gc.set_threshold(700)
    live.put("t", 2, 2)  # the parent's store works on after the fork
    live.close()
    print(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv[1])
