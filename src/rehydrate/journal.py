"""The write side of a store's log: frames what writers buffered, writes
it and fsyncs it, with group commit and fail-stop (docs/durability.md).

Writers apply and buffer records under the store's lock; a ``Journal``
takes them from there (``take``, which the store gives it) only under its
own ``io_lock``, which is never taken while the store's lock is held. So
writers keep appending while one thread is in ``fsync``, and the next fsync
covers them all.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

from . import _format as F
from .errors import RehydrateError, StoreFailedError
from .wal import WAL_DIR, SegmentFile, WalWriter, list_segments, parse_segment_name

# take() -> (first LSN, record count, records, table declarations, offsets)
Taken = tuple[int, int, bytes, list[tuple[Any, ...]], dict[str, int]]
Take = Callable[[], Taken]


class Journal:
    """One store's log writer.

    ``take`` hands over what writers buffered (the caller's lock taken
    inside it); ``on_failed`` runs once when a write or fsync fails (the
    store then refuses writes); ``check_owner`` raises in a process that
    only inherited the store; ``on_written(n)`` counts framed bytes;
    ``fence()`` runs before anything is written and raises when this
    writer may no longer write (a newer epoch owns the directory:
    docs/replication.md); ``on_tick()`` runs on the flusher thread every
    interval (a store looks for a handoff request there).
    """

    def __init__(self, path: str, segment_bytes: int, sync: str, interval_s: float,
                 take: Take, on_failed: Callable[[], None], check_owner: Callable[[], None],
                 on_written: Callable[[int], None],
                 fence: Optional[Callable[[], None]] = None,
                 on_tick: Optional[Callable[[], None]] = None) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        self.sync = sync
        self.interval_s = interval_s
        self.io_lock = threading.Lock()
        self.wal: Optional[WalWriter] = None
        self.durable_lsn = 0
        self.written_lsn = 0
        self.failed: Optional[BaseException] = None
        self._take = take
        self._on_failed = on_failed
        self._check_owner = check_owner
        self._on_written = on_written
        self._fence = fence
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._flusher: Optional[threading.Thread] = None
        # Notified after each frame reaches the file: what a replication
        # stream waits on (wait_for_log).
        self.grew = threading.Condition()
        self.open_detail: dict[str, float] = {}

    @property
    def writer(self) -> WalWriter:
        """The log writer ``open`` made (an internal error before it)."""
        wal = self.wal
        if wal is None:
            raise RuntimeError(f"internal error: the log of {self.path} is not open for writing")
        return wal

    def open(self, next_lsn: int, resume_path: Optional[str], resume_size: int) -> None:
        """Open the log for appending at ``next_lsn``: the newest segment
        when it can take more (``resume_path`` of ``resume_size`` bytes, of
        this format), else a new one; start the flusher unless every write
        syncs itself."""
        t0 = time.perf_counter()
        self.durable_lsn = self.written_lsn = next_lsn - 1
        self.wal = wal = WalWriter(os.path.join(self.path, WAL_DIR), self.segment_bytes)
        created = False
        if (resume_path is not None and resume_size < self.segment_bytes
                and WalWriter.can_append(resume_path)):
            first = parse_segment_name(os.path.basename(resume_path))
            wal.open_existing(SegmentFile(first, resume_path, resume_size), resume_size)
        else:
            wal.create(next_lsn)
            created = True
        t1 = time.perf_counter()
        self._stop = threading.Event()  # (a promoted standby opens a journal once)
        if self.sync != "always" or self._on_tick is not None:
            self._flusher = threading.Thread(target=self._flush_every_interval,
                                             name=f"rehydrate-sync:{self.path}", daemon=True)
            self._flusher.start()
        # (How the open went: a promote reports it.)
        self.open_detail = {"segment_s": t1 - t0, "new_segment": float(created),
                            "flusher_s": time.perf_counter() - t1}

    def flush_locked(self, fsync: bool) -> None:
        """Frame and write what is pending, and fsync it if asked (the
        caller holds ``io_lock``). StoreFailedError once a write failed."""
        # (Also after a fork that ran no at-fork hooks, say a raw fork() from
        # C: the parent's buffered records are never written twice.)
        self._check_owner()
        if self.failed is not None:
            raise StoreFailedError(f"store failed: {self.failed}", path=self.path,
                                   lsn=self.durable_lsn) from self.failed
        if self._fence is not None:
            self._fence()  # (before take: a fenced writer's records stay unwritten)
        first, count, records, decls, offsets = self._take()
        try:
            if count:
                n = self.writer.write_frame(first, count, records, decls, offsets)
                self.written_lsn = first + count - 1
                self._on_written(n)
                with self.grew:
                    self.grew.notify_all()
            if fsync and self.written_lsn > self.durable_lsn:
                self.writer.fsync()
                self.durable_lsn = self.written_lsn
        except BaseException as e:
            # Fail-stop: after a failed write or fsync the file's state is
            # unknown; retrying could report success for lost data.
            self.failed = e
            self._on_failed()
            raise StoreFailedError(f"write-ahead log I/O failed: {e!r}", path=self.writer.path,
                                   lsn=self.durable_lsn) from e

    def flush(self, fsync: bool) -> None:
        with self.io_lock:
            self.flush_locked(fsync)

    def make_durable(self, lsn: int) -> None:
        """Return once every record up to ``lsn`` is fsynced."""
        with self.io_lock:
            if self.durable_lsn < lsn:
                self.flush_locked(fsync=True)

    def durable_position(self) -> Optional[tuple[str, int, int]]:
        """(active segment's path, its size, the LSN its last frame ends
        at), with every byte up to that size fsynced first: what may be
        shipped elsewhere (an archive never holds a byte a crash here could
        take back). None before the log is open. StoreFailedError /
        MovedError as for a flush."""
        with self.io_lock:
            wal = self.wal
            if wal is None or wal.path is None:
                return None
            self.flush_locked(fsync=True)
            return wal.path, wal.size, self.durable_lsn

    def seal_active(self) -> None:
        """End the active segment here (what is pending framed and fsynced
        first) and go on in a new one: an archive that has shipped the
        segment in many parts gets it whole, and its manifest stays short.
        Nothing happens when the active segment holds no frame."""
        with self.io_lock:
            wal = self.wal
            if wal is None or wal.path is None:
                return
            self.flush_locked(fsync=True)
            if wal.size > F.SEGMENT_HEADER_BYTES:
                wal.roll(self.written_lsn + 1)

    def _flush_every_interval(self) -> None:
        fsync = self.sync == "interval"
        flush = self.sync != "always"  # (then the thread only ticks)
        while not self._stop.wait(self.interval_s):
            if self._on_tick is not None:
                self._on_tick()
            if not flush:
                continue
            try:
                self.flush(fsync)
            except RehydrateError:
                return  # writers see the failure (or the fence) on their next call

    def wait_for_log(self, seen_lsn: int, timeout_s: float) -> int:
        """The written LSN, once it is past ``seen_lsn`` or ``timeout_s``
        passed (or ``wake_readers`` was called)."""
        if self.written_lsn <= seen_lsn and timeout_s > 0:
            with self.grew:
                if self.written_lsn <= seen_lsn:
                    self.grew.wait(timeout_s)
        return self.written_lsn

    def wake_readers(self) -> None:
        with self.grew:
            self.grew.notify_all()

    def stop(self) -> None:
        """Stop the flusher thread (what is pending stays for ``flush``)."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()

    def roll_to(self, lsn: int) -> None:
        """Make ``lsn`` the first record of a segment of its own: a new
        segment unless the active one is empty and starts there."""
        with self.io_lock:
            wal = self.writer
            active = wal.path
            assert active is not None  # (open made the active segment)
            first = parse_segment_name(os.path.basename(active))
            if not (first == lsn and wal.size == F.SEGMENT_HEADER_BYTES):
                wal.roll(lsn)

    def clean_end(self, lsn: int) -> Optional[dict[str, Any]]:
        """The MANIFEST's record of a clean close at ``lsn``: where this
        writer leaves the log. None when the newest segment on disk is not
        where the writer thinks the log ends (a roll that failed half way,
        say): then no clean end is claimed, and the next open judges the
        log by the crash rules."""
        wal = self.writer
        segments = list_segments(os.path.join(self.path, WAL_DIR))[0]
        newest = segments[-1] if segments else None
        if wal.path is None or newest is None or (newest.path, newest.size) != (wal.path,
                                                                                wal.size):
            return None
        return {"lsn": lsn, "segment": os.path.basename(wal.path), "offset": wal.size}

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()

    def inherited(self) -> None:
        """In a child of fork(): the I/O lock may be held by a thread that
        did not survive the fork; take a fresh one."""
        self.io_lock = threading.Lock()
        self.grew = threading.Condition()

    def forget(self) -> None:
        """Drop the files without touching them (a process that inherited
        them across fork())."""
        if self.wal is not None:
            self.wal.forget()
