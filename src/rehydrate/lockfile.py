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
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _read_pid(fd: int):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
