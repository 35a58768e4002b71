"""I/O errors injected by libfiu: ``fiu_writer.py DIR SEED POINT ERRNO RUN...``

Runs under ``LD_PRELOAD=fiu_posix_preload.so`` (Debian's libfiu0): libfiu's
wrappers of the libc calls (write, fsync, rename, ...) ask the fiu point
POINT (e.g. ``posix/io/rw/write``) whether to fail, and on failure return -1
with errno ERRNO without making the system call, or, for a ``.../reduce``
point, make the real call with fewer bytes (a short write). This process
enables POINT with a callback that counts the point's calls: a RUN
``once:N`` fails only the Nth call of the workload, ``forever:N`` every call
from the Nth on; ``count:0`` fails none and reports how many there were.

For each RUN, the workload runs in a fresh DIR/<mode>-<N> (sync="always",
4 KiB segments, so the log rolls): open, ops of crash_sequence.ops(SEED), a
checkpoint (which trims the log), more ops, close, then a reopen, a few ops
and a close. The first error of a write ends it, after checking that the
store refuses writes from then on; an error of the checkpoint does not (the
log has everything). One JSON line per run: {"dir", "run", "acked" (highest
LSN a write returned), "sent" (ops handed to the store, the failing one
included), "fired" [[phase, site] of each failed call], "calls" (how many;
for ``count:0`` the [phase, site] of each), "events" [[phase, error type,
refuses writes after]]}. A site is the innermost rehydrate function calling
into _fileio, e.g. "wal.write_frame".
"""

import ctypes
import faulthandler
import json
import os
import shutil
import sys

import crash_sequence
# Imported while this process has one thread: a checkpoint would import it
# with its image-writer thread inside libfiu, and a dlopen() then deadlocks
# libfiu 1.1 (its lookup cache calls dlsym, under the loader lock).
import pyarrow.ipc  # noqa: F401

from rehydrate import StoreFailedError, Store
from rehydrate.testing import apply_to_store

# int external_cb(const char *name, int *failnum, void **failinfo, unsigned *flags)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                             ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint))
RUN_TIMEOUT_S = 1  # a run takes about 0.05 s
PHASE_OPS = (("write", 60), ("checkpoint", None), ("write", 50), ("close", None),
             ("reopen", None), ("write", 4), ("close", None))


class Counter:
    """The fiu callback: counts the calls while armed, says which to fail,
    and notes where each call came from (phase, rehydrate function)."""

    def __init__(self):
        self.armed, self.phase = False, ""

    def arm(self, mode, n):
        self.armed, self.mode, self.n, self.calls, self.fired = True, mode, n, [], []

    def __call__(self, name, failnum, failinfo, flags):
        site = _site()
        if not self.armed or site is None:  # not the store's: our output, a traceback dump
            return 0
        self.calls.append([self.phase, site])
        k = len(self.calls)
        fail = k == self.n if self.mode == "once" else self.mode == "forever" and k >= self.n
        if fail:
            self.fired.append(self.calls[-1])
        return int(fail)


def _site():
    """The innermost rehydrate function (not _fileio) on this thread's stack,
    as "module.function"; None if there is none."""
    f = sys._getframe(1).f_back
    while f is not None:
        path = f.f_code.co_filename
        if f"{os.sep}rehydrate{os.sep}" in path and not path.endswith("_fileio.py"):
            return f"{os.path.basename(path)[:-3]}.{f.f_code.co_name}"
        f = f.f_back
    return None


def enable(point: str, err: int, counter: Counter):
    lib = ctypes.CDLL("libfiu.so.0")
    lib.fiu_enable_external.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                        ctypes.c_uint, _CALLBACK]
    callback = _CALLBACK(counter)  # kept alive by the caller: libfiu holds only the pointer
    if lib.fiu_init(0) != 0 or lib.fiu_enable_external(point.encode(), 1, err or None, 0,
                                                        callback) != 0:
        raise SystemExit(f"libfiu: cannot enable {point}")
    return callback


def workload(path: str, seed: int, counter: Counter) -> dict:
    gen = crash_sequence.ops(seed)
    out = {"acked": 0, "sent": 0, "events": []}

    def failed(phase, e, store):
        refuses = store is not None and store.failed
        if refuses:
            for call in (lambda: store.put("kv", "after", 1), store.sync):
                try:
                    call()
                    refuses = False  # acknowledged after the failure
                except StoreFailedError:
                    pass
        out["events"].append([phase, type(e).__name__, refuses])

    store = None
    for phase, count in (("open", None),) + PHASE_OPS:
        counter.phase = phase
        try:
            if phase in ("open", "reopen"):
                store = None
                store = Store.open(path, sync="always", segment_bytes=4096)
            elif phase == "checkpoint":
                store.checkpoint()
            elif phase == "close":
                store.close()
            else:
                for _ in range(count):
                    out["sent"] += 1
                    out["acked"] = apply_to_store(store, next(gen))
        except Exception as e:  # noqa: BLE001 - every error is reported, typed or not
            failed(phase, e, store)
            if phase != "checkpoint":
                break
    if store is not None:
        store.close()  # a failed store closes quietly; an open one must not stay locked
    return out


def main() -> int:
    base, seed, point, err = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    runs = sys.argv[5:]
    # A hang (libfiu can deadlock, see pyarrow above) ends the process with
    # every thread's traceback on stderr.
    faulthandler.dump_traceback_later(30 + RUN_TIMEOUT_S * len(runs), exit=True)
    counter = Counter()
    # A first run before libfiu is enabled does the workload's other lazy
    # imports, so that no run loads a library (see pyarrow above).
    workload(os.path.join(base, f"warmup-{os.getpid()}"), seed, counter)
    keep = enable(point, err, counter)  # noqa: F841
    for run in runs:
        mode, n = run.split(":")
        path = os.path.join(base, run.replace(":", "-"))
        shutil.rmtree(path, ignore_errors=True)  # left by a writer that hung in it
        counter.arm(mode, int(n))
        try:
            out = workload(path, seed, counter)
        finally:
            counter.armed = False
        out.update(dir=path, run=run, fired=counter.fired,
                   calls=counter.calls if mode == "count" else len(counter.calls))
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
