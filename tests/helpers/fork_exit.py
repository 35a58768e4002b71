"""A store used across fork(), with a child that leaves through the
interpreter's normal exit: atexit handlers (the store's own among them)
and finalizers run in the child (tests/test_fork.py).

argv: DIR SYNC HOW, where HOW is
  sys_exit    the child calls sys.exit(0), the store still open;
  with_block  the store is opened in a ``with`` block, which the child
              leaves, then its script ends;
  uncaught    the child's second write raises ForkedStoreError, uncaught
              (the child exits 1 with a traceback).
The parent writes N records (buffered unless sync="always"), forks, waits
for the child, writes N more and leaves its store for its own exit to
close (or its ``with`` block). It prints one JSON line: {"child_exit",
"child_write" (what the child's first write got), "tree_unchanged" (every
byte of DIR the same before the fork and after the child's exit),
"written", "parent_lsn"}.
"""

import json
import os
import sys

import rehydrate as rh

N = 50
IDLE_INTERVAL_MS = 3_600_000  # the flusher never runs: buffered records stay buffered

path, sync, how = sys.argv[1:4]


def tree() -> dict:
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return out


def run(store):
    for i in range(N):
        store.put("t", i, i)
    before = tree()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            store.put("t", "child", 1)
            outcome = "acknowledged"
        except rh.RehydrateError as e:
            outcome = type(e).__name__
        os.write(w, outcome.encode())
        os.close(w)
        if how == "sys_exit":
            sys.exit(0)
        if how == "uncaught":
            store.put("t", "child", 1)
        return None
    os.close(w)
    outcome = b""
    while chunk := os.read(r, 256):
        outcome += chunk
    _, status = os.waitpid(pid, 0)
    result = {"child_exit": os.waitstatus_to_exitcode(status), "child_write": outcome.decode(),
              "tree_unchanged": tree() == before}
    for i in range(N, 2 * N):
        store.put("t", i, i)
    result.update(written=2 * N, parent_lsn=store.lsn)
    return result


if how == "with_block":
    with rh.Store.open(path, sync=sync, sync_interval_ms=IDLE_INTERVAL_MS) as store:
        result = run(store)
else:
    store = rh.Store.open(path, sync=sync, sync_interval_ms=IDLE_INTERVAL_MS)
    result = run(store)  # (left open: the interpreter's exit closes it)
if result is not None:
    print(json.dumps(result))
