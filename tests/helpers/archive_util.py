"""Shared pieces of the archive tests (docs/archive.md): an archive on
``file://`` or on the test S3 server, direct access to its objects (to
read the manifest, or to damage what a restore reads), and restores
compared as states.

``Objects`` reads and writes an archive's objects behind the store's
back: plain files under the prefix for ``file://``, a ``pyarrow.fs``
S3FileSystem straight to the server (never through a FaultProxy) for S3.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time

import pyarrow.fs as pafs

from rehydrate import Store
from rehydrate import archive as A
from rehydrate.testing import canon_state, store_state


KINDS = ("file", "s3")


class Objects:
    """The objects below one archive prefix."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        if isinstance(self.fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write(data)

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.path(name))

    def size(self, name: str) -> int | None:
        info = self.fs.get_file_info(self.path(name))
        return info.size if info.type == pafs.FileType.File else None

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.File

    def names(self) -> list[str]:
        """Every object below the prefix (a LIST: the tests' own, never the store's)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True,
                                                        allow_not_found=True))
        cut = len(self.root) + 1
        return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

    # -- the manifest, decoded without its checks (to be damaged field by field)
    def raw_manifest(self) -> dict:
        data = self.read(A.MANIFEST_OBJECT)
        (n,) = struct.unpack_from("<I", data, 8)
        return json.loads(data[16:16 + n])

    def manifest(self) -> dict:
        """The manifest, checked as a restore checks it."""
        return A.decode_manifest(self.read(A.MANIFEST_OBJECT), "test")

    def write_manifest(self, man: dict) -> None:
        """``man`` as a well-formed manifest object (magic, length, CRC32C)."""
        self.write(A.MANIFEST_OBJECT, A.encode_manifest(man))


def listed(man: dict) -> set[str]:
    """The names of every object the manifest lists."""
    out = {A.MANIFEST_OBJECT}
    for seg in man["segments"]:
        for part in seg["parts"]:
            out.add(A.part_name(seg, part))
    for snap in man["snapshots"]:
        for f in snap["files"]:
            out.add(A.snapshot_object(snap["lsn"], f["name"]))
    return out


def make_archive(kind: str, tmp_path, request, prefix: str = "arch",
                 endpoint: str | None = None) -> tuple[str, Objects]:
    """(URI, Objects) of a new archive of ``kind``; for "s3" on a new bucket
    of the session's server (through ``endpoint``, a FaultProxy's, if given)."""
    if kind == "file":
        root = str(tmp_path / prefix)
        return "file://" + root, Objects(pafs.LocalFileSystem(), root)
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return (server.uri(bucket, prefix, endpoint=endpoint),
            Objects(server.filesystem(), f"{bucket}/{prefix}"))


def state(store: Store) -> dict:
    """The store's state, type-tagged (empty tables dropped)."""
    return canon_state(store_state(store), drop_empty=True)


def restored(uri, dest, **kw) -> tuple[dict, dict]:
    """Restore ``uri`` into ``dest`` and open the result under strict
    recovery: (restore's result, the restored state)."""
    from rehydrate import restore

    result = restore(uri, str(dest), **kw)
    with Store.open(str(dest), recovery="strict") as s:
        assert s.lsn == result["lsn"], (s.lsn, result)
        assert not s.recovery_report.problems, s.recovery_report.as_dict()
        return result, state(s)


def let_the_clock_pass(seconds: float) -> None:
    """Wait until the wall clock has moved ``seconds`` on: the gap itself is
    what a point-in-time test needs (writes on either side of a time)."""
    end = time.time() + seconds
    tick = threading.Event()
    while time.time() < end:
        tick.wait(end - time.time())


class Seq:
    """The deterministic op sequence of helpers/crash_sequence.py written to
    a store, one op per write call (with ``sync="always"`` each is a frame
    of its own): the LSN each op ended at, and the model's state at any of
    those LSNs."""

    def __init__(self, seed: int) -> None:
        from helpers import crash_sequence

        self._gen = crash_sequence.ops(seed)
        self.ops: list = []
        self.ends: list[int] = []

    def write(self, store: Store, n: int) -> int:
        from rehydrate.testing import apply_to_store

        for _ in range(n):
            op = next(self._gen)
            lsn = apply_to_store(store, op)
            self.ops.append(op)
            self.ends.append(lsn)
        return self.ends[-1] if self.ends else 0

    def frame_end_at_or_before(self, lsn: int) -> int:
        return max([0] + [e for e in self.ends if e <= lsn])

    def state_at(self, lsn: int) -> dict:
        """The model's state after the ops ending at or before ``lsn``."""
        from rehydrate.testing import Model

        m = Model()
        for op, end in zip(self.ops, self.ends):
            if end > lsn:
                break
            m.apply(op)
        assert m.lsn == self.frame_end_at_or_before(lsn)
        return canon_state(m.state(), drop_empty=True)
