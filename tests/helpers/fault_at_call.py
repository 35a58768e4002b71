"""A fault at the Nth file operation: every write, fsync, rename, unlink,
truncate, mkdir... the storage layer makes goes through rehydrate._fileio,
so counting those calls names an exact point of any open, write, roll,
checkpoint, migration or recovery."""

from __future__ import annotations

import errno
import os
import signal
import sys

from rehydrate import _fileio
from rehydrate.testing.faultfs import INTERCEPTED


def kill() -> None:
    """A crash: the process dies here, with nothing more written."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def eio() -> None:
    raise OSError(errno.EIO, "injected I/O error")


class FaultAtCall:
    """While installed, counts the calls (``calls``) and calls ``fault()``
    just before the ``n``th (never for n=0). ``hit``: (name, args) of that
    call, once made."""

    def __init__(self, n: int, fault=kill) -> None:
        self.n, self.fault, self.calls, self.hit = n, fault, 0, None
        self._real = {}

    def __enter__(self) -> "FaultAtCall":
        for name in INTERCEPTED:
            self._real[name] = real = getattr(_fileio, name)
            setattr(_fileio, name, self._wrap(name, real))
        return self

    def __exit__(self, *exc) -> None:
        for name, real in self._real.items():
            setattr(_fileio, name, real)

    def _wrap(self, name, real):
        def call(*args):
            self.calls += 1
            if self.calls == self.n:
                self.hit = (name, args)
                self.fault()
            return real(*args)
        call.__name__ = name
        return call
