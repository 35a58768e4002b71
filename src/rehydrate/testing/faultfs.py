"""A file layer that models power loss, for the reliability harness.

Installed in place of ``rehydrate._fileio``'s functions (``with
FaultFS(root) as fs:``), it lets every operation happen on disk as usual
and keeps, on the side, what a power cut would leave under ``root``.
``fs.power_loss(mode, rng, into=DIR)`` writes that into a new directory DIR,
which a store can then open; the real directory is left as it is.

What the model assumes of the disk:

- ``fsync`` of a file makes its data durable: the bytes it has then survive.
  Bytes written since (``write_all``, ``truncate``) may be lost, as the mode
  says. A write never damages bytes that were durable before it (sectors
  are written atomically), and files are independent of each other.
- ``fsync_dir`` of a directory makes its entries durable: the names it
  holds then, each naming the file (inode) it names then. Entries changed
  since (creates, renames, unlinks, mkdirs) are rolled back only in mode
  "no_dir_sync"; the other modes keep every entry as it is now. Directories
  are independent too: a rename from one to another not followed by both
  fsyncs may leave the file in both or in neither (a journaling file
  system would not lose it from both).
- What is under ``root`` when the layer is installed is durable, and so is
  ``root`` itself. A file written outside the layer (not through
  ``_fileio``) was never fsynced: its bytes are all unsynced.

Modes (``rng``, a ``random.Random``, makes every choice):

- "drop_unsynced": every write since a file's last fsync is lost;
- "random_suffix": a random suffix of a file's unsynced bytes is lost (the
  writes in order, cut at a random byte);
- "torn_sectors": a random subset of the unsynced writes survives (a gap
  reads as zeros), and one 512-byte-aligned sector of the unsynced range is
  trashed with random bytes or zeros (only its unsynced bytes);
- "no_dir_sync": as drop_unsynced, and directories keep only their durable
  entries: a file created in a directory not fsynced since is gone, a
  rename not followed by a directory fsync is undone.

After ``power_loss``, ``fs.damage`` notes, per file that had unsynced
bytes, what became of them: how many writes and bytes were unsynced, how
many were kept, the sector trashed, and whether some of a later write
survived while part of an earlier one was lost ("reordered").

``before``: ``before(n, name)`` is called before the ``n``-th intercepted
call (``fs.calls`` counts them), e.g. to cut the power at a chosen call.
"""

from __future__ import annotations

from typing import Any, Optional

import os
import random
import threading

from .. import _fileio

MODES = ("drop_unsynced", "random_suffix", "torn_sectors", "no_dir_sync")
SECTOR = 512
# The functions replaced; write_file_atomic is made of them, so it is covered.
INTERCEPTED = ("open_append", "create_exclusive", "write_all", "fsync", "fsync_dir", "close",
               "rename", "unlink", "truncate", "makedirs")


class _Node:
    """A file or directory (an inode) under the root."""

    __slots__ = ("entries", "synced", "pending")

    def __init__(self, synced=b"", pending=None, entries=None):
        self.synced = synced  # a file's bytes as of its last fsync
        self.pending = pending or []  # since then: (offset, bytes) writes, (None, n) truncates
        self.entries = entries  # a directory's {name: _Node} as of its last fsync (else None)

    def current(self) -> bytes:
        return bytes(_replay(self.synced, self.pending))


def _replay(base: bytes, ops) -> bytearray:
    data = bytearray(base)
    for off, d in ops:
        if off is None:
            del data[d:]
        else:
            if off > len(data):
                data.extend(bytes(off - len(data)))  # a hole reads as zeros
            data[off:off + len(d)] = d
    return data


def _key(st) -> tuple:
    return st.st_dev, st.st_ino


