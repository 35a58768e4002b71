"""A standby's following: the thread that applies the primary's log as it
grows, the lag, read-your-writes waits, and the standby's side of a local
handoff (docs/replication.md).

``Follow`` owns a ``follow.LogFollower`` and applies under the store's lock
(the lock writers take on a primary), so a read sees the state between
frames. What wakes it is a ``dirwatch.DirWatch`` on the directory (a
standby of a local primary) or the receiver of an HTTP stream calling
``step()`` after it wrote what it received.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from typing import Any, Callable, Optional

from . import _fileio
from . import manifest as _manifest
from .dirwatch import DirWatch
from .errors import CorruptionError, HandoffError, RehydrateError
from .follow import FellBehindError, LogFollower
from .wal import WAL_DIR

__all__ = ["Follow", "HANDOFF_NAME", "request_handoff", "withdraw_request", "claim_request",
           "FOLLOW_STATES", "lock_is_free", "wait_for_fence", "release_request",
           "requester_alive", "Receiver"]

FOLLOW_STATES = ("catching_up", "following", "stalled", "failed", "stopped")

# How long the follow thread sleeps when nothing wakes it (a safety net
# under inotify; the poll interval without it is dirwatch's).
_IDLE_WAIT_S = 0.25
# How often a standby's receiver fsyncs its copy of the log.
MIRROR_SYNC_S = 0.02
# Bytes at the log's end that stay less than a frame for this long make the
# follower "stalled": the writer is gone, or the tail is damaged.
STALL_AFTER_S = 2.0
# A standby of an HTTP primary that has had no message from it (bytes or a
# heartbeat, sent at least every 0.5 s) for this long cannot vouch for its
# lag: it counts it from the last message (docs/replication.md).
SILENT_AFTER_S = 2.0


class Follow:
    """A standby's follower and its thread. ``cv`` is a Condition on the
    store's lock: ``step`` applies under it and notifies waiters.

    ``on_error(e)`` is called once if following fails (the store reports
    it). ``lag()``, ``wait_for_lsn()``, ``state`` are read by the store.
    """

    def __init__(self, follower: LogFollower, lock: threading.Lock, peer: str,
                 watch_dirs: Optional[list[str]],
                 rebase: Optional[Callable[[], LogFollower]] = None) -> None:
        self.follower = follower
        # A follower the log's trim left behind starts again from the newest
        # snapshot: rebase() loads it and returns the new follower.
        self._rebase = rebase
        self.rebases = 0
        self.cv = threading.Condition(lock)
        self.peer = peer
        self.state = "catching_up"
        self.error: Optional[BaseException] = None
        self.primary_lsn = 0  # the newest LSN the primary is known to have written
        self.primary_time = 0.0  # when that was learnt (time.time())
        self.caught_up_at = time.monotonic()  # the last step that found no more
        self.pending_since: Optional[float] = None  # an unwhole tail seen since
        self.steps = 0
        # Fed by a receiver (HTTP): the lag also counts the primary's silence.
        self.remote = False
        self.heard_at = time.monotonic()  # the last message from the primary
        self._stop = threading.Event()
        self._watch = DirWatch(watch_dirs) if watch_dirs is not None else None
        self._thread: Optional[threading.Thread] = None
        # Called after each step and heartbeat, without the lock: the
        # store's feature gates look at the lag again (gates.py).
        self.on_change: Optional[Callable[[], None]] = None

    # ----------------------------------------------------------- the thread
    def start(self, name: str) -> None:
        if self._watch is None:
            return  # (stepped by a receiver)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        watch = self._watch
        assert watch is not None
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                except RehydrateError:
                    return  # (state "failed", kept in self.error)
                if self._stop.is_set():
                    return
                watch.wait(_IDLE_WAIT_S)
        finally:
            if self._stop.is_set():
                # Closing an inotify instance can take milliseconds (the
                # kernel waits for its readers): here, off a promote's path.
                watch.close()

    def stop(self, wait: bool = True) -> None:
        """Stop following (for good, or before a promote takes over). No
        step applies anything once this returns; ``wait``: also join the
        thread (a promote does not wait for it)."""
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.wake()
        t = self._thread
        if wait and t is not None and t is not threading.current_thread():
            t.join()
        if watch is not None and (t is None or not t.is_alive()):
            watch.close()
        with self.cv:  # (a step in progress ends before this)
            if self.state != "failed":
                self.state = "stopped"
            self.cv.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------ applying
    def step(self) -> int:
        """Apply what the log gained; returns the records applied. Raises
        (and keeps) the error that ends following."""
        try:
            return self._step()
        finally:
            self._changed()

    def _changed(self) -> None:
        on_change = self.on_change
        if on_change is not None:
            on_change()

    def _step(self) -> int:
        with self.cv:
            if self.error is not None:
                raise self.error
            if self._stop.is_set():
                return 0  # (promoted: the follower is the writer's now)
            try:
                try:
                    n = self.follower.poll()
                except FellBehindError:
                    if self._rebase is None:
                        raise
                    old, self.follower = self.follower, self._rebase()
                    old.close()
                    self.rebases += 1
                    n = self.follower.poll() + 1  # (the state changed: wake waiters)
            except RehydrateError as e:
                self.error = e
                self.state = "failed"
                self.cv.notify_all()
                raise
            self.steps += 1
            now = time.monotonic()
            lsn = self.follower.lsn
            if lsn > self.primary_lsn:
                self.primary_lsn, self.primary_time = lsn, time.time()
            if self.follower.pending_bytes:
                if self.pending_since is None:
                    self.pending_since = now
                stalled = now - self.pending_since >= STALL_AFTER_S
                self.state = "stalled" if stalled else "following"
            else:
                self.pending_since = None
                self.caught_up_at = now
                self.state = "following" if lsn >= self.primary_lsn else "catching_up"
            if n:
                self.cv.notify_all()
            return n

    def fail(self, error: BaseException) -> None:
        """Following ended with ``error`` (a receiver's): kept, reported."""
        with self.cv:
            if self.error is None:
                self.error = error
                self.state = "failed"
            self.cv.notify_all()
        self._changed()

    def heard(self) -> None:
        """A message came from the primary (the stream is alive)."""
        self.heard_at = time.monotonic()

    def heard_from_primary(self, lsn: int) -> None:
        """A heartbeat: the primary has written up to ``lsn``."""
        self.heard_at = time.monotonic()
        with self.cv:
            if lsn > self.primary_lsn:
                self.primary_lsn, self.primary_time = lsn, time.time()
            if self.follower.lsn < lsn and self.state == "following":
                self.state = "catching_up"
        self._changed()

    def wait_for_lsn(self, lsn: int, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while self.follower.lsn < lsn:
                if self.error is not None:
                    raise self.error
                if self._stop.is_set() and self.state != "stopped":
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cv.wait(left)
            return self.follower.lsn >= lsn

    def lag(self) -> dict[str, Any]:
        """Records and seconds behind what the primary is known to have
        written (docs/replication.md, "Lag and reads on a standby")."""
        with self.cv:
            lsn = self.follower.lsn
            records = max(0, self.primary_lsn - lsn)
            now = time.monotonic()
            behind = records > 0 or self.follower.pending_bytes > 0
            seconds = (now - self.caught_up_at) if behind else 0.0
            state = self.state
            silent = now - self.heard_at
            if self.remote and state in ("following", "catching_up") \
                    and silent >= SILENT_AFTER_S:
                # Cut off from the primary (it went, or moved to an address
                # this standby does not know): what it wrote since is
                # unknown, so the lag is at least the silence, and growing.
                seconds = max(seconds, silent)
                state = "catching_up"
            return {"records": records, "bytes": self.follower.pending_bytes,
                    "seconds": seconds, "lsn": lsn, "primary_lsn": max(self.primary_lsn, lsn),
                    "state": state, "silent_s": silent if self.remote else 0.0}


class Receiver:
    """A standby's receiver of a primary's log over HTTP: a thread that
    streams it into the standby's copy (``replication_client.follow``) and
    steps the follower after each write. A primary that trimmed what the
    copy needs next makes it start again from the primary's newest snapshot
    (``rebootstrap()`` returns where the stream starts then)."""

    def __init__(self, client: Any, mirror: Any, store_id: str, follow: Follow,
                 start: Optional[tuple[int, int]],
                 rebootstrap: Callable[[], tuple[int, int]]) -> None:
        self.client = client
        self.mirror = mirror
        self.store_id = store_id
        self.follow = follow
        self.start_at = start
        self.rebootstrap = rebootstrap
        self.ended: Optional[str] = None  # "moved", "stopped", or the error's reason
        self._synced_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _on_data(self, segment: int, size: int) -> None:
        self.follow.heard()
        if not self.follow.stopped:
            try:
                self.follow.step()
            except RehydrateError:
                self._stop.set()  # (kept in follow.error)
                return
        now = time.monotonic()
        if now - self._synced_at >= MIRROR_SYNC_S:
            # The copy made durable as it grows: a promote then fsyncs only
            # the last few milliseconds of it, inside its window.
            self.mirror.sync()
            self._synced_at = now

    def _on_heartbeat(self, data: dict[str, Any]) -> None:
        lsn = data.get("lsn")
        if type(lsn) is int:
            self.follow.heard_from_primary(lsn)

    def _run(self) -> None:
        from .errors import ReplicationError
        from .replication_client import follow as stream

        start = self.start_at
        while not self._stop.is_set():
            try:
                self.ended = stream(self.client, self.mirror, self.store_id,
                                    on_data=self._on_data, on_heartbeat=self._on_heartbeat,
                                    stop=self._stop, start=start)
                return
            except ReplicationError as e:
                if e.reason == "trimmed" and not self._stop.is_set():
                    try:
                        start = self.rebootstrap()
                        continue
                    except RehydrateError as again:
                        e = again  # type: ignore[assignment]
                self.ended = e.reason
                self.follow.fail(e)
                return
            except RehydrateError as e:
                self.ended = e.reason
                self.follow.fail(e)
                return

    def stop(self, wait: bool) -> None:
        self._stop.set()
        t = self._thread
        if wait and t is not None and t is not threading.current_thread():
            t.join()
            self.mirror.close()


# ---------------------------------------------------------------- local handoff
HANDOFF_NAME = "HANDOFF"
_MAX_REQUEST_BYTES = 4096


def request_handoff(directory: str, body: dict[str, Any]) -> int:
    """Ask the primary writing ``directory`` to hand over: the HANDOFF file,
    published whole and exclusively (written aside, then linked into place:
    of two standbys asking at once, one gets HandoffError, reason ``busy``).

    Returns the descriptor of the request's ``.live`` file, which this
    process holds locked (flock) until ``release_request``: the primary
    hands over only to a requester that still holds it, so a standby that
    died after asking gets no directory (``requester_alive``)."""
    path = os.path.join(directory, HANDOFF_NAME)
    request = body["request"]
    live = _fileio.private(f"{path}.{request}.live", os.O_RDWR | os.O_CREAT)
    fcntl.flock(live, fcntl.LOCK_EX)
    tmp = f"{path}.{request}.tmp"
    try:
        _fileio.write_file_atomic(tmp, json.dumps(body).encode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise HandoffError("another handoff request is pending", path=path,
                               peer=directory, reason="busy") from None
        finally:
            _fileio.unlink(tmp)
        _fileio.fsync_dir(directory)
    except BaseException:
        release_request(directory, request, live)
        raise
    return live


def release_request(directory: str, request: str, live: int) -> None:
    """The requester is done (promoted, or gave up): its ``.live`` file goes."""
    try:
        _fileio.unlink(os.path.join(directory, f"{HANDOFF_NAME}.{request}.live"))
    except FileNotFoundError:
        pass
    os.close(live)  # (and with it the flock)


def requester_alive(directory: str, request: str) -> bool:
    """Whether the standby that asked for ``request`` still holds its
    ``.live`` lock (the primary's check before it claims and before it
    fences). A gone requester's file is removed."""
    live = os.path.join(directory, f"{HANDOFF_NAME}.{request}.live")
    try:
        fd = os.open(live, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (closing drops a lock it took)
    try:
        _fileio.unlink(live)
    except FileNotFoundError:
        pass
    return False


def withdraw_request(directory: str, request: str) -> bool:
    """Take back our request if the primary has not claimed it: True if
    withdrawn, False when it is not there (the primary took it first: it is
    handing over) or is another standby's."""
    path = os.path.join(directory, HANDOFF_NAME)
    aside = f"{path}.{request}.withdrawn"
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read(_MAX_REQUEST_BYTES))
        if not isinstance(body, dict) or body.get("request") != request:
            return False
        os.rename(path, aside)
    except (FileNotFoundError, ValueError):
        return False
    _fileio.unlink(aside)
    _fileio.fsync_dir(directory)  # (gone for good: a power cut does not bring it back)
    return True


def claim_request(directory: str, store_id: Optional[str]) -> Optional[dict[str, Any]]:
    """The primary's side: take a pending request (rename, so that exactly
    one of claim and withdraw wins) and return it, checked; None when there
    is none. A request that is not for this store, or not readable, is
    dropped (its sender times out)."""
    path = os.path.join(directory, HANDOFF_NAME)
    taken = path + ".taken"
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return None
    try:
        with open(taken, "rb") as f:
            raw = f.read(_MAX_REQUEST_BYTES + 1)
        body = json.loads(raw) if len(raw) <= _MAX_REQUEST_BYTES else None
    except (OSError, ValueError):
        body = None
    finally:
        try:
            _fileio.unlink(taken)
        except FileNotFoundError:
            pass
    if not isinstance(body, dict) or not isinstance(body.get("request"), str):
        return None
    request = body["request"]
    if not (0 < len(request) <= 64 and all(c in "0123456789abcdef" for c in request)):
        return None  # (it names a file here: hex digits only)
    if store_id is not None and body.get("store_id") != store_id:
        return None
    if not requester_alive(directory, request):
        return None  # the standby that asked is gone: nobody to hand over to
    hold = body.get("hold_s")
    if not isinstance(hold, (int, float)) or not 0 < hold <= 60:
        body["hold_s"] = 2.0
    address = body.get("address")
    if address is not None and not isinstance(address, str):
        body["address"] = None
    return body


def lock_is_free(directory: str) -> bool:
    """Whether no process holds the directory's LOCK (the primary is gone),
    without taking it."""
    from .lockfile import LOCK_NAME

    try:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (closing drops the lock it may have taken)
    return True


def wait_for_fence(directory: str, request: str, epoch: int, deadline: float,
                   gone: Callable[[], bool]) -> Optional[dict[str, Any]]:
    """Wait until the MANIFEST records the handoff ``request`` (the fence:
    returned, the MANIFEST's fields) or ``gone()`` says the primary is
    gone (None), until ``deadline`` (time.monotonic()); HandoffError at it.
    A fence for another request or a newer epoch than ``epoch + 1`` is a
    HandoffError (reason ``raced``): another standby took over."""
    stamp: Optional[tuple[int, int, int]] = None  # (None: the first look reads it)
    checks = 0
    while True:
        now_stamp = _manifest.stamp(directory)
        if now_stamp != stamp:
            stamp = now_stamp
            fence = _fence_for(directory, request, epoch)
            if fence is not None:
                return fence
        checks += 1
        if checks % 50 == 0 and gone():
            # A last look: the primary may have fenced and let go just now.
            return _fence_for(directory, request, epoch)
        if time.monotonic() >= deadline:
            raise HandoffError("the primary did not hand over in time", path=directory,
                               peer=directory, reason="timeout")
        time.sleep(0.0002)  # (the protocol's wait: a handoff takes milliseconds)


def _fence_for(directory: str, request: str, epoch: int) -> Optional[dict[str, Any]]:
    """The MANIFEST when it records the handoff ``request`` past ``epoch``;
    None when it records no newer epoch; HandoffError (reason ``raced``)
    when a newer epoch came from another request."""
    try:
        man = _manifest.read(directory)
    except (CorruptionError, OSError):
        return None  # (being replaced: the next look reads it)
    if _manifest.epoch(man, directory) <= epoch:
        return None
    record = man.get("handoff") or {}
    if record.get("request") != request:
        raise HandoffError(f"the store moved to epoch {_manifest.epoch(man, directory)} by "
                           "another handoff", path=directory, peer=directory, reason="raced")
    return man


def wal_dir(directory: str) -> str:
    return os.path.join(directory, WAL_DIR)
