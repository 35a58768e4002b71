"""LOCK: one writer per state directory.

``flock`` on DIR/LOCK (per open file description, so a second open in the
same process is refused too). The holder writes its pid into the file so the
refusal can name it; the lock, not the pid, is what is trusted.
"""

from __future__ import annotations

import fcntl
import os

from . import _fileio
from .errors import LockedError

LOCK_NAME = "LOCK"


class DirLock:
    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _fileio.FILE_MODE)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(self._fd)
            os.close(self._fd)
            self._fd = -1
            who = f"process {holder}" if holder else "another process"
            raise LockedError(f"store is locked by {who}", path=self.path,
                              holder_pid=holder) from None
        os.ftruncate(self._fd, 0)
        self.pid = os.getpid()
        os.pwrite(self._fd, f"{self.pid}\n".encode(), 0)

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self, clear_pid: bool = True) -> None:
        """Unlock. ``clear_pid`` False leaves the pid in the file (a handoff:
        truncating is a metadata change, which a busy disk can stall for
        tens of milliseconds while the next writer waits for the lock; the
        pid is only informational, and the next holder writes its own)."""
        if os.getpid() != self.pid:
            # A forked child shares the parent's lock through this fd:
            # LOCK_UN (or the truncate) would take it from the parent.
            self.forget()
            return
        if self._fd >= 0:
            if clear_pid:
                try:
                    os.ftruncate(self._fd, 0)
                except OSError:
                    pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def forget(self) -> None:
        """Drop this process's descriptor without unlocking: in a forked
        child, the lock (shared with the parent through the inherited fd)
        stays the parent's, whose own descriptor keeps it held."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass


def _read_pid(fd: int):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
