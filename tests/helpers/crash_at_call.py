"""Crash injection: ``crash_at_call.py DIR SEED SEGMENT_BYTES N [MAX_OPS [RECOVERY]]``.

Like crash_writer.py, but the process SIGKILLs itself just before its Nth
call into ``rehydrate._fileio`` (fault_at_call.py): a crash at an exact
point of store creation, recovery, frame writing, segment rolling or
evidence keeping. Prints "ready LSN CALLS" after the open, each
acknowledged LSN after that, and "calls CALLS" after a close it survived.
"""

import sys

import crash_sequence
from fault_at_call import FaultAtCall

from rehydrate import Store


def main() -> int:
    path, seed, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    max_ops = int(sys.argv[5]) if len(sys.argv) > 5 else 60
    recovery = sys.argv[6] if len(sys.argv) > 6 else "tolerate-tail"
    with FaultAtCall(int(sys.argv[4])) as fault:
        store = Store.open(path, sync="always", segment_bytes=segment_bytes, recovery=recovery)
        print(f"ready {store.lsn} {fault.calls}", flush=True)
        crash_sequence.continue_writing(store, seed, max_ops, sys.stdout)
        store.close()
    print(f"calls {fault.calls}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
