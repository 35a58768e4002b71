"""A store's archiver (docs/archive.md): a thread that ships the log and
the snapshots to object storage, in LSN order, and publishes what the
archive holds in its manifest object after the objects it lists.

Each pass: the sealed segments not yet archived whole (one object each;
the parts of a segment uploaded while it was written are deleted once the
whole object is listed), then the new frames of the segment being written
as a part (at most every ``every_s``; only fsynced bytes), then the newest
snapshot the archive does not have, then retention. A pass that fails is
tried again after a backoff with full jitter; writes never wait for it.
The store trims its log only below ``sealed_through`` (what is archived
whole), so nothing local goes before the archive holds it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Optional

from . import archive as A
from ._backend import core
from .errors import ArchiveError, RehydrateError, StoreClosedError
from .backoff import backoff_delays
from .objstore import ArchiveTarget, ObjectStore, open_object_store
from .snapshot import SNAPSHOTS_DIR, snapshot_name
from .wal import WAL_DIR, list_segments, read_segment_version

log = logging.getLogger("rehydrate")

#: Marks closer than this are merged (the time index's resolution).
MARK_RESOLUTION_S = 0.1
#: A segment shipped in this many parts is sealed (the store goes on in a
#: new one): its whole object replaces them, and the manifest stays short.
MAX_PARTS = 256
#: How long a clean close waits for the last upload.
CLOSE_DEADLINE_S = 5.0

# position() -> (active segment path, size, last LSN durable in it) or None
Position = Callable[[], Optional[tuple[str, int, int]]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Archiver:
    """Ships the store at ``path`` to ``target``. ``position`` gives the
    durable end of the active segment (``Journal.durable_position``),
    ``local_manifest`` the store's MANIFEST (snapshots, versions, ledger),
    ``written_lsn`` the log's end (for the lag)."""

    def __init__(self, path: str, target: ArchiveTarget, *, store_id: str, epoch: int,
                 position: Position, local_manifest: Callable[[], dict[str, Any]],
                 written_lsn: Callable[[], int], every_s: float, retention_s: float,
                 keep_snapshots: int, seal: Optional[Callable[[], None]] = None,
                 store: Optional[ObjectStore] = None) -> None:
        self.path = path
        self.store = store if store is not None else open_object_store(target, attempts=1)
        self.store_id, self.epoch = store_id, epoch
        self.every_s, self.retention_s = every_s, retention_s
        self.keep_snapshots = keep_snapshots
        self._position = position
        self._local_manifest = local_manifest
        self._written_lsn = written_lsn
        self._seal = seal
        self.manifest: Optional[dict[str, Any]] = None
        self.archived_lsn = 0
        self.sealed_through = 0
        self.error: Optional[BaseException] = None  # the last pass's failure
        self.failed: Optional[ArchiveError] = None  # stopped for good (foreign, diverged)
        self.state = "starting"
        self.passes = 0
        self.pass_failures = 0
        self._marks: list[A.Mark] = []
        self._marks_lock = threading.Lock()
        self._last_part = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._caught_up = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"rehydrate-archive:{path}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ---------------------------------------------------------------- hooks
    def note_frame(self, lsn: int) -> None:
        """A frame ending at ``lsn`` was written now (the log's I/O lock is
        held): one mark of the time index, merged with the last when
        closer than the resolution (a mark never claims an LSN earlier than
        it was written)."""
        now = _now_ms()
        with self._marks_lock:
            marks = self._marks
            if len(marks) >= 2 and now - marks[-2][1] < MARK_RESOLUTION_S * 1000:
                marks[-1] = (lsn, now)
            else:
                marks.append((lsn, now))

    def wake(self) -> None:
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        written = self._written_lsn()
        behind = max(0, written - self.archived_lsn)
        with self._marks_lock:
            oldest = next((ms for lsn, ms in self._marks if lsn > self.archived_lsn), None)
        seconds = 0.0 if not behind or oldest is None else max(0.0, (_now_ms() - oldest) / 1000)
        return {"state": self.state, "uri": self.store.uri, "archived_lsn": self.archived_lsn,
                "sealed_through": self.sealed_through, "lag_records": behind,
                "lag_seconds": seconds, "passes": self.passes,
                "pass_failures": self.pass_failures,
                "error": None if self.error is None else str(self.error),
                **self.store.stats()}

    def wait_for(self, lsn: int, timeout: Optional[float] = None) -> bool:
        """True once the archive holds ``lsn`` (False at the timeout or when
        the archiver stopped for good)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._caught_up:
            while self.archived_lsn < lsn or self.manifest is None:
                if self.failed is not None or self._stop.is_set():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._urgent = True
                self._wake.set()
                self._caught_up.wait(0.5 if left is None else min(left, 0.5))
        return True

    def stop(self, final: bool = True, deadline_s: float = CLOSE_DEADLINE_S) -> None:
        """Stop the thread; with ``final``, one last pass first (within
        ``deadline_s``; a store that is down keeps what it had)."""
        if final and self._thread.is_alive() and self.failed is None:
            self._final = time.monotonic() + deadline_s
            self._wake.set()
            self._thread.join(deadline_s)
        self._stop.set()
        self.store.cancelled.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        if self.state != "failed":
            self.state = "stopped"  # (closed: a failure's reason stays shown)

    _final: Optional[float] = None
    _urgent = False  # a waiter wants the next part now, not at the interval

    # ----------------------------------------------------------------- loop
    def _run(self) -> None:
        delays = backoff_delays(0.2, 30.0)
        while not self._stop.is_set():
            final = self._final is not None
            try:
                if self.manifest is None:
                    self._load()
                self._pass(force_part=final)
                self.error = None
                self.state = "ok"
                delays = backoff_delays(0.2, 30.0)
            except ArchiveError as e:
                if e.reason in ("foreign_store", "diverged", "fenced", "bad_manifest",
                                "unsupported_format"):
                    self.failed = e
                    self.error = e
                    self.state = "failed"
                    log.error("archiving stopped: %s", e)
                    with self._caught_up:
                        self._caught_up.notify_all()
                    return
                self._failed_pass(e)
                if final or self._stop.wait(next(delays)):
                    return
                continue
            except StoreClosedError as e:
                # The store handed its writes away (MovedError: its new
                # primary archives from here), failed or closed: this
                # archiver's part is over; the next writer's goes on.
                self.error = e
                self.state = "stopped"
                return
            except (RehydrateError, OSError) as e:  # a local file
                self._failed_pass(e)
                if final or self._stop.wait(next(delays)):
                    return
                continue
            finally:
                self.passes += 1
                with self._caught_up:
                    self._caught_up.notify_all()
            if final:
                return
            self._wake.wait(self.every_s)
            self._wake.clear()

    def _failed_pass(self, e: BaseException) -> None:
        self.error = e
        self.state = "retrying"
        self.pass_failures += 1
        if self.pass_failures in (1, 10) or self.pass_failures % 100 == 0:
            log.warning("archive upload failed (attempt %d; writes go on): %s",
                        self.pass_failures, e)

    def _load(self) -> None:
        """Read the archive's manifest once (the store never lists), and
        refuse another store's archive, a newer writer's, or one that holds
        a history this store's log does not."""
        man = A.read_manifest(self.store)
        if man is None:
            man = A.new_manifest(self.store_id, self.epoch)
        elif man["store_id"] != self.store_id:
            raise ArchiveError(f"the archive belongs to store {man['store_id']}, this store is "
                               f"{self.store_id}", uri=self.store.uri, reason="foreign_store")
        elif man["epoch"] > self.epoch:
            raise ArchiveError(f"a newer writer (epoch {man['epoch']}) archives here; this "
                               f"store is at epoch {self.epoch}", uri=self.store.uri,
                               reason="fenced")
        else:
            self._check_same_history(man)
        fresh = man["archived_lsn"] == 0 and not man["segments"]
        if man["segments"] and not man["segments"][-1]["sealed"]:
            self._carry_marks(man["segments"][-1])
        man["epoch"] = self.epoch
        if fresh:
            # (A new archive is claimed at once: another store pointed at
            # this prefix is refused from its first pass.)
            self._publish(man)
        self.manifest = man
        self.archived_lsn = man["archived_lsn"]
        self.sealed_through = self._sealed_end(man)

    def _carry_marks(self, seg: dict[str, Any]) -> None:
        """The time marks of the parts an earlier run of the store shipped
        of the segment still being written: its whole object, uploaded once
        it is sealed, replaces those parts, and its time index must still
        say when their records were written. Read from each part's time
        index (one range request each); a part whose index cannot be read
        gives its last LSN at its last time (never earlier than written)."""
        carried: list[A.Mark] = []
        for part in seg["parts"]:
            name = A.part_name(seg, part)
            try:
                data = self.store.get_range(name, part["bytes"],
                                            part["object_bytes"] - part["bytes"])
                carried += A.parse_trailer(data, part["bytes"], self.store.uri, name)
            except ArchiveError as e:
                log.warning("the time index of %s is unreadable (%s): its part's last "
                            "time stands for it", name, e)
                carried.append((part["last"], part["t_last"]))
        with self._marks_lock:
            newer = self._marks[0][0] if self._marks else None
            self._marks = [m for m in carried if newer is None or m[0] < newer] + self._marks

    def _check_same_history(self, man: dict[str, Any]) -> None:
        """The archive's newest segment must be a prefix of this store's
        copy of it (when the store still has it), and must not end past
        this store's log: else the store was restored to an older point
        and would overwrite another history."""
        written = self._written_lsn()
        if man["archived_lsn"] > written:
            raise ArchiveError(
                f"the archive holds the log up to LSN {man['archived_lsn']}, this store's log "
                f"ends at {written}: a restored older copy? archive it to a new prefix",
                uri=self.store.uri, lsn=written, reason="diverged")
        segs = man["segments"]
        if not segs:
            return
        seg = segs[-1]
        local = os.path.join(self.path, WAL_DIR, f"{seg['first']:020d}.wal")
        try:
            with open(local, "rb") as f:
                data = f.read(seg["bytes"])
        except FileNotFoundError:
            return
        c = core()
        offset = 0
        for part in seg["parts"]:
            if c.crc32c(data[offset:offset + part["bytes"]]) != part["crc32c"]:
                raise ArchiveError(
                    f"the archive's copy of segment {seg['first']} differs from this store's "
                    f"at offset {offset}: another history; archive to a new prefix",
                    uri=self.store.uri, object=A.part_name(seg, part), offset=offset,
                    lsn=seg["first"], reason="diverged")
            offset += part["bytes"]

    @staticmethod
    def _sealed_end(man: dict[str, Any]) -> int:
        """Every segment of the log up to this LSN is archived whole (or
        was, and retention dropped it behind a snapshot)."""
        for seg in man["segments"]:
            if not seg["sealed"]:
                return int(seg["first"]) - 1
        return int(man["archived_lsn"])

    # ----------------------------------------------------------------- pass
    def _publish(self, man: dict[str, Any]) -> None:
        local = self._local_manifest()
        man["versions"] = dict(local.get("versions") or {})
        man["ledger"] = list(local.get("ledger") or [])
        man["updated_ms"] = _now_ms()
        segs = man["segments"]
        man["archived_lsn"] = segs[-1]["last"] if segs else max(
            [s["lsn"] for s in man["snapshots"]] + [0])
        self.store.put_bytes(A.MANIFEST_OBJECT, A.encode_manifest(man))
        self.manifest = man
        self.archived_lsn = man["archived_lsn"]
        self.sealed_through = self._sealed_end(man)

    def _marks_for(self, first: int, last: int, fallback_ms: int) -> list[A.Mark]:
        with self._marks_lock:
            marks = [(lsn, ms) for lsn, ms in self._marks if first <= lsn <= last]
        if not marks or marks[-1][0] != last:
            marks.append((last, max([fallback_ms] + [ms for _, ms in marks])))
        return marks

    def _drop_marks(self, through: int) -> None:
        with self._marks_lock:
            self._marks = [m for m in self._marks if m[0] > through]

    def _pass(self, force_part: bool = False) -> None:
        man = self.manifest
        assert man is not None
        waldir = os.path.join(self.path, WAL_DIR)
        position = self._position()
        active = position[0] if position is not None else None
        segments = list_segments(waldir)[0]
        segs = man["segments"]
        archived_end = segs[-1]["last"] if segs else None
        # 1. Sealed segments, whole, in LSN order.
        for seg, nxt in zip(segments, segments[1:]):
            if seg.path == active:
                break
            last = nxt.first_lsn - 1
            if last < seg.first_lsn:
                continue  # (an empty segment)
            done = next((s for s in segs if s["first"] == seg.first_lsn), None)
            if done is not None and done["sealed"]:
                continue
            if archived_end is not None and seg.first_lsn > archived_end + 1:
                raise ArchiveError(f"the local log has no segment holding LSN {archived_end + 1} "
                                   "to archive next", uri=self.store.uri, lsn=archived_end + 1,
                                   reason="gap")
            if archived_end is not None and seg.first_lsn <= archived_end and done is None:
                continue  # (below what the archive starts at)
            self._upload_sealed(man, seg.first_lsn, seg.path, last, done)
            segs = man["segments"]
            archived_end = segs[-1]["last"]
        # 2. The active segment's new frames, as a part.
        due = force_part or self._urgent or time.monotonic() - self._last_part >= self.every_s
        self._urgent = False
        if position is not None and due:
            self._upload_part(man, *position)
        # 3. The newest snapshot, once the archived log reaches it.
        self._upload_snapshot(man)
        # 4. Retention.
        self._apply_retention(man)

    def _upload_sealed(self, man: dict[str, Any], first: int, path: str, last: int,
                       partial: Optional[dict[str, Any]]) -> None:
        mtime = int(os.stat(path).st_mtime * 1000)
        version = read_segment_version(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
        marks = self._marks_for(first, last, mtime)
        trailer = A.encode_trailer(marks, size)
        name = A.part_object(first, 0, True)
        n, crc = self.store.put_file(name, path, trailer)
        if n != size:
            raise ArchiveError(f"segment {first} changed size while uploaded", uri=self.store.uri,
                               object=name, reason="changed")
        entry = {"first": first, "last": last, "version": version, "sealed": True, "bytes": n,
                 "parts": [{"offset": 0, "bytes": n, "last": last, "crc32c": crc,
                            "object_bytes": n + len(trailer), "t_first": marks[0][1],
                            "t_last": marks[-1][1], "whole": True}]}
        segs = [s for s in man["segments"] if s["first"] != first]
        segs.append(entry)
        segs.sort(key=lambda s: s["first"])
        man["segments"] = segs
        self._publish(man)
        self._drop_marks(last)
        if partial is not None:
            for part in partial["parts"]:
                if not part["whole"]:
                    self.store.delete(A.part_name(partial, part))

    def _upload_part(self, man: dict[str, Any], path: str, size: int, durable_lsn: int) -> None:
        from .wal import parse_segment_name

        first = parse_segment_name(os.path.basename(path))
        if first is None or durable_lsn < first:
            return  # (nothing in it yet)
        segs = man["segments"]
        entry = segs[-1] if segs and segs[-1]["first"] == first else None
        if entry is not None and entry["sealed"]:
            return
        if entry is None and segs and segs[-1]["last"] != first - 1:
            return  # (the sealed ones before it go first)
        offset = entry["bytes"] if entry is not None else 0
        if size <= offset:
            return
        with open(path, "rb") as f:
            data = os.pread(f.fileno(), size - offset, offset)
        if len(data) != size - offset:
            raise ArchiveError(f"segment {first} is shorter than its durable size",
                               uri=self.store.uri, reason="changed")
        start_lsn = entry["last"] + 1 if entry is not None else first
        marks = self._marks_for(start_lsn, durable_lsn, _now_ms())
        trailer = A.encode_trailer(marks, len(data))
        name = A.part_object(first, offset, False)
        self.store.put_bytes(name, data + trailer)
        part = {"offset": offset, "bytes": len(data), "last": durable_lsn,
                "crc32c": core().crc32c(data), "object_bytes": len(data) + len(trailer),
                "t_first": marks[0][1], "t_last": marks[-1][1], "whole": False}
        if entry is None:
            entry = {"first": first, "last": durable_lsn, "version": read_segment_version(path),
                     "sealed": False, "bytes": 0, "parts": []}
            man["segments"] = segs + [entry]
        entry["parts"].append(part)
        entry["bytes"] += len(data)
        entry["last"] = durable_lsn
        self._publish(man)
        self._last_part = time.monotonic()
        if len(entry["parts"]) >= MAX_PARTS and self._seal is not None:
            self._seal()

    def _upload_snapshot(self, man: dict[str, Any]) -> None:
        local = sorted(self._local_manifest().get("snapshots") or [], reverse=True)
        have = {s["lsn"] for s in man["snapshots"]}
        newest = max(have) if have else 0
        for lsn in local:
            if lsn <= newest:
                return
            if lsn > man["archived_lsn"] and man["segments"]:
                continue  # (once the archived log reaches it)
            sdir = os.path.join(self.path, SNAPSHOTS_DIR, snapshot_name(lsn))
            try:
                names = sorted(os.listdir(sdir))
                files = []
                for name in names:
                    if not A.is_snapshot_file_name(name):
                        continue
                    n, crc = self.store.put_file(A.snapshot_object(lsn, name),
                                                 os.path.join(sdir, name))
                    files.append({"name": name, "bytes": n, "crc32c": crc})
                when = int(os.stat(os.path.join(sdir, "META")).st_mtime * 1000)
            except FileNotFoundError:
                continue  # replaced by a newer checkpoint meanwhile
            man["snapshots"] = sorted(man["snapshots"] + [{"lsn": lsn, "time_ms": when,
                                                           "files": files}],
                                      key=lambda s: s["lsn"], reverse=True)
            self._publish(man)
            return

    def _apply_retention(self, man: dict[str, Any]) -> None:
        """Keep the newest ``keep_snapshots`` snapshots, every one younger
        than the retention window and the newest older one (the base of
        the window's start), and the segments they need; delete the rest
        after the manifest that drops them."""
        snaps = man["snapshots"]
        if not snaps:
            return
        horizon = _now_ms() - int(self.retention_s * 1000)
        newest_first = sorted(snaps, key=lambda s: s["lsn"], reverse=True)
        keep = newest_first[:self.keep_snapshots]
        keep += [s for s in newest_first if s["time_ms"] >= horizon]
        older = [s for s in newest_first if s["time_ms"] < horizon]
        if older:
            keep.append(older[0])
        kept_lsns = {s["lsn"] for s in keep}
        oldest = min(kept_lsns)
        drop_snaps = [s for s in snaps if s["lsn"] not in kept_lsns]
        drop_segs = [s for s in man["segments"] if s["sealed"] and s["last"] <= oldest]
        if not drop_snaps and not drop_segs:
            return
        man["snapshots"] = [s for s in snaps if s["lsn"] in kept_lsns]
        man["segments"] = [s for s in man["segments"] if s not in drop_segs]
        self._publish(man)
        for seg in drop_segs:
            for part in seg["parts"]:
                self.store.delete(A.part_name(seg, part))
        for snap in drop_snaps:
            for f in snap["files"]:
                self.store.delete(A.snapshot_object(snap["lsn"], f["name"]))
