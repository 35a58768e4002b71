"""The replication protocol, version 1 (docs/replication.md): its messages,
the checks a receiver makes, and the primary's ``/replication/v1/...``
endpoints.

The endpoints are given a ``Source`` (what a primary store hands out: its
directory, a hello, a wait for the log to grow, a handoff) and never touch
a store's fields. observe.py's HTTP handler dispatches replication paths
here when ``serve_http(replication=True)`` asked for them; nothing of this
module is imported before that.
"""

from __future__ import annotations

import hmac
import json
import os
import ssl
import stat
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple, Optional

from . import _format as F
from ._backend import core
from .errors import ConfigError, ReplicationError, UnsupportedFormatError
from .snapshot import SNAPSHOTS_DIR, snapshot_name
from .wal import (
    WAL_DIR,
    list_segments,
    segment_header_problem,
    segment_name,
    segment_version,
)

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = (PROTOCOL_VERSION,)
PROTOCOL_HEADER = "X-Rehydrate-Protocol"
PREFIX = "/replication/v1/"

MAGIC = b"RHRP"
BYTES = 1
HEARTBEAT = 2
END = 3
KINDS = (BYTES, HEARTBEAT, END)
HEADER = struct.Struct("<4sBBHQQII")
HEADER_BYTES = 32
HEADER_CRC_SPAN = 28  # header_crc covers header bytes [0, 28)
assert HEADER.size == HEADER_BYTES
# One frame at its largest, or several whole frames up to CHUNK_BYTES.
MAX_BODY_BYTES = F.MAX_FRAME_PAYLOAD_BYTES + F.FRAME_HEADER_BYTES
CHUNK_BYTES = 8 * 1024 * 1024
# A heartbeat or an END is a small JSON object.
MAX_CONTROL_BYTES = 64 * 1024
# At least one heartbeat a second (the receiver's liveness check).
HEARTBEAT_S = 0.5
WAIT_S = HEARTBEAT_S  # an idle stream beats each time it wakes
MAX_REQUEST_BYTES = 64 * 1024
FILE_CHUNK_BYTES = 1024 * 1024


class Message(NamedTuple):
    kind: int
    segment: int
    offset: int
    body: bytes


@dataclass
class Source:
    """What a primary store gives the replication endpoints."""

    path: str  # the store directory
    # {"store_id", "epoch", "role", "lsn", "durable_lsn", "log_start", "snapshots"}
    hello: Callable[[], dict[str, Any]]
    # (seen_lsn, timeout_s) -> the written LSN, returning early once it is > seen_lsn
    wait_for_log: Callable[[int, float], int]
    # the checked POST body -> the answer; raises ReplicationError (or a
    # subclass) whose reason becomes the 409's "error"
    handoff: Callable[[dict[str, Any]], dict[str, Any]]


# -- messages ----------------------------------------------------------------


