"""A service that a test stops with a signal (tests/test_shutdown.py).

``shutdown_child.py SCENARIO DIR SYNC N [DEADLINE_S]``

Opens DIR with ``sync=SYNC`` and a flush interval of an hour (so only a
close or a sync makes a write durable), installs what SCENARIO says,
puts N records into table "t" (key i, value {"i": i}), prints
``ready <lsn>`` and waits for a signal. Logs go to stderr as
``LEVEL name: message``.

Scenarios:

- ``plain``: ``close_on_signals(store)``, the main thread in
  ``signal.pause()``.
- ``raising``: ``on_close`` raises.
- ``closed``: as ``plain``, the store closed by the service before the signal.
- ``bare``: no helper (the control: SIGTERM ends the process as the OS does).
- ``asyncio``: ``close_on_signals(store)`` from a coroutine (the running
  loop's handlers), the loop serving an echo task meanwhile.
- ``on_close``: ``on_close`` prints ``on_close <signum>``, puts one more
  record, then waits for a line on stdin before it returns (the test sends
  a second signal meanwhile).
- ``stuck``: two stores, DIR/a and DIR/b; b has a table whose ``__len__``
  (asked by a close, for HINTS) blocks forever once armed, after the puts
  and a sync; the deadline is DEADLINE_S. Prints ``acked <lsn_a> <lsn_b>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

import rehydrate as rh

HOUR_MS = 3_600_000
ARMED = threading.Event()


class Blocking(rh.StateType):
    """A custom table whose size, once armed, is never answered."""

    def __init__(self) -> None:
        self.rows: dict = {}

    def apply(self, op, key, value):
        if op == "put":
            self.rows[key] = value
        elif op == "delete":
            self.rows.pop(key, None)
        elif op == "clear":
            self.rows.clear()

    def snapshot(self):
        return list(self.rows.items())

    @classmethod
    def restore(cls, data):
        t = cls()
        t.rows = dict(data)
        return t

    def __len__(self) -> int:
        if ARMED.is_set():
            threading.Event().wait()  # (the process ends at the deadline)
        return len(self.rows)


def open_store(path: str, sync: str, **kw) -> rh.Store:
    return rh.Store.open(path, sync=sync, sync_interval_ms=HOUR_MS, **kw)


def put_all(store: rh.Store, n: int) -> int:
    for i in range(n):
        store.put("t", i, {"i": i})
    return store.lsn


def wait_for_signals() -> None:
    while True:
        signal.pause()


def main() -> int:
    scenario, path, sync, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    deadline_s = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if scenario == "asyncio":
        return asyncio.run(serve_async(path, sync, n, deadline_s))
    if scenario == "stuck":
        a = open_store(os.path.join(path, "a"), sync)
        b = open_store(os.path.join(path, "b"), sync, tables={"t": Blocking})
        rh.close_on_signals(a, b, deadline_s=deadline_s)
        put_all(a, n)
        put_all(b, n)
        print(f"acked {a.sync()} {b.sync()}", flush=True)
        ARMED.set()
        print(f"ready {b.lsn}", flush=True)
        wait_for_signals()
    store = open_store(path, sync)
    if scenario == "plain":
        rh.close_on_signals(store, deadline_s=deadline_s)
    elif scenario == "on_close":
        def on_close(signum: int) -> None:
            print(f"on_close {signum}", flush=True)
            store.put("t", "on_close", signum)
            sys.stdin.readline()

        rh.close_on_signals(store, deadline_s=deadline_s, on_close=on_close)
    elif scenario == "raising":
        def failing_cleanup(signum: int) -> None:
            raise RuntimeError("the service's cleanup failed")

        rh.close_on_signals(store, deadline_s=deadline_s, on_close=failing_cleanup)
    elif scenario == "closed":
        rh.close_on_signals(store, deadline_s=deadline_s)
        put_all(store, n)
        store.close()  # (the service closed it itself before the signal)
    elif scenario != "bare":
        raise SystemExit(f"unknown scenario {scenario}")
    print(f"ready {put_all(store, n) if scenario != 'closed' else store.lsn}", flush=True)
    wait_for_signals()
    return 0


async def serve_async(path: str, sync: str, n: int, deadline_s: float) -> int:
    store = open_store(path, sync)
    handle = rh.close_on_signals(store, deadline_s=deadline_s)
    # The loop's handler, not a Python-level one:
    assert handle.loop is asyncio.get_running_loop()
    assert signal.getsignal(signal.SIGTERM) is not handle._on_signal
    print(f"ready {put_all(store, n)}", flush=True)
    while True:  # the loop keeps serving until the process exits
        await asyncio.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
