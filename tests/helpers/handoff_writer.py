"""Handoff-test writer: ``handoff_writer.py DIR SEED SEGMENT_BYTES [SYNC]``.

Opens DIR (sync "always" unless SYNC says otherwise), continues the
deterministic crash sequence from the store's LSN without end, and after
each write returns prints its LSN (flushed; with sync "always" a printed
LSN is durable). Prints "ready LSN" after the open. When a write raises
MovedError (a standby took the writes over) it prints "moved LSN" (the
store's last LSN) and exits 0: that write was refused, never half-done.
"""

import sys

import crash_sequence

from rehydrate import MovedError, Store

from rehydrate.testing.model import apply_to_store


def main() -> int:
    path, seed, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sync = sys.argv[4] if len(sys.argv) > 4 else "always"
    store = Store.open(path, sync=sync, segment_bytes=segment_bytes, sync_interval_ms=5)
    print(f"ready {store.lsn}", flush=True)
    gen = crash_sequence.ops(seed)
    for _ in crash_sequence.ops_up_to(seed, store.lsn):
        next(gen)
    for op in gen:
        try:
            lsn = apply_to_store(store, op)
        except MovedError:
            print(f"moved {store.lsn}", flush=True)
            store.close()
            return 0
        if sync != "always":
            store.sync()
        print(lsn, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