def _key_at(path: str):
    try:
        return _key(os.lstat(path))
    except FileNotFoundError:
        return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class FaultFS:
    def __init__(self, root, before=None) -> None:
        self.root = os.path.realpath(root)
        self.before = before
        self.calls = 0
        self._lock = threading.RLock()
        self._live: dict = {}  # (dev, ino) -> _Node of every file and directory under root now
        self._real: dict = {}
        self.root_node = self._adopt_tree(self.root, durable=True)

    # ---------------------------------------------------------- install
    def __enter__(self) -> "FaultFS":
        for name in INTERCEPTED:
            self._real[name] = getattr(_fileio, name)
            setattr(_fileio, name, self._intercept(name))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._real.items():
            setattr(_fileio, name, fn)
        self._real.clear()

    def _intercept(self, name):
        model = getattr(self, "_" + name)
        real = self._real[name]

        def call(*args):
            with self._lock:  # one operation at a time, so the record matches the disk
                self.calls += 1
                if self.before is not None:
                    self.before(self.calls, name)
                return model(real, *args)
        call.__name__ = name
        return call

    # ---------------------------------------------------------- bookkeeping
    def _inside(self, path) -> bool:
        path = os.path.realpath(path)
        return path == self.root or path.startswith(self.root + os.sep)

    def _adopt_tree(self, path: str, durable: bool) -> _Node:
        """A node for what is at ``path``: durable as it is (at install), or
        written outside the layer (all of a file's bytes unsynced, nothing
        in a directory durable)."""
        if os.path.isdir(path):
            node = _Node(entries={})
            if durable:
                node.entries = {n: self._adopt_tree(os.path.join(path, n), True)
                                for n in os.listdir(path)}
        else:
            data = _read(path)
            node = _Node(data) if durable else _Node(b"", [(0, data)])
        self._live[_key(os.lstat(path))] = node
        return node

    def _node_at(self, path: str) -> _Node:
        return self._live.get(_key(os.lstat(path))) or self._adopt_tree(path, durable=False)

    def _node_of_fd(self, fd: int):
        node = self._live.get(_key(os.fstat(fd)))
        if node is None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if self._inside(path):
                node = self._adopt_tree(path, durable=False)
        return node

    # ---------------------------------------------------------- the operations
    def _open_append(self, real, path):
        return real(path)

    def _close(self, real, fd):
        return real(fd)

    def _create_exclusive(self, real, path):
        fd = real(path)
        if self._inside(path):
            self._live[_key(os.fstat(fd))] = _Node()
        return fd

    def _makedirs(self, real, path):
        new, p = [], os.path.abspath(path)
        while not os.path.exists(p):
            new.append(p)
            p = os.path.dirname(p)
        real(path)
        for p in new:
            if self._inside(p):
                self._live[_key(os.lstat(p))] = _Node(entries={})

    def _write_all(self, real, fd, data):
        node = self._node_of_fd(fd)
        if node is not None:
            node.pending.append((os.lseek(fd, 0, os.SEEK_CUR), bytes(data)))
        return real(fd, data)

    def _truncate(self, real, fd, length):
        node = self._node_of_fd(fd)
        if node is not None:
            node.pending.append((None, length))
        return real(fd, length)

    def _fsync(self, real, fd):
        real(fd)
        node = self._node_of_fd(fd)
        if node is not None:
            node.synced, node.pending = node.current(), []

    def _fsync_dir(self, real, path):
        real(path)
        if self._inside(path):
            self._node_at(path).entries = {n: self._node_at(os.path.join(path, n))
                                           for n in os.listdir(path)}

    def _rename(self, real, src, dst):
        replaced = _key_at(dst)
        real(src, dst)
        self._live.pop(replaced, None)  # its node lives on in durable entries, if any

    def _unlink(self, real, path):
        gone = _key_at(path)
        real(path)
        self._live.pop(gone, None)

    # ---------------------------------------------------------- power loss
    def power_loss(self, mode: str, rng, into) -> str:
        """Write what a power cut now would leave of ``root`` into ``into``
        (a new directory); returns its path. ``self.damage`` then says, per
        file (relative path) with unsynced bytes, what happened to them."""
        if mode not in MODES:
            raise ValueError(f"unknown power-loss mode {mode!r}")
        # One draw here, then a generator per file (from its path): a file's
        # fate does not depend on which other files exist or how long they are.
        seed = rng.getrandbits(64)
        self.damage: dict[Any, Any] = {}
        with self._lock:
            os.makedirs(into)
            if mode == "no_dir_sync":
                self._emit_durable(self.root_node, into, into)
            else:
                self._emit_current(into, mode, seed)
        return into

    def _emit_durable(self, node: _Node, into: str, out_root: str) -> None:
        for name, child in sorted(node.entries.items()):
            dst = os.path.join(into, name)
            if child.entries is not None:
                os.mkdir(dst)
                self._emit_durable(child, dst, out_root)
            else:
                self._put(dst, out_root, child, "drop_unsynced", None)

    def _emit_current(self, into: str, mode: str, seed: int) -> None:
        # Entries are all durable here: the tree is the one on disk now.
        for dirpath, dirs, files in os.walk(self.root):
            out = os.path.join(into, os.path.relpath(dirpath, self.root))
            os.makedirs(out, exist_ok=True)
            for name in files:
                path = os.path.join(dirpath, name)
                node = self._live.get(_key(os.lstat(path)))
                data = _read(path)
                if node is None or node.current() != data:
                    # Written outside the layer (or a reused inode): unsynced.
                    node = _Node(b"", [(0, data)])
                rel = os.path.relpath(path, self.root)
                self._put(os.path.join(out, name), into, node, mode,
                          random.Random(f"{seed}/{rel}"))

    def _put(self, dst: str, out_root: str, node: _Node, mode: str, rng) -> None:
        data, note = _survivor(node, mode, rng)
        if note is not None:
            self.damage[os.path.relpath(dst, out_root)] = note
        with open(dst, "wb") as f:
            f.write(data)


