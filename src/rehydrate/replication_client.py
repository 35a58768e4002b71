"""The standby's side of the replication wire (docs/replication.md): a
client of a primary's ``/replication/v1/...`` endpoints, the ``Mirror``
(the standby's byte-for-byte copy of the primary's log) and ``follow``,
which streams the log into the mirror, reconnecting when the connection
drops.

What the standby does with the mirrored log (applying it, promoting) is
not here: this module moves and checks bytes.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Optional

from . import _fileio
from . import _format as F
from . import manifest as _manifest
from .errors import ConfigError, ReplicationError
from .replication import (
    BYTES,
    END,
    HEARTBEAT,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    Message,
    check_frames,
    decode_control,
    plain_name,
    read_message,
    whole_frames_end,
)
from .snapshot import SNAPSHOTS_DIR, snapshot_name
from .wal import WAL_DIR, list_segments, read_segment_version, segment_name

# Refusals a reconnect cannot mend: follow() raises them at once.
FINAL_REASONS = ("trimmed", "ahead", "foreign_store", "unauthorized", "protocol")
# What a reconnect may mend: follow() tries again, with backoff.
RETRY_REASONS = ("connection", "timeout", "truncated", "closed", "shutdown")
MAX_ERROR_BODY = 64 * 1024
READ_CHUNK = 1024 * 1024
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0


class ReplicationClient:
    """A client of one primary's replication endpoints.

    ``url`` is ``http://HOST:PORT`` or ``https://HOST:PORT``; ``token`` the
    bearer token (never put in an error: errors name the peer as
    ``scheme://host:port``); ``ssl_context`` verifies the primary for
    https (the system's CAs when None); ``timeout_s`` bounds a connect and
    each read, so a primary that stops sending (no heartbeat within
    ``timeout_s``) is ReplicationError ``timeout``.
    """

    def __init__(self, url: str, *, token: Optional[str] = None,
                 ssl_context: Optional[ssl.SSLContext] = None, timeout_s: float = 10.0) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname or u.username is not None \
                or u.password is not None or u.path not in ("", "/") or u.query or u.fragment:
            raise ConfigError("a primary's url is http://HOST:PORT or https://HOST:PORT")
        if ssl_context is not None and u.scheme != "https":
            raise ConfigError("an ssl_context is for an https:// url")
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ConfigError("timeout_s must be a number > 0")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.peer = f"{u.scheme}://{host}:{self.port}"
        self._token = token
        self._ssl = ssl_context
        self.timeout_s = float(timeout_s)

    def __repr__(self) -> str:
        return f"ReplicationClient({self.peer!r})"  # never the token

    # -- requests

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            ctx = self._ssl if self._ssl is not None else ssl.create_default_context()
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                               context=ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def _headers(self) -> dict[str, str]:
        h = {PROTOCOL_HEADER: str(PROTOCOL_VERSION), "Connection": "close"}
        if self._token is not None:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def _error(self, e: BaseException, what: str) -> ReplicationError:
        """The typed error of a failed exchange (never the token)."""
        if isinstance(e, ReplicationError):
            return e
        if isinstance(e, TimeoutError):
            return ReplicationError(f"{what}: no answer within {self.timeout_s} s",
                                    peer=self.peer, reason="timeout")
        kind = type(e).__name__
        text = getattr(e, "strerror", None) or str(e) or kind
        return ReplicationError(f"{what}: {kind}: {text}", peer=self.peer, reason="connection")

    def _open(self, method: str, path: str,
              body: Optional[bytes] = None) -> tuple[http.client.HTTPConnection,
                                                     http.client.HTTPResponse]:
        """A 200 response to ``path``; else the server's refusal, typed."""
        conn = self._connection()
        try:
            headers = self._headers()
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                refused = self._refusal(resp, f"{method} {path}")
            else:
                return conn, resp
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._error(e, f"{method} {path}") from e
        conn.close()
        raise refused

    def _refusal(self, resp: http.client.HTTPResponse, what: str) -> ReplicationError:
        try:
            raw = resp.read(MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            raw = b""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        reason = data.get("error") if isinstance(data, dict) else None
        detail = data.get("detail", "") if isinstance(data, dict) else ""
        if resp.status == 401:
            reason = "unauthorized"
        elif resp.status == 410:
            reason = "trimmed"
        elif not isinstance(reason, str) or not reason.isidentifier():
            reason = f"http_{resp.status}"
        if reason == "protocol" and isinstance(data, dict):
            detail = f"the primary speaks protocol {data.get('supported')}"
        return ReplicationError(f"{what}: {resp.status} {detail}".rstrip(),
                                peer=self.peer, reason=reason)

    def _json(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        raw_body = None if body is None else json.dumps(body).encode()
        conn, resp = self._open(method, path, raw_body)
        try:
            raw = resp.read(MAX_ERROR_BODY * 16)
        except (OSError, http.client.HTTPException) as e:
            raise self._error(e, f"{method} {path}") from e
        finally:
            conn.close()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ReplicationError(f"{method} {path}: the answer is not JSON", peer=self.peer,
                                   reason="bad_message") from e

    # -- the endpoints

    def hello(self) -> dict[str, Any]:
        """The primary's hello (docs/replication.md)."""
        data = self._json("GET", "/replication/v1/hello")
        if not isinstance(data, dict) or data.get("protocol") != PROTOCOL_VERSION:
            raise ReplicationError("the hello is not protocol 1's", peer=self.peer,
                                   reason="protocol")
        out: dict[str, Any] = data
        return out

    def snapshot_files(self, lsn: int) -> list[dict[str, Any]]:
        """[{"name", "size"}] of the primary's snapshot at ``lsn``."""
        data = self._json("GET", f"/replication/v1/snapshots/{int(lsn)}")
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(
                isinstance(f, dict) and plain_name(f.get("name")) and type(f.get("size")) is int
                and f["size"] >= 0 for f in files):
            raise ReplicationError(f"snapshot {lsn}: a malformed file listing",
                                   peer=self.peer, reason="bad_message")
        return files

    def download_snapshot(self, lsn: int, dest_store_dir: str) -> str:
        """Copy the primary's snapshot at ``lsn`` into
        ``dest_store_dir/snapshots/``: into a private tmp folder, every size
        checked against the listing, files and folder fsynced, then renamed
        into place. Returns its path; the caller checks its content with the
        snapshot loader before it trusts it."""
        files = self.snapshot_files(lsn)
        sdir = os.path.join(os.fspath(dest_store_dir), SNAPSHOTS_DIR)
        os.makedirs(sdir, mode=_fileio.DIR_MODE, exist_ok=True)
        final = os.path.join(sdir, snapshot_name(lsn))
        tmp = f"{final}.tmp-{os.getpid()}"
        if os.path.exists(final):
            raise ReplicationError(f"snapshot {lsn} is already in {sdir}", peer=self.peer,
                                   path=final, reason="exists")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, _fileio.DIR_MODE)
        try:
            for f in files:
                self._download_file(lsn, f["name"], f["size"], os.path.join(tmp, f["name"]))
            _fileio.fsync_dir(tmp)
            _fileio.rename(tmp, final)
            _fileio.fsync_dir(sdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _download_file(self, lsn: int, name: str, size: int, dest: str) -> None:
        path = f"/replication/v1/snapshots/{int(lsn)}/{urllib.parse.quote(name, safe='')}"
        conn, resp = self._open("GET", path)
        fd = _fileio.create_exclusive(dest)
        try:
            if resp.length != size:
                raise ReplicationError(f"{name}: {resp.length} bytes sent, the listing says "
                                       f"{size}", peer=self.peer, path=dest,
                                       reason="bad_snapshot")
            got = 0
            while got < size:
                chunk = resp.read(min(READ_CHUNK, size - got))
                if not chunk:
                    raise ReplicationError(f"{name}: the answer ended at {got} of {size} "
                                           "bytes", peer=self.peer, path=dest, offset=got,
                                           reason="truncated")
                _fileio.write_all(fd, chunk)
                got += len(chunk)
            _fileio.fsync(fd)
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and e.filename is not None:
                raise  # the local disk's error, as it is
            raise self._error(e, f"GET {path}") from e
        finally:
            _fileio.close(fd)
            conn.close()

    def stream_log(self, store_id: str, segment: int, offset: int) -> Iterator[Message]:
        """The primary's log from byte ``offset`` of segment ``segment``: each
        message checked (its header; BYTES bodies are checked by whoever
        writes them, ``Mirror.write``). Ends after an END message; raises
        ReplicationError when the stream breaks (``closed``, ``truncated``,
        ``timeout``: no message within ``timeout_s``, ``connection``)."""
        query = urllib.parse.urlencode({"store_id": store_id, "segment": int(segment),
                                        "offset": int(offset)})
        path = f"/replication/v1/log?{query}"
        conn, resp = self._open("GET", path)
        position = 0

        def read_exactly(n: int) -> bytes:
            parts, got = [], 0
            while got < n:
                chunk = resp.read(n - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
            return b"".join(parts)

        try:
            while True:
                try:
                    msg = read_message(read_exactly, peer=self.peer, position=position)
                except (OSError, http.client.HTTPException) as e:
                    raise self._error(e, "the log stream") from e
                position += 32 + len(msg.body)
                yield msg
                if msg.kind == END:
                    return
        finally:
            conn.close()

    def handoff(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a handoff phase (docs/replication.md, "Handoff"); the
        primary's answer, or ReplicationError with its reason (409)."""
        data = self._json("POST", "/replication/v1/handoff", body)
        if not isinstance(data, dict):
            raise ReplicationError("the handoff answer is not a JSON object", peer=self.peer,
                                   reason="bad_message")
        out: dict[str, Any] = data
        return out


class Mirror:
    """The standby's byte-for-byte copy of the primary's log in
    ``store_dir/wal/``. Every body is checked (``check_frames``) before a
    byte of it is written; a segment is created whole (tmp, fsync, rename)
    when its first message comes, and the one before it is then complete."""

    def __init__(self, store_dir: str) -> None:
        self.waldir = os.path.join(os.fspath(store_dir), WAL_DIR)
        os.makedirs(self.waldir, mode=_fileio.DIR_MODE, exist_ok=True)
        self._fd = -1
        self._segment: Optional[int] = None
        self._version = F.FORMAT_VERSION
        # Where the copy ends, once read from the directory: kept up to date
        # by write (no listing per message). The receiver writes; a promote
        # syncs from another thread: _lock.
        self._pos: Optional[tuple[int, int]] = None
        self._listed = False
        self._lock = threading.Lock()

    def position(self) -> Optional[tuple[int, int]]:
        """(first LSN, size) of the newest segment; None when there is none."""
        if not self._listed:
            segments, _, _ = list_segments(self.waldir)
            self._pos = (segments[-1].first_lsn, segments[-1].size) if segments else None
            self._listed = True
        return self._pos

    def cut_torn_tail(self) -> int:
        """Cut bytes past the last whole frame of the newest segment (a
        standby killed inside a write leaves part of a frame there: the
        primary has it whole and sends it again from the cut); returns the
        bytes cut. Only at open, before anything streams into the copy."""
        segments, _, _ = list_segments(self.waldir)
        if not segments:
            return 0
        newest = segments[-1]
        with open(newest.path, "rb") as f:
            data = f.read()
        if len(data) < F.SEGMENT_HEADER_BYTES:
            return 0  # (created whole: not a tail a write left; the loader says what it is)
        end = whole_frames_end(data, F.SEGMENT_HEADER_BYTES, read_segment_version(newest.path))
        if end == len(data):
            return 0
        fd = os.open(newest.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, end)
            _fileio.fsync(fd)
        finally:
            os.close(fd)
        self._listed = False
        return len(data) - end

    def write(self, segment: int, offset: int, body: bytes) -> int:
        """Append a BYTES message's body; returns the segment's new size.
        ReplicationError ``bad_frame`` (the body fails its checks) or
        ``bad_message`` (not where the copy ends); nothing written then."""
        with self._lock:
            size = self._write(segment, offset, body)
            self._pos = (segment, size)
            return size

    def _write(self, segment: int, offset: int, body: bytes) -> int:
        pos = self.position()
        if offset == 0:
            if pos is not None and segment <= pos[0]:
                raise ReplicationError(f"segment {segment} is not newer than the copy's "
                                       f"newest ({pos[0]})", path=segment_name(segment),
                                       offset=0, reason="bad_message")
            check_frames(body, segment, 0, self._version)
            self._create(segment, body)
            return len(body)
        if pos is None or pos[0] != segment or pos[1] != offset:
            raise ReplicationError(f"bytes for segment {segment} at offset {offset}; the copy "
                                   f"ends at {pos}", path=segment_name(segment), offset=offset,
                                   reason="bad_message")
        path = os.path.join(self.waldir, segment_name(segment))
        if self._segment != segment:
            self._version = read_segment_version(path)
        check_frames(body, segment, offset, self._version)
        if self._segment != segment:
            self._close_active()
            self._fd = _fileio.open_append(path)
            self._segment = segment
        _fileio.write_all(self._fd, body)
        return offset + len(body)

    def _create(self, segment: int, body: bytes) -> None:
        if self._fd >= 0:
            _fileio.fsync(self._fd)  # the previous segment is complete
        self._close_active()
        path = os.path.join(self.waldir, segment_name(segment))
        tmp = path + ".tmp"
        try:
            _fileio.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = _fileio.create_exclusive(tmp)
        try:
            _fileio.write_all(fd, body)
            _fileio.fsync(fd)
            _fileio.rename(tmp, path)
            _fileio.fsync_dir(self.waldir)
        except BaseException:
            _fileio.close(fd)
            raise
        self._fd, self._segment = fd, segment
        self._version = read_segment_version(path)

    def sync(self) -> None:
        """Make what was written durable (each new segment's name was made
        durable as it was created)."""
        with self._lock:
            if self._fd >= 0:
                _fileio.fsync(self._fd)

    def trim_below(self, lsn: int) -> list[str]:
        """Remove segments that hold only LSNs below ``lsn`` (the next
        segment starts at or below it); the names removed."""
        segments, _, _ = list_segments(self.waldir)
        gone = []
        for seg, nxt in zip(segments, segments[1:]):
            if nxt.first_lsn <= lsn and seg.first_lsn != self._segment:
                _fileio.unlink(seg.path)
                gone.append(os.path.basename(seg.path))
        if gone:
            _fileio.fsync_dir(self.waldir)
            self._listed = False
        return gone

    def _close_active(self) -> None:
        if self._fd >= 0:
            fd, self._fd, self._segment = self._fd, -1, None
            _fileio.close(fd)

    def reset(self) -> None:
        """The copy was replaced under this mirror (a bootstrap again):
        forget where it ended and the file it appended to."""
        with self._lock:
            self._close_active()
            self._listed = False
            self._pos = None

    def close(self) -> None:
        with self._lock:
            self._close_active()


def start_of(hello: dict[str, Any]) -> tuple[int, int]:
    """Where a copy with nothing yet starts: the segment that holds the
    primary's ``log_start``, from its header."""
    segments = [s for s in hello.get("segments", []) if type(s) is int]
    log_start = hello.get("log_start", 1)
    holding = [s for s in segments if s <= log_start]
    if holding:
        return max(holding), 0
    if segments:
        return min(segments), 0
    raise ReplicationError("the primary lists no segments", reason="ahead")


def follow(client: ReplicationClient, mirror: Mirror, store_id: str, *,
           on_data: Callable[[int, int], None],
           on_heartbeat: Callable[[dict[str, Any]], None],
           stop: threading.Event, start: Optional[tuple[int, int]] = None) -> str:
    """Stream the primary's log into ``mirror`` from where the copy ends
    (else ``start``, else the segment holding the primary's log start)
    until ``stop`` is set (returns "stopped") or the primary ends the
    stream (returns END's reason: "moved"). Calls ``on_data(segment,
    new_size)`` after each write and ``on_heartbeat(data)`` for each
    heartbeat. A dropped connection, a timeout or a truncated message is
    retried, with backoff and jitter; the rest raise ReplicationError
    (``trimmed``, ``ahead``, ``foreign_store``, ``unauthorized``,
    ``protocol``, ``bad_message``, ``bad_frame``, ...)."""
    failures = 0
    while not stop.is_set():
        try:
            pos = mirror.position() or start or start_of(client.hello())
            for msg in client.stream_log(store_id, pos[0], pos[1]):
                if msg.kind == BYTES:
                    size = mirror.write(msg.segment, msg.offset, msg.body)
                    failures = 0
                    on_data(msg.segment, size)
                elif msg.kind == HEARTBEAT:
                    failures = 0
                    on_heartbeat(decode_control(msg, peer=client.peer))
                else:
                    end = decode_control(msg, peer=client.peer)
                    reason = end.get("reason")
                    if reason == "moved":
                        return "moved"
                    # "shutdown" is retried below; "trimmed", "damaged" are not.
                    raise ReplicationError(f"the primary ended the stream: {end}",
                                           peer=client.peer, reason=str(reason))
                if stop.is_set():
                    return "stopped"
        except ReplicationError as e:
            if e.reason not in RETRY_REASONS:
                raise
            failures += 1
            # Backoff with jitter: many standbys do not come back at once.
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** min(failures, 10)))
            stop.wait(delay * random.uniform(0.5, 1.0))
    return "stopped"


def bootstrap(client: ReplicationClient, hello: dict[str, Any], directory: str, *,
              again: bool = False) -> tuple[int, int]:
    """Make ``directory`` a standby's copy of the primary's store: its newest
    snapshot (checked by the loader when the standby opens), a MANIFEST with
    the primary's identity, epoch, versions and ledger, and an empty log
    copy. Returns where the log stream starts: the segment holding the LSN
    after the snapshot, from its header. ``again``: the directory is a copy
    already whose next segment the primary trimmed; its log copy is dropped
    (the primary no longer has it either) and the newest snapshot fetched."""
    store_id = hello.get("store_id")
    if not isinstance(store_id, str):
        raise ReplicationError("the primary has no store identity", peer=client.peer,
                               reason="no_identity")
    snaps = [s for s in hello.get("snapshots") or [] if type(s) is int and s > 0]
    snap = max(snaps) if snaps else 0
    log_start = hello.get("log_start", 1)
    if type(log_start) is not int or (snap == 0 and log_start > 1):
        raise ReplicationError("the primary has no snapshot and its log does not start at "
                               "LSN 1: nothing to start a copy from", peer=client.peer,
                               reason="no_base")
    segments = [s for s in hello.get("segments") or [] if type(s) is int]
    holding = [s for s in segments if s <= snap + 1]
    if not holding:
        raise ReplicationError(f"the primary's log has no segment holding LSN {snap + 1}",
                               peer=client.peer, reason="trimmed")
    directory = os.fspath(directory)
    waldir = os.path.join(directory, WAL_DIR)
    if not again:
        leftover = set(os.listdir(directory)) if os.path.isdir(directory) else set()
        if leftover - {WAL_DIR, SNAPSHOTS_DIR}:
            # (wal/ and snapshots/ alone: a bootstrap that stopped before its MANIFEST)
            raise ReplicationError(f"{directory} is not empty and is not a store: a standby's "
                                   "copy starts in an empty directory", path=directory,
                                   peer=client.peer, reason="not_empty")
        for sub in (WAL_DIR, SNAPSHOTS_DIR):
            shutil.rmtree(os.path.join(directory, sub), ignore_errors=True)
    else:
        for name in os.listdir(waldir) if os.path.isdir(waldir) else []:
            _fileio.unlink(os.path.join(waldir, name))
    _fileio.makedirs(waldir)
    _fileio.fsync_dir(directory)
    if snap and not os.path.isdir(os.path.join(directory, SNAPSHOTS_DIR, snapshot_name(snap))):
        client.download_snapshot(snap, directory)
    man = {"format": F.FORMAT_VERSION, "store_id": store_id,
           "epoch": hello.get("epoch", 1), "snapshots": [snap] if snap else [],
           # (the log starts at a segment's start, as a primary's trim leaves it)
           "log_start": max(holding),
           "versions": hello.get("versions") or {}, "ledger": hello.get("ledger") or []}
    _manifest.write(directory, man)
    if again:
        # The MANIFEST no longer names the copy's older snapshots: drop them
        # (after it, so a crash between the two leaves only unlisted garbage,
        # which the next bootstrap drops too).
        sdir = os.path.join(directory, SNAPSHOTS_DIR)
        keep = snapshot_name(snap) if snap else None
        for name in os.listdir(sdir) if os.path.isdir(sdir) else []:
            if name != keep:
                shutil.rmtree(os.path.join(sdir, name), ignore_errors=True)
    return max(holding), 0
