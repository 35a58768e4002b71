"""Archive crash-test writer: ``archive_writer.py DIR SEED SEGMENT_BYTES URI [CHECKPOINT_EVERY]``.

Opens DIR with sync="always", small segments and ``archive=URI``
(``archive_every_s`` 0.02 s), continues the deterministic crash sequence
(``crash_sequence.ops(SEED)``) from the store's LSN without end, and after
each write returns prints its LSN (flushed: a printed LSN is durable).
Whenever the store's ``archived_lsn`` has moved since the last look it
prints "archived N": the archive's manifest holding the log up to N has
been written, so a restore from the archive must give at least N (and
"failed ERROR" if archiving has stopped for good, which it never should
here). Every
CHECKPOINT_EVERY writes (default 150) it checkpoints, so snapshots go up
and the archive's retention runs too. Prints "ready LSN" after the open.
The parent kills it with SIGKILL.
"""

import sys

import crash_sequence

from rehydrate import Store
from rehydrate.testing.model import apply_to_store


def main() -> int:
    path, seed, segment_bytes, uri = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        sys.argv[4]
    every = int(sys.argv[5]) if len(sys.argv) > 5 else 150
    store = Store.open(path, sync="always", segment_bytes=segment_bytes, archive=uri,
                       archive_every_s=0.02, keep_snapshots=2)
    print(f"ready {store.lsn}", flush=True)
    gen = crash_sequence.ops(seed)
    for _ in crash_sequence.ops_up_to(seed, store.lsn):
        next(gen)
    archived = -1
    for n, op in enumerate(gen, 1):
        lsn = apply_to_store(store, op)
        print(lsn, flush=True)
        now = store.archived_lsn
        if now != archived:
            archived = now
            print(f"archived {now}", flush=True)
        if n % 10 == 0 and store.archive_status["state"] == "failed":
            print(f"failed {store.archive_status['error']}", flush=True)
        if n % every == 0:
            store.checkpoint()
    return 1


if __name__ == "__main__":
    sys.exit(main())
