"""HTTP-replication primary for the kill tests: ``http_primary.py DIR SEED SEGMENT_BYTES``.

Opens DIR with sync="always", serves replication on 127.0.0.1 (a free
port; the token from the environment's REHYDRATE_TEST_TOKEN), prints
"serving PORT" and "ready LSN", then continues the deterministic crash
sequence from the store's LSN without end, printing each acknowledged LSN
(flushed) after its write returns. A MovedError (a standby took the writes
over) prints "moved LSN"; it then keeps serving (the standby's stream ends
with END "moved") until its stdin closes, and exits 0.
"""

import os
import sys

import crash_sequence

from rehydrate import MovedError, Store

from rehydrate.testing.model import apply_to_store


def main() -> int:
    path, seed, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = Store.open(path, sync="always", segment_bytes=segment_bytes, sync_interval_ms=5)
    server = store.serve_http(0, replication=True, token=os.environ["REHYDRATE_TEST_TOKEN"])
    print(f"serving {server.port}", flush=True)
    print(f"ready {store.lsn}", flush=True)
    gen = crash_sequence.ops(seed)
    for _ in crash_sequence.ops_up_to(seed, store.lsn):
        next(gen)
    for op in gen:
        try:
            lsn = apply_to_store(store, op)
        except MovedError:
            print(f"moved {store.lsn}", flush=True)
            sys.stdin.read()
            server.close()
            store.close()
            return 0
        print(lsn, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
