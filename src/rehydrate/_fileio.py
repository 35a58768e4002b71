"""Every file operation the storage layer performs, in one replaceable place.

WAL segments, the manifest and quarantine evidence all go through these
functions, so a test can swap one for a failing or fault-injecting version
(``monkeypatch.setattr(rehydrate._fileio, "fsync", broken)``) and see how the
store behaves when the disk says no. Files are created 0600 and directories
0700: a state directory holds the service's data.
"""

from __future__ import annotations

import os

FILE_MODE = 0o600
DIR_MODE = 0o700


def open_append(path: str) -> int:
    """An fd positioned at the end of an existing file, for appending."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def create_exclusive(path: str) -> int:
    """A new, empty file; FileExistsError if it is already there."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)


def private(path: str, flags: int) -> int:
    """An ``opener`` for ``open()``: the file is 0600 whatever the umask,
    also when it was already there (a leftover tmp file)."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data) -> None:
    """Write every byte or raise: a short write is retried, never ignored."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("write returned 0 bytes")
        view = view[n:]


def fsync(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close(fd: int) -> None:
    os.close(fd)


def rename(src: str, dst: str) -> None:
    os.rename(src, dst)


def unlink(path: str) -> None:
    os.unlink(path)


def truncate(fd: int, length: int) -> None:
    os.ftruncate(fd, length)


def remove_tree(path: str) -> None:
    """Delete a directory and everything in it (an old or unpublished
    snapshot): one operation to this layer, so a fault layer sees it."""
    import shutil

    shutil.rmtree(path)


def makedirs(path: str) -> None:
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)


def makedir_durable(path: str) -> None:
    """``makedirs``, and if the directory is new, fsync its parent: a new
    directory's own entry survives a power cut only then."""
    if not os.path.isdir(path):
        makedirs(path)
        fsync_dir(os.path.dirname(path))


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def open_read(path: str) -> int:
    """An fd to read ``path`` (the caller closes it)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def map_file(path: str, private: bool = False):
    """A read-only mapping of a whole file (an ``mmap``; close it when done),
    or ``b""`` for an empty file, which cannot be mapped. The pages are read
    in at once (MAP_POPULATE): the caller checksums every byte anyway.
    ``private``: writable copy-on-write (MAP_PRIVATE); writes never reach
    the file.

    A mapped file must not be truncated while mapped (that is SIGBUS): map
    only files this library never truncates (snapshots).
    """
    import mmap

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return b""
        if private:
            return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                         prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def write_file_atomic(path: str, data: bytes, sync_dir: bool = True) -> None:
    """tmp -> write -> fsync -> rename -> fsync directory.

    After a crash the file is either the old version or the new one, whole.
    ``sync_dir`` False leaves the directory's fsync to the caller (which new
    version a crash keeps is then open until it does).
    """
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp"
    try:
        unlink(tmp)
    except FileNotFoundError:
        pass
    fd = create_exclusive(tmp)
    try:
        write_all(fd, data)
        fsync(fd)
    finally:
        close(fd)
    rename(tmp, path)
    if sync_dir:
        fsync_dir(directory)
