"""Crash injection: ``crash_at_call.py DIR SEED SEGMENT_BYTES N [MAX_OPS]``.

Like crash_writer.py, but the process SIGKILLs itself just before its Nth
call into ``rehydrate._fileio`` (every file operation the storage layer
makes goes through it): a crash at an exact point of store creation,
recovery, frame writing, segment rolling or evidence keeping. Prints
"ready LSN" after the open and each acknowledged LSN after that.
"""

import os
import signal
import sys

import crash_sequence

from rehydrate import Store, _fileio

CALLS = 0


def _wrap(name, fn):
    def wrapper(*args, **kw):
        global CALLS
        CALLS += 1
        if CALLS == LIMIT:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kw)
    wrapper.__name__ = name
    return wrapper


def main() -> int:
    global LIMIT
    path, seed, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    LIMIT = int(sys.argv[4])
    max_ops = int(sys.argv[5]) if len(sys.argv) > 5 else 60
    for name in ("open_append", "create_exclusive", "write_all", "fsync", "fsync_dir",
                 "close", "rename", "unlink", "truncate", "makedirs", "write_file_atomic"):
        setattr(_fileio, name, _wrap(name, getattr(_fileio, name)))
    store = Store.open(path, sync="always", segment_bytes=segment_bytes)
    print(f"ready {store.lsn} {CALLS}", flush=True)
    crash_sequence.continue_writing(store, seed, max_ops, sys.stdout)
    store.close()
    print(f"calls {CALLS}", flush=True)
    return 0


LIMIT = 0

if __name__ == "__main__":
    sys.exit(main())
