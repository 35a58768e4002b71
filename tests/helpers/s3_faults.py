"""An HTTP proxy in front of the test S3 server that injects faults.

``FaultProxy(upstream_port)`` listens on its own port of 127.0.0.1 and
forwards every request to the S3 server at 127.0.0.1:upstream_port. A client
points at it by endpoint (``S3Server.uri(..., endpoint=proxy.endpoint)`` or
``S3Server.filesystem(endpoint=proxy.endpoint)``). Rules added while it runs
decide what happens to the requests that match them:

* ``fail(status)``: answer 500 (InternalError) or 503 (SlowDown) with an
  S3-style XML error, without forwarding;
* ``slow(delay_s)``: wait, then forward;
* ``drop()``: close the connection (a reset) without reading the request's
  body and without any response;
* ``cut_upload()``: forward the request's headers and only the first part of
  its body, then close both connections (a partial upload; no response);
* ``refuse()`` / ``accept()``: close every connection at once, new and kept
  alive alike, like a server that went away, and back.

A rule matches by ``method`` and ``path_contains``, both optional, and
applies to the next ``times`` requests it matches (None: all of them).
``method`` is compared with the request's kind as counted below: "GET" is a
GET that is not a listing, "LIST" a listing (see ``request_kind``; requests
are path-style, /bucket/key, as pyarrow sends them with an endpoint
override). ``path_contains`` is a substring of the request target, query
included. Rules are tried in the order they were added; the first that
matches and has tries left is used.

Every request received is counted in ``requests`` (a Counter by kind) and
logged in ``log`` as ``(kind, target, status)``, status None where no
response was sent. The proxy speaks HTTP/1.1 with keep-alive, reads bodies
sent with Content-Length or ``Transfer-Encoding: chunked`` (forwarding them
with a Content-Length; HTTP trailer fields are dropped, which the AWS SDK's
``aws-chunked`` checksum trailers are not: they are part of the body),
answers ``Expect: 100-continue``, and copies bodies in 1 MiB blocks.
"""

from __future__ import annotations

import collections
import http.client
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Callable
from urllib.parse import parse_qs, urlsplit

BLOCK = 1 << 20
UPSTREAM_TIMEOUT_S = 60.0

# Not forwarded in either direction (RFC 9110 7.6.1), plus Expect: the proxy
# answers 100-continue itself and has the whole body before it forwards.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding",
                        "upgrade", "expect"))

S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


def request_kind(method: str, target: str) -> str:
    """The method, except that a GET listing a bucket (ListObjects with
    ``list-type`` or ``prefix`` in its query, or a GET of a bucket itself)
    is "LIST"."""
    method = method.upper()
    if method != "GET":
        return method
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    if "list-type" in query or "prefix" in query:
        return "LIST"
    key = parts.path.strip("/").partition("/")[2]
    if parts.path.strip("/") and not key and not query:
        return "LIST"
    return method