def encode_message(kind: int, segment: int, offset: int, body: bytes) -> bytes:
    """One message: the 32-byte header (its own CRC32C) and ``body``."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"message body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    head = HEADER.pack(MAGIC, kind, 0, 0, segment, offset, len(body), 0)[:HEADER_CRC_SPAN]
    return head + struct.pack("<I", core().crc32c(head)) + bytes(body)


def encode_control(kind: int, data: dict[str, Any]) -> bytes:
    """A HEARTBEAT or END message carrying ``data`` as JSON."""
    return encode_message(kind, 0, 0, json.dumps(data, sort_keys=True).encode())


def read_message(read_exactly: Callable[[int], bytes], *, peer: Optional[str] = None,
                 position: Optional[int] = None) -> Message:
    """The next message of a stream, every header field checked.

    ``read_exactly(n)`` returns ``n`` bytes, or fewer where the stream
    ended. ``position`` (the stream's byte count before this message) is
    the error's ``offset``. A stream that ends between messages is
    ReplicationError ``closed``, inside one ``truncated``; a header that
    fails a check is ``bad_message``.
    """
    raw = read_exactly(HEADER_BYTES)
    if len(raw) == 0:
        raise ReplicationError("the stream ended", peer=peer, offset=position, reason="closed")
    if len(raw) < HEADER_BYTES:
        raise ReplicationError(f"the stream ended {len(raw)} bytes into a message header",
                               peer=peer, offset=position, reason="truncated")
    magic, kind, r1, r2, segment, offset, length, crc = HEADER.unpack(raw)

    def bad(why: str) -> ReplicationError:
        return ReplicationError(why, peer=peer, offset=position, reason="bad_message")

    if magic != MAGIC:
        raise bad(f"bad message magic {magic!r}")
    if core().crc32c(raw[:HEADER_CRC_SPAN]) != crc:
        raise bad("message header checksum mismatch")
    if kind not in KINDS:
        raise bad(f"unknown message kind {kind}")
    if r1 or r2:
        raise bad("nonzero reserved fields")
    cap = MAX_BODY_BYTES if kind == BYTES else MAX_CONTROL_BYTES
    if length > cap:
        raise bad(f"message body of {length} bytes exceeds {cap}")
    if kind != BYTES and (segment or offset):
        raise bad("a control message names a segment")
    body = read_exactly(length) if length else b""
    if len(body) < length:
        raise ReplicationError(f"the stream ended {len(body)} of {length} bytes into a "
                               f"message body (segment {segment}, offset {offset})",
                               peer=peer, offset=position, reason="truncated")
    return Message(kind, segment, offset, body)


def decode_control(msg: Message, *, peer: Optional[str] = None) -> dict[str, Any]:
    """The JSON object a HEARTBEAT or END carries (bad_message if it is not one)."""
    try:
        data = json.loads(msg.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise ReplicationError("a control message's body is not a JSON object", peer=peer,
                               reason="bad_message")
    return data


def check_frames(body: bytes, segment: int, offset: int, version: int, *,
                 peer: Optional[str] = None) -> None:
    """Check that a BYTES body is (a segment header when ``offset`` is 0,
    then) whole frames, each passing its header check and payload CRC32C,
    their LSNs following one another. ``version`` is the segment's format
    (its header's, when the body carries it). ReplicationError
    ``bad_frame`` (or ``unsupported_format``) naming where."""
    c = core()
    where = segment_name(segment)
    pos = 0
    if offset == 0:
        try:
            why = segment_header_problem(body, where, segment)
        except UnsupportedFormatError as e:
            raise ReplicationError(e.detail, peer=peer, path=where, offset=0,
                                   reason="unsupported_format") from e
        if why is not None:
            raise ReplicationError(why, peer=peer, path=where, offset=0, reason="bad_frame")
        version = segment_version(body)
        pos = F.SEGMENT_HEADER_BYTES
    elif offset < F.SEGMENT_HEADER_BYTES:
        raise ReplicationError("bytes inside a segment header", peer=peer, path=where,
                               offset=offset, reason="bad_frame")
    hb = F.frame_header_bytes(version)
    next_lsn: Optional[int] = None
    while pos < len(body):
        at = offset + pos if offset else pos

        def bad(why: str, lsn: Optional[int] = None) -> ReplicationError:
            return ReplicationError(why, peer=peer, path=where, offset=at, lsn=lsn,
                                    reason="bad_frame")

        h = c.parse_frame_header(body, pos, version)
        if h is None:
            raise bad("a partial frame header")
        why = c.header_problem(h)
        if why is not None:
            raise bad(why)
        end = pos + hb + h.stored_len
        if end > len(body):
            raise bad("a frame runs past the message", h.first_lsn)
        if c.crc32c(body[pos + hb:end], c.crc32c(body[pos + 8:pos + hb])) != h.crc:
            raise bad("frame checksum mismatch", h.first_lsn)
        if next_lsn is not None and h.first_lsn != next_lsn:
            raise bad(f"frame starts at LSN {h.first_lsn}, expected {next_lsn}", h.first_lsn)
        next_lsn = h.first_lsn + h.count
        pos = end


def whole_frames_end(buf: bytes, start: int, version: int) -> int:
    """Where the whole frames from ``start`` of ``buf`` end (``start`` when
    none is whole): the sender's boundary. A header that fails its checks
    ends the run too (a writer mid-write, or damage the sender reports)."""
    c = core()
    hb = F.frame_header_bytes(version)
    pos = start
    while True:
        h = c.parse_frame_header(buf, pos, version)
        if h is None or c.header_problem(h) is not None:
            return pos
        end = pos + hb + h.stored_len
        if end > len(buf):
            return pos
        pos = end


def frame_size_at(fd: int, offset: int, version: int) -> Optional[int]:
    """The size of the frame whose header is at ``offset`` of the file, or
    None when no good header is there (yet)."""
    c = core()
    hb = F.frame_header_bytes(version)
    raw = os.pread(fd, hb, offset)
    h = c.parse_frame_header(raw, 0, version)
    if h is None or c.header_problem(h) is not None:
        return None
    size: int = hb + h.stored_len
    return size


# -- configuration -------------------------------------------------------------


def check_config(token: Optional[str], ssl_context: Optional[ssl.SSLContext]) -> None:
    """ConfigError unless replication is protected: a token, or TLS that
    verifies client certificates. A token is visible ASCII (it travels in
    an HTTP header); it is never put in the error."""
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise ConfigError("ssl_context must be an ssl.SSLContext")
    if token is None:
        if ssl_context is None or ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ConfigError("replication=True needs a token, or an ssl_context whose "
                              "verify_mode is CERT_REQUIRED (client certificates)")
        return
    if (not isinstance(token, str) or not token
            or not all(33 <= ord(ch) <= 126 for ch in token)):
        raise ConfigError("the replication token must be a non-empty str of visible "
                          "ASCII characters")


# -- the endpoints -------------------------------------------------------------


class Endpoints:
    """The ``/replication/v1/...`` endpoints of one server: ``get`` and
    ``post`` take the request's handler and answer it. ``close()`` ends the
    log streams (each sends END ``shutdown``) and waits for them."""

    def __init__(self, source: Source, token: Optional[str]) -> None:
        self.source = source
        self._token = None if token is None else token.encode("ascii")
        self._closing = threading.Event()
        self._streams: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def close(self, timeout_s: float = 5.0) -> None:
        self._closing.set()
        with self._lock:
            streams = list(self._streams)
        deadline = time.monotonic() + timeout_s
        for t in streams:
            t.join(max(0.0, deadline - time.monotonic()))

    # Checks every request passes before it sees a byte of state.
    def _admit(self, h: BaseHTTPRequestHandler) -> bool:
        if self._token is not None:
            given = h.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            # Constant time: the comparison says nothing of how much matched.
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                value.strip().encode("latin-1", "replace"), self._token)
            if not ok:
                send_json(h, 401, {"error": "unauthorized",
                                   "detail": "a replication request needs the bearer token"},
                          {"WWW-Authenticate": "Bearer"})
                return False
        if h.headers.get(PROTOCOL_HEADER, "").strip() != str(PROTOCOL_VERSION):
            send_json(h, 400, {"error": "protocol", "supported": list(SUPPORTED_PROTOCOLS),
                               "detail": f"this server speaks {PROTOCOL_HEADER}: "
                                         f"{PROTOCOL_VERSION}"})
            return False
        return True

    def get(self, h: BaseHTTPRequestHandler, path: str, query: str) -> None:
        if not self._admit(h):
            return
        rest = path[len(PREFIX):]
        parts = rest.split("/")
        try:
            if rest == "hello":
                send_json(h, 200, self._hello())
            elif rest == "log":
                self._log(h, query)
            elif len(parts) == 2 and parts[0] == "snapshots":
                self._snapshot_listing(h, parts[1])
            elif len(parts) == 3 and parts[0] == "snapshots":
                self._snapshot_file(h, parts[1], parts[2])
            else:
                not_found(h, path)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client went

    def post(self, h: BaseHTTPRequestHandler, path: str) -> None:
        if not self._admit(h):
            return
        if path[len(PREFIX):] != "handoff":
            not_found(h, path)
            return
        body = read_json_body(h)
        if body is None:
            return
        hello = self.source.hello()
        if body["store_id"] != hello.get("store_id"):
            send_json(h, 409, {"error": "foreign_store",
                               "detail": "the request names another store"})
            return
        try:
            answer = self.source.handoff(body)
        except ReplicationError as e:
            send_json(h, 409, {"error": e.reason, "detail": e.detail})
            return
        send_json(h, 200, answer)

    def _hello(self) -> dict[str, Any]:
        out = dict(self.source.hello())
        out["protocol"] = PROTOCOL_VERSION
        out["format"] = F.FORMAT_VERSION
        # Where each segment starts: what a standby asks the log for.
        segments, _, _ = list_segments(os.path.join(self.source.path, WAL_DIR))
        out["segments"] = [s.first_lsn for s in segments]
        return out

    # -- snapshots

    def _snapshot_dir(self, lsn_text: str) -> Optional[str]:
        """The listed snapshot's folder, or None (not a listed LSN)."""
        if not (lsn_text.isascii() and lsn_text.isdigit()
                and len(lsn_text) <= F.SEGMENT_NAME_DIGITS):
            return None
        lsn = int(lsn_text)
        if lsn not in [s for s in self.source.hello().get("snapshots", [])
                       if type(s) is int]:
            return None
        return os.path.join(self.source.path, SNAPSHOTS_DIR, snapshot_name(lsn))

    def _snapshot_listing(self, h: BaseHTTPRequestHandler, lsn_text: str) -> None:
        spath = self._snapshot_dir(lsn_text)
        files = None if spath is None else snapshot_files(spath)
        if spath is None or files is None:
            send_json(h, 404, {"error": "no_such_snapshot", "detail": "not a listed snapshot"})
            return
        send_json(h, 200, {"lsn": int(lsn_text), "files": files})

    def _snapshot_file(self, h: BaseHTTPRequestHandler, lsn_text: str, quoted: str) -> None:
        spath = self._snapshot_dir(lsn_text)
        try:
            name = urllib.parse.unquote(quoted, errors="strict")
        except UnicodeDecodeError:
            name = ""
        files = None if spath is None else snapshot_files(spath)
        # Only a name the listing gives: never a path out of the folder.
        if spath is None or files is None or not plain_name(name) \
                or name not in {f["name"] for f in files}:
            send_json(h, 404, {"error": "no_such_file",
                               "detail": "not a file of a listed snapshot"})
            return
        try:
            fd = os.open(os.path.join(spath, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:  # removed since the listing (a newer checkpoint)
            send_json(h, 404, {"error": "no_such_file", "detail": "the file is gone"})
            return
        try:
            size = os.fstat(fd).st_size
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(size))
            h.end_headers()
            sent = 0
            while sent < size:
                chunk = os.pread(fd, min(FILE_CHUNK_BYTES, size - sent), sent)
                if not chunk:
                    break  # shorter than it was: the client sees fewer bytes than promised
                h.wfile.write(chunk)
                sent += len(chunk)
        finally:
            os.close(fd)

    # -- the log

    def _log(self, h: BaseHTTPRequestHandler, query: str) -> None:
        try:
            q = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=True,
                                      max_num_fields=8)
        except ValueError:
            q = {}
        args = {k: v[0] for k, v in q.items() if len(v) == 1}
        seg_text, off_text = args.get("segment", ""), args.get("offset", "")
        if not (seg_text.isascii() and seg_text.isdigit() and off_text.isascii()
                and off_text.isdigit() and len(seg_text) <= 20 and len(off_text) <= 20
                and "store_id" in args):
            send_json(h, 400, {"error": "bad_request",
                               "detail": "the log needs store_id, segment and offset"})
            return
        if args["store_id"] != self.source.hello().get("store_id"):
            send_json(h, 409, {"error": "foreign_store",
                               "detail": "the request names another store"})
            return
        segment, offset = int(seg_text), int(off_text)
        opened = open_segment(self.source.path, segment, offset)
        if isinstance(opened, tuple):
            code, reason, detail = opened
            send_json(h, code, {"error": reason, "detail": detail})
            return
        me = threading.current_thread()
        with self._lock:
            self._streams.add(me)
        try:
            h.close_connection = True
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Connection", "close")
            h.end_headers()
            stream = LogStream(self.source, opened, segment, offset, h.wfile.write,
                               self._closing)
            stream.run()
        finally:
            os.close(opened)
            with self._lock:
                self._streams.discard(me)


def open_segment(path: str, segment: int, offset: int) -> int | tuple[int, str, str]:
    """An fd on the segment a log request asks for, or the answer that
    refuses it: (status, reason, detail)."""
    waldir = os.path.join(path, WAL_DIR)
    try:
        fd = os.open(os.path.join(waldir, segment_name(segment)),
                     os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        segments, _, _ = list_segments(waldir)
        if segments and segment > segments[-1].first_lsn:
            return 409, "ahead", f"segment {segment} is past the log's end"
        if not segments or segment < segments[0].first_lsn:
            return 410, "trimmed", f"segment {segment} is gone (trimmed)"
        return 404, "no_such_segment", f"no segment starts at LSN {segment}"
    except OSError as e:
        return 404, "no_such_segment", f"segment {segment}: {e.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if offset > st.st_size:
            os.close(fd)
            return 409, "ahead", f"offset {offset} is past segment {segment}'s end"
        version = segment_version(os.pread(fd, F.SEGMENT_HEADER_BYTES, 0))
        # A stream starts at a frame (or the header): a good header must be
        # there unless the file ends before one would.
        if 0 < offset < F.SEGMENT_HEADER_BYTES or (
                offset + F.frame_header_bytes(version) <= st.st_size
                and offset > 0 and frame_size_at(fd, offset, version) is None):
            os.close(fd)
            return 409, "bad_offset", (f"offset {offset} is not where a frame of segment "
                                       f"{segment} starts")
    except OSError as e:
        os.close(fd)
        return 404, "no_such_segment", f"segment {segment}: {e}"
    return fd


class LogStream:
    """Sends one segment after another from (``segment``, ``offset``):
    whole frames only, at most CHUNK_BYTES at a time (one frame when it is
    bigger), a heartbeat at least every second, END when the primary moved
    (everything sent), the log was trimmed under the stream, or the server
    closes. The fd of the segment being sent stays open: a checkpoint may
    unlink the file meanwhile."""

    def __init__(self, source: Source, fd: int, segment: int, offset: int,
                 write: Callable[[bytes], Any], closing: threading.Event) -> None:
        self.source = source
        self.fd = fd
        self.segment = segment
        self.pos = offset
        self.write = write
        self.closing = closing
        self.waldir = os.path.join(source.path, WAL_DIR)
        self.version = segment_version(os.pread(fd, F.SEGMENT_HEADER_BYTES, 0))
        self.last_lsn: Optional[int] = None  # the last LSN sent, when known
        self.last_beat = 0.0

    def run(self) -> None:
        try:
            self._run()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the receiver went; it reconnects from where its copy ends

    def _run(self) -> None:
        while True:
            if self.closing.is_set():
                self._end({"reason": "shutdown"})
                return
            # The written LSN before the read: bytes up to it are in the file.
            mark = self.source.wait_for_log(0, 0.0)
            if self._send_available():
                self._beat_if_due()
                continue
            self._beat_if_due()
            hello = self.source.hello()
            nxt = self._next_segment()
            if nxt is not None:
                # The writer finished this segment before it made the next:
                # one more read has all of it.
                if self._send_available():
                    continue
                if self.pos < os.fstat(self.fd).st_size:
                    self._end({"reason": "damaged", "segment": self.segment,
                               "offset": self.pos})
                    return
                if not self._switch(nxt):
                    return
                continue
            if hello.get("role") == "moved" and not self._send_available():
                self._end({"reason": "moved", "final_lsn": hello.get("lsn"),
                           "epoch": hello.get("epoch")})
                return
            seen = max(mark, self.last_lsn or 0)
            self.source.wait_for_log(seen, WAIT_S)

    def _send_available(self) -> bool:
        """Send what whole frames (and, at offset 0, the header) the file
        holds past ``pos``; True if anything was sent."""
        sent = False
        while not self.closing.is_set():
            size = os.fstat(self.fd).st_size
            if self.pos >= size:
                return sent
            start = self.pos
            if start == 0:
                if size < F.SEGMENT_HEADER_BYTES:
                    return sent
                head = os.pread(self.fd, F.SEGMENT_HEADER_BYTES, 0)
                self.version = segment_version(head)
                start = F.SEGMENT_HEADER_BYTES
            want = min(CHUNK_BYTES, size - start)
            first = frame_size_at(self.fd, start, self.version) if start < size else None
            if first is not None and first > want:
                want = first  # one frame bigger than a chunk goes alone
            buf = os.pread(self.fd, want, start) if start < size else b""
            end = whole_frames_end(buf, 0, self.version)
            if self.pos == 0:
                body = head + buf[:end]
            elif end == 0:
                return sent
            else:
                body = buf[:end]
            self._note_lsns(buf[:end])
            self.write(encode_message(BYTES, self.segment, self.pos, body))
            self.pos = start + end
            sent = True
            self._beat_if_due()
        return sent

    def _note_lsns(self, frames: bytes) -> None:
        """Remember the last LSN of the frames sent (for the trim check and
        the wait)."""
        c = core()
        hb = F.frame_header_bytes(self.version)
        pos = 0
        while pos < len(frames):
            h = c.parse_frame_header(frames, pos, self.version)
            self.last_lsn = h.first_lsn + h.count - 1
            pos += hb + h.stored_len

    def _next_segment(self) -> Optional[tuple[int, bool]]:
        """(first LSN of the segment after this one, whether this one is
        still listed), or None when this is the newest."""
        segments, _, _ = list_segments(self.waldir)
        later = [s.first_lsn for s in segments if s.first_lsn > self.segment]
        if not later:
            return None
        return later[0], any(s.first_lsn == self.segment for s in segments)

    def _switch(self, nxt: tuple[int, bool]) -> bool:
        first, listed = nxt
        # While this segment is listed, none after it was trimmed (a trim
        # goes oldest first); once it is not, the next must follow it.
        if not listed and (self.last_lsn is None or first != self.last_lsn + 1):
            self._end({"reason": "trimmed", "segment": first})
            return False
        try:
            fd = os.open(os.path.join(self.waldir, segment_name(first)),
                         os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._end({"reason": "trimmed", "segment": first})
            return False
        os.dup2(fd, self.fd)  # the handler closes self.fd
        os.close(fd)
        self.segment, self.pos = first, 0
        return True

    def _beat_if_due(self) -> None:
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_S:
            self.last_beat = now
            hello = self.source.hello()
            self.write(encode_control(HEARTBEAT, {
                "lsn": hello.get("lsn"), "durable_lsn": hello.get("durable_lsn"),
                "time": time.time(), "epoch": hello.get("epoch")}))

    def _end(self, data: dict[str, Any]) -> None:
        self.write(encode_control(END, data))


# -- small HTTP helpers ----------------------------------------------------------


def snapshot_files(spath: str) -> Optional[list[dict[str, Any]]]:
    """[{"name", "size"}] of a snapshot folder's regular files, by name;
    None when the folder is not there."""
    try:
        names = sorted(os.listdir(spath))
    except OSError:
        return None
    out = []
    for name in names:
        try:
            st = os.lstat(os.path.join(spath, name))
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and plain_name(name):
            out.append({"name": name, "size": st.st_size})
    return out


def plain_name(name: object) -> bool:
    """A file name of a snapshot folder, never a path out of it."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and os.sep not in name and "\x00" not in name and not name.startswith("."))


def send_json(h: BaseHTTPRequestHandler, code: int, data: dict[str, Any],
              headers: Optional[dict[str, str]] = None) -> None:
    body = json.dumps(data).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def not_found(h: BaseHTTPRequestHandler, path: str) -> None:
    send_json(h, 404, {"error": "not_found", "detail": f"no such path {path!r}"})


def read_json_body(h: BaseHTTPRequestHandler) -> Optional[dict[str, Any]]:
    """The handoff request's JSON body, its fields checked; None after
    answering 400."""
    try:
        n = int(h.headers.get("Content-Length", ""))
    except ValueError:
        n = -1
    data: Any = None
    if 0 <= n <= MAX_REQUEST_BYTES:
        try:
            data = json.loads(h.rfile.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
    ok = (isinstance(data, dict) and isinstance(data.get("store_id"), str)
          and isinstance(data.get("request"), str)
          and data.get("phase") in ("prepare", "commit", "abort", "promote")
          and (data.get("timeout_s") is None or (type(data["timeout_s"]) in (int, float)
                                                 and 0 < data["timeout_s"] <= 3600))
          and (data.get("hold_s") is None or (type(data["hold_s"]) in (int, float)
                                              and 0 < data["hold_s"] <= 60))
          and (data.get("address") is None or isinstance(data["address"], str)))
    if not ok:
        send_json(h, 400, {"error": "bad_request",
                           "detail": "a handoff is a JSON object with store_id, request, "
                                     "phase (prepare, commit, abort; promote to a standby), "
                                     "hold_s, address, timeout_s"})
        return None
    result: dict[str, Any] = data
    return result
