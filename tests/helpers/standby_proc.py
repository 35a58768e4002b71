"""Standby for the kill tests: ``standby_proc.py DIR SEED SEGMENT_BYTES [URL]``.

Opens a standby of DIR (``source=None``: it follows the directory the
primary writes), or, with URL, a standby of the primary serving at URL with
DIR as its own copy (the token from the environment's
REHYDRATE_TEST_TOKEN). Prints "ready LSN", then reads commands on stdin:

- ``lsn``: prints "lsn LSN" (what it has applied);
- ``wait LSN TIMEOUT``: prints "caught LSN" once it applied LSN, or
  "behind LSN" (what it holds) at the timeout;
- ``promote TIMEOUT HOLD``: prints "promoting", promotes, prints "promoted
  EPOCH LSN FAILOVER" (FAILOVER 1 when the primary was gone) or "refused
  REASON" on HandoffError (and stays a standby, taking commands); once
  promoted it continues the deterministic crash sequence
  (``crash_sequence.ops(SEED)``) from its LSN with sync="always", printing
  each acknowledged LSN (flushed) like handoff_writer, without end; a
  MovedError there prints "moved LSN" and exits 0.

EOF of stdin while a standby: closes it and exits 0.
"""

import os
import sys

import crash_sequence

from rehydrate import HandoffError, MovedError, Store

from rehydrate.testing.model import apply_to_store


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write_on(store, seed: int) -> int:
    gen = crash_sequence.ops(seed)
    for _ in crash_sequence.ops_up_to(seed, store.lsn):
        next(gen)
    for op in gen:
        try:
            lsn = apply_to_store(store, op)
        except MovedError:
            say(f"moved {store.lsn}")
            store.close()
            return 0
        say(str(lsn))
    return 1


def main() -> int:
    path, seed, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    url = sys.argv[4] if len(sys.argv) > 4 else None
    options = dict(sync="always", segment_bytes=segment_bytes, sync_interval_ms=5)
    if url is None:
        store = Store.open_standby(path, **options)
    else:
        store = Store.open_standby(path, url, token=os.environ["REHYDRATE_TEST_TOKEN"],
                                   **options)
    say(f"ready {store.lsn}")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "lsn":
            say(f"lsn {store.lsn}")
        elif words[0] == "wait":
            lsn, timeout = int(words[1]), float(words[2])
            if store.wait_for_lsn(lsn, timeout=timeout):
                say(f"caught {lsn}")
            else:
                say(f"behind {store.lsn}")
        elif words[0] == "promote":
            say("promoting")
            try:
                result = store.promote(timeout_s=float(words[1]), hold_s=float(words[2]))
            except HandoffError as e:
                say(f"refused {e.reason}")
                continue
            say(f"promoted {result['epoch']} {result['lsn']} {int(bool(result['failover']))}")
            return write_on(store, seed)
        else:
            say(f"unknown {words[0]}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
