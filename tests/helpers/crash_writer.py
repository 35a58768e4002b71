"""Crash-test writer: ``crash_writer.py DIR SEED SEGMENT_BYTES [MAX_OPS [CHECKPOINT_AT]]``.

Opens DIR with sync="always", continues the deterministic sequence of
crash_sequence.ops(SEED) from the store's LSN, and after each write returns
prints its LSN (flushed): a printed LSN is an acknowledged, durable write.
Prints "ready LSN" after the open. The parent kills it with SIGKILL (or
traces it). CHECKPOINT_AT: checkpoint after that many of the MAX_OPS ops.
"""

import sys

import crash_sequence

from rehydrate import Store


def main() -> int:
    path, seed, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    max_ops = int(sys.argv[4]) if len(sys.argv) > 4 else 100_000
    checkpoint_at = int(sys.argv[5]) if len(sys.argv) > 5 else max_ops
    store = Store.open(path, sync="always", segment_bytes=segment_bytes)
    print(f"ready {store.lsn}", flush=True)
    crash_sequence.continue_writing(store, seed, checkpoint_at, sys.stdout)
    if checkpoint_at < max_ops:
        store.checkpoint()
        crash_sequence.continue_writing(store, seed, max_ops - checkpoint_at, sys.stdout)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
