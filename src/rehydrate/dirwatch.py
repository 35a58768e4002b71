"""Waiting for a directory to change: inotify where there is one, a short
poll where not (docs/replication.md). A standby wakes on the primary's
writes this way instead of polling the log slowly.
"""

from __future__ import annotations

import ctypes
import os
import select
import threading
from typing import Optional

__all__ = ["DirWatch"]

# inotify(7) event bits: a file written, closed after writing, created,
# renamed into the directory, deleted or changed in its metadata.
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_MASK = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE

# Without inotify (another OS, or the per-user instance limit reached), the
# longest a change goes unseen.
POLL_INTERVAL_S = 0.002


def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1  # noqa: B018 - the symbol must exist
        return libc
    except (OSError, AttributeError):
        return None


class DirWatch:
    """``wait(timeout)`` returns when one of ``directories`` may have
    changed (True) or at the timeout (False); ``wake()`` ends a wait from
    another thread; ``close()`` lets go. A change can be reported that did
    not happen, never missed: the caller re-reads what it watches."""

    def __init__(self, directories: list[str]) -> None:
        self._fd = -1
        self._rwake, self._wwake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        libc = _libc()
        if libc is not None:
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                ok = all(libc.inotify_add_watch(fd, os.fsencode(d), _MASK) >= 0
                         for d in directories)
                if ok:
                    self._fd = fd
                else:
                    os.close(fd)

    @property
    def uses_inotify(self) -> bool:
        return self._fd >= 0

    def wait(self, timeout: float) -> bool:
        fds = [self._rwake] + ([self._fd] if self._fd >= 0 else [])
        wait_s = timeout if self._fd >= 0 else min(timeout, POLL_INTERVAL_S)
        try:
            ready, _, _ = select.select(fds, [], [], wait_s)
        except (OSError, ValueError):  # closed under us
            return False
        for fd in ready:
            try:
                while os.read(fd, 65536):
                    pass
            except (BlockingIOError, OSError):
                pass
        return bool(ready) or self._fd < 0

    def wake(self) -> None:
        try:
            os.write(self._wwake, b"x")
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            for name in ("_fd", "_rwake", "_wwake"):
                fd = getattr(self, name)
                if fd >= 0:
                    setattr(self, name, -1)
                    try:
                        os.close(fd)
                    except OSError:
                        pass
