"""A log to open in the background, and a way to hold that open at a
chosen point of its replay (tests of background opens and of gates)."""

import threading

from rehydrate import Store

from helpers.replication import wait_until

SEG = 4096


def build_log(path, n=300):
    """c: only in the snapshot; b: then in the log; d: after b, to the end."""
    with Store.open(path, segment_bytes=SEG) as s:
        s.put("c", 1, "snap")
        s.checkpoint()
        for table in ("b", "d"):
            for i in range(n):
                s.put(table, i, i)
                if i % 20 == 19:
                    s.sync()  # many small frames: several segments


class Hold:
    """A replay progress callback that holds the replay at the first call
    where ``when(readiness)`` is true, until ``release()``."""

    def __init__(self, when):
        self.when = when
        self.store = None
        self._started = threading.Event()
        self.held = threading.Event()
        self._go = threading.Event()

    def __call__(self, done, total):
        self._started.wait()
        if not self.held.is_set() and self.when(self.store.readiness()):
            self.held.set()
            self._go.wait()

    def open(self, path, **kw):
        self.store = Store.open_background(path, progress=self, segment_bytes=SEG, **kw)
        self._started.set()
        return self.store

    def wait_held(self):
        # The open thread either holds here or finishes; both end the wait.
        assert wait_until(lambda: self.held.is_set() or self.store._ready.is_set())
        assert self.held.is_set(), "the open finished without holding"

    def release(self):
        self._go.set()