def _survivor(node: _Node, mode: str, rng):
    """What of a file a power cut leaves, in ``mode``, and a note of what
    happened to its unsynced bytes (None if it had none)."""
    ops = node.pending
    if not ops:
        return node.synced, None
    writes = [(off, d) for off, d in ops if off is not None and d]
    note: dict[str, Any] = {"writes": len(writes), "unsynced": sum(len(d) for _, d in writes)}
    if mode in ("drop_unsynced", "no_dir_sync"):
        return node.synced, dict(note, kept_bytes=0)
    if mode == "random_suffix":
        budget = note["kept_bytes"] = rng.randint(0, note["unsynced"])
        kept = []
        for off, d in ops:
            if off is not None:
                if budget < len(d):
                    kept.append((off, d[:budget]))
                    break
                budget -= len(d)
            kept.append((off, d))
        return bytes(_replay(node.synced, kept)), note
    # torn_sectors
    survive = [rng.random() < 0.5 for _ in ops]
    data = _replay(node.synced, [op for op, s in zip(ops, survive) if s])
    flagged = [(off, d, s) for (off, d), s in zip(ops, survive) if off is not None and d]
    note["kept_writes"] = sum(s for _, _, s in flagged)
    trash = (0, 0)
    if writes:
        lo, hi = min(off for off, _ in writes), max(off + len(d) for off, d in writes)
        start = rng.randrange(lo // SECTOR, (hi - 1) // SECTOR + 1) * SECTOR
        # Only bytes written since the fsync: the durable ones are never damaged.
        start, end = max(start, lo), min(start + SECTOR, hi, len(data))
        zeros = rng.random() < 0.5
        if start < end:
            data[start:end] = bytes(end - start) if zeros else rng.randbytes(end - start)
            trash = (start, end)
            note["trashed"] = (start, end, "zeros" if zeros else "random")
    # Did some of a later write reach the disk while part of an earlier one
    # did not? (A disk may reorder; the torn-tail rule does not expect it.)
    lost = [not s or (off < trash[1] and trash[0] < off + len(d)) for off, d, s in flagged]
    some = [s and not (trash[0] <= off and off + len(d) <= trash[1]) for off, d, s in flagged]
    note["reordered"] = any(lost[i] and any(some[i + 1:]) for i in range(len(flagged)))
    return bytes(data), note