def s3_error_body(status: int, resource: str, request_id: str) -> bytes:
    code, message = S3_ERRORS.get(status, ("InternalError", f"Injected HTTP {status}."))
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{_xml_escape(resource)}</Resource>"
            f"<RequestId>{request_id}</RequestId></Error>").encode()


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass
class Rule:
    action: str  # "fail", "slow", "drop", "cut"
    method: str | None = None
    path_contains: str | None = None
    times: int | None = 1
    status: int = 500
    delay_s: float = 0.0
    keep_bytes: int | None = None
    hits: int = 0

    def matches(self, kind: str, method: str, target: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != kind:
            return False
        if self.path_contains is not None and self.path_contains not in target:
            return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def verify_request(self, request: socket.socket | tuple[bytes, socket.socket],
                       client_address: tuple[str, int] | str) -> bool:
        proxy = self.proxy
        if proxy._refusing:
            with proxy._lock:
                proxy.refused += 1
            assert isinstance(request, socket.socket)
            _reset(request)
            return False
        return True


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a peer that went away."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.server.proxy._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()
            self.server.proxy._closed(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (OSError, http.client.HTTPException):
            # The client or upstream went away mid-request (or a fault cut
            # it): nothing more to say on this connection.
            self.close_connection = True

    def _dispatch(self) -> None:
        proxy = self.server.proxy
        method, target = self.command, self.path
        kind = request_kind(method, target)
        if proxy._refusing:
            proxy._record(kind, target, None)
            self._drop()
            return
        rule = proxy._match(kind, method, target)
        action = rule.action if rule is not None else "forward"
        if action == "drop":
            proxy._record(kind, target, None)
            self._drop()
            return
        if action == "cut":
            assert rule is not None
            proxy._record(kind, target, None)
            self._cut(rule)
            return
        body = self._read_body()
        if action == "fail":
            assert rule is not None
            status = rule.status
            proxy._record(kind, target, status)
            self._send_error_xml(status, target, proxy._request_id())
            return
        if action == "slow":
            assert rule is not None
            if proxy._stopping.wait(rule.delay_s):
                # the proxy is stopping: no answer
                self._drop()
                return
        self._forward(body, lambda status: proxy._record(kind, target, status))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _dispatch

    # -- the request body ---------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self._read_exact(length)

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise ConnectionError(f"client sent {len(data)} of {n} body bytes")
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed inside a chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # trailer section, up to the empty line
                while True:
                    trailer = self.rfile.readline(65537)
                    if trailer in (b"\r\n", b"\n", b""):
                        return b"".join(parts)
            parts.append(self._read_exact(size))
            self.rfile.readline(3)  # CRLF after the chunk

    # -- answers --------------------------------------------------------------

    def _drop(self) -> None:
        self.close_connection = True
        self.wfile.flush()
        _reset(self.connection)

    def _send_error_xml(self, status: int, target: str, request_id: str) -> None:
        body = s3_error_body(status, urlsplit(target).path, request_id)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _upstream_request(self, body_length: int) -> http.client.HTTPConnection:
        """Send the request line and headers upstream (on this connection's
        kept-alive upstream connection, opened on first use)."""
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(
                "127.0.0.1", self.server.proxy.upstream_port, timeout=UPSTREAM_TIMEOUT_S)
        conn = self._upstream
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            lname = name.lower()
            if lname in HOP_BY_HOP or lname == "content-length":
                continue
            conn.putheader(name, value)
        if body_length or self.command in ("PUT", "POST", "PATCH"):
            conn.putheader("Content-Length", str(body_length))
        conn.endheaders()
        return conn

    def _forward(self, body: bytes, record: Callable[[int], None]) -> None:
        """Send the request upstream and copy the response back; ``record``
        gets the status before the client does (a test that has its answer
        finds it logged)."""
        reused = self._upstream is not None
        try:
            resp = self._send_upstream(body)
        except (ConnectionError, http.client.RemoteDisconnected):
            if not reused:
                raise
            # The upstream closed the kept-alive connection while it was
            # idle: once more, on a fresh one.
            self._close_upstream()
            resp = self._send_upstream(body)
        record(resp.status)
        self.send_response_only(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        unsized = length is None and self.command != "HEAD" and resp.status not in (204, 304)
        for name, value in resp.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        payload = b""
        if unsized:
            # The upstream did not say how long (chunked or close-delimited):
            # read it all, then say.
            payload = resp.read()
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if unsized:
            self.wfile.write(payload)
        else:
            while block := resp.read(BLOCK):
                self.wfile.write(block)
        self.wfile.flush()
        if resp.will_close:
            self._close_upstream()

    def _send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        conn = self._upstream_request(len(body))
        view = memoryview(body)
        for off in range(0, len(body), BLOCK):
            conn.send(view[off:off + BLOCK])
        return conn.getresponse()

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _cut(self, rule: Rule) -> None:
        """Forward the headers (the whole body's length) and part of the
        body on a connection of its own, close it, and reset the client's."""
        prefix, total = self._read_body_prefix(rule.keep_bytes)
        saved = self._upstream
        self._upstream = None
        try:
            conn = self._upstream_request(total)
            conn.send(prefix)
        except OSError:
            pass
        finally:
            self._close_upstream()
            self._upstream = saved
        self._drop()

    def _read_body_prefix(self, keep: int | None) -> tuple[bytes, int]:
        """The first ``keep`` bytes of the body (default: half of it) and the
        body's whole length. A Content-Length body's rest is left unread."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
            total = len(body)
            return body[:total // 2 if keep is None else keep], total
        total = int(self.headers.get("Content-Length") or 0)
        keep = total // 2 if keep is None else min(keep, total)
        return self._read_exact(keep), total


class FaultProxy:
    """A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 server;
    see the module's docstring. ``start()`` / ``stop()``, or use it as a
    context manager."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, int | None]] = []
        # connections reset on arrival while refusing (not requests: no
        # request was read from them)
        self.refused = 0
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._refusing = False
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._ids = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.endpoint = ""

    def __repr__(self) -> str:
        return f"FaultProxy(endpoint={self.endpoint!r}, upstream=127.0.0.1:{self.upstream_port})"

    # -- life -----------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self.port = int(server.server_address[1])
        self.endpoint = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, close every open connection, and join the
        handler threads. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- rules ----------------------------------------------------------------

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(self, status: int = 500, method: str | None = None,
             path_contains: str | None = None, times: int | None = 1) -> Rule:
        """Answer matching requests with ``status`` and an S3 XML error
        (500: InternalError, 503: SlowDown) instead of forwarding them."""
        return self._add(Rule("fail", method, path_contains, times, status=status))

    def slow(self, delay_s: float, method: str | None = None,
             path_contains: str | None = None, times: int | None = 1) -> Rule:
        """Forward matching requests after ``delay_s`` seconds."""
        return self._add(Rule("slow", method, path_contains, times, delay_s=delay_s))

    def drop(self, method: str | None = None, path_contains: str | None = None,
             times: int | None = 1) -> Rule:
        """Reset the connection of matching requests once their headers are
        read: no response, the body (if any) unread, nothing forwarded."""
        return self._add(Rule("drop", method, path_contains, times))

    def cut_upload(self, method: str | None = "PUT", path_contains: str | None = None,
                   times: int | None = 1, keep_bytes: int | None = None) -> Rule:
        """Forward matching requests' headers and only ``keep_bytes`` of the
        body (default: half), then close the upstream connection and reset
        the client's, without a response."""
        return self._add(Rule("cut", method, path_contains, times, keep_bytes=keep_bytes))

    def refuse(self) -> None:
        """From now on reset every connection at once, new or kept alive, as
        a stopped server would (the client sees a reset, not ECONNREFUSED,
        since the proxy keeps its port)."""
        with self._lock:
            self._refusing = True
            conns = list(self._conns)
        for sock in conns:
            # wakes handlers waiting for a kept-alive connection's next request
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def accept(self) -> None:
        """Undo ``refuse()``."""
        with self._lock:
            self._refusing = False

    def clear(self) -> None:
        """Remove every rule and undo ``refuse()``; the counters stay."""
        with self._lock:
            self._rules.clear()
            self._refusing = False

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()
            self.refused = 0

    def count(self, predicate: Callable[[str, str, int | None], bool]) -> int:
        """How many logged requests satisfy ``predicate(kind, target, status)``."""
        with self._lock:
            return sum(1 for entry in self.log if predicate(*entry))

    # -- used by the handler threads -------------------------------------------

    def _match(self, kind: str, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(kind, method, target):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, kind: str, target: str, status: int | None) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.log.append((kind, target, status))

    def _request_id(self) -> str:
        with self._lock:
            self._ids += 1
            return f"FAULTPROXY{self._ids:08d}"

    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

