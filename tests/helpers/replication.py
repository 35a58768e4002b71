"""A primary for the replication tests: a real Store behind a
``replication.Source`` built here (the store's own ``replication_source``
comes from another branch), served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import threading
import time

from rehydrate import Store, manifest, observe
from rehydrate.replication import Source

STORE_ID = "0123456789abcdef0123456789abcdef"
TOKEN = "s3cret-token-for-tests"


class Primary:
    """A store and the Source the endpoints serve from; ``role`` may be
    set to "moved" by a test."""

    def __init__(self, path: str, **options) -> None:
        self.path = path
        self.store = Store.open(path, **options)
        self.role = "primary"
        self.handoffs: list = []
        self.source = Source(path, self.hello, self.wait_for_log, self.handoff)

    def hello(self) -> dict:
        m = manifest.read(self.path)
        return {"store_id": STORE_ID, "epoch": m.get("epoch", 1), "role": self.role,
                "lsn": self.store.lsn, "durable_lsn": self.store.durable_lsn,
                "log_start": m.get("log_start", 1), "snapshots": list(m.get("snapshots", []))}

    def wait_for_log(self, seen: int, timeout_s: float) -> int:
        # durable_lsn: every byte up to it is in the log's files. A poll
        # (a test helper's), bounded by timeout_s.
        tick = threading.Event()
        deadline = time.monotonic() + timeout_s
        while self.store.durable_lsn <= seen and time.monotonic() < deadline:
            tick.wait(0.005)
        return self.store.durable_lsn

    def handoff(self, body: dict) -> dict:
        self.handoffs.append(body)
        return {"final_lsn": self.store.lsn, "epoch": 1}

    def close(self) -> None:
        self.store.close()


@contextlib.contextmanager
def serving(primary: Primary, token=TOKEN, ssl_context=None):
    """The primary's ReadinessServer with replication on; closed after."""
    server = observe.ReadinessServer(primary.store, "127.0.0.1", 0, None,
                                     replication=(primary.source, token),
                                     ssl_context=ssl_context)
    try:
        yield server
    finally:
        server.close()


def wait_until(predicate, timeout_s: float = 30.0) -> bool:
    """Poll ``predicate`` (a condition, not a timing) until true or the deadline."""
    tick = threading.Event()
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.01)
    return True


def wal_files(path: str) -> dict:
    """{segment name: bytes} of a store directory's log."""
    waldir = os.path.join(path, "wal")
    out = {}
    for name in sorted(os.listdir(waldir)):
        if name.endswith(".wal"):
            with open(os.path.join(waldir, name), "rb") as f:
                out[name] = f.read()
    return out
