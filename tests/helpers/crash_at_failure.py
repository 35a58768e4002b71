"""Crash while a failed open is recorded: ``crash_at_failure.py DIR N``.

Opens DIR with a populate hook that always fails, the process SIGKILLing
itself just before its Nth call into ``rehydrate._fileio`` (N=0: never).
Prints "hook CALLS" when the hook runs (the calls made so far: those after
are the failure's record and the close), then "failed CALLS" when the open
has raised.
"""

import sys

from fault_at_call import FaultAtCall

from rehydrate import Store, Warmup, WarmupError


def broken_hook(store, progress):
    print(f"hook {FAULT.calls}", flush=True)
    raise RuntimeError("the index cannot be built")


FAULT = FaultAtCall(int(sys.argv[2]))


def main() -> int:
    with FAULT:
        try:
            Store.open(sys.argv[1], warmup=Warmup(populate=[broken_hook]))
        except WarmupError:
            print(f"failed {FAULT.calls}", flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
